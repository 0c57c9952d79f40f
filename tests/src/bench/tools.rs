//! What the benchmark needs before it starts: the release build, the tools (`wrk`, `curl`,
//! `rathole`), and a description of the machine for the report's header.

use super::proc::{self, command};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// rathole's version the benchmark installs when none is on PATH.
pub const RATHOLE_VERSION: &str = "0.5.0";

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// `$CARGO_TARGET_DIR`, or `target/` under the workspace root.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root.join(d)
            }
        }
        _ => root.join("target"),
    }
}

fn cargo_build(root: &Path, args: &[&str]) -> Result<bool, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = command(cargo);
    cmd.current_dir(root)
        .args(["build", "--release"])
        .args(args);
    // `cargo run` describes the benchmark's own package to it in these variables; passed on,
    // they reach build scripts that watch them (ring's reruns when `CARGO_MANIFEST_DIR`
    // changes), and everything above ring would be built again here, then once more by the
    // next `cargo build` from a shell. The build should see the environment a shell gives it.
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str() {
            if is_set_by_cargo_run(name) {
                cmd.env_remove(name);
            }
        }
    }
    eprintln!("== cargo build --release {}", args.join(" "));
    let done = proc::run("cargo build", cmd, Duration::from_secs(3600), true)?;
    Ok(done.status.success())
}

/// The variables `cargo run` sets for the program it runs (the Cargo book, "Environment
/// variables Cargo sets for crates"), as opposed to the user's own `CARGO_*` settings
/// (`CARGO_TARGET_DIR`, `CARGO_HOME`, `CARGO_PROFILE_*`…), which the build must keep.
fn is_set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
        )
}

/// How the release build went.
pub enum Build {
    /// Everything built.
    All,
    /// `devinprod` and `bench-app` built, but not every binary of `tests` (`db-bench` or
    /// `scale-bench` failed to compile): their scenarios are failures of this run.
    Partial,
}

/// `cargo build --release -p client --bin devinprod -p tests --bins`, output on stderr. When
/// that fails, what this process's own scenarios need is built alone, so that one broken
/// binary does not hide the other results (the run still fails).
pub fn build(root: &Path) -> Result<Build, String> {
    if cargo_build(
        root,
        &[
            "-p",
            "client",
            "--bin",
            "devinprod",
            "-p",
            "tests",
            "--bins",
        ],
    )? {
        return Ok(Build::All);
    }
    eprintln!("== the full release build failed; building devinprod and bench-app alone");
    if cargo_build(
        root,
        &[
            "-p",
            "client",
            "--bin",
            "devinprod",
            "-p",
            "tests",
            "--bin",
            "bench-app",
        ],
    )? {
        Ok(Build::Partial)
    } else {
        Err(
            "the release build of devinprod and bench-app failed (see the compiler's output above)"
                .into(),
        )
    }
}

/// `program` on PATH, as a full path.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A required Debian tool, or an error that names it and how to install it.
pub fn require(program: &str, package: &str) -> Result<PathBuf, String> {
    which(program).ok_or_else(|| {
        format!("`{program}` is missing: install it (Debian: apt-get install -y {package})")
    })
}

/// rathole from PATH, else from `target/bench-tools/bin`, else installed there with
/// `cargo install` (a few minutes on 2 cores; done once per target directory).
///
/// Not `--locked`: rathole 0.5.0's own lock file pins `time` 0.3.29, which no longer compiles
/// with current Rust (E0282 in `format_description`); the version of rathole itself is pinned.
pub fn rathole(target: &Path) -> Result<PathBuf, String> {
    if let Some(p) = which("rathole") {
        return Ok(p);
    }
    let root = target.join("bench-tools");
    let bin = root.join("bin").join("rathole");
    if is_executable(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "== rathole is not on PATH: cargo install rathole --version {RATHOLE_VERSION} --root {} (takes minutes, once)",
        root.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = command(cargo);
    cmd.args(["install", "rathole", "--version", RATHOLE_VERSION, "--root"])
        .arg(&root);
    let done = proc::run(
        "cargo install rathole",
        cmd,
        Duration::from_secs(2400),
        true,
    )?;
    if done.status.success() && is_executable(&bin) {
        Ok(bin)
    } else {
        Err(format!(
            "`rathole` is missing and `cargo install rathole` failed ({}); install it and put it on PATH",
            done.status
        ))
    }
}

/// A tool's name and version, e.g. `wrk debian/4.1.0-3+b2`, `curl 7.88.1`, `rathole 0.5.0`.
pub fn version(program: &Path, flag: &str) -> String {
    let mut cmd = command(program);
    cmd.arg(flag);
    let text = match proc::run("version", cmd, Duration::from_secs(10), false) {
        Ok(done) if done.stdout.trim().is_empty() => done.stderr,
        Ok(done) => done.stdout,
        Err(e) => return e,
    };
    short_version(&text)
}

fn short_version(text: &str) -> String {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown version");
    let words: Vec<&str> = first.split_whitespace().take(2).collect();
    if words.len() == 1 {
        // rathole prints its version on a later line.
        if let Some(v) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build Version:"))
        {
            return format!("{} {}", words[0], v.trim());
        }
    }
    words.join(" ")
}

/// The machine, for the report's header.
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub date: String,
    pub load: String,
    pub commit: String,
}

impl Machine {
    pub fn probe(root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
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
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| format!("Linux {}", s.trim()))
            .unwrap_or_else(|_| "unknown kernel".into());
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Self {
            cpu_model,
            nproc,
            mem_gib,
            kernel,
            date: output(command("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .unwrap_or_else(|| "unknown date".into()),
            load,
            commit: git_commit(root),
        }
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let cmd = std::mem::replace(cmd, Command::new("true"));
    let done = proc::run("command", cmd, Duration::from_secs(10), false).ok()?;
    done.status
        .success()
        .then(|| done.stdout.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn git_commit(root: &Path) -> String {
    let Some(rev) =
        output(
            command("git")
                .current_dir(root)
                .args(["rev-parse", "--short=12", "HEAD"]),
        )
    else {
        return "unknown commit".into();
    };
    let dirty = output(command("git").current_dir(root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_some();
    if dirty {
        format!("{rev} (with uncommitted changes)")
    } else {
        rev
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_versions() {
        use super::short_version;
        assert_eq!(
            short_version("wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer\nUsage: …"),
            "wrk debian/4.1.0-3+b2"
        );
        assert_eq!(
            short_version("curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/7.88.1\nRelease-Date: …"),
            "curl 7.88.1"
        );
        assert_eq!(
            short_version("rathole \nBuild Timestamp:     x\nBuild Version:       0.5.0\n"),
            "rathole 0.5.0"
        );
    }

    #[test]
    fn the_release_build_drops_only_what_cargo_run_describes_the_package_with() {
        use super::is_set_by_cargo_run;
        for set in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION",
            "CARGO_BIN_NAME",
        ] {
            assert!(is_set_by_cargo_run(set), "{set}");
        }
        for kept in [
            "CARGO",
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO_PROFILE_RELEASE_LTO",
            "PATH",
        ] {
            assert!(!is_set_by_cargo_run(kept), "{kept}");
        }
    }
}
