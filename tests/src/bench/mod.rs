//! The benchmark of issue 6 (`cargo run --release -p tests --bin bench -- [--smoke]
//! [--out FILE] [--rounds N]`): builds everything in release mode, starts the bench app,
//! DevInProd in both topologies and rathole in both transports on loopback, runs each
//! scenario against every path in the same run, then the database and scale binaries, and
//! prints a markdown report (also written to a file). A run with any failed request is marked
//! FAILED, never printed as a number, and the benchmark exits non-zero.

pub mod bulk;
pub mod external;
pub mod http;
pub mod proc;
pub mod real_apps;
pub mod stats;
pub mod tools;
pub mod topo;
pub mod wrk;
pub mod ws;

use stats::{of, Series};
use std::path::{Path, PathBuf};
use topo::{Kind, Running};

/// Command-line options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub smoke: bool,
    pub out: PathBuf,
    pub rounds: usize,
}

pub const USAGE: &str = "usage: bench [--smoke] [--out FILE (default BENCHMARKS-latest.md)] [--rounds N (default 5; smoke 1)]";

impl Options {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut smoke = false;
        let mut out = None;
        let mut rounds = None;
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (a.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match flag.as_str() {
                "--smoke" => smoke = true,
                "--out" => out = Some(PathBuf::from(value("--out")?)),
                "--rounds" => {
                    let v = value("--rounds")?;
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("--rounds: {v:?} is not a number"))?;
                    if !(1..=100).contains(&n) {
                        return Err("--rounds: between 1 and 100".into());
                    }
                    rounds = Some(n);
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Self {
            smoke,
            out: out.unwrap_or_else(|| PathBuf::from("BENCHMARKS-latest.md")),
            rounds: rounds.unwrap_or(if smoke { 1 } else { 5 }),
        })
    }
}

/// Sizes of the scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub http_secs: u64,
    pub bulk_bytes: u64,
    pub ws_messages: usize,
}

impl Plan {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                http_secs: 2,
                bulk_bytes: 10_000_000,
                ws_messages: 100,
            }
        } else {
            Self {
                http_secs: 10,
                bulk_bytes: 100_000_000,
                ws_messages: 2000,
            }
        }
    }
}

/// A path that could not be started.
pub struct Unavailable {
    pub why: String,
    /// `false` only for rathole skipped in smoke mode: not a failure.
    pub failure: bool,
}

/// One path of the benchmark: running, or why not.
pub struct Slot {
    pub kind: Kind,
    pub state: Result<Running, Unavailable>,
}

impl Slot {
    pub fn running(&mut self) -> Option<&mut Running> {
        self.state.as_mut().ok()
    }

    /// An empty series for this path, already failed or skipped when the path is not up.
    pub fn series<T>(&self) -> Series<T> {
        let mut s = Series::new(self.kind);
        if let Err(u) = &self.state {
            if u.failure {
                s.error = Some(format!("setup: {}", u.why));
            } else {
                s.skipped = Some(u.why.clone());
            }
        }
        s
    }
}

/// Runs the benchmark; returns the exit status (0: every measurement is a result; 1: a
/// failure; 2: a usage error).
pub fn main() -> u8 {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench: {e}");
            }
            eprintln!("{USAGE}");
            return 2;
        }
    };
    match run(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    }
}

