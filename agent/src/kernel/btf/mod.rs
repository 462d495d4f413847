//! A small reader of the kernel's BTF (BPF Type Format).
//!
//! Rust eBPF programs get no CO-RE relocations, so the agent must learn the
//! byte offsets of the kernel struct fields its programs walk from the BTF of
//! the kernel it runs on (`/sys/kernel/btf/vmlinux`) and hand them to the
//! programs. This module answers exactly the two questions that needs: where
//! is member `m` in struct `s`, and what is the value of enumerator `e`. It
//! parses the whole format (every kind is sized correctly) but keeps only
//! what those lookups use, indexed by name once at parse time.

mod parse;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use parse::{
    read_u32, TypeRecord, ENUM_LEN, KIND_CONST, KIND_ENUM, KIND_ENUM64, KIND_RESTRICT, KIND_STRUCT, KIND_TYPEDEF,
    KIND_TYPE_TAG, KIND_UNION, KIND_VOLATILE, MEMBER_LEN,
};

/// Where the running kernel exposes its own BTF (`CONFIG_DEBUG_INFO_BTF`).
const RUNNING_KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Bound on typedef/modifier chains and anonymous-member nesting, so that a
/// corrupt (cyclic) blob yields an error instead of a hang.
const MAX_DEPTH: u32 = 32;

/// Everything that can go wrong reading BTF or looking a name up in it. The
/// messages name the struct, member or enum involved, because the usual cause
/// is a kernel whose layout the agent does not know yet.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("cannot read BTF from {}: {source}", path.display())]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data does not start with the BTF magic `0xeb9f`.
    #[error("not BTF: magic is {found:#06x}, expected 0xeb9f")]
    BadMagic {
        /// The first two bytes, read little-endian.
        found: u16,
    },
    /// The data is big-endian BTF, which this reader does not support.
    #[error("BTF is big-endian; only little-endian BTF is supported")]
    BigEndian,
    /// The header's version is not 1.
    #[error("unsupported BTF version {0} (only version 1 is known)")]
    UnsupportedVersion(u8),
    /// A part of the data ends before it should.
    #[error("BTF is truncated: the {what} needs {needed} bytes but only {available} are there")]
    Truncated {
        /// Which part was cut short.
        what: &'static str,
        /// The length that part needs.
        needed: u64,
        /// The length that is there.
        available: usize,
    },
    /// The header's fields are inconsistent.
    #[error("malformed BTF header: {0}")]
    BadHeader(String),
    /// A type record has a kind this reader does not know, so the records
    /// after it cannot be found.
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind {
        /// The type id of the record.
        id: u32,
        /// Its `BTF_KIND_*` value.
        kind: u8,
    },
    /// A name offset points outside the string section or at an
    /// unterminated string.
    #[error("BTF string offset {offset} is outside the string section or unterminated")]
    BadString {
        /// The offending offset.
        offset: u32,
    },
    /// A type refers to a type id that does not exist.
    #[error("BTF type id {id} is out of range (there are {count} types)")]
    BadTypeId {
        /// The offending id.
        id: u32,
        /// Number of types in the blob, `void` included.
        count: usize,
    },
    /// A typedef/modifier chain or anonymous-member nesting is too deep.
    #[error("BTF type chain at type {id} is deeper than {MAX_DEPTH} (corrupt or cyclic BTF?)")]
    TooDeep {
        /// The type where the walk stopped.
        id: u32,
    },
    /// No struct or union of that name exists.
    #[error("struct `{0}` not found in BTF")]
    StructNotFound(String),
    /// The struct exists but has no such member, directly or inside its
    /// anonymous structs and unions.
    #[error("member `{member}` not found in struct `{struct_name}`")]
    MemberNotFound {
        /// The struct searched.
        struct_name: String,
        /// The member asked for.
        member: String,
    },
    /// The member is a bitfield that does not start on a byte boundary, so it
    /// has no byte offset.
    #[error("member `{struct_name}.{member}` is a bitfield at bit {bit_offset}, not on a byte boundary")]
    NotByteAligned {
        /// The struct searched.
        struct_name: String,
        /// The member asked for.
        member: String,
        /// Its offset in bits from the start of the struct.
        bit_offset: u64,
    },
    /// No enum (or enum64) of that name exists.
    #[error("enum `{0}` not found in BTF")]
    EnumNotFound(String),
    /// The enum exists but has no such enumerator.
    #[error("enumerator `{name}` not found in enum `{enum_name}`")]
    EnumeratorNotFound {
        /// The enum searched.
        enum_name: String,
        /// The enumerator asked for.
        name: String,
    },
    /// The vmlinux file is not a readable ELF file.
    #[error("cannot parse vmlinux ELF: {0}")]
    Elf(#[from] object::Error),
    /// The vmlinux ELF file has no `.BTF` section.
    #[error("vmlinux ELF has no .BTF section (kernel built without CONFIG_DEBUG_INFO_BTF?)")]
    NoBtfSection,
}

