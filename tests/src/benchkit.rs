//! Shared pieces of the benchmark binaries (`db-bench`, `scale-bench`, `select1-bench`): the
//! release `devinprod` binary, child processes that are killed when their guard is dropped (and
//! by a watcher when this process dies without dropping them), bounded waits, free ports,
//! percentiles, resident memory and markdown.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Exit status of a benchmark binary when something it needs is missing (not a result).
pub const EXIT_SETUP: u8 = 2;
/// Exit status of a benchmark binary when a scenario failed.
pub const EXIT_FAILED: u8 = 1;

/// `--smoke`: seconds instead of minutes.
pub fn smoke_flag() -> bool {
    std::env::args().skip(1).any(|a| a == "--smoke")
}

/// A temporary directory for one run (`PREFIX…` under the system's temp dir), removed when
/// dropped unless `--keep` was given: then its path (logs, state) is printed on stderr.
pub struct RunDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl RunDir {
    pub fn new(prefix: &str) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let path = dir.path().to_owned();
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::args().skip(1).any(|a| a == "--keep") {
            if let Some(d) = self.dir.take() {
                eprintln!("kept {}", d.keep().display());
            }
        }
    }
}

/// The value after `--name` on the command line, if any.
pub fn flag_value(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_owned());
        }
    }
    None
}

/// The workspace's `target/release/devinprod` (or `--devinprod PATH`, or `$DEVINPROD_BIN`);
/// when it is missing, a message saying how to build it (exit with [`EXIT_SETUP`]).
pub fn devinprod_binary() -> Result<PathBuf, String> {
    let explicit = flag_value("--devinprod").or_else(|| std::env::var("DEVINPROD_BIN").ok());
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![PathBuf::from(p)],
        None => {
            let mut v = Vec::new();
            // Next to this benchmark binary (target/release/db-bench → target/release/devinprod).
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_owned))
            {
                v.push(dir.join("devinprod"));
            }
            v.push(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/release/devinprod")
                    .components()
                    .collect(),
            );
            v
        }
    };
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    Err(format!(
        "devinprod binary not found (looked at {}).\nBuild it first, from the workspace root:\n  \
         cargo build --release -p client --bin devinprod\n(or pass --devinprod PATH / set DEVINPROD_BIN)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Whether `program` can be found on `$PATH` (or is an existing path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// A command for `program` wrapped so that the program is SIGKILLed if this process dies
/// without cleaning up (e.g. killed with SIGKILL by whoever runs the benchmark). The program
/// keeps the child's pid (the wrapper shell `exec`s it), so `/proc/<pid>` is the program's own.
/// Add arguments, environment and stdio to the returned command as usual.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    // A zombie counts as gone: a killed benchmark may not be reaped at once.
    const SCRIPT: &str = r#"p=$BENCHKIT_PARENT; t=$$
alive() { kill -0 "$1" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"; }
( while alive "$p" && alive "$t"; do sleep 1; done
  alive "$p" || kill -9 "$t" 2>/dev/null ) </dev/null >/dev/null 2>&1 &
exec "$0" "$@""#;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(SCRIPT)
        .arg(program)
        .env("BENCHKIT_PARENT", std::process::id().to_string())
        .stdin(Stdio::null());
    c
}

/// A running child process, killed (SIGKILL) and reaped when dropped — also while a panic
/// unwinds. Its stdout lines (when piped) arrive on a channel; stderr goes where the command
/// said (usually a log file).
pub struct ChildGuard {
    pub name: String,
    child: Option<std::process::Child>,
    lines: Option<mpsc::Receiver<String>>,
    /// Every stdout line seen so far, for error messages.
    pub seen: Vec<String>,
}

impl ChildGuard {
    /// Spawns `cmd`, piping its stdout into the line channel.
    pub fn spawn(name: &str, mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            lines: Some(rx),
            seen: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits (at most `timeout`) for a stdout line for which `f` gives `Some`.
    pub fn wait_line<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let rx = self.lines.as_ref().expect("stdout not piped");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    self.seen.push(line);
                    if let Some(v) = hit {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: expected output not seen within {timeout:?}; stdout so far: {:?}",
                        self.name, self.seen
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.try_status();
                    return Err(format!(
                        "{}: exited ({status}) before the expected output; stdout: {:?}",
                        self.name, self.seen
                    ));
                }
            }
        }
    }

    fn try_status(&mut self) -> String {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(s))) => s.to_string(),
            Some(Ok(None)) => "still running".into(),
            Some(Err(e)) => e.to_string(),
            None => "already reaped".into(),
        }
    }

    /// `None` while running.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (e.g. "TERM") by pid with the `kill` command.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self.pid().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(format!("{}: kill -{signal} {pid} failed", self.name))
        }
    }

    /// Waits at most `timeout` for the process to end by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(format!("{} did not exit within {timeout:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of a command run to completion by [`run`].
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// "exit status …" and the last lines of stderr (or stdout), for error messages.
    pub fn describe(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        format!("{}: {}", self.status, tail(text, 15))
    }
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub fn run(what: &str, cmd: Command, timeout: Duration) -> Result<Finished, String> {
    run_with(what, cmd, timeout, false)
}