/// A work directory under `target/bench-work`, named by pid; those of dead runs are removed.
fn work_dir(target: &Path) -> Result<PathBuf, String> {
    let base = target.join("bench-work");
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name
                .strip_prefix("run-")
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The work directory (configurations, PKI, logs), removed when dropped after a run without
/// failures; kept after a failure or an error for its logs (the next run removes it).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn run(opts: &Options) -> Result<u8, String> {
    let plan = Plan::new(opts.smoke);
    let root = tools::workspace_root();
    let target = tools::target_dir(&root);
    let release = target.join("release");

    let build = tools::build(&root)?;
    let wrk_bin = tools::require("wrk", "wrk")?;
    let curl_bin = tools::require("curl", "curl")?;
    let rathole = match tools::rathole(&target) {
        Ok(p) => Some(p),
        Err(e) if opts.smoke => {
            eprintln!("NOTE: {e}; smoke mode goes on without the rathole paths (a full run fails instead)");
            None
        }
        Err(e) => return Err(e),
    };
    let rathole_missing = "rathole could not be installed (smoke mode only)";
    let devinprod = release.join("devinprod");
    let bench_app = release.join("bench-app");
    for b in [&devinprod, &bench_app] {
        if !b.is_file() {
            return Err(format!("{} is missing after the build", b.display()));
        }
    }

    let machine = tools::Machine::probe(&root);
    let versions = format!(
        "{}; {}; {}",
        tools::version(&wrk_bin, "-v"),
        tools::version(&curl_bin, "--version"),
        rathole
            .as_ref()
            .map(|r| tools::version(r, "--version"))
            .unwrap_or_else(|| "rathole: not installed".into())
    );

    let mut work = WorkDir {
        path: work_dir(&target)?,
        keep: true,
    };
    eprintln!(
        "== starting the bench app and every path (work dir {})",
        work.path.display()
    );
    let (app_proc, app) = topo::start_app(&bench_app, &work.path)?;
    let env = topo::Env {
        devinprod,
        rathole,
        work: work.path.clone(),
        app,
    };
    let mut slots: Vec<Slot> = Kind::ALL
        .iter()
        .map(|&kind| {
            let state = match kind {
                Kind::Direct => Ok(topo::direct(&env)),
                Kind::AllInOne => topo::all_in_one(&env),
                Kind::Separate => topo::separate(&env),
                Kind::RatholeTcp | Kind::RatholeNoise if env.rathole.is_none() => {
                    return Slot {
                        kind,
                        state: Err(Unavailable {
                            why: rathole_missing.into(),
                            failure: false,
                        }),
                    }
                }
                Kind::RatholeTcp => topo::rathole(&env, false),
                Kind::RatholeNoise => topo::rathole(&env, true),
            };
            if let Err(e) = &state {
                eprintln!("   FAILED to start {}: {e}", kind.label());
            }
            Slot {
                kind,
                state: state.map_err(|why| Unavailable { why, failure: true }),
            }
        })
        .collect();

    eprintln!(
        "== HTTP, small responses: wrk, {} s per run, {} round(s)",
        plan.http_secs, opts.rounds
    );
    let http = http::run(&wrk_bin, &mut slots, plan.http_secs, opts.rounds);
    eprintln!("== bulk: {} bytes each way", plan.bulk_bytes);
    let upload_file = bulk::make_upload_file(&work.path, plan.bulk_bytes)?;
    let bulk = bulk::run(
        &curl_bin,
        &mut slots,
        &upload_file,
        plan.bulk_bytes,
        opts.rounds,
    );
    let _ = std::fs::remove_file(&upload_file);
    eprintln!("== WebSocket: {} echoes", plan.ws_messages);
    let ws = ws::run(&mut slots, plan.ws_messages, opts.rounds);
    // Issue 18: the production path, and real apps. Half the HTTP section's time per run: it
    // has twice as many rows.
    let real_secs = (plan.http_secs / 2).max(1);
    eprintln!("== production path and real apps: wrk, {real_secs} s per run");
    let bench_edge = slots
        .iter()
        .find(|s| s.kind == Kind::AllInOne)
        .and_then(|s| s.state.as_ref().ok())
        .map(|r| r.target.addr);
    let mut real = real_apps::start(&env, bench_edge);
    real.run(&wrk_bin, real_secs, opts.rounds);

    // Stop every path before the database and scale scenarios: they start their own.
    drop(slots);
    let real_md = real.section(real_secs);
    let real_failures = real.failures();
    drop(real);
    drop(app_proc);

    let (db, scale) = match build {
        tools::Build::All => (
            external::run(&release, "db-bench", "Database", opts.smoke),
            external::run(&release, "scale-bench", "Scale", opts.smoke),
        ),
        tools::Build::Partial => (
            external::build_failed("db-bench", "Database"),
            external::build_failed("scale-bench", "Scale"),
        ),
    };

    let failures: Vec<String> = failures(&http, &bulk, &ws)
        .into_iter()
        .chain(real_failures)
        .chain(db.failed.then(|| "database (db-bench)".to_owned()))
        .chain(scale.failed.then(|| "scale (scale-bench)".to_owned()))
        .collect();

    let mut md = header(opts, &plan, &machine, &versions);
    md.push_str(&http::section(&http));
    md.push_str(&bulk::section(&bulk));
    md.push_str(&ws::section(&ws));
    md.push_str(&budgets(&http, &bulk));
    md.push_str(&real_md);
    md.push_str(&db.markdown);
    md.push_str(&scale.markdown);
    if failures.is_empty() {
        md.push_str("Every measurement of this run completed without a failed request or a non-2xx answer.\n");
    } else {
        md.push_str(&format!(
            "**This run has failures** ({}): the rows marked FAILED are not results.\n",
            failures.join("; ")
        ));
    }

    print!("{md}");
    std::fs::write(&opts.out, &md).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    eprintln!("== written to {}", opts.out.display());
    work.keep = !failures.is_empty();
    drop(work);
    if failures.is_empty() {
        Ok(0)
    } else {
        eprintln!("bench: FAILED: {}", failures.join("; "));
        Ok(1)
    }
}

