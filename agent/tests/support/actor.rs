//! The actor: a process in its own mount namespace and cgroups, with a
//! ServiceAccount token laid out as kubelet lays it out, that opens files and
//! dials addresses when told, and says whether each action succeeded.
//!
//! It is this test binary re-executed with `TOKENWATCH_TEST_ACTOR` set: a
//! constructor runs the actor before libtest's `main`, while the process is
//! still single-threaded (which `unshare(CLONE_NEWNS)` requires).

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use nix::{
    mount::{mount, MsFlags},
    sched::{unshare, CloneFlags},
};

/// Environment variable that turns the test binary into an actor; its value
/// lists the `cgroup.procs` files to join, separated by ':'.
const ACTOR_ENV: &str = "TOKENWATCH_TEST_ACTOR";
/// The kubelet atomic-writer directory holding the real files.
pub const TIMESTAMP_DIR: &str = "..2026_11_29_07_19_34.123456789";
/// The token's directory as a pod sees it.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A projected `serviceAccountToken` volume at a mountPath of the pod's own.
pub const PROJECTED_TOKEN: &str = "/var/run/secrets/tokens/vault-token";
/// A symlink to the token from elsewhere.
pub const STOLEN_LINK: &str = "/tmp/stolen-token";
/// What the fake token holds (not a credential).
pub const FAKE_TOKEN: &str = "eyJhbGciOiJub25lIn0.not-a-real-token.test";

#[ctor::ctor(unsafe)]
fn actor_entry() {
    let Ok(procs) = std::env::var(ACTOR_ENV) else { return };
    let mut out = std::io::stdout();
    let code = match actor_main(&procs, &mut out) {
        Ok(()) => 0,
        Err(error) => {
            let _ = writeln!(out, "fail {error}");
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code);
}

fn actor_main(procs: &str, out: &mut impl Write) -> Result<(), String> {
    let pid = std::process::id();
    for file in procs.split(':').filter(|f| !f.is_empty()) {
        fs::write(file, pid.to_string()).map_err(|e| format!("joining {file}: {e}"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("making / private: {e}"))?;
    let run_dir = fs::canonicalize("/var/run").map_err(|e| format!("resolving /var/run: {e}"))?;
    tmpfs(&run_dir)?;
    let sa = run_dir.join("secrets/kubernetes.io/serviceaccount");
    fs::create_dir_all(&sa).map_err(|e| format!("mkdir {}: {e}", sa.display()))?;
    tmpfs(&sa)?;
    let data = sa.join(TIMESTAMP_DIR);
    fs::create_dir(&data).map_err(|e| format!("mkdir: {e}"))?;
    for (name, content) in
        [("token", FAKE_TOKEN), ("ca.crt", "-----BEGIN CERTIFICATE-----\n"), ("namespace", "default")]
    {
        // Written under another name and renamed: an open of a file named
        // `token` on this layout is one the kernel reports (a write-only
        // one is no alert, but it wakes the agent's scanner), and a case
        // about the first read wants no scan before it.
        let staged = data.join(format!(".{name}.staged"));
        fs::write(&staged, content).map_err(|e| format!("write {name}: {e}"))?;
        fs::rename(&staged, data.join(name)).map_err(|e| format!("rename {name}: {e}"))?;
        symlink(format!("..data/{name}"), sa.join(name)).map_err(|e| format!("symlink {name}: {e}"))?;
    }
    symlink(TIMESTAMP_DIR, sa.join("..data")).map_err(|e| format!("symlink ..data: {e}"))?;
    let projected = run_dir.join("secrets/tokens");
    fs::create_dir_all(&projected).map_err(|e| format!("mkdir {}: {e}", projected.display()))?;
    fs::write(projected.join("vault-token"), FAKE_TOKEN).map_err(|e| format!("write vault-token: {e}"))?;
    tmpfs(Path::new("/tmp"))?;
    symlink(format!("{SA_DIR}/token"), STOLEN_LINK).map_err(|e| format!("symlink {STOLEN_LINK}: {e}"))?;

    writeln!(out, "ready {pid} {}", run_dir.display()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let reply = match perform(&line) {
            Ok(detail) => format!("ok {detail}"),
            Err(error) => format!("err {error}"),
        };
        writeln!(out, "{reply}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        if line == "exit" {
            break;
        }
    }
    Ok(())
}

fn tmpfs(at: &Path) -> Result<(), String> {
    mount(Some("tmpfs"), at, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .map_err(|e| format!("mounting tmpfs at {}: {e}", at.display()))
}

/// One action; the reply detail is the number of bytes read.
fn perform(line: &str) -> Result<String, String> {
    if let Some(args) = line.strip_prefix("run ") {
        return run_child(args);
    }
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("open"), Some(path), None) => read(path),
        (Some("open-in"), Some(dir), Some(relative)) => {
            std::env::set_current_dir(dir).map_err(|e| format!("chdir {dir}: {e}"))?;
            read(relative)
        }
        (Some("openat2"), Some(path), None) => openat2(path),
        (Some("open-many"), Some(path), Some(count)) => {
            let count: usize = count.parse().map_err(|e| format!("{count}: {e}"))?;
            (0..count).try_for_each(|_| read(path).map(drop))?;
            Ok(count.to_string())
        }
        (Some("open-twice"), Some(path), Some(micros)) => {
            // Two reads `micros` apart: the second within the kernel's
            // quiet time after the first (RING_QUIET_NS).
            let micros: u64 = micros.parse().map_err(|e| format!("{micros}: {e}"))?;
            read(path)?;
            std::thread::sleep(std::time::Duration::from_micros(micros));
            read(path)
        }
        (Some("spawn-cat"), Some(path), None) => {
            // A child that reads the token and exits at once; the detail is
            // its pid.
            let mut child = std::process::Command::new("cat")
                .arg(path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("cat {path}: {e}"))?;
            let status = child.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("cat {path}: {status}"));
            }
            Ok(child.id().to_string())
        }
        (Some("connect"), Some(addr), None) => {
            let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
            TcpStream::connect(addr).map(|_| "connected".to_owned()).map_err(|e| e.to_string())
        }
        (Some("connect-nonblocking"), Some(addr), None) => connect_nonblocking(addr),
        (Some("rotate"), None, None) => rotate(),
        (Some("exit"), None, None) => Ok("bye".to_owned()),
        _ => Err(format!("unknown command `{line}`")),
    }
}

