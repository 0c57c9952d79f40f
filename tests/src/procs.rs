//! Processes of the `devinprod` binary in tests: finding it, its children, and killing them the
//! way the kernel or an operator would (SIGKILL leaves no chance to say goodbye).

/// `target/<profile>/devinprod`, built by `cargo test --workspace` for the client's own tests.
pub fn devinprod_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("devinprod"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p client --bin devinprod` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// The pid of a child process of `parent` whose command line contains `word`.
pub fn child_of(parent: u32, word: &str) -> Option<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(word) {
                return Some(pid);
            }
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn kill(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill(self.0, "KILL");
    }
}
