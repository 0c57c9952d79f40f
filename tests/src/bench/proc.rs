//! Child processes of the benchmark: every one is killed (SIGKILL) and reaped when its guard is
//! dropped — at the end, on an error, and while a panic unwinds — and a small shell watcher
//! kills it within a second if the benchmark itself dies without dropping the guard (Ctrl-C,
//! SIGTERM, SIGKILL). Every wait is bounded.

pub use crate::benchkit::{command, log_tail, tail, Finished};

use crate::benchkit;
use std::fs::File;
use std::io::{BufRead, BufReader, LineWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Lines kept for [`Proc::wait_line`]; later lines go only to the log file, so a chatty
/// process never grows the benchmark's memory.
const LINE_BUFFER: usize = 512;

/// A long-running child (a server, a tunnel). Its stdout and stderr lines go to a log file
/// and, for the first few hundred, to a channel that [`Proc::wait_line`] reads.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` (made with [`command`]) with its output logged to `log_dir/NAME.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self, String> {
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{name}: cannot start: {e}"))?;
        let (tx, lines) = mpsc::sync_channel(LINE_BUFFER);
        let writer = std::sync::Arc::new(std::sync::Mutex::new(LineWriter::new(file)));
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        for pipe in pipes {
            let tx = tx.clone();
            let writer = writer.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut w) = writer.lock() {
                        let _ = writeln!(w, "{line}");
                    }
                    let _ = tx.try_send(line);
                }
            });
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `timeout` for an output line for which `f` gives `Some`.
    pub fn wait_line<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    self.seen.push(line);
                    if let Some(v) = hit {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: expected output not seen within {timeout:?}; output so far:\n{}",
                        self.name,
                        self.seen.join("\n")
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.status_text();
                    return Err(format!(
                        "{}: ended ({status}) before the expected output; output:\n{}",
                        self.name,
                        self.seen.join("\n")
                    ));
                }
            }
        }
    }

    fn status_text(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(s)) => s.to_string(),
            Ok(None) => "still running".into(),
            Err(e) => e.to_string(),
        }
    }

    /// `Err` with the exit status when the process has ended.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(s)) => Err(format!(
                "{} exited ({s}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 15)
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion, killing it after `timeout` ([`benchkit::run_with`]).
pub fn run(
    what: &str,
    cmd: Command,
    timeout: Duration,
    pass_stderr: bool,
) -> Result<Finished, String> {
    benchkit::run_with(what, cmd, timeout, pass_stderr)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free TCP port on 127.0.0.1: {e}"))
}

/// One HTTP/1.1 GET with `Connection: close`: status and body (de-chunking is not needed for
/// the small bodies this is used for, which carry a Content-Length).
pub fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: devinprod-bench\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP response: {:?}", tail(&text, 3)))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET /` until it answers 200 with the bench app's body, at most `timeout`.
pub fn wait_serving(addr: SocketAddr, host: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no attempt");
    let mut tries = 0u32;
    while Instant::now() < deadline && tries < 1000 {
        tries += 1;
        match http_get(addr, host, "/", Duration::from_secs(2)) {
            Ok((200, body)) if body.contains("Hello, world!") => return Ok(()),
            Ok((status, body)) => last = format!("HTTP {status}: {}", tail(&body, 2)),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{addr} (Host {host}) did not serve the bench app within {timeout:?}: last answer {last}"
    ))
}

/// Polls until `addr` accepts TCP connections, at most `timeout`.
pub fn wait_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{addr} not listening after {timeout:?}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