/// How long a `run` child may take before the actor kills it (before
/// [`super::scaled`]): a helper stuck in a syscall must fail its test, not
/// hang the run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `run <args...>`: this test binary run again with `args` (a helper the
/// test target defines, e.g. the evasion tests' `__evade <action> <arg>`),
/// as a child of the actor, so in its cgroups and mount namespace. The
/// detail is `<pid> <exit code, signal=N or timeout> <stdout>`, the
/// output's backslashes and line ends escaped so the reply stays one line.
fn run_child(args: &str) -> Result<String, String> {
    use std::{io::Read, os::unix::process::ExitStatusExt};
    let exe = std::env::current_exe().map_err(|e| format!("the test binary's path: {e}"))?;
    let mut child = Command::new(exe)
        .args(args.split_whitespace())
        .env_remove(ACTOR_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("run {args}: {e}"))?;
    let pid = child.id();
    // The helpers print a line or two: the pipe cannot fill before they exit.
    let exited = super::wait_for(super::scaled(RUN_TIMEOUT), || child.try_wait().ok().flatten());
    let status = match exited {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("signal={signal}"),
            (None, None) => "unknown".to_owned(),
        },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            "timeout".to_owned()
        }
    };
    let mut stdout = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut stdout).map_err(|e| format!("run {args}: reading its output: {e}"))?;
    }
    let stdout = String::from_utf8_lossy(&stdout).replace('\\', "\\\\").replace('\n', "\\n");
    Ok(format!("{pid} {status} {stdout}"))
}

