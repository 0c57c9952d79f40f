//! `scale-bench [--smoke] [--devinprod PATH]`: the scale scenario of the benchmark.
//!
//! * A real relay process (`devinprod relay`, PKI from `devinprod certs init`, tokens from the
//!   admin API `POST /api/createToken`) on loopback.
//! * Idle developer clients: real agents (the `client` crate's `Agent`, as `devinprod connect`
//!   runs it, with its default keep-alive and backoff), each with its own token and its own
//!   QUIC connection (own UDP socket), all in this process on one tokio runtime.
//! * The relay's resident memory (`VmRSS` of `/proc/<pid>/status`, the relay process only)
//!   with 0, 1, 100 and 1,000 connected clients (smoke: 0, 1, 20), and the cost per client
//!   `(RSS_N − RSS_1) / (N − 1)`.
//! * The time for every client to be connected again (the admin API `GET /api/sessions` lists
//!   all N) after the relay restarts on the same port and state directory: once after a
//!   graceful stop (SIGTERM: the relay closes every connection, telling clients to reconnect),
//!   once after a crash (SIGKILL: clients learn at their next keep-alive, from the stateless
//!   reset the new process sends for connections it does not know).
//! * A diagnostic: the same memory measurement with `max_streams_per_developer = 4096` in
//!   relay.toml (what every client was allowed before the default became 128).
//! * Hostile load: 10,000 QUIC Initials never followed up (smoke: 500), from one address and
//!   from 200 (smoke: 20), against a fresh relay: its RSS after each, and how long a real client
//!   started during the flood takes to connect.
//!
//! `--keep` keeps the temporary directory (state, `relay.log`) and prints its path; the relay
//! inherits `RUST_LOG`.
//!
//! Prints a markdown section on stdout; progress goes to stderr. Exit status: 0 when every
//! client connected and reconnected in time (a missed memory budget is reported, not a
//! failure), 1 when not, 2 when something it needs is missing.

use client::{Agent, AgentConfig, AgentEvent, AgentExit};
use futures_util::StreamExt;
use proto::AuthToken;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::benchkit::{self as kit, ChildGuard};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest wait for clients to connect (each stage) or reconnect (each restart).
const CONNECT_LIMIT: Duration = Duration::from_secs(120);
/// Clients started at once while growing a stage.
const BATCH: usize = 100;
/// `max_streams_per_developer` of the diagnostic relay (the allowance before it was lowered).
const DIAG_STREAMS: u32 = 4096;

struct Plan {
    smoke: bool,
    stages: Vec<usize>,
    settle: Duration,
    diag_clients: usize,
    /// Initials of each handshake flood, and the addresses of the spread one.
    flood_initials: usize,
    flood_sources: usize,
}

impl Plan {
    fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                smoke,
                stages: vec![1, 20],
                settle: Duration::from_secs(1),
                diag_clients: 20,
                flood_initials: 500,
                flood_sources: 20,
            }
        } else {
            Self {
                smoke,
                stages: vec![1, 100, 1000],
                settle: Duration::from_secs(3),
                diag_clients: 100,
                flood_initials: 10_000,
                flood_sources: 200,
            }
        }
    }
    fn max(&self) -> usize {
        *self.stages.iter().max().unwrap_or(&1)
    }
}

/// A measured relay memory point.
#[derive(Clone, Copy)]
struct Point {
    clients: usize,
    rss_kib: u64,
    connect_secs: f64,
}

struct Restart {
    how: &'static str,
    clients: usize,
    down_secs: f64,
    from_signal_secs: f64,
    from_back_secs: f64,
    per_client: (f64, f64, f64),
    disconnect_events: usize,
    /// Reasons the clients were given for lost connections and failed attempts, most first.
    reasons: Vec<(String, usize)>,
    rss_after_kib: Option<u64>,
}

/// A flood of never-finished QUIC handshakes against a fresh relay.
struct Flood {
    sources: usize,
    initials: usize,
    send_secs: f64,
    rss_kib: u64,
    /// A real client started while the flood ran: seconds until the relay listed it.
    newcomer_secs: f64,
}

