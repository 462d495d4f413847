//! The stack each program needs, read from the eBPF object itself. Up to
//! 6.12 the verifier refuses a program whose call chain's frames add up to
//! more than 512 bytes, and the kernel reports that figure only when it
//! refuses (a loaded program's depth is in no `bpf_prog_info`). This
//! computes what the verifier does, from the instructions: each function's
//! frame is the deepest byte below `r10` it touches, rounded up to 32 as the
//! verifier rounds frames, and a program's depth is its frame plus its
//! deepest chain of bpf-to-bpf calls. `tokenwatch kernel-check` prints it
//! next to the verifier's own figures, so a program near the limit is seen
//! before a kernel refuses it.

use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex, SymbolKind};

/// `r10`, the read-only frame pointer.
const FP: u8 = 10;
/// The verifier's rounding of each frame in a call chain.
const FRAME_ROUNDING: u32 = 32;
/// How deep calls are followed (the kernel allows 8 frames).
const MAX_CALL_DEPTH: usize = 8;

/// Why the object could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the eBPF object's instructions: {0}")]
pub struct StackDepthError(#[from] object::Error);

/// A function of the object: where its instructions are.
#[derive(Clone, Copy)]
struct Function {
    section: SectionIndex,
    start: u64,
    size: u64,
}

/// The stack depth, in bytes, of every program (global function outside
/// `.text`) of `elf`, by name.
pub fn program_stack_depths(elf: &[u8]) -> Result<HashMap<String, u32>, StackDepthError> {
    let file = object::File::parse(elf)?;
    let mut functions = Vec::new();
    for symbol in file.symbols() {
        let (Some(section), SymbolKind::Text, Ok(name)) = (symbol.section_index(), symbol.kind(), symbol.name()) else {
            continue;
        };
        functions.push((name.to_owned(), Function { section, start: symbol.address(), size: symbol.size() }));
    }
    let text = file.section_by_name(".text").map(|s| s.index());
    let mut depths = HashMap::new();
    for (name, function) in &functions {
        if Some(function.section) == text {
            continue;
        }
        depths.insert(name.clone(), chain_depth(&file, &functions, *function, 0)?);
    }
    Ok(depths)
}

/// `function`'s rounded frame plus the deepest chain of its callees.
fn chain_depth(
    file: &object::File<'_>,
    functions: &[(String, Function)],
    function: Function,
    depth: usize,
) -> Result<u32, StackDepthError> {
    let section = file.section_by_index(function.section)?;
    let data = section.data()?;
    let start = usize::try_from(function.start).unwrap_or(usize::MAX);
    let end = usize::try_from(function.start + function.size).unwrap_or(usize::MAX).min(data.len());
    let code = data.get(start..end).unwrap_or_default();
    let own = frame(code).max(1).div_ceil(FRAME_ROUNDING) * FRAME_ROUNDING;
    if depth >= MAX_CALL_DEPTH {
        return Ok(own);
    }
    let mut deepest_callee = 0;
    for (offset, relocation) in section.relocations() {
        if offset < function.start || offset >= function.start + function.size {
            continue;
        }
        let Some(insn) = data.get(offset as usize..offset as usize + 8) else { continue };
        // A bpf-to-bpf call: `call` with src_reg BPF_PSEUDO_CALL.
        if insn[0] != 0x85 || insn[1] >> 4 != 1 {
            continue;
        }
        let RelocationTarget::Symbol(index) = relocation.target() else { continue };
        let symbol = file.symbol_by_index(index)?;
        let imm = i64::from(i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]));
        // A call to a named function carries imm -1; one to a section symbol
        // counts instructions past it.
        let target = symbol.address().wrapping_add_signed((imm + 1) * 8);
        let callee = functions.iter().map(|(_, f)| *f).find(|f| {
            Some(f.section) == symbol.section_index() && target >= f.start && target < f.start + f.size.max(1)
        });
        if let Some(callee) = callee {
            deepest_callee = deepest_callee.max(chain_depth(file, functions, callee, depth + 1)?);
        }
    }
    Ok(own + deepest_callee)
}

/// The deepest byte below `r10` that `code` reaches: loads and stores based
/// on `r10`, and pointers made from it (`rX = r10; rX += -N`, how a stack
/// buffer is handed to a helper).
fn frame(code: &[u8]) -> u32 {
    let mut deepest: i64 = 0;
    // Registers holding r10 plus an offset.
    let mut from_fp: [Option<i64>; 11] = [None; 11];
    let mut at = 0;
    while at + 8 <= code.len() {
        let insn = &code[at..at + 8];
        let (opcode, dst, src) = (insn[0], insn[1] & 0x0f, insn[1] >> 4);
        let off = i64::from(i16::from_le_bytes([insn[2], insn[3]]));
        let imm = i64::from(i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]));
        at += if opcode == 0x18 { 16 } else { 8 };
        match opcode & 0x07 {
            // LDX: base is src.
            0x01 if src == FP => deepest = deepest.min(off),
            // ST, STX: base is dst.
            0x02 | 0x03 if dst == FP => deepest = deepest.min(off),
            _ => {}
        }
        let dst_index = usize::from(dst).min(10);
        match opcode {
            // mov64 dst, src
            0xbf if src == FP => from_fp[dst_index] = Some(0),
            0xbf => from_fp[dst_index] = from_fp.get(usize::from(src)).copied().flatten(),
            // add64 dst, imm
            0x07 => {
                if let Some(base) = from_fp[dst_index] {
                    let offset = base + imm;
                    deepest = deepest.min(offset);
                    from_fp[dst_index] = Some(offset);
                }
            }
            // Any other write of a register (ALU, loads, calls clobber r0-r5).
            0x85 => from_fp[..6].fill(None),
            _ if matches!(opcode & 0x07, 0x04 | 0x07 | 0x00 | 0x01) => from_fp[dst_index] = None,
            _ => {}
        }
    }
    u32::try_from(-deepest).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes one instruction.
    fn insn(opcode: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0] = opcode;
        out[1] = (src << 4) | dst;
        out[2..4].copy_from_slice(&off.to_le_bytes());
        out[4..8].copy_from_slice(&imm.to_le_bytes());
        out
    }

    #[test]
    fn a_frame_is_the_deepest_store_load_or_pointer_below_r10() {
        let code: Vec<u8> = [
            insn(0x7b, FP, 1, -16, 0),  // *(u64 *)(r10 - 16) = r1
            insn(0x79, 2, FP, -40, 0),  // r2 = *(u64 *)(r10 - 40)
            insn(0xbf, 3, FP, 0, 0),    // r3 = r10
            insn(0x07, 3, 0, 0, -128),  // r3 += -128: a buffer for a helper
            insn(0xb7, 3, 0, 0, 0),     // r3 = 0: no longer a stack pointer
            insn(0x07, 3, 0, 0, -1000), // plain arithmetic, not the stack
            insn(0x95, 0, 0, 0, 0),     // exit
        ]
        .concat();
        assert_eq!(frame(&code), 128);
        assert_eq!(frame(&insn(0x95, 0, 0, 0, 0)), 0);
    }
}
