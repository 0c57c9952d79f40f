//! What the tests of the `devinprod` binary share: running it, reading its output as it comes,
//! and a whole stack from `devinprod up`. Each test file uses a part of it.

#![allow(dead_code)] // each test binary compiles this module and uses only some of it

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(20);

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_devinprod"))
}

/// A running `devinprod` whose stdout lines arrive on a channel; killed when dropped.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn devinprod");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let stderr = self.stderr_now();
                    panic!(
                        "no line with {needle:?} in time; seen: {:#?}; stderr: {stderr}",
                        self.seen
                    )
                }
            }
        }
    }

    pub fn stderr_now(&mut self) -> String {
        let _ = self.child.kill();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its code and the rest of stdout.
    pub fn wait_exit(&mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let rest: Vec<String> = self.lines.try_iter().collect();
                // The reader thread may lag the exit by a moment.
                std::thread::sleep(Duration::from_millis(50));
                let rest = rest.into_iter().chain(self.lines.try_iter()).collect();
                return (status.code(), rest);
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `devinprod up` on ephemeral ports in `dir`; returns it with its edge, relay and admin addresses.
pub fn up(
    dir: &std::path::Path,
    production: Option<&str>,
) -> (Proc, SocketAddr, SocketAddr, String) {
    let mut cmd = bin();
    cmd.arg("up").arg("--dir").arg(dir).args([
        "--edge-listen",
        "127.0.0.1:0",
        "--relay-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    if let Some(p) = production {
        cmd.args(["--production", p]);
    }
    let mut p = Proc::spawn(&mut cmd);
    let edge = p
        .wait_line("  edge ")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let relay = p
        .wait_line("  relay ")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let admin = p
        .wait_line("  admin ")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    (p, edge, relay, admin)
}

pub fn token_create(admin: &str) -> String {
    let out = bin()
        .args(["token", "create", "--admin", admin, "--name", "cli-test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
