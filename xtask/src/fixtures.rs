//! Test fixtures that come from outside the repository.
//!
//! The agent resolves kernel struct offsets from BTF, and that has to be
//! tested against more than the one kernel the build machine runs. Debian's
//! 6.1 cloud kernel package (bookworm's) is reachable through apt, so its BTF
//! is pulled out of the package's compressed kernel image here, once, into
//! `target/fixtures/btf/` (nothing large is committed). The kernel is fetched
//! as `cargo xtask vmtest` fetches it, with apt in a state of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use object::{Object, ObjectSection};

use crate::vmtest;

/// Name of the 6.1 fixture inside `target/fixtures/btf/`.
const FIXTURE_NAME: &str = "vmlinux-6.1.btf";
/// The kernel's legacy LZ4 frame magic (`lz4 -l`), little-endian.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Each legacy LZ4 block decompresses to at most this much.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// BTF magic as it appears in the first two bytes of little-endian BTF.
const BTF_MAGIC: [u8; 2] = [0x9f, 0xeb];

/// Ensure target/fixtures/btf/vmlinux-6.1.btf exists; build it if not. Idempotent; prints (eprintln! is fine in xtask) what it does and why.
pub fn second_kernel_btf(workspace_root: &Path) -> Result<PathBuf> {
    let dir = workspace_root.join("target/fixtures/btf");
    let out = dir.join(FIXTURE_NAME);
    if let Ok(bytes) = fs::read(&out) {
        if bytes.starts_with(&BTF_MAGIC) {
            eprintln!("xtask: fixtures: {} is already there", out.display());
            return Ok(out);
        }
        eprintln!("xtask: fixtures: {} is not BTF; rebuilding it", out.display());
    }
    eprintln!(
        "xtask: fixtures: building {} (the BTF of Debian's 6.1 cloud kernel, to test offset \
         resolution against a second kernel)",
        out.display()
    );
    let started = Instant::now();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let vmlinuz = vmtest::kernel::vmlinuz(workspace_root, "bookworm")?.vmlinuz;
    let image = fs::read(&vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let payload =
        bzimage_payload(&image).with_context(|| format!("reading the bzImage header of {}", vmlinuz.display()))?;
    let vmlinux = lz4_legacy_decompress(payload).context("decompressing the kernel image")?;
    let btf = elf_btf_section(&vmlinux)?;

    let partial = dir.join(format!("{FIXTURE_NAME}.partial"));
    fs::write(&partial, btf).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &out).with_context(|| format!("renaming to {}", out.display()))?;
    eprintln!(
        "xtask: fixtures: wrote {} ({} bytes of BTF from a {} byte vmlinux) in {:.1?}",
        out.display(),
        btf.len(),
        vmlinux.len(),
        started.elapsed()
    );
    Ok(out)
}

/// Little-endian `u32` at `at`.
fn le32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The compressed kernel inside a bzImage (x86 boot protocol >= 2.08):
/// `payload_offset` and `payload_length` at 0x248/0x24c, counted from the end
/// of the real-mode setup code, `(setup_sects + 1) * 512` bytes in.
fn bzimage_payload(image: &[u8]) -> Result<&[u8]> {
    ensure!(image.get(0x202..0x206) == Some(b"HdrS"), "no HdrS boot header");
    let setup_sects = match image[0x1f1] {
        0 => 4, // the boot protocol's "0 means 4"
        n => usize::from(n),
    };
    let offset = le32(image, 0x248).context("no payload_offset")? as usize;
    let length = le32(image, 0x24c).context("no payload_length")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    image
        .get(start..start + length)
        .with_context(|| format!("payload {start}+{length} is past the image's {} bytes", image.len()))
}

/// Decompress the kernel's legacy LZ4 format: the magic, then blocks each
/// preceded by its compressed size (LE u32), each decompressing on its own to
/// at most 8 MiB. Like the kernel's `unlz4`, a repeated magic starts a new
/// stream; the size the kernel build appends at the end is checked, not
/// decompressed.
fn lz4_legacy_decompress(data: &[u8]) -> Result<Vec<u8>> {
    ensure!(le32(data, 0) == Some(LZ4_LEGACY_MAGIC), "the payload is not legacy LZ4 (magic {:#x?})", le32(data, 0));
    let mut out = Vec::with_capacity(data.len() * 4);
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut pos = 4;
    while let Some(size) = le32(data, pos) {
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let start = pos + 4;
        let Some(compressed) = data.get(start..start + size as usize) else {
            // Not a block that fits: the appended uncompressed size.
            ensure!(
                data.len() - pos == 4,
                "LZ4 block at {pos} of size {size} runs past the {} byte payload",
                data.len()
            );
            ensure!(
                size as usize == out.len(),
                "the kernel image says it holds {size} bytes, but {} decompressed",
                out.len()
            );
            break;
        };
        let n = lz4_flex::block::decompress_into(compressed, &mut block)
            .with_context(|| format!("LZ4 block at {pos} is corrupt"))?;
        out.extend_from_slice(&block[..n]);
        pos = start + size as usize;
    }
    ensure!(!out.is_empty(), "the LZ4 payload held no blocks");
    Ok(out)
}

/// The `.BTF` section of a vmlinux ELF image, checked to be little-endian BTF.
fn elf_btf_section(vmlinux: &[u8]) -> Result<&[u8]> {
    let elf = object::File::parse(vmlinux).context("the decompressed kernel is not ELF")?;
    let btf = elf
        .section_by_name(".BTF")
        .context("the kernel has no .BTF section")?
        .data()
        .context("reading the .BTF section")?;
    ensure!(btf.starts_with(&BTF_MAGIC), "the .BTF section lacks the BTF magic 0xeB9F");
    Ok(btf)
}
