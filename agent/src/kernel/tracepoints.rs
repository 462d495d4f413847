//! Which tracepoint each program attaches to on this kernel, found by
//! probing tracefs rather than assumed: names and record layouts move
//! between the kernels the DaemonSet meets (io_uring's submission event is
//! `io_uring_submit_sqe` up to 6.3 and `io_uring_submit_req` after, and
//! 5.10's records put their fields elsewhere). A program whose tracepoint is
//! missing, or whose record does not have the fields where the program
//! reads them, is not loaded: reading a record at the wrong offsets would
//! report garbage, which is worse than a hook reported absent.

use std::path::{Path, PathBuf};

/// Where the kernel's trace events are listed, mounted or not.
pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// A tracepoint program of the object.
pub struct Spec {
    /// The tracepoint's category (`syscalls`, `io_uring`).
    pub category: &'static str,
    /// The tracepoint's names, newest first; the first this kernel has wins.
    pub names: &'static [&'static str],
    /// The program's name in the object.
    pub program: &'static str,
    /// Whether the agent refuses to run without it.
    pub core: bool,
    /// `(field, offset)` pairs the program reads from the record directly.
    pub layout: &'static [(&'static str, usize)],
}

/// io_uring's submission record as the program reads it (5.19+ and 6.1's
/// `io_uring_submit_sqe` alike).
const URING_SUBMIT: &[(&str, usize)] = &[("ctx", 8), ("req", 16), ("user_data", 24), ("opcode", 32)];
/// io_uring's completion record as the programs read it (6.0+). 5.10's has
/// no `req`: there opens through io_uring are reported absent.
const URING_COMPLETE: &[(&str, usize)] = &[("ctx", 8), ("req", 16), ("user_data", 24), ("res", 32)];

/// Every tracepoint program, exits first so no exit misses an entry made
/// after it (only connect and io_uring have entries: the opens are judged
/// at their exit alone). The core (`openat`'s exit and connect) is what the
/// agent will not run without; any other program this kernel lacks costs
/// its hook only (`open` is missing on arm64). `io_uring_complete` carries
/// two programs, each within the verifier's budget.
pub const TRACEPOINTS: &[Spec] = &[
    syscall(&["sys_exit_openat"], true),
    syscall(&["sys_exit_openat2"], false),
    syscall(&["sys_exit_open"], false),
    syscall(&["sys_exit_connect"], true),
    uring(&["io_uring_complete"], "io_uring_complete", URING_COMPLETE),
    uring(&["io_uring_complete"], "io_uring_complete_skipped", URING_COMPLETE),
    syscall(&["sys_exit_io_uring_enter"], false),
    syscall(&["sys_exit_open_by_handle_at"], false),
    syscall(&["sys_exit_pidfd_getfd"], false),
    syscall(&["sys_enter_connect"], true),
    uring(&["io_uring_submit_req", "io_uring_submit_sqe"], "io_uring_submit_req", URING_SUBMIT),
];

/// The program that matches `connect(2)` on entry, by the address in the
/// process's memory: attached only where the cgroup connect hooks, which
/// match every connect for less, are not (`loader::Hooks::attach`).
pub const CONNECT_FALLBACK: &str = "sys_enter_connect";

/// The program that remembers io_uring opens at submission.
const URING_SUBMIT_PROGRAM: &str = "io_uring_submit_req";
/// Programs that judge only what [`URING_SUBMIT_PROGRAM`] remembered: where it is
/// absent they would find nothing and only cost (`sched_switch_skipped`
/// runs at every context switch), so they are not loaded either.
const NEEDS_URING_SUBMIT: [&str; 4] =
    ["io_uring_complete", "io_uring_complete_skipped", "sys_exit_io_uring_enter", "sched_switch_skipped"];

/// Why `program` has nothing to do on this kernel although its own hook
/// exists: the hook it depends on is absent.
pub fn orphaned(program: &str) -> Option<String> {
    let submit = TRACEPOINTS.iter().find(|spec| spec.program == URING_SUBMIT_PROGRAM)?;
    orphaned_given(program, find(submit))
}

/// [`orphaned`], given what probing the submission hook found.
fn orphaned_given(program: &str, submit: Result<&str, String>) -> Option<String> {
    if !NEEDS_URING_SUBMIT.contains(&program) {
        return None;
    }
    submit.err().map(|why| {
        format!("it judges the io_uring opens {URING_SUBMIT_PROGRAM} remembers, and that hook is absent: {why}")
    })
}