/// [`run`], with stderr passed to this process's stderr (for progress output) instead of
/// captured when `pass_stderr`.
pub fn run_with(
    what: &str,
    mut cmd: Command,
    timeout: Duration,
    pass_stderr: bool,
) -> Result<Finished, String> {
    cmd.stdout(Stdio::piped());
    cmd.stderr(if pass_stderr {
        Stdio::inherit()
    } else {
        Stdio::piped()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            let _ = tx.send(String::from_utf8_lossy(&s).into_owned());
        });
        rx
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what}: did not finish within {timeout:?} (killed)"
                ));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: {e}"));
            }
        }
    };
    let collect =
        |rx: mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    Ok(Finished {
        status,
        stdout: collect(out),
        stderr: collect(err),
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    std::fs::read_to_string(path)
        .map(|t| tail(&t, n))
        .unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Waits (at most `timeout`) until something accepts TCP connections at `addr`.
pub fn wait_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status` (e.g. `"VmHWM:"`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The process name of `pid` (`/proc/<pid>/comm`).
pub fn proc_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The value at quantile `p` (0..=1) of sorted `samples` (nearest rank, as `select1-bench`
/// always computed it).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The median of `values` (mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", headers.join(" | "));
    s.push_str(&format!(
        "|{}\n",
        headers
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { " --- |" } else { " ---: |" })
            .collect::<String>()
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// Number of CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A short description of the machine: CPU model and count, memory.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{} × {model}, {mem_gib:.0} GiB RAM", cpus())
}

/// Resolves on Ctrl-C or SIGTERM, so `main` can return (and drop its guards) instead of dying
/// with its children still running.
pub async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Round-trip latency of sequential statements, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub n: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// Connection options for a MySQL server at `HOST:PORT` (TCP, never a socket).
pub fn mysql_opts(addr: &str, user: &str, password: &str) -> Result<mysql_async::Opts, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} must be HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("{addr:?}: bad port"))?;
    Ok(mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.trim_start_matches('[').trim_end_matches(']'))
        .tcp_port(port)
        .user(Some(user))
        .pass((!password.is_empty()).then(|| password.to_owned()))
        .prefer_socket(false)
        .into())
}

/// `warmup` unmeasured, then `n` measured sequential `SELECT 1` round trips on `conn` with a
/// real driver (mysql_async, text protocol).
pub async fn select1_latency(
    conn: &mut mysql_async::Conn,
    n: usize,
    warmup: usize,
) -> Result<Latency, mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    for _ in 0..warmup {
        conn.query_drop("SELECT 1").await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _: Option<i64> = conn.query_first("SELECT 1").await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(Latency {
        n,
        p50_us: percentile(&samples, 0.50),
        p99_us: percentile(&samples, 0.99),
        mean_us: samples.iter().sum::<f64>() / samples.len().max(1) as f64,
    })
}