/// A non-blocking IPv4 connect; the detail is connect(2)'s raw result
/// (`0` or `-errno`), which the alert must report as it is.
fn connect_nonblocking(addr: &str) -> Result<String, String> {
    let addr: std::net::SocketAddrV4 = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    // SAFETY: plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: sockaddr_in is plain integers.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = addr.port().to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
    // SAFETY: valid sockaddr of the given length.
    let result = unsafe {
        libc::connect(fd, (&sin as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32)
    };
    let result = if result == 0 { 0 } else { -std::io::Error::last_os_error().raw_os_error().unwrap_or(0) };
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    Ok(result.to_string())
}

/// What kubelet's atomic writer does when it refreshes the token: a new
/// timestamped directory with new files (new inodes), then `..data`
/// swapped to it by rename. The detail is the new directory's name.
fn rotate() -> Result<String, String> {
    let sa = fs::canonicalize(SA_DIR).map_err(|e| format!("{SA_DIR}: {e}"))?;
    let fresh = "..2026_11_29_09_19_34.987654321";
    let dir = sa.join(fresh);
    fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    for (name, content) in [("token", "eyJ.rotated.test"), ("ca.crt", "-----BEGIN"), ("namespace", "default")] {
        fs::write(dir.join(name), content).map_err(|e| format!("write {name}: {e}"))?;
    }
    symlink(fresh, sa.join("..data_tmp")).map_err(|e| format!("symlink: {e}"))?;
    fs::rename(sa.join("..data_tmp"), sa.join("..data")).map_err(|e| format!("swap ..data: {e}"))?;
    fs::remove_dir_all(sa.join(TIMESTAMP_DIR)).map_err(|e| format!("remove the old directory: {e}"))?;
    Ok(fresh.to_owned())
}

fn read(path: &str) -> Result<String, String> {
    fs::read(path).map(|bytes| bytes.len().to_string()).map_err(|e| format!("{path}: {e}"))
}

fn openat2(path: &str) -> Result<String, String> {
    let c_path = std::ffi::CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: open_how is plain integers.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    // SAFETY: valid pointers for the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, c_path.as_ptr(), &how, std::mem::size_of::<libc::open_how>())
    };
    if fd < 0 {
        return Err(format!("openat2 {path}: {}", std::io::Error::last_os_error()));
    }
    let fd = i32::try_from(fd).map_err(|e| e.to_string())?;
    // SAFETY: fresh fd we own.
    let mut file = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes.len().to_string())
}

/// Undoes [`run_child`]'s escaping of a child's output.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// What a child the actor ran did.
#[derive(Debug)]
pub struct Ran {
    /// Its pid.
    pub pid: u32,
    /// Its exit code, `signal=N` when a signal ended it, or `timeout` when
    /// the actor had to kill it.
    pub status: String,
    /// What it printed.
    pub stdout: String,
}

/// The test's handle on an actor process.
pub struct Actor {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The actor's pid.
    pub pid: u32,
    /// Where `/var/run` leads inside the actor (usually `/run`).
    pub run_dir: PathBuf,
}

impl Actor {
    /// Starts an actor inside `cgroup_procs` (see `TestCgroup::procs_files`)
    /// and waits until its token layout is ready.
    pub fn spawn(cgroup_procs: &str) -> Actor {
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .env(ACTOR_ENV, cgroup_procs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn actor");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("actor's first line");
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["ready", pid, run_dir] = words[..] else {
            let _ = child.kill();
            panic!("actor failed to start: {line}");
        };
        Actor { pid: pid.parse().expect("pid"), run_dir: PathBuf::from(run_dir), child, stdin, stdout }
    }

    /// Performs one action; `Ok(detail)` when it succeeded.
    pub fn act(&mut self, command: &str) -> Result<String, String> {
        self.send(command);
        self.reply(command)
    }

    /// Starts one action without waiting for it (a `run` whose child waits
    /// for the test); [`Self::reply`] then waits for its outcome.
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("actor stdin");
        self.stdin.flush().expect("actor stdin");
    }

    /// The outcome of the action [`Self::send`] started.
    pub fn reply(&mut self, command: &str) -> Result<String, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("actor reply");
        let line = line.trim_end();
        match line.split_once(' ') {
            Some(("ok", detail)) => Ok(detail.to_owned()),
            Some(("err", error)) => Err(error.to_owned()),
            _ => panic!("actor said `{line}` to `{command}`"),
        }
    }

    /// Performs an action that must succeed.
    pub fn must(&mut self, command: &str) {
        if let Err(error) = self.act(command) {
            panic!("actor could not `{command}`: {error}");
        }
    }

    /// Runs this test binary with `args` as the actor's child (see the
    /// `run` command), in the actor's cgroups and mount namespace.
    pub fn run(&mut self, args: &[&str]) -> Ran {
        self.send(&format!("run {}", args.join(" ")));
        self.ran(args)
    }

    /// The outcome of a `run` [`Self::send`] started.
    pub fn ran(&mut self, args: &[&str]) -> Ran {
        let detail = self.reply(&format!("run {}", args.join(" "))).unwrap_or_else(|e| panic!("run {args:?}: {e}"));
        let mut parts = detail.splitn(3, ' ');
        let pid = parts.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("run {args:?}: `{detail}`"));
        let status = parts.next().unwrap_or_default().to_owned();
        Ran { pid, status, stdout: unescape(parts.next().unwrap_or_default()) }
    }

    /// The token's resolved path as the kernel rebuilds it in the actor.
    pub fn resolved_token_path(&self) -> String {
        format!("{}/secrets/kubernetes.io/serviceaccount/{TIMESTAMP_DIR}/token", self.run_dir.display())
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        if super::wait_for(super::scaled(Duration::from_secs(5)), || self.child.try_wait().ok().flatten()).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