/// A syscall tracepoint; the program is named as the tracepoint.
const fn syscall(names: &'static [&'static str], core: bool) -> Spec {
    Spec { category: "syscalls", names, program: names[0], core, layout: &[] }
}

/// An io_uring tracepoint.
const fn uring(
    names: &'static [&'static str],
    program: &'static str,
    layout: &'static [(&'static str, usize)],
) -> Spec {
    Spec { category: "io_uring", names, program, core: false, layout }
}

/// The tracepoint `spec` attaches to here, or why there is none.
pub fn find(spec: &Spec) -> Result<&'static str, String> {
    let Some(name) = spec.names.iter().copied().find(|name| event_dir(spec.category, name).is_some()) else {
        return Err(format!("no tracepoint {}:{} on this kernel", spec.category, spec.names.join("|")));
    };
    if spec.layout.is_empty() {
        return Ok(name);
    }
    let format = event_dir(spec.category, name)
        .and_then(|dir| std::fs::read_to_string(dir.join("format")).ok())
        .unwrap_or_default();
    match layout_mismatch(&format, spec.layout) {
        None => Ok(name),
        Some(field) => Err(format!(
            "tracepoint {}:{name} records `{field}` elsewhere than the program reads it, or not at all",
            spec.category
        )),
    }
}

/// The first `(field, offset)` of `layout` that `format` (a tracefs
/// `format` file) does not have at that offset.
fn layout_mismatch(format: &str, layout: &'static [(&'static str, usize)]) -> Option<&'static str> {
    layout.iter().find(|(field, offset)| !has_field(format, field, *offset)).map(|(field, _)| *field)
}

/// Whether `format` declares `field` at `offset`: a line like
/// `field:void * req;` then a tab and `offset:16;` (tabs between the parts).
fn has_field(format: &str, field: &str, offset: usize) -> bool {
    format.lines().any(|line| {
        let Some((declaration, rest)) = line.trim().strip_prefix("field:").and_then(|l| l.split_once(';')) else {
            return false;
        };
        let name = declaration.rsplit([' ', '*']).next().unwrap_or_default();
        let at = rest.trim().strip_prefix("offset:").and_then(|r| r.split(';').next()).and_then(|o| o.parse().ok());
        name == field && at == Some(offset)
    })
}

/// The event's directory under the first tracefs that has it.
fn event_dir(category: &str, name: &str) -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .iter()
        .map(|root| Path::new(root).join("events").join(category).join(name))
        .find(|p| p.exists())
}

/// Whether a tracefs with events is mounted.
pub fn tracefs_mounted() -> bool {
    [TRACEFS, DEBUGFS_TRACING].iter().any(|root| Path::new(root).join("events").exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5.10's `io_uring_complete`: no `req`, `res` at 24.
    const COMPLETE_5_10: &str = "name: io_uring_complete\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:void * ctx;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:u64 user_data;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:int res;\toffset:24;\tsize:4;\tsigned:1;\n";
    /// 6.1's `io_uring_submit_sqe`: the layout of 6.4+'s `io_uring_submit_req`.
    const SUBMIT_6_1: &str = "name: io_uring_submit_sqe\nformat:\n\
        \tfield:void * ctx;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:unsigned long long user_data;\toffset:24;\tsize:8;\tsigned:0;\n\
        \tfield:u8 opcode;\toffset:32;\tsize:1;\tsigned:0;\n\
        \tfield:__data_loc char[] op_str;\toffset:44;\tsize:4;\tsigned:1;\n";

    #[test]
    fn a_record_is_used_only_where_its_fields_sit_where_the_program_reads() {
        assert_eq!(layout_mismatch(SUBMIT_6_1, URING_SUBMIT), None);
        assert_eq!(layout_mismatch(COMPLETE_5_10, URING_COMPLETE), Some("req"));
        assert!(has_field(SUBMIT_6_1, "op_str", 44));
        assert!(!has_field(SUBMIT_6_1, "opcode", 24));
    }

    #[test]
    fn io_uring_judges_go_with_the_submission_hook() {
        let absent = || Err("no record".to_owned());
        for program in NEEDS_URING_SUBMIT {
            assert!(orphaned_given(program, absent()).is_some_and(|why| why.contains("no record")), "{program}");
            assert_eq!(orphaned_given(program, Ok("io_uring_submit_sqe")), None, "{program}");
        }
        assert_eq!(orphaned_given("sys_exit_openat", absent()), None, "the syscalls do not depend on it");
    }
}