#[derive(Default)]
struct Report {
    baseline_kib: Option<u64>,
    points: Vec<Point>,
    restarts: Vec<Restart>,
    diag_baseline_kib: Option<u64>,
    diag_points: Vec<Point>,
    tokens_secs: f64,
    tokens: usize,
    hwm_kib: Option<u64>,
    flood_baseline_kib: Option<u64>,
    floods: Vec<Flood>,
    flood_hwm_kib: Option<u64>,
    failures: Vec<String>,
}

fn main() -> ExitCode {
    let plan = Plan::new(kit::smoke_flag());
    let bin = match kit::devinprod_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scale-bench: {e}");
            return ExitCode::from(kit::EXIT_SETUP);
        }
    };
    if let Err(e) = ensure_nofile(plan.max() as u64 + 256) {
        eprintln!("scale-bench: {e}");
        return ExitCode::from(kit::EXIT_SETUP);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(kit::cpus().clamp(1, 2))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::default();
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = bench(&plan, &bin, &mut report) => r,
            _ = kit::interrupted() => Err("interrupted".to_owned()),
        }
    });
    // Agents and their sockets go before the report is printed.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Err(e) = outcome {
        report.failures.push(e);
    }
    print!("{}", render(&plan, &report));
    if !report.failures.is_empty() {
        for f in &report.failures {
            eprintln!("scale-bench: FAILED: {f}");
        }
        return ExitCode::from(kit::EXIT_FAILED);
    }
    ExitCode::SUCCESS
}

/// Each client holds a UDP socket: raise the soft open-file limit to `need` when the hard limit
/// allows (by re-executing under `ulimit -n`, which does not return), or say why it cannot.
fn ensure_nofile(need: u64) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some((soft, hard)) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            let mut f = l["Max open files".len()..].split_whitespace();
            let parse = |v: Option<&str>| match v {
                Some("unlimited") => Some(u64::MAX),
                Some(v) => v.parse().ok(),
                None => None,
            };
            Some((parse(f.next())?, parse(f.next())?))
        })
    else {
        return Ok(());
    };
    if soft >= need {
        return Ok(());
    }
    if hard < need || std::env::var_os("SCALE_BENCH_REEXEC").is_some() {
        return Err(format!(
            "needs {need} open files, the limit is {soft} (hard {hard}); raise it \
             (ulimit -n {need}) and run again"
        ));
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("current exe");
    let err = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {need} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("SCALE_BENCH_REEXEC", "1")
        .exec();
    Err(format!(
        "cannot re-execute with a higher open-file limit: {err}"
    ))
}

/// A relay process and the addresses it listens on.
struct RelayProcess {
    child: ChildGuard,
    addr: SocketAddr,
    admin: SocketAddr,
}

