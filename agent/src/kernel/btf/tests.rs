//! Tests of the BTF reader on small blobs built here, so they need neither
//! root nor a kernel with BTF. Every kind is put before the structs looked up,
//! so a kind sized wrongly shows up as a failed lookup.

use super::parse::*;
use super::{Btf, BtfError};

/// Builds a little-endian BTF blob record by record.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Builder { types: Vec::new(), strings: vec![0], next_id: 1 }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// A record header; returns its type id.
    fn ty(&mut self, name: &str, kind: u8, flag: bool, vlen: u16, size_or_type: u32) -> u32 {
        let name_off = self.str(name);
        let info = (u32::from(kind) << 24) | (u32::from(flag) << 31) | u32::from(vlen);
        self.words(&[name_off, info, size_or_type]);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A struct or union; member offsets are the raw `offset` word.
    fn composite(&mut self, kind: u8, name: &str, size: u32, flag: bool, m: &[(&str, u32, u32)]) -> u32 {
        let id = self.ty(name, kind, flag, m.len() as u16, size);
        for &(name, ty, off) in m {
            let name_off = self.str(name);
            self.words(&[name_off, ty, off]);
        }
        id
    }

    fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let type_len = self.types.len() as u32;
        for w in [24, 0, type_len, type_len, self.strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A blob with every kind and the shapes the kernel uses:
///
/// ```c
/// typedef union { int hash; struct { int len; int hi; }; } hl_t;
/// struct task {              // size 40
///     int id;                // 0
///     const hl_t;            // 8: anonymous member through const + typedef
///     long *files;           // 16
///     union { int u1; struct { int u2a; int u2b; }; };  // 24
/// };
/// struct bits { int a:3 @3; int b:8 @8; int c @32; };   // kind_flag set
/// struct dup;  struct dup { long x; long m; };          // fwd-ish then real
/// enum color { RED = 1, NEG = -5 (signed) }; enum64 big { HUGE = 1 << 40 };
/// ```
fn sample() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.ty("int", KIND_INT, false, 0, 4);
    b.words(&[(1 << 24) | 32]);
    let long = b.ty("long", KIND_INT, false, 0, 8);
    b.words(&[(1 << 24) | 64]);
    let ptr = b.ty("", KIND_PTR, false, 0, long);
    b.ty("", KIND_ARRAY, false, 0, 0);
    b.words(&[int, int, 4]);
    b.ty("fwd", KIND_FWD, false, 0, 0);
    let vol = b.ty("", KIND_VOLATILE, false, 0, int);
    b.ty("", KIND_RESTRICT, false, 0, ptr);
    let proto = b.ty("", KIND_FUNC_PROTO, false, 2, int);
    b.words(&[0, int, 0, vol]);
    let func = b.ty("f", KIND_FUNC, false, 0, proto);
    let var = b.ty("v", KIND_VAR, false, 0, int);
    b.words(&[1]);
    b.ty(".data", KIND_DATASEC, false, 1, 4);
    b.words(&[var, 0, 4]);
    b.ty("double", KIND_FLOAT, false, 0, 8);
    b.ty("tag", KIND_DECL_TAG, false, 0, func);
    b.words(&[u32::MAX]);
    let tagged = b.ty("user", KIND_TYPE_TAG, false, 0, int);

    let hl_inner = b.composite(KIND_STRUCT, "", 8, false, &[("len", int, 0), ("hi", tagged, 32)]);
    let hl = b.composite(KIND_UNION, "", 8, false, &[("hash", int, 0), ("", hl_inner, 0)]);
    let hl_t = b.ty("hl_t", KIND_TYPEDEF, false, 0, hl);
    let hl_const = b.ty("", KIND_CONST, false, 0, hl_t);
    let u2 = b.composite(KIND_STRUCT, "", 8, false, &[("u2a", int, 0), ("u2b", int, 32)]);
    let un = b.composite(KIND_UNION, "", 8, false, &[("u1", int, 0), ("", u2, 0)]);
    b.composite(
        KIND_STRUCT,
        "task",
        40,
        false,
        &[("id", int, 0), ("", hl_const, 64), ("files", ptr, 128), ("", un, 192)],
    );
    b.composite(KIND_STRUCT, "bits", 8, true, &[("a", int, (3 << 24) | 3), ("b", int, (8 << 24) | 8), ("c", int, 32)]);
    b.composite(KIND_STRUCT, "dup", 0, false, &[]);
    b.composite(KIND_UNION, "dup", 8, false, &[("m", long, 0)]);
    b.composite(KIND_STRUCT, "dup", 16, false, &[("x", long, 0), ("m", long, 64)]);

    b.ty("color", KIND_ENUM, true, 2, 4);
    let (red, neg) = (b.str("RED"), b.str("NEG"));
    b.words(&[red, 1, neg, (-5i32) as u32]);
    b.ty("ucolor", KIND_ENUM, false, 1, 4);
    let big = b.str("BIG");
    b.words(&[big, u32::MAX]);
    b.ty("wide", KIND_ENUM64, false, 2, 8);
    let (small, huge) = (b.str("SMALL"), b.str("HUGE"));
    b.words(&[small, 7, 0, huge, 0, 1 << 8]);
    b.build()
}

fn parsed() -> Btf {
    Btf::parse(&sample()).expect("the sample blob parses")
}

#[test]
fn direct_and_anonymous_members() {
    let btf = parsed();
    let off = |m: &str| btf.member_offset("task", m).expect("member resolves");
    assert_eq!(off("id"), 0);
    assert_eq!(off("files"), 16);
    assert_eq!(off("hash"), 8, "through const + typedef + anonymous union");
    assert_eq!(off("len"), 8, "two levels of anonymous members");
    assert_eq!(off("hi"), 12);
    assert_eq!(off("u1"), 24);
    assert_eq!(off("u2b"), 28);
}

#[test]
fn bitfield_members() {
    let btf = parsed();
    assert_eq!(btf.member_offset("bits", "b").expect("byte-aligned bitfield"), 1);
    assert_eq!(btf.member_offset("bits", "c").expect("plain member"), 4);
    let err = btf.member_offset("bits", "a").expect_err("bit 3 is not a byte offset");
    assert!(matches!(err, BtfError::NotByteAligned { bit_offset: 3, .. }), "{err}");
    assert!(err.to_string().contains("bits.a"), "{err}");
}

#[test]
fn duplicate_names_prefer_first_non_empty_struct() {
    assert_eq!(parsed().member_offset("dup", "m").expect("dup.m"), 8);
    assert_eq!(parsed().struct_size("dup").expect("dup"), 16);
}

#[test]
fn struct_sizes() {
    let btf = parsed();
    assert_eq!(btf.struct_size("task").expect("task"), 40);
    assert!(matches!(btf.struct_size("nosuch"), Err(BtfError::StructNotFound(_))));
}

#[test]
fn enum_values() {
    let btf = parsed();
    assert_eq!(btf.enum_value("color", "RED").expect("RED"), 1);
    assert_eq!(btf.enum_value("color", "NEG").expect("signed"), -5);
    assert_eq!(btf.enum_value("ucolor", "BIG").expect("unsigned"), i64::from(u32::MAX));
    assert_eq!(btf.enum_value("wide", "SMALL").expect("enum64"), 7);
    assert_eq!(btf.enum_value("wide", "HUGE").expect("enum64 high"), 1 << 40);
}

#[test]
fn lookup_errors_name_what_is_missing() {
    let btf = parsed();
    let err = btf.member_offset("nosuch", "x").expect_err("no struct");
    assert!(matches!(err, BtfError::StructNotFound(ref s) if s == "nosuch"), "{err}");
    let err = btf.member_offset("task", "nosuch").expect_err("no member");
    assert_eq!(err.to_string(), "member `nosuch` not found in struct `task`");
    let err = btf.member_offset("hl_t", "hash").expect_err("typedef is not a struct");
    assert!(matches!(err, BtfError::StructNotFound(_)), "{err}");
    let err = btf.enum_value("nosuch", "RED").expect_err("no enum");
    assert!(matches!(err, BtfError::EnumNotFound(_)), "{err}");
    let err = btf.enum_value("color", "BLUE").expect_err("no enumerator");
    assert!(err.to_string().contains("BLUE") && err.to_string().contains("color"), "{err}");
}

#[test]
fn bad_magic_big_endian_and_version() {
    let mut blob = sample();
    blob[0] = 0x7f;
    assert!(matches!(Btf::parse(&blob), Err(BtfError::BadMagic { .. })));
    blob[0..2].copy_from_slice(&MAGIC.to_be_bytes());
    assert!(matches!(Btf::parse(&blob), Err(BtfError::BigEndian)));
    let mut blob = sample();
    blob[2] = 2;
    assert!(matches!(Btf::parse(&blob), Err(BtfError::UnsupportedVersion(2))));
    assert!(matches!(Btf::parse(b"ELF"), Err(BtfError::BadMagic { .. })));
}

#[test]
fn every_truncation_is_an_error() {
    let blob = sample();
    for len in 0..blob.len() {
        let err = Btf::parse(&blob[..len]).expect_err("a cut blob must not parse");
        assert!(matches!(err, BtfError::Truncated { .. }), "cut at {len}: {err}");
    }
}

#[test]
fn corrupt_records_are_errors() {
    let mut b = Builder::new();
    b.ty("x", 31, false, 0, 0);
    assert!(matches!(Btf::parse(&b.build()), Err(BtfError::UnknownKind { id: 1, kind: 31 })));

    // A struct whose member count runs past the type section.
    let mut b = Builder::new();
    b.composite(KIND_STRUCT, "s", 4, false, &[("m", 0, 0)]);
    let mut short = b.build();
    short[24 + 4] = 2; // vlen 2, only one member present
    assert!(matches!(Btf::parse(&short), Err(BtfError::Truncated { .. })));

    // A struct name pointing past the string section.
    let mut b = Builder::new();
    b.ty("", KIND_STRUCT, false, 0, 4);
    let mut bad_name = b.build();
    bad_name[24..28].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(Btf::parse(&bad_name), Err(BtfError::BadString { offset: 1000 })));
}

#[test]
fn not_an_elf_file() {
    let err = Btf::from_vmlinux_elf(&sample()).expect_err("BTF is not ELF");
    assert!(matches!(err, BtfError::Elf(_)), "{err}");
}