/// A parsed BTF blob, indexed by struct/union and enum name, ready for the
/// few dozen lookups the agent makes at start-up.
pub struct Btf {
    /// The type section; trailing entries of records are read from here.
    types: Vec<u8>,
    /// The string section.
    strings: Vec<u8>,
    /// Fixed part of every record, indexed by type id (0 is `void`).
    records: Vec<TypeRecord>,
    /// Named structs and unions, in type-id order per name.
    composites: HashMap<Box<[u8]>, Vec<u32>>,
    /// Named enums and enum64s, in type-id order per name.
    enums: HashMap<Box<[u8]>, Vec<u32>>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &(self.records.len() - 1))
            .field("strings_len", &self.strings.len())
            .finish_non_exhaustive()
    }
}

impl Btf {
    /// Parse raw BTF (e.g. /sys/kernel/btf/vmlinux). The blob is checked and
    /// copied, so the caller's buffer can be dropped afterwards.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let raw = parse::parse_raw(bytes)?;
        let mut btf = Btf {
            types: raw.types,
            strings: raw.strings,
            records: raw.records,
            composites: HashMap::new(),
            enums: HashMap::new(),
        };
        btf.build_index()?;
        Ok(btf)
    }

    /// Read the running kernel's BTF from /sys/kernel/btf/vmlinux, the source
    /// of truth for the offsets the eBPF programs need on this node.
    pub fn from_running_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(RUNNING_KERNEL_BTF))
    }

    /// Parse the `.BTF` section of a vmlinux ELF file, so that kernels other
    /// than the running one (e.g. test fixtures) can be checked too.
    pub fn from_vmlinux_elf(bytes: &[u8]) -> Result<Self, BtfError> {
        let elf = object::File::parse(bytes)?;
        let section = elf.section_by_name(".BTF").ok_or(BtfError::NoBtfSection)?;
        Self::parse(section.data()?)
    }

    /// Byte offset of `member` within struct (or union) `struct_name`,
    /// looking through anonymous struct/union members recursively (kernel
    /// structs put many fields in anonymous unions), following
    /// typedefs/modifiers of member types as needed for anonymous members.
    /// Errors if the struct or the member is missing, or the member is a
    /// bitfield not byte-aligned: a wrong offset would make the programs read
    /// garbage, so there is no best guess.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let id = self.find_composite(struct_name)?;
        let bits = self.find_member(id, member.as_bytes(), 0)?.ok_or_else(|| BtfError::MemberNotFound {
            struct_name: struct_name.to_owned(),
            member: member.to_owned(),
        })?;
        if bits % 8 != 0 {
            return Err(BtfError::NotByteAligned {
                struct_name: struct_name.to_owned(),
                member: member.to_owned(),
                bit_offset: bits,
            });
        }
        u32::try_from(bits / 8).map_err(|_| {
            BtfError::BadHeader(format!("offset of {struct_name}.{member} ({bits} bits) does not fit in u32 bytes"))
        })
    }

    /// Size in bytes of struct (or union) `struct_name`, for walking arrays of
    /// it (such as `pid.numbers[]`) whose element size differs by build.
    pub fn struct_size(&self, struct_name: &str) -> Result<u32, BtfError> {
        let id = self.find_composite(struct_name)?;
        Ok(self.records[id as usize].size_or_type)
    }

    /// Value of enumerator `name` in enum `enum_name` (ENUM or ENUM64), for
    /// kernel constants such as cgroup subsystem ids that vary by build
    /// configuration. Unsigned 64-bit values above `i64::MAX` wrap.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Result<i64, BtfError> {
        let ids = self.enums.get(enum_name.as_bytes()).ok_or_else(|| BtfError::EnumNotFound(enum_name.to_owned()))?;
        for &id in ids {
            if let Some(value) = self.find_enumerator(id, name.as_bytes())? {
                return Ok(value);
            }
        }
        Err(BtfError::EnumeratorNotFound { enum_name: enum_name.to_owned(), name: name.to_owned() })
    }

    /// Read and parse a raw BTF file.
    fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io { path: path.to_owned(), source })?;
        Self::parse(&bytes)
    }

    /// Fill the name indexes; the only pass that reads names of all types.
    fn build_index(&mut self) -> Result<(), BtfError> {
        let mut composites: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        let mut enums: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        for (id, rec) in self.records.iter().enumerate().skip(1) {
            let map = match rec.kind {
                KIND_STRUCT | KIND_UNION => &mut composites,
                KIND_ENUM | KIND_ENUM64 => &mut enums,
                _ => continue,
            };
            if rec.name_off == 0 {
                continue;
            }
            let name = self.string(rec.name_off)?;
            // Ids fit in u32: each record is at least 12 bytes of a u32-sized section.
            map.entry(name.into()).or_default().push(id as u32);
        }
        self.composites = composites;
        self.enums = enums;
        Ok(())
    }

    /// The NUL-terminated string at `offset` in the string section.
    fn string(&self, offset: u32) -> Result<&[u8], BtfError> {
        let rest = self.strings.get(offset as usize..).ok_or(BtfError::BadString { offset })?;
        let end = rest.iter().position(|&b| b == 0).ok_or(BtfError::BadString { offset })?;
        Ok(&rest[..end])
    }

    /// The record of type `id`.
    fn record(&self, id: u32) -> Result<&TypeRecord, BtfError> {
        self.records.get(id as usize).ok_or(BtfError::BadTypeId { id, count: self.records.len() })
    }

    /// A `u32` of some record's trailing entries. The walk in `parse` checked
    /// every record's extent, so this fails only on an internal bug.
    fn entry_u32(&self, at: usize) -> Result<u32, BtfError> {
        read_u32(&self.types, at).ok_or(BtfError::Truncated {
            what: "type record",
            needed: at as u64 + 4,
            available: self.types.len(),
        })
    }

    /// The struct (or union) called `name`: the first non-empty STRUCT, else
    /// the first non-empty UNION, else the first of either (a forward-only or
    /// empty type, whose lookups then report the missing member).
    fn find_composite(&self, name: &str) -> Result<u32, BtfError> {
        let ids = self.composites.get(name.as_bytes()).ok_or_else(|| BtfError::StructNotFound(name.to_owned()))?;
        let pick = |kind: u8| {
            ids.iter().copied().find(|&id| {
                let rec = &self.records[id as usize];
                rec.kind == kind && rec.size_or_type > 0
            })
        };
        pick(KIND_STRUCT)
            .or_else(|| pick(KIND_UNION))
            .or_else(|| ids.first().copied())
            .ok_or_else(|| BtfError::StructNotFound(name.to_owned()))
    }

    /// Follow typedefs and modifiers (const, volatile, restrict, type tags)
    /// from `id` to the type they name.
    fn strip_modifiers(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let rec = self.record(id)?;
            match rec.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = rec.size_or_type,
                _ => return Ok(id),
            }
        }
        Err(BtfError::TooDeep { id })
    }

    /// Bit offset of the member called `name` in struct/union `id`, searching
    /// anonymous struct/union members depth-first in declaration order (C
    /// requires the names to be unique across them, so the first hit is it).
    fn find_member(&self, id: u32, name: &[u8], depth: u32) -> Result<Option<u64>, BtfError> {
        if depth >= MAX_DEPTH {
            return Err(BtfError::TooDeep { id });
        }
        let rec = *self.record(id)?;
        for i in 0..usize::from(rec.vlen) {
            let at = rec.extra + i * MEMBER_LEN;
            let name_off = self.entry_u32(at)?;
            let ty = self.entry_u32(at + 4)?;
            let raw_off = self.entry_u32(at + 8)?;
            // With kind_flag set the top 8 bits hold the bitfield size.
            let bit_off = u64::from(if rec.kind_flag { raw_off & 0x00ff_ffff } else { raw_off });
            if name_off == 0 {
                let inner = self.strip_modifiers(ty)?;
                let inner_kind = self.record(inner)?.kind;
                if inner_kind == KIND_STRUCT || inner_kind == KIND_UNION {
                    if let Some(bits) = self.find_member(inner, name, depth + 1)? {
                        return Ok(Some(bit_off + bits));
                    }
                }
                continue;
            }
            if self.string(name_off)? == name {
                return Ok(Some(bit_off));
            }
        }
        Ok(None)
    }

    /// Value of the enumerator called `name` in enum/enum64 `id`, if present.
    fn find_enumerator(&self, id: u32, name: &[u8]) -> Result<Option<i64>, BtfError> {
        let rec = *self.record(id)?;
        let entry = if rec.kind == KIND_ENUM64 { MEMBER_LEN } else { ENUM_LEN };
        for i in 0..usize::from(rec.vlen) {
            let at = rec.extra + i * entry;
            if self.string(self.entry_u32(at)?)? != name {
                continue;
            }
            let lo = self.entry_u32(at + 4)?;
            let value = if rec.kind == KIND_ENUM64 {
                let hi = self.entry_u32(at + 8)?;
                ((u64::from(hi) << 32) | u64::from(lo)) as i64
            } else if rec.kind_flag {
                // kind_flag set: the 32-bit value is signed.
                i64::from(lo as i32)
            } else {
                i64::from(lo)
            };
            return Ok(Some(value));
        }
        Ok(None)
    }
}