/// Starts `devinprod relay` on `listen`/`admin` (port 0 picks one) and waits until it says
/// where it listens.
fn start_relay(
    bin: &Path,
    state: &Path,
    listen: &str,
    admin: &str,
    config: Option<&Path>,
    log: &Path,
) -> Result<RelayProcess, String> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut c = kit::command(bin);
    c.arg("relay");
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    c.arg("--state-dir")
        .arg(state)
        .args(["--listen", listen, "--admin-listen", admin])
        .stderr(Stdio::from(log_file));
    let mut child = ChildGuard::spawn("devinprod relay", c).map_err(|e| format!("relay: {e}"))?;
    // "relay listening on 127.0.0.1:4433 (QUIC/UDP), admin API on http://127.0.0.1:4480"
    let (addr, admin) = child
        .wait_line(Duration::from_secs(30), |l| {
            let rest = l.strip_prefix("relay listening on ")?;
            let addr = rest.split_whitespace().next()?.parse().ok()?;
            let admin = rest
                .split("http://")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((addr, admin))
        })
        .map_err(|e| format!("{e}\n{}", kit::log_tail(log, 20)))?;
    // The pid is the relay's own once the wrapper shell has exec'd it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while kit::proc_name(child.pid()).as_deref() != Some("devinprod") {
        if Instant::now() > deadline {
            return Err(format!("pid {} is not the relay", child.pid()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(RelayProcess { child, addr, admin })
}

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

async fn admin_call(
    http: &Http,
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<serde_json::Value, String> {
    use http_body_util::BodyExt;
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .map_err(|e| e.to_string())?;
    let work = async {
        let resp = http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| format!("{method} {path}: no answer within 10 s"))?
        .map_err(|e| format!("{method} {path}: {e}"))
}

/// Connected developers according to the relay (`GET /api/sessions`).
async fn sessions(http: &Http, admin: SocketAddr) -> Result<usize, String> {
    admin_call(http, admin, "GET", "/api/sessions", "")
        .await?
        .as_array()
        .map(Vec::len)
        .ok_or_else(|| "/api/sessions: not a list".to_owned())
}

/// One client's state, as its events tell it.
#[derive(Default)]
struct ClientState {
    connected: AtomicBool,
    last_connected: Mutex<Option<Instant>>,
}

struct Client {
    state: Arc<ClientState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<AgentExit>,
}

/// Idle clients, each an agent with its own token and QUIC connection.
struct Fleet {
    relay: SocketAddr,
    ca: PathBuf,
    clients: Vec<Client>,
    disconnects: Arc<AtomicUsize>,
    /// Why clients lost their connection or failed an attempt, with counts.
    reasons: Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
}

impl Fleet {
    fn new(relay: SocketAddr, ca: PathBuf) -> Self {
        Self {
            relay,
            ca,
            clients: Vec::new(),
            disconnects: Arc::default(),
            reasons: Arc::default(),
        }
    }

    fn spawn(&mut self, token: AuthToken) -> Result<(), String> {
        // The defaults of `devinprod connect`: keep-alive 10 s, idle timeout 30 s, backoff
        // 250 ms doubling to 30 s with jitter. The local app is never asked for anything.
        let mut config = AgentConfig::new(self.relay.to_string(), token, "127.0.0.1:9".into());
        config.ca = Some(self.ca.clone());
        config.client_name = format!("scale-bench {}", self.clients.len());
        let state = Arc::new(ClientState::default());
        let (s, d, why) = (
            state.clone(),
            self.disconnects.clone(),
            self.reasons.clone(),
        );
        let agent = Agent::new(
            config,
            Arc::new(move |e| match e {
                AgentEvent::Connected { .. } => {
                    *s.last_connected.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                    s.connected.store(true, Ordering::SeqCst);
                }
                AgentEvent::Disconnected { reason, .. } => {
                    s.connected.store(false, Ordering::SeqCst);
                    d.fetch_add(1, Ordering::Relaxed);
                    *why.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(reason)
                        .or_default() += 1;
                }
                AgentEvent::Request(_) => {}
            }),
        )
        .map_err(|e| format!("agent: {e}"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        });
        self.clients.push(Client {
            state,
            stop: Some(stop),
            task,
        });
        Ok(())
    }

    fn connected(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.state.connected.load(Ordering::SeqCst))
            .count()
    }

    /// A client whose agent stopped for good (refused, replaced, revoked): a failure.
    fn ended(&self) -> Option<String> {
        self.clients
            .iter()
            .enumerate()
            .find(|(_, c)| c.task.is_finished())
            .map(|(i, _)| format!("client {i} stopped (its agent ended: refused or replaced?)"))
    }

    /// Asks every agent to close its connection, and waits briefly.
    async fn shutdown(mut self) {
        for c in &mut self.clients {
            if let Some(s) = c.stop.take() {
                let _ = s.send(());
            }
        }
        for c in std::mem::take(&mut self.clients) {
            let abort = c.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), c.task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &self.clients {
            c.task.abort();
        }
    }
}

/// Waits until the relay lists `n` sessions and every client says it is connected.
async fn wait_all_connected(
    fleet: &Fleet,
    http: &Http,
    admin: SocketAddr,
    n: usize,
    deadline: Instant,
) -> Result<(), String> {
    let mut last = (0, 0);
    loop {
        if let Some(e) = fleet.ended() {
            return Err(e);
        }
        let local = fleet.connected();
        if local == n {
            // The relay's own view decides.
            match sessions(http, admin).await {
                Ok(listed) if listed == n => return Ok(()),
                Ok(listed) => last = (local, listed),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
        } else {
            last.0 = local;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {n} clients connected ({} listed by the relay) after {CONNECT_LIMIT:?}",
                last.0, last.1
            ));
        }
        tokio::time::sleep(Duration::from_millis(if local == n { 100 } else { 50 })).await;
    }
}

/// Starts clients until `n` are connected, `BATCH` at a time; returns the seconds it took.
async fn grow(
    fleet: &mut Fleet,
    tokens: &[AuthToken],
    http: &Http,
    admin: SocketAddr,
    n: usize,
) -> Result<f64, String> {
    let t0 = Instant::now();
    let deadline = t0 + CONNECT_LIMIT;
    while fleet.clients.len() < n {
        let upto = (fleet.clients.len() + BATCH).min(n);
        while fleet.clients.len() < upto {
            let token = tokens[fleet.clients.len()].clone();
            fleet.spawn(token)?;
        }
        while fleet.connected() < upto {
            if let Some(e) = fleet.ended() {
                return Err(e);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {upto} clients connected within {CONNECT_LIMIT:?}",
                    fleet.connected()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_all_connected(fleet, http, admin, n, deadline).await?;
    Ok(t0.elapsed().as_secs_f64())
}

/// The relay's RSS after `settle`: the median of five readings 200 ms apart.
async fn settled_rss(pid: u32, settle: Duration) -> Result<u64, String> {
    tokio::time::sleep(settle).await;
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(kit::rss_kib(pid).ok_or_else(|| format!("no /proc/{pid}/status: relay gone?"))?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    v.sort_unstable();
    Ok(v[v.len() / 2])
}

async fn create_tokens(http: &Http, admin: SocketAddr, n: usize) -> Result<Vec<AuthToken>, String> {
    let results: Vec<Result<AuthToken, String>> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let body = format!("{{\"name\":\"scale-bench-{i}\"}}");
            let json = admin_call(http, admin, "POST", "/api/createToken", &body).await?;
            let token = json
                .get("token")
                .and_then(|t| t.as_str())
                .ok_or("createToken: no token in the answer")?;
            AuthToken::parse(token).map_err(|e| format!("createToken: {e}"))
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn bench(plan: &Plan, bin: &Path, report: &mut Report) -> Result<(), String> {
    let tmp = kit::RunDir::new("scale-bench-")?;
    let state = tmp.path().join("state");
    let log = tmp.path().join("relay.log");
    let mut init = kit::command(bin);
    init.args(["certs", "init", "--dir"]).arg(&state);
    let out = kit::run("devinprod certs init", init, Duration::from_secs(30))?;
    if !out.status.success() {
        return Err(format!("devinprod certs init: {}", out.describe()));
    }
    let with_log = |e: String| format!("{e}\n{}", kit::log_tail(&log, 20));

    let mut relay = start_relay(bin, &state, "127.0.0.1:0", "127.0.0.1:0", None, &log)?;
    let (addr, admin) = (relay.addr, relay.admin);
    eprintln!(
        "scale-bench: relay pid {} on {addr}, admin http://{admin}",
        relay.child.pid()
    );
    let http: Http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    admin_call(&http, admin, "GET", "/api/health", "")
        .await
        .map_err(with_log)?;
    report.baseline_kib = Some(settled_rss(relay.child.pid(), plan.settle).await?);

    let t = Instant::now();
    let tokens = create_tokens(&http, admin, plan.max()).await?;
    report.tokens_secs = t.elapsed().as_secs_f64();
    report.tokens = tokens.len();
    eprintln!(
        "scale-bench: {} tokens created in {:.1} s",
        tokens.len(),
        report.tokens_secs
    );

    // Memory with 1, 100, 1,000 idle clients.
    let mut fleet = Fleet::new(addr, state.join("ca.pem"));
    for &n in &plan.stages {
        let secs = grow(&mut fleet, &tokens, &http, admin, n)
            .await
            .map_err(with_log)?;
        let rss = settled_rss(relay.child.pid(), plan.settle).await?;
        eprintln!(
            "scale-bench: {n} clients connected in {secs:.1} s; relay RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
        report.points.push(Point {
            clients: n,
            rss_kib: rss,
            connect_secs: secs,
        });
    }
    let n = fleet.clients.len();

    // Restarts on the same port and state directory, every client connected before each.
    let listen = addr.to_string();
    let admin_listen = admin.to_string();
    for how in ["graceful stop (SIGTERM)", "crash (SIGKILL)"] {
        let before = fleet.disconnects.load(Ordering::Relaxed);
        fleet
            .reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let old_pid = relay.child.pid();
        let t0 = Instant::now();
        if how.contains("SIGKILL") {
            relay.child.kill();
        } else {
            relay.child.signal("TERM")?;
            if let Err(e) = relay.child.wait_exit(Duration::from_secs(15)) {
                relay.child.kill();
                return Err(e);
            }
        }
        drop(relay);
        relay = start_relay(bin, &state, &listen, &admin_listen, None, &log)?;
        let back = Instant::now();
        eprintln!(
            "scale-bench: {how}: relay {old_pid} gone, {} up after {:.2} s",
            relay.child.pid(),
            (back - t0).as_secs_f64()
        );
        wait_all_connected(&fleet, &http, admin, n, t0 + CONNECT_LIMIT)
            .await
            .map_err(|e| with_log(format!("after the {how}: {e}")))?;
        let done = Instant::now();
        let mut each: Vec<f64> = fleet
            .clients
            .iter()
            .filter_map(|c| {
                *c.state
                    .last_connected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            })
            .map(|t| t.saturating_duration_since(t0).as_secs_f64())
            .collect();
        each.sort_by(|a, b| a.total_cmp(b));
        let rss_after = settled_rss(relay.child.pid(), plan.settle).await.ok();
        let r = Restart {
            how,
            clients: n,
            down_secs: (back - t0).as_secs_f64(),
            from_signal_secs: (done - t0).as_secs_f64(),
            from_back_secs: (done - back).as_secs_f64(),
            per_client: (
                kit::percentile(&each, 0.5),
                kit::percentile(&each, 0.9),
                each.last().copied().unwrap_or(f64::NAN),
            ),
            disconnect_events: fleet.disconnects.load(Ordering::Relaxed) - before,
            reasons: {
                let mut v: Vec<(String, usize)> = fleet
                    .reasons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(r, n)| (r.replace(&listen, "RELAY"), *n))
                    .collect();
                v.sort_by_key(|x| std::cmp::Reverse(x.1));
                v
            },
            rss_after_kib: rss_after,
        };
        eprintln!(
            "scale-bench: {how}: all {n} reconnected {:.2} s after the signal ({:.2} s after the relay was back)",
            r.from_signal_secs, r.from_back_secs
        );
        report.restarts.push(r);
    }
    report.hwm_kib = kit::proc_status_kib(relay.child.pid(), "VmHWM:");

    // Diagnostic: the same memory measurement with fewer streams allowed per peer.
    relay.child.kill();
    drop(relay);
    drop(fleet);
    let diag_config = tmp.path().join("relay-diag.toml");
    std::fs::write(
        &diag_config,
        format!("max_streams_per_developer = {DIAG_STREAMS}\n"),
    )
    .map_err(|e| format!("{}: {e}", diag_config.display()))?;
    let relay = start_relay(
        bin,
        &state,
        &listen,
        &admin_listen,
        Some(&diag_config),
        &log,
    )?;
    report.diag_baseline_kib = Some(settled_rss(relay.child.pid(), plan.settle).await?);
    let mut fleet = Fleet::new(addr, state.join("ca.pem"));
    for n in [1, plan.diag_clients] {
        let secs = grow(&mut fleet, &tokens, &http, admin, n)
            .await
            .map_err(with_log)?;
        let rss = settled_rss(relay.child.pid(), plan.settle).await?;
        report.diag_points.push(Point {
            clients: n,
            rss_kib: rss,
            connect_secs: secs,
        });
    }
    fleet.shutdown().await;
    drop(relay);

    // Hostile load: QUIC handshakes never finished, against a fresh relay with the defaults.
    let relay = start_relay(bin, &state, &listen, &admin_listen, None, &log)?;
    report.flood_baseline_kib = Some(settled_rss(relay.child.pid(), plan.settle).await?);
    let mut fleet = Fleet::new(addr, state.join("ca.pem"));
    let roots = certs::load_roots(&state.join("ca.pem")).map_err(|e| e.to_string())?;
    let tls = certs::peer_client_config(roots, None, proto::ALPN).map_err(|e| e.to_string())?;
    for sources in [1, plan.flood_sources] {
        let from = if sources == 1 {
            // Not 127.0.0.1, where the real client comes from: see the note on shared addresses.
            vec![std::net::IpAddr::from([127, 0, 3, 1])]
        } else {
            tests::quic_flood::loopback_sources(sources)
        };
        let flood = tests::quic_flood::send_initials(
            addr,
            "127.0.0.1",
            tls.clone(),
            &from,
            plan.flood_initials,
            100,
            Duration::from_millis(10),
        );
        // A real client starts 100 ms into the flood.
        let newcomer = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let before = fleet.clients.len();
            let t = Instant::now();
            grow(&mut fleet, &tokens, &http, admin, before + 1).await?;
            Ok::<f64, String>(t.elapsed().as_secs_f64())
        };
        let (sent, newcomer_secs) = tokio::join!(flood, newcomer);
        let sent = sent?;
        let newcomer_secs = newcomer_secs.map_err(with_log)?;
        let rss = settled_rss(relay.child.pid(), plan.settle).await?;
        eprintln!(
            "scale-bench: {} Initials from {sources} address(es) in {:.1} s; relay RSS {:.1} MiB; \
             a real client connected during it in {newcomer_secs:.2} s",
            sent.initials,
            sent.secs,
            rss as f64 / 1024.0
        );
        report.floods.push(Flood {
            sources,
            initials: sent.initials,
            send_secs: sent.secs,
            rss_kib: rss,
            newcomer_secs,
        });
    }
    report.flood_hwm_kib = kit::proc_status_kib(relay.child.pid(), "VmHWM:");
    fleet.shutdown().await;
    drop(relay);
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// `(RSS_N − RSS_1) / (N − 1)` in KiB.
fn per_client(points: &[Point], p: &Point) -> Option<f64> {
    let one = points.iter().find(|q| q.clients == 1)?;
    (p.clients > 1).then(|| (p.rss_kib as f64 - one.rss_kib as f64) / (p.clients - 1) as f64)
}

fn render(plan: &Plan, r: &Report) -> String {
    let mut s = format!(
        "### Scale: relay memory per idle client, reconnection after a restart{}\n\n",
        if plan.smoke { " (smoke)" } else { "" }
    );
    let mut rows = Vec::new();
    if let Some(b) = r.baseline_kib {
        rows.push(vec![
            "0 (relay just started)".into(),
            mib(b),
            "—".into(),
            "—".into(),
            String::new(),
        ]);
    }
    for p in &r.points {
        let per = per_client(&r.points, p);
        rows.push(vec![
            p.clients.to_string(),
            mib(p.rss_kib),
            per.map(|k| format!("{k:.1}")).unwrap_or_else(|| "—".into()),
            format!("{:.1}", p.connect_secs),
            match per {
                Some(k) if k <= 64.0 => "≤ 64 KiB: **met**".into(),
                Some(_) => "≤ 64 KiB: **missed**".into(),
                None => String::new(),
            },
        ]);
    }
    for x in &r.restarts {
        if let Some(k) = x.rss_after_kib {
            rows.push(vec![
                format!("{} again, after the {}", x.clients, x.how),
                mib(k),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
    s.push_str(&kit::table(
        &[
            "idle clients connected",
            "relay RSS (MiB)",
            "per client (KiB)",
            "connect time (s)",
            "budget",
        ],
        &rows,
    ));
    s.push('\n');

    let rows: Vec<Vec<String>> = r
        .restarts
        .iter()
        .map(|x| {
            vec![
                x.how.to_owned(),
                x.clients.to_string(),
                format!("{:.2}", x.down_secs),
                format!("**{:.2}**", x.from_signal_secs),
                format!("{:.2}", x.from_back_secs),
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    x.per_client.0, x.per_client.1, x.per_client.2
                ),
                x.disconnect_events.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        s.push_str(&kit::table(
            &[
                "relay restart",
                "clients",
                "relay down (s)",
                "all listed again, from the signal (s)",
                "from the relay being back (s)",
                "each client back, p50 / p90 / max (s)",
                "disconnect events",
            ],
            &rows,
        ));
        s.push('\n');
    }

    let diag = |n: usize| r.diag_points.iter().find(|p| p.clients == n);
    let main_at = |n: usize| r.points.iter().find(|p| p.clients == n);
    let mut notes = vec![
        format!(
            "Relay: a real `devinprod relay` process (PKI from `devinprod certs init`, {} tokens from \
             the admin API `POST /api/createToken` in {:.1} s; each rewrites and fsyncs tokens.json), default relay.toml \
             (`max_streams_per_developer = 128`, keep-alive 10 s, idle timeout 30 s). RSS is the relay \
             process's `VmRSS`, the median of five readings after {} s idle; per client = \
             (RSS_N − RSS_1) / (N − 1). Peak (`VmHWM`) of the last relay process: {}.",
            r.tokens,
            r.tokens_secs,
            plan.settle.as_secs(),
            r.hwm_kib.map(|k| format!("{} MiB", mib(k))).unwrap_or_else(|| "—".into())
        ),
        format!(
            "Clients: real agents (the `client` crate's `Agent`, as `devinprod connect` runs it), each \
             with its own token, QUIC connection and UDP socket, all in this benchmark process on one \
             tokio runtime; started {BATCH} at a time. Where it ran: {}, no CPU pinning: the relay \
             and the clients share the cores, so reconnect times include the clients' side of \
             every TLS handshake.",
            kit::machine()
        ),
        "Client policy in play (client/src/agent.rs, `devinprod connect` defaults): after a lost \
         connection or a failed attempt, wait a jittered delay in [b/2, b] with b = 250 ms doubling \
         to 30 s (back to 250 ms after a successful connection); QUIC keep-alive every 10 s, idle \
         timeout 30 s. A graceful stop closes every connection at once; clients retry 125–250 ms \
         later, and while the old relay drains (up to 2 s) it refuses new connections, so each \
         refusal doubles their backoff. After a crash a client notices only when a packet of its \
         own (the next keep-alive) meets the new relay's stateless reset (the relay keeps \
         `reset.key` in the state directory) — or, failing that, at its 30 s idle timeout."
            .to_owned(),
    ];
    if let (Some(d1), Some(dn), Some(mn)) =
        (diag(1), diag(plan.diag_clients), main_at(plan.diag_clients))
    {
        let dper = per_client(&r.diag_points, dn).unwrap_or(f64::NAN);
        let mper = per_client(&r.points, mn).unwrap_or(f64::NAN);
        notes.push(format!(
            "Diagnostic: the same relay with `max_streams_per_developer = {DIAG_STREAMS}` in relay.toml \
             (every client's allowance before the default became 128): RSS {} MiB at 0, {} MiB at 1 \
             and {} MiB at {} clients: **{dper:.1} KiB per client**, against {mper:.1} KiB with the \
             default. quinn-proto preallocates, for every connection, an entry in its send and \
             receive stream maps for each of the `max_concurrent_bidi_streams` the peer may open \
             (`StreamsState::new`); edges and dbproxies are raised to `max_streams_per_peer` after \
             their certificate is checked.",
            r.diag_baseline_kib.map(mib).unwrap_or_else(|| "—".into()),
            mib(d1.rss_kib),
            mib(dn.rss_kib),
            dn.clients
        ));
    }
    let timed_out = |x: &Restart| {
        x.reasons
            .iter()
            .filter(|(why, _)| why.ends_with("timed out"))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    if let Some(x) = r
        .restarts
        .iter()
        .find(|x| x.how.contains("SIGKILL") && timed_out(x) > 0)
    {
        notes.push(format!(
            "After the crash, {} of {} clients found out only at their idle timeout (\"timed out\" \
             below) instead of from a stateless reset: quinn's endpoint sends at most one \
             stateless reset per `min_reset_interval` (`quinn::EndpointConfig`; quinn's default of 20 ms \
             allows 50 per second, the relay sets 1 ms: 1,000 per second) and ignores the other \
             packets of unknown connections, so when the keep-alives of {} clients, started \
             within a second of each other, arrive in a burst, some come faster than resets may \
             leave (confirmed with \
             `RUST_LOG=quinn_proto::endpoint=debug`: \"ignoring unexpected packet within minimum \
             stateless reset interval\").",
            timed_out(x),
            x.clients,
            x.clients
        ));
    }
    for x in &r.restarts {
        notes.push(format!(
            "Disconnect events during the {} (what the agents were told, count): {}.",
            x.how,
            x.reasons
                .iter()
                .take(4)
                .map(|(why, n)| format!("\"{why}\" × {n}"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    for n in notes {
        s.push_str(&format!("- {n}\n"));
    }
    if !r.floods.is_empty() {
        s.push_str("\n#### Hostile load: QUIC handshakes that are never finished\n\n");
        let mut rows = vec![vec![
            "none (relay just started)".to_owned(),
            String::new(),
            String::new(),
            r.flood_baseline_kib.map(mib).unwrap_or_default(),
            String::new(),
        ]];
        for f in &r.floods {
            rows.push(vec![
                format!("{} Initials in {:.1} s", f.initials, f.send_secs),
                f.sources.to_string(),
                f.initials.div_ceil(f.sources).to_string(),
                format!("**{}**", mib(f.rss_kib)),
                format!("{:.2}", f.newcomer_secs),
            ]);
        }
        s.push_str(&kit::table(
            &[
                "flood (after one another)",
                "source addresses",
                "Initials per address",
                "relay RSS after (MiB)",
                "a real client started during it connected in (s)",
            ],
            &rows,
        ));
        s.push_str(&format!(
            "\n- Each Initial is a real client's first datagram (built by quinn-proto for a new \
             connection, `tests/src/quic_flood.rs`), sent once, 100 every 10 ms, from UDP sockets \
             bound to loopback addresses (127.0.3.1 alone, then 127.0.1.x) that never answer; the \
             real client comes from 127.0.0.1. The \
             relay (a fresh `devinprod relay` process, default relay.toml) keeps at most \
             `max_handshakes_per_ip` = 64 handshakes per address and `max_pending_handshakes` = \
             1024 in all; above `retry_above_handshakes` = 128 it answers an unproven address with \
             a stateless Retry, and drops any handshake unfinished after `handshake_timeout_ms` = \
             10 s. Before these bounds (issue 15), 10,000 Initials from one host took a relay from \
             26 to 567 MB. Peak (`VmHWM`) of this relay process: {}.\n- A client that shares \
             the flooding address (behind the same NAT) is refused until those handshakes time out \
             (up to 10 s): the per-address cap is what keeps everyone else in.\n",
            r.flood_hwm_kib
                .map(|k| format!("{} MiB", mib(k)))
                .unwrap_or_else(|| "—".into())
        ));
    }
    for f in &r.failures {
        s.push_str(&format!(
            "- **FAILED**: {}\n",
            f.lines().next().unwrap_or_default()
        ));
    }
    s
}
