//! Decoding of the raw BTF layout: the header, the type records and the
//! string table (kernel `Documentation/bpf/btf.rst`).
//!
//! Every record is walked once to find where the next one starts, so every
//! kind must be sized correctly even though only structs, unions, enums and
//! the modifiers between them are ever looked at. The trailing data of a
//! record (members, enumerators, ...) stays in the copied type section and is
//! read on demand.

use super::BtfError;

/// `btf_header.magic` as read little-endian.
pub(super) const MAGIC: u16 = 0xeb9f;
/// The magic as it reads when the blob is big-endian.
const MAGIC_SWAPPED: u16 = 0x9feb;
/// Size of `struct btf_header` in version 1.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type` (name_off, info, size/type).
const RECORD_LEN: usize = 12;

pub(super) const KIND_INT: u8 = 1;
pub(super) const KIND_PTR: u8 = 2;
pub(super) const KIND_ARRAY: u8 = 3;
pub(super) const KIND_STRUCT: u8 = 4;
pub(super) const KIND_UNION: u8 = 5;
pub(super) const KIND_ENUM: u8 = 6;
pub(super) const KIND_FWD: u8 = 7;
pub(super) const KIND_TYPEDEF: u8 = 8;
pub(super) const KIND_VOLATILE: u8 = 9;
pub(super) const KIND_CONST: u8 = 10;
pub(super) const KIND_RESTRICT: u8 = 11;
pub(super) const KIND_FUNC: u8 = 12;
pub(super) const KIND_FUNC_PROTO: u8 = 13;
pub(super) const KIND_VAR: u8 = 14;
pub(super) const KIND_DATASEC: u8 = 15;
pub(super) const KIND_FLOAT: u8 = 16;
pub(super) const KIND_DECL_TAG: u8 = 17;
pub(super) const KIND_TYPE_TAG: u8 = 18;
pub(super) const KIND_ENUM64: u8 = 19;

/// Size of one `btf_member` (struct/union) or `btf_enum64` entry.
pub(super) const MEMBER_LEN: usize = 12;
/// Size of one `btf_enum` entry.
pub(super) const ENUM_LEN: usize = 8;

/// The fixed part of one type record. Type id `n` is `records[n]`; id 0 is
/// `void` and gets a placeholder so ids index the vector directly.
#[derive(Clone, Copy, Debug)]
pub(super) struct TypeRecord {
    /// `BTF_KIND_*`.
    pub kind: u8,
    /// Bit 31 of `info`: bitfield encoding for structs, signedness for enums.
    pub kind_flag: bool,
    /// Number of trailing entries (members, enumerators, params, ...).
    pub vlen: u16,
    /// Offset of the type's name in the string section (0: anonymous).
    pub name_off: u32,
    /// `size` for structs/unions/enums/ints, `type` for modifiers/typedefs.
    pub size_or_type: u32,
    /// Byte offset of the trailing entries in the type section.
    pub extra: usize,
}

/// The parts of a BTF blob the lookups need, copied out of the input.
pub(super) struct Raw {
    pub types: Vec<u8>,
    pub strings: Vec<u8>,
    pub records: Vec<TypeRecord>,
}

/// Little-endian `u32` at `at`, or `None` past the end.
pub(super) fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Like [`read_u32`], but a missing value is a truncation error naming `what`.
fn need_u32(buf: &[u8], at: usize, what: &'static str) -> Result<u32, BtfError> {
    read_u32(buf, at).ok_or(BtfError::Truncated { what, needed: at as u64 + 4, available: buf.len() })
}

/// Bytes of trailing data after the fixed record of `kind`, or `None` for a
/// kind this parser does not know.
fn extra_len(kind: u8, vlen: u16) -> Option<usize> {
    let vlen = usize::from(vlen);
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC | KIND_FLOAT
        | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => MEMBER_LEN * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => ENUM_LEN * vlen,
        _ => return None,
    })
}

/// The `[start, start + len)` range of a section, checked against the blob.
fn section(
    bytes: &[u8],
    hdr_len: usize,
    off: u32,
    len: u32,
    what: &'static str,
) -> Result<std::ops::Range<usize>, BtfError> {
    let start = hdr_len as u64 + u64::from(off);
    let end = start + u64::from(len);
    if end > bytes.len() as u64 {
        return Err(BtfError::Truncated { what, needed: end, available: bytes.len() });
    }
    // Both fit in the slice length, so they fit in usize.
    Ok(start as usize..end as usize)
}

/// Check the header, copy out the two sections and index every type record.
pub(super) fn parse_raw(bytes: &[u8]) -> Result<Raw, BtfError> {
    let magic = match bytes {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => return Err(BtfError::Truncated { what: "header", needed: HEADER_LEN as u64, available: bytes.len() }),
    };
    if magic == MAGIC_SWAPPED {
        return Err(BtfError::BigEndian);
    }
    if magic != MAGIC {
        return Err(BtfError::BadMagic { found: magic });
    }
    if bytes.len() < HEADER_LEN {
        return Err(BtfError::Truncated { what: "header", needed: HEADER_LEN as u64, available: bytes.len() });
    }
    if bytes[2] != 1 {
        return Err(BtfError::UnsupportedVersion(bytes[2]));
    }
    let hdr_len = need_u32(bytes, 4, "header")? as usize;
    if hdr_len < HEADER_LEN || hdr_len > bytes.len() {
        return Err(BtfError::BadHeader(format!("hdr_len {hdr_len} is outside {HEADER_LEN}..={}", bytes.len())));
    }
    let type_off = need_u32(bytes, 8, "header")?;
    let type_len = need_u32(bytes, 12, "header")?;
    let str_off = need_u32(bytes, 16, "header")?;
    let str_len = need_u32(bytes, 20, "header")?;
    let types = bytes[section(bytes, hdr_len, type_off, type_len, "type section")?].to_vec();
    let strings = bytes[section(bytes, hdr_len, str_off, str_len, "string section")?].to_vec();
    let records = walk_types(&types)?;
    Ok(Raw { types, strings, records })
}

/// Decode the fixed part of every record and skip its trailing data.
fn walk_types(types: &[u8]) -> Result<Vec<TypeRecord>, BtfError> {
    // Records are at least 12 bytes: a good guess at the count saves regrowth.
    let mut records = Vec::with_capacity(types.len() / 24 + 1);
    records.push(TypeRecord { kind: 0, kind_flag: false, vlen: 0, name_off: 0, size_or_type: 0, extra: 0 });
    let mut pos = 0;
    while pos < types.len() {
        let name_off = need_u32(types, pos, "type record")?;
        let info = need_u32(types, pos + 4, "type record")?;
        let size_or_type = need_u32(types, pos + 8, "type record")?;
        let kind = ((info >> 24) & 0x1f) as u8;
        let vlen = (info & 0xffff) as u16;
        let id = records.len() as u32;
        let extra = pos + RECORD_LEN;
        let len = extra_len(kind, vlen).ok_or(BtfError::UnknownKind { id, kind })?;
        let end = extra + len;
        if end > types.len() {
            return Err(BtfError::Truncated { what: "type record", needed: end as u64, available: types.len() });
        }
        records.push(TypeRecord { kind, kind_flag: info & (1 << 31) != 0, vlen, name_off, size_or_type, extra });
        pos = end;
    }
    Ok(records)
}