fn failures(http: &http::HttpResults, bulk: &bulk::BulkResults, ws: &ws::WsResults) -> Vec<String> {
    let mut out = Vec::new();
    for (li, (label, _, _)) in http::LOADS.iter().enumerate() {
        for s in &http.by_load[li] {
            if s.error.is_some() {
                out.push(format!("HTTP {label}, {}", s.kind.label()));
            }
        }
    }
    for s in &bulk.series {
        if s.error.is_some() {
            out.push(format!("bulk, {}", s.kind.label()));
        }
    }
    for s in &ws.series {
        if s.error.is_some() {
            out.push(format!("WebSocket, {}", s.kind.label()));
        }
    }
    out
}

fn header(opts: &Options, plan: &Plan, m: &tools::Machine, versions: &str) -> String {
    let mode = if opts.smoke {
        format!(
            "smoke (minimal sizes: {} s per wrk run, {} MB bulk, {} WebSocket echoes; {} round(s)) — a check that the harness works, not a measurement",
            plan.http_secs,
            plan.bulk_bytes / 1_000_000,
            plan.ws_messages,
            opts.rounds
        )
    } else {
        format!(
            "full: {} rounds, medians shown ({} s per wrk run, {} MB bulk, {} WebSocket echoes)",
            opts.rounds,
            plan.http_secs,
            plan.bulk_bytes / 1_000_000,
            plan.ws_messages
        )
    };
    format!(
        "## DevInProd benchmark, {date}\n\n\
         - Machine: {cpu}, {nproc} cores (nproc), {mem:.1} GiB memory, {kernel}; load average at start {load}\n\
         - Commit: {commit}\n\
         - Mode: {mode}\n\
         - Who runs where: everything runs on this one machine over loopback and **all processes share \
         the same {nproc} cores**; nothing is pinned (no `taskset`). The load generators (wrk, curl, this \
         process's WebSocket client), the one bench app every path ends at (`target/release/bench-app`, \
         hyper HTTP/1.1), and each path's own processes: DevInProd all-in-one = `devinprod up` + \
         `devinprod connect`; DevInProd separate = `devinprod relay` + `devinprod edge` + \
         `devinprod connect` (QUIC between them, on 127.0.0.1); rathole = `rathole --server` + \
         `rathole --client`. Idle paths stay up while another is measured; rounds interleave the paths.\n\
         - Threads: every DevInProd process runs with its default runtime (README, `--threads`): \
         `up` and `connect` on one thread, `relay` and `edge` {server_threads}; rathole on tokio's \
         default runtime, one worker per core.\n\
         - Log level of DevInProd and rathole: `RUST_LOG={log}`.\n\
         - Tools: {versions}\n\
         - A run with a failed request, a socket error or a non-2xx answer is not a result: its row \
         says FAILED and the benchmark exits non-zero.\n\n",
        date = m.date,
        server_threads = if m.nproc > 2 {
            format!("with one worker per core ({})", m.nproc)
        } else {
            "on one thread (2 cores or fewer)".to_owned()
        },
        cpu = m.cpu_model,
        nproc = m.nproc,
        mem = m.mem_gib,
        kernel = m.kernel,
        load = m.load,
        commit = m.commit,
        log = topo::log_level(),
    )
}

