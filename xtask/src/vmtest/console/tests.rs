//! The console reader against logs shaped as the VMs print them.

use super::*;

/// A console as /init prints it, with a test whose result came after
/// other output, and a failure section.
const LOG: &str = "[    0.000000] Linux version 5.10.0\r
VMTEST-KERNEL 5.10.0-46-cloud-amd64\r
VMTEST-CHECK-BEGIN\r
{\"program\":\"sys_exit_openat\",\"hook\":\"openat\",\"state\":\"loaded\",\"verified_insns\":623000,\"stack_depth\":288,\"error\":null}\r
\u{1b}[2m2026-12-04T10:00:00Z\u{1b}[0m \u{1b}[33m INFO\u{1b}[0m some log line\r
{\"program\":\"connect4\",\"hook\":\"connect\",\"state\":\"refused\",\"verified_insns\":null,\"stack_depth\":null,\"error\":\"R1 invalid mem access\"}\r
VMTEST-CHECK-END rc=1\r
VMTEST-TESTS-BEGIN\r

running 4 tests\r
test opens::token_read ... agent starting\r
ok\r
test connect::api_server ... [  148.888323] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [tokenwatch:120]\r
FAILED\r
test iouring::openat ... ignored, needs 5.6\r
test exec::hang ... \r

failures:\r

---- connect::api_server stdout ----\r
thread 'connect::api_server' panicked at agent/tests/kernel_matrix/connect.rs:10:5:\r
no alert\r

failures:\r
    connect::api_server\r

test result: FAILED. 2 passed; 1 failed; 1 ignored\r
";

#[test]
fn reads_check_rows_cases_and_failures() {
    let console = parse(LOG);
    assert_eq!(console.release.as_deref(), Some("5.10.0-46-cloud-amd64"));
    assert_eq!(console.check_rc, Some(1));
    assert_eq!(console.programs.len(), 2);
    assert_eq!(console.programs[0].verified_insns, Some(623_000));
    assert_eq!(console.programs[1].state, "refused");
    assert_eq!(console.programs[1].error.as_deref(), Some("R1 invalid mem access"));
    assert_eq!(console.check_output, ["2026-12-04T10:00:00Z  INFO some log line"]);
    assert!(console.tests_started);
    assert_eq!(console.tests_rc, None);
    let cases: Vec<(&str, Outcome)> = console.cases.iter().map(|(name, o)| (name.as_str(), *o)).collect();
    assert_eq!(
        cases,
        [
            ("opens::token_read", Outcome::Ok),
            ("connect::api_server", Outcome::Failed),
            ("iouring::openat", Outcome::Ignored),
            ("exec::hang", Outcome::Unfinished),
        ]
    );
    assert_eq!(console.failures.len(), 1);
    assert_eq!(console.failures[0].0, "connect::api_server");
    assert!(console.failures[0].1.ends_with("no alert"));
    assert!(!console.done);
    assert_eq!(console.kernel_trouble, ["watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [tokenwatch:120]"]);
}

#[test]
fn a_killed_check_and_a_clean_run() {
    let console = parse("VMTEST-CHECK-BEGIN\nVMTEST-CHECK-KILLED\nVMTEST-CHECK-END rc=137\n");
    assert!(console.check_killed && console.check_rc == Some(137) && console.programs.is_empty());
    let clean = parse("VMTEST-TESTS-BEGIN\ntest a ... \nagent log\nVMTEST-TESTS-END rc=0\nVMTEST-DONE\n");
    assert_eq!(clean.cases, [("a".to_owned(), Outcome::Ok)]);
    assert!(clean.done && !clean.check_killed);
}