/// The budgets of issue 6 that this process measures, per DevInProd topology.
fn budgets(http: &http::HttpResults, bulk: &bulk::BulkResults) -> String {
    let c1 = &http.by_load[0];
    let c32 = &http.by_load[1];
    let med = |all: &[Series<wrk::WrkResult>], k: Kind, f: fn(&wrk::WrkResult) -> f64| {
        of(all, k).and_then(|s| s.median(f))
    };
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut rows = Vec::new();
    let mut row = |name: &str, cell: &dyn Fn(Kind) -> String| {
        rows.push(vec![
            name.to_owned(),
            cell(Kind::AllInOne),
            cell(Kind::Separate),
        ]);
    };
    row(
        "HTTP req/s at 32 connections ≥ rathole Noise's",
        &|k| match (
            med(c32, k, |w| w.rps),
            med(c32, Kind::RatholeNoise, |w| w.rps),
        ) {
            (Some(a), Some(b)) => format!(
                "{} vs {}: {}",
                stats::int(a),
                stats::int(b),
                verdict(a >= b)
            ),
            _ => "not measured".into(),
        },
    );
    row(
        "HTTP at 1 connection: p99 added over direct ≤ 1 ms",
        &|k| match (
            med(c1, k, |w| w.p99_us),
            med(c1, Kind::Direct, |w| w.p99_us),
        ) {
            (Some(a), Some(d)) => format!("{}: {}", stats::added(a - d), verdict(a - d <= 1000.0)),
            _ => "not measured".into(),
        },
    );
    row(
        "HTTP at 1 connection: p50 added ≤ rathole Noise's added p50",
        &|k| match (
            med(c1, k, |w| w.p50_us),
            med(c1, Kind::RatholeNoise, |w| w.p50_us),
            med(c1, Kind::Direct, |w| w.p50_us),
        ) {
            (Some(a), Some(n), Some(d)) => format!(
                "{} vs {}: {}",
                stats::added(a - d),
                stats::added(n - d),
                verdict(a <= n)
            ),
            _ => "not measured".into(),
        },
    );
    for (what, f) in [
        (
            "download",
            (|b: &bulk::BulkResult| b.download_mbps) as fn(&bulk::BulkResult) -> f64,
        ),
        ("upload", |b: &bulk::BulkResult| b.upload_mbps),
    ] {
        row(&format!("Bulk {what} MB/s ≥ rathole Noise's"), &|k| match (
            of(&bulk.series, k).and_then(|s| s.median(f)),
            of(&bulk.series, Kind::RatholeNoise).and_then(|s| s.median(f)),
        ) {
            (Some(a), Some(b)) => {
                format!(
                    "{} vs {}: {}",
                    stats::mbps(a),
                    stats::mbps(b),
                    verdict(a >= b)
                )
            }
            _ => "not measured".into(),
        });
    }
    let mut out = String::from(
        "### Budgets (issue 6)\n\nTargets for the implementation, measured by this run (medians). \
         `SELECT 1` added latency (≤ 0.3 ms p50) and relay memory per idle client (≤ 64 KiB) are \
         in the Database and Scale sections.\n\n",
    );
    out.push_str(&stats::table(
        &["budget", "all-in-one", "relay + edge processes"],
        &rows,
    ));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn options() {
        let o = parse(&[]).unwrap();
        assert_eq!((o.smoke, o.rounds), (false, 5));
        assert_eq!(o.out, PathBuf::from("BENCHMARKS-latest.md"));
        let o = parse(&["--smoke"]).unwrap();
        assert_eq!((o.smoke, o.rounds), (true, 1));
        let o = parse(&["--smoke", "--rounds", "3", "--out=x.md"]).unwrap();
        assert_eq!((o.rounds, o.out), (3, PathBuf::from("x.md")));
        assert!(parse(&["--rounds", "0"]).is_err());
        assert!(parse(&["--rounds"]).is_err());
        assert!(parse(&["--fast"]).is_err());
    }
}
