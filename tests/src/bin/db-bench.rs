//! `db-bench [--smoke] [--mysql URL] [--devinprod PATH]`: the database scenario of the
//! benchmark. MariaDB reached through DevInProd's database tunnel against the same MariaDB
//! reached directly, in the same run, with real processes:
//!
//! * `devinprod up --mysql URL --config up.toml` — relay, admin API and edge in one process,
//!   the dbproxy its supervised child (the all-in-one topology), with the session rate limits
//!   (`[dbproxy.limits]`) off;
//! * `devinprod connect --mysql-listen 127.0.0.1:PORT --quiet` — the developer's client, a
//!   separate process, one QUIC connection over loopback to the relay;
//! * the drivers: `SELECT 1` round trips with mysql_async (this process), and
//!   `sysbench oltp_read_only --threads=1` on a table set prepared directly in a database this
//!   benchmark creates and drops (DDL is refused through the tunnel);
//! * hostile load: several app connections each send one huge statement at once; the
//!   dbproxy's peak memory against its packet memory budget.
//!
//! `--keep` keeps the temporary directory (state, `up.log`, `connect.log`) and prints its path.
//!
//! Prints a markdown section (heading, table, notes) on stdout; progress goes to stderr.
//! Exit status: 0 when every measurement ran, 1 when one failed (a sysbench run with errors
//! is a failure, not a result), 2 when something it needs is missing (the release `devinprod`
//! binary, sysbench, the `mariadb` client, a reachable MariaDB).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tests::benchkit::{self as kit, ChildGuard};

/// Default database: the machine's MariaDB, as root without a password.
const DEFAULT_MYSQL: &str = "mysql://root@127.0.0.1:3306";

struct Plan {
    smoke: bool,
    select_n: usize,
    select_warmup: usize,
    select_rounds: usize,
    sysbench_secs: u64,
    sysbench_rounds: usize,
    table_size: u64,
    /// Hostile load: this many app connections each send one statement of `huge_bytes`.
    huge_conns: usize,
    huge_bytes: usize,
}

impl Plan {
    fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                smoke,
                select_n: 100,
                select_warmup: 20,
                select_rounds: 2,
                sysbench_secs: 2,
                sysbench_rounds: 1,
                table_size: 1000,
                huge_conns: 2,
                huge_bytes: 8 << 20,
            }
        } else {
            Self {
                smoke,
                select_n: 2000,
                select_warmup: 100,
                select_rounds: 5,
                sysbench_secs: 10,
                sysbench_rounds: 3,
                table_size: 10_000,
                // Under MariaDB's default max_allowed_packet (16 MiB), so that the policy
                // reads each (a larger one is refused by its size, unread).
                huge_conns: 8,
                huge_bytes: 15 << 20,
            }
        }
    }
}

/// What was measured so far (printed even when a later step failed).
#[derive(Default)]
struct Report {
    server_version: String,
    select_direct: Vec<kit::Latency>,
    select_tunnel: Vec<kit::Latency>,
    tps_direct: Vec<f64>,
    tps_tunnel: Vec<f64>,
    sysbench_version: String,
    huge: Option<Huge>,
    failures: Vec<String>,
}

/// Hostile load: app connections that each send one huge statement at the same time.
struct Huge {
    conns: usize,
    bytes: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    hwm_kib: u64,
    /// How each statement was answered: MySQL error code (0: no error), and how many.
    answers: Vec<(u16, usize)>,
    /// The developer's session still answered `SELECT 1` afterwards.
    session_ok: bool,
}

/// A database server reachable at `host:port`.
struct Db {
    url: String,
    host: String,
    port: u16,
    user: String,
    password: String,
}

impl Db {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs SQL as the administrator with the `mariadb` command line client.
    fn admin(&self, sql: &str) -> Result<String, String> {
        let mut c = kit::command("mariadb");
        c.args([
            format!("-u{}", self.user),
            format!("-h{}", self.host),
            format!("-P{}", self.port),
            "-N".into(),
            "-B".into(),
        ]);
        if !self.password.is_empty() {
            c.arg(format!("-p{}", self.password));
        }
        c.args(["-e", sql]);
        let out = kit::run("mariadb", c, Duration::from_secs(30))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!("mariadb -e {sql:?}: {}", out.describe()))
        }
    }
}

/// Names of the benchmark's databases: `devinprod_bench_<pid>_<millis>`.
const DB_PREFIX: &str = "devinprod_bench_";

/// Drops the databases of earlier runs that were killed before they could (their `db-bench`
/// process is gone).
fn drop_stale_databases(db: &Db) {
    let Ok(list) = db.admin(&format!(
        "SHOW DATABASES LIKE '{}%'",
        DB_PREFIX.replace('_', "\\_")
    )) else {
        return;
    };
    for name in list.lines().map(str::trim) {
        let Some(pid) = name
            .strip_prefix(DB_PREFIX)
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if kit::proc_name(pid).as_deref() == Some("db-bench") {
            continue;
        }
        eprintln!("db-bench: dropping {name}, left by an earlier run (pid {pid} is gone)");
        if let Err(e) = db.admin(&format!("DROP DATABASE IF EXISTS `{name}`")) {
            eprintln!("db-bench: {e}");
        }
    }
}

/// The benchmark's own database, dropped when this goes out of scope (also on error or panic).
struct BenchDatabase<'a> {
    db: &'a Db,
    name: String,
}

impl Drop for BenchDatabase<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .db
            .admin(&format!("DROP DATABASE IF EXISTS `{}`", self.name))
        {
            eprintln!("db-bench: could not drop database {}: {e}", self.name);
        }
    }
}

fn main() -> ExitCode {
    let plan = Plan::new(kit::smoke_flag());
    let bin = match kit::devinprod_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("db-bench: {e}");
            return ExitCode::from(kit::EXIT_SETUP);
        }
    };
    for (tool, package) in [("sysbench", "sysbench"), ("mariadb", "mariadb-client")] {
        if !kit::on_path(tool) {
            eprintln!("db-bench: `{tool}` not found (apt-get install -y {package})");
            return ExitCode::from(kit::EXIT_SETUP);
        }
    }
    let url = kit::flag_value("--mysql").unwrap_or_else(|| DEFAULT_MYSQL.to_owned());
    let db = match dbproxy::upstream::UpstreamUrl::parse(&url) {
        Ok(u) => Db {
            url: url.clone(),
            host: u.host,
            port: u.port,
            user: u.user,
            password: u.password,
        },
        Err(e) => {
            eprintln!("db-bench: --mysql: {e}");
            return ExitCode::from(kit::EXIT_SETUP);
        }
    };
    if let Err(e) = ensure_mariadb(&db) {
        eprintln!("db-bench: {e}");
        return ExitCode::from(kit::EXIT_SETUP);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::default();
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = bench(&plan, &bin, &db, &mut report) => r,
            _ = kit::interrupted() => Err("interrupted".to_owned()),
        }
    });
    if let Err(e) = outcome {
        report.failures.push(e);
    }
    print!("{}", render(&plan, &db, &report));
    if !report.failures.is_empty() {
        for f in &report.failures {
            eprintln!("db-bench: FAILED: {f}");
        }
        return ExitCode::from(kit::EXIT_FAILED);
    }
    ExitCode::SUCCESS
}

/// Makes sure MariaDB answers at `db`; starts the machine's `mariadbd` when the default local
/// server is down.
fn ensure_mariadb(db: &Db) -> Result<(), String> {
    let addr: Option<SocketAddr> = format!("{}:{}", db.host, db.port).parse().ok().or_else(|| {
        use std::net::ToSocketAddrs;
        db.addr().to_socket_addrs().ok().and_then(|mut a| a.next())
    });
    let Some(addr) = addr else {
        return Err(format!("cannot resolve {}", db.addr()));
    };
    if kit::wait_tcp(addr, Duration::from_secs(1)) {
        return Ok(());
    }
    let local_default = addr.ip().is_loopback() && db.port == 3306;
    if !local_default || !Path::new("/usr/sbin/mariadbd").exists() {
        return Err(format!(
            "no MariaDB answers at {} (start it, or pass --mysql mysql://user:password@host:port)",
            db.addr()
        ));
    }
    eprintln!("db-bench: MariaDB is down at {addr}; starting /usr/sbin/mariadbd");
    let mut c = Command::new("start-stop-daemon");
    c.args([
        "--start",
        "--oknodo",
        "--background",
        "--exec",
        "/usr/sbin/mariadbd",
    ]);
    let out = kit::run("start-stop-daemon", c, Duration::from_secs(30))?;
    if !out.status.success() {
        return Err(format!("start-stop-daemon: {}", out.describe()));
    }
    if kit::wait_tcp(addr, Duration::from_secs(60)) {
        Ok(())
    } else {
        Err(format!("MariaDB did not come up at {addr} within 60 s"))
    }
}

async fn bench(plan: &Plan, bin: &Path, db: &Db, report: &mut Report) -> Result<(), String> {
    // The direct side: server version, the benchmark's own database, the table set.
    let direct_addr = db.addr();
    report.server_version = db.admin("SELECT VERSION()")?.trim().to_owned();
    report.sysbench_version = {
        let mut c = kit::command("sysbench");
        c.arg("--version");
        kit::run("sysbench --version", c, Duration::from_secs(10))?
            .stdout
            .trim()
            .to_owned()
    };
    drop_stale_databases(db);
    let name = format!(
        "{DB_PREFIX}{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 1_000_000_000)
            .unwrap_or(0)
    );
    db.admin(&format!("CREATE DATABASE `{name}`"))?;
    let bench_db = BenchDatabase { db, name };
    eprintln!(
        "db-bench: preparing sbtest1 ({} rows) in {} directly",
        plan.table_size, bench_db.name
    );
    let prepare = sysbench(
        plan,
        &bench_db.name,
        &db.host,
        db.port,
        &db.user,
        &db.password,
        "prepare",
    );
    let out = kit::run("sysbench prepare", prepare, Duration::from_secs(300))?;
    if !out.status.success() {
        return Err(format!("sysbench prepare: {}", out.describe()));
    }

    // The tunnel side: `devinprod up --mysql` and `devinprod connect --mysql-listen`.
    let tmp = kit::RunDir::new("db-bench-")?;
    let state = tmp.path().join("state");
    let up_log = tmp.path().join("up.log");
    let connect_log = tmp.path().join("connect.log");
    // The session's rate limits are a policy, not tunnel overhead: off, so they cannot cut a
    // run short (a faster tunnel would run into the defaults, 10,000 statements/s and 1M
    // rows/min per session).
    let up_config = tmp.path().join("up.toml");
    std::fs::write(
        &up_config,
        "[dbproxy.limits]\nstatements_per_sec = 0\nrows_per_min = 0\n",
    )
    .map_err(|e| format!("{}: {e}", up_config.display()))?;
    let mut up = kit::command(bin);
    up.arg("up")
        .arg("--config")
        .arg(&up_config)
        .arg("--dir")
        .arg(&state)
        .args(["--mysql", &db.url])
        .args(["--relay-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--edge-listen", "127.0.0.1:0"])
        .stderr(log_file(&up_log)?);
    let mut up = ChildGuard::spawn("devinprod up", up).map_err(|e| format!("devinprod up: {e}"))?;
    let with_log = |e: String, log: &Path| format!("{e}\n{}", kit::log_tail(log, 20));
    let relay = up
        .wait_line(Duration::from_secs(30), |l| {
            l.trim_start()
                .strip_prefix("relay ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        })
        .map_err(|e| with_log(e, &up_log))?;
    let admin = up
        .wait_line(Duration::from_secs(10), |l| {
            l.trim_start()
                .strip_prefix("admin ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        })
        .map_err(|e| with_log(e, &up_log))?;
    let mut create = kit::command(bin);
    create
        .args(["token", "create", "--admin", &admin, "--name", "db-bench"])
        .env("RUST_LOG", "warn");
    let out = kit::run("devinprod token create", create, Duration::from_secs(20))?;
    if !out.status.success() {
        return Err(format!("devinprod token create: {}", out.describe()));
    }
    let token = out.stdout.trim().to_owned();

    let mysql_listen: SocketAddr = ([127, 0, 0, 1], kit::free_tcp_port()).into();
    let mut connect = kit::command(bin);
    connect
        .arg("connect")
        .args(["--relay", &relay])
        .arg("--ca")
        .arg(state.join("ca.pem"))
        .args(["--http", "127.0.0.1:9"])
        .args(["--mysql-listen", &mysql_listen.to_string()])
        .arg("--quiet")
        .env("DEVINPROD_TOKEN", &token)
        .stderr(log_file(&connect_log)?);
    let mut connect = ChildGuard::spawn("devinprod connect", connect)
        .map_err(|e| format!("devinprod connect: {e}"))?;
    connect
        .wait_line(Duration::from_secs(30), |l| {
            l.starts_with("Connected to relay").then_some(())
        })
        .map_err(|e| with_log(e, &connect_log))?;
    let tunnel_addr = mysql_listen.to_string();
    eprintln!("db-bench: up (pid {}) relay {relay}, admin {admin}; connect (pid {}) --mysql-listen {tunnel_addr}", up.pid(), connect.pid());

    // SELECT 1: rounds alternate which side goes first.
    let direct_opts = kit::mysql_opts(&direct_addr, &db.user, &db.password)?;
    let tunnel_opts = kit::mysql_opts(&tunnel_addr, "bench", "any")?;
    for round in 0..plan.select_rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for tunnel in order {
            let opts = if tunnel {
                tunnel_opts.clone()
            } else {
                direct_opts.clone()
            };
            let what = if tunnel { "tunnel" } else { "direct" };
            let l = select1_round(opts, plan)
                .await
                .map_err(|e| format!("SELECT 1 {what}, round {}: {e}", round + 1))?;
            eprintln!(
                "db-bench: SELECT 1 {what} round {}: p50={:.0}us p99={:.0}us mean={:.0}us",
                round + 1,
                l.p50_us,
                l.p99_us,
                l.mean_us
            );
            if tunnel {
                report.select_tunnel.push(l);
            } else {
                report.select_direct.push(l);
            }
        }
    }

    // sysbench oltp_read_only, one thread.
    let (tunnel_host, tunnel_port) = (mysql_listen.ip().to_string(), mysql_listen.port());
    for round in 0..plan.sysbench_rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for tunnel in order {
            let what = if tunnel { "tunnel" } else { "direct" };
            let cmd = if tunnel {
                sysbench(
                    plan,
                    &bench_db.name,
                    &tunnel_host,
                    tunnel_port,
                    "bench",
                    "any",
                    "run",
                )
            } else {
                sysbench(
                    plan,
                    &bench_db.name,
                    &db.host,
                    db.port,
                    &db.user,
                    &db.password,
                    "run",
                )
            };
            let out = kit::run(
                "sysbench run",
                cmd,
                Duration::from_secs(plan.sysbench_secs + 60),
            )?;
            let tps = sysbench_tps(&out)
                .map_err(|e| format!("sysbench oltp_read_only {what}, round {}: {e}", round + 1))?;
            eprintln!(
                "db-bench: sysbench {what} round {}: {tps:.1} transactions/s",
                round + 1
            );
            if tunnel {
                report.tps_tunnel.push(tps);
            } else {
                report.tps_direct.push(tps);
            }
        }
    }

    // Hostile load: huge statements at once, against the dbproxy's packet memory budget.
    let dbproxy_pid = tests::procs::child_of(up.pid(), "dbproxy")
        .ok_or("no dbproxy child process of `devinprod up`")?;
    report.huge = Some(huge_statements(plan, &tunnel_opts, dbproxy_pid).await?);

    // Both processes still alive: neither crashed under the load.
    for p in [&mut up, &mut connect] {
        if let Some(s) = p.try_wait() {
            return Err(format!("{} exited during the benchmark ({s})", p.name));
        }
    }
    Ok(())
}

/// `plan.huge_conns` app connections through the tunnel each send one statement of
/// `plan.huge_bytes` at the same time (an unterminated string: the policy reads all of it and
/// refuses it, so nothing reaches MariaDB). Each needs a buffer of its size in the dbproxy; the
/// packet memory budget (`max_packet_memory_bytes`) bounds their total.
async fn huge_statements(
    plan: &Plan,
    tunnel: &mysql_async::Opts,
    dbproxy: u32,
) -> Result<Huge, String> {
    use mysql_async::prelude::Queryable;
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(tunnel.clone())
        .max_allowed_packet(Some(1 << 30))
        .into();
    let mut conns = Vec::new();
    for _ in 0..plan.huge_conns {
        let c = mysql_async::Conn::new(opts.clone())
            .await
            .map_err(|e| format!("huge statements: connect: {e}"))?;
        conns.push(c);
    }
    let rss_before_kib = kit::rss_kib(dbproxy).ok_or("dbproxy gone")?;
    let sql = Arc::new(format!("SELECT '{}", "x".repeat(plan.huge_bytes - 8)));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let sql = sql.clone();
            tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(120), c.query_drop(sql.as_str()))
                    .await;
                let _ = c.disconnect().await;
                match r {
                    Ok(Ok(())) => Ok(0u16),
                    Ok(Err(mysql_async::Error::Server(e))) => Ok(e.code),
                    Ok(Err(e)) => Err(format!("huge statement: {e}")),
                    Err(_) => Err("huge statement: no answer within 120 s".to_owned()),
                }
            })
        })
        .collect();
    let mut answers = std::collections::BTreeMap::new();
    for t in tasks {
        let code = t.await.map_err(|e| e.to_string())??;
        *answers.entry(code).or_insert(0) += 1;
    }
    let hwm_kib = kit::proc_status_kib(dbproxy, "VmHWM:").ok_or("dbproxy gone")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = kit::rss_kib(dbproxy).ok_or("dbproxy gone")?;
    let session_ok = match mysql_async::Conn::new(tunnel.clone()).await {
        Ok(mut c) => c.query_drop("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    eprintln!(
        "db-bench: {} statements of {} MiB at once: dbproxy RSS {:.0} → peak {:.0} MiB; answers {answers:?}",
        plan.huge_conns,
        plan.huge_bytes >> 20,
        rss_before_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    Ok(Huge {
        conns: plan.huge_conns,
        bytes: plan.huge_bytes,
        rss_before_kib,
        rss_after_kib,
        hwm_kib,
        answers: answers.into_iter().collect(),
        session_ok,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn log_file(path: &Path) -> Result<Stdio, String> {
    std::fs::File::create(path)
        .map(Stdio::from)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// One round of `SELECT 1` on a fresh connection, bounded in time.
async fn select1_round(opts: mysql_async::Opts, plan: &Plan) -> Result<kit::Latency, String> {
    let limit = Duration::from_secs(30 + plan.select_n as u64 / 20);
    let work = async {
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let l = kit::select1_latency(&mut conn, plan.select_n, plan.select_warmup)
            .await
            .map_err(|e| e.to_string())?;
        conn.disconnect().await.map_err(|e| e.to_string())?;
        Ok(l)
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("did not finish within {limit:?}"))?
}

/// A `sysbench oltp_read_only` command (prepare or run) against `host:port`.
fn sysbench(
    plan: &Plan,
    database: &str,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    action: &str,
) -> Command {
    let mut c = kit::command("sysbench");
    c.args([
        "oltp_read_only".to_owned(),
        format!("--mysql-host={host}"),
        format!("--mysql-port={port}"),
        format!("--mysql-user={user}"),
        format!("--mysql-password={password}"),
        format!("--mysql-db={database}"),
        "--tables=1".into(),
        format!("--table-size={}", plan.table_size),
    ]);
    if action == "run" {
        c.args([
            "--threads=1".to_owned(),
            format!("--time={}", plan.sysbench_secs),
            "--report-interval=0".into(),
        ]);
    }
    c.arg(action);
    c
}

/// Transactions per second of a sysbench run, or why the run is not a result.
fn sysbench_tps(out: &kit::Finished) -> Result<f64, String> {
    if !out.status.success() {
        return Err(format!("sysbench failed: {}", out.describe()));
    }
    let field = |name: &str| -> Option<(f64, String)> {
        let line = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))?;
        let rest = line.trim_start()[name.len()..].trim();
        let count = rest.split_whitespace().next()?.parse().ok()?;
        Some((count, rest.to_owned()))
    };
    let (transactions, rest) = field("transactions:")
        .ok_or_else(|| format!("no transactions line:\n{}", kit::tail(&out.stdout, 30)))?;
    let (ignored, _) = field("ignored errors:")
        .ok_or_else(|| format!("no ignored errors line:\n{}", kit::tail(&out.stdout, 30)))?;
    let (reconnects, _) = field("reconnects:").unwrap_or((0.0, String::new()));
    if ignored != 0.0 || reconnects != 0.0 {
        return Err(format!(
            "{ignored} ignored errors, {reconnects} reconnects: not a result\n{}\n{}",
            kit::tail(&out.stdout, 30),
            kit::tail(&out.stderr, 10)
        ));
    }
    if out.stderr.contains("FATAL") || out.stdout.contains("FATAL") {
        return Err(format!(
            "sysbench reported a fatal error:\n{}",
            out.describe()
        ));
    }
    if transactions <= 0.0 {
        return Err(format!("no transactions:\n{}", kit::tail(&out.stdout, 30)));
    }
    // "1234   (123.40 per sec.)"
    rest.split_once('(')
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot read the rate from {rest:?}"))
}

fn us(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.0}")
    }
}

fn render(plan: &Plan, db: &Db, r: &Report) -> String {
    let med = |v: &[kit::Latency], f: fn(&kit::Latency) -> f64| {
        kit::median(&v.iter().map(f).collect::<Vec<_>>())
    };
    let (d50, t50) = (
        med(&r.select_direct, |l| l.p50_us),
        med(&r.select_tunnel, |l| l.p50_us),
    );
    let (d99, t99) = (
        med(&r.select_direct, |l| l.p99_us),
        med(&r.select_tunnel, |l| l.p99_us),
    );
    let (dtps, ttps) = (kit::median(&r.tps_direct), kit::median(&r.tps_tunnel));
    let added = |d: f64, t: f64| {
        if d.is_nan() || t.is_nan() {
            "—".to_owned()
        } else {
            format!("{:+.0} µs ({:.2}×)", t - d, t / d)
        }
    };
    let added50 = t50 - d50;
    let budget = if added50.is_nan() {
        "≤ +300 µs: not measured".to_owned()
    } else if added50 <= 300.0 {
        "≤ +300 µs: **met**".to_owned()
    } else {
        "≤ +300 µs: **missed**".to_owned()
    };
    let tps = |v: f64| {
        if v.is_nan() {
            "—".into()
        } else {
            format!("{v:.0}")
        }
    };
    let ratio = if dtps.is_nan() || ttps.is_nan() {
        "—".to_owned()
    } else {
        format!("{:.2}× ({:+.0}%)", ttps / dtps, (ttps / dtps - 1.0) * 100.0)
    };
    let rows = vec![
        vec![
            "`SELECT 1` p50 (µs)".into(),
            us(d50),
            us(t50),
            added(d50, t50),
            budget,
        ],
        vec![
            "`SELECT 1` p99 (µs)".into(),
            us(d99),
            us(t99),
            added(d99, t99),
            String::new(),
        ],
        vec![
            "sysbench `oltp_read_only`, 1 thread (transactions/s)".into(),
            tps(dtps),
            tps(ttps),
            ratio,
            String::new(),
        ],
    ];
    let per_round = |v: &[kit::Latency]| {
        v.iter()
            .map(|l| format!("{:.0}/{:.0}", l.p50_us, l.p99_us))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let per_round_tps = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "### Database: MariaDB through `devinprod connect --mysql-listen` vs direct{}\n\n",
        if plan.smoke { " (smoke)" } else { "" }
    );
    s.push_str(&kit::table(
        &[
            "measure",
            "direct",
            "through the tunnel",
            "tunnel − direct (ratio)",
            "budget",
        ],
        &rows,
    ));
    s.push('\n');
    let notes = [
        format!(
            "Tunnel: `devinprod up --mysql {}` (relay + admin API + edge in one process, the dbproxy \
             its supervised child process, which the relay hands database streams to over QUIC on \
             loopback; default dbproxy settings \
             except the per-session rate limits, off: `[dbproxy.limits] statements_per_sec = 0, \
             rows_per_min = 0` — they are a safety bound, not what is measured) and `devinprod connect \
             --mysql-listen 127.0.0.1:PORT --quiet` (a separate process; one QUIC connection over \
             loopback). Direct: the same MariaDB {} at {}. Every app connection through the tunnel \
             joins the developer's one never-committed transaction.",
            dbproxy::upstream::redact(&db.url),
            if r.server_version.is_empty() { "(version unknown)" } else { &r.server_version },
            db.addr()
        ),
        format!(
            "Where it ran: {}, no CPU pinning — MariaDB, `devinprod up`, `devinprod connect` and the \
             driver (this process, or sysbench) share all cores, in both the direct and the tunnel \
             runs; the dbproxy's lock watchdog polls MariaDB every 250 ms during both.",
            kit::machine()
        ),
        format!(
            "`SELECT 1`: {} rounds, each on a fresh connection: {} unmeasured, then {} sequential round \
             trips with mysql_async (text protocol); the table shows medians over rounds of each \
             round's p50 and p99; direct and tunnel alternate which goes first. Per round p50/p99 µs — \
             direct: {}; tunnel: {}.",
            plan.select_rounds,
            plan.select_warmup,
            plan.select_n,
            per_round(&r.select_direct),
            per_round(&r.select_tunnel)
        ),
        format!(
            "sysbench ({}): `oltp_read_only --threads=1 --time={} --tables=1 --table-size={}` (its \
             default server-side prepared statements and BEGIN/COMMIT, which the dbproxy turns into \
             savepoints), table prepared directly in a database created for this run and dropped \
             after; {} round(s), median shown; a run with errors, ignored errors or reconnects is a \
             failure, not a result (there were {}). Per round transactions/s — direct: {}; tunnel: {}.",
            if r.sysbench_version.is_empty() { "sysbench" } else { &r.sysbench_version },
            plan.sysbench_secs,
            plan.table_size,
            plan.sysbench_rounds,
            if r.failures.is_empty() { "none" } else { "failures: see below" },
            per_round_tps(&r.tps_direct),
            per_round_tps(&r.tps_tunnel)
        ),
    ];
    for n in notes {
        s.push_str(&format!("- {n}\n"));
    }
    if let Some(h) = &r.huge {
        s.push_str(&format!(
            "\n#### Hostile load: {} huge statements at once\n\n",
            h.conns
        ));
        let answers = h
            .answers
            .iter()
            .map(|(code, n)| match code {
                0 => format!("{n} × ran"),
                1227 => format!("{n} × refused by the policy (1227)"),
                1041 => format!("{n} × out of packet memory (1041)"),
                c => format!("{n} × error {c}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rows = vec![vec![
            format!("{} × {} MiB", h.conns, h.bytes >> 20),
            format!("{:.0}", (h.conns * h.bytes) as f64 / (1 << 20) as f64),
            mib(h.rss_before_kib),
            format!("**{}**", mib(h.hwm_kib)),
            mib(h.rss_after_kib),
            answers,
            if h.session_ok { "yes" } else { "**no**" }.into(),
        ]];
        s.push_str(&kit::table(
            &[
                "statements sent at once",
                "their total (MiB)",
                "dbproxy RSS before (MiB)",
                "dbproxy peak (VmHWM, MiB)",
                "RSS after (MiB)",
                "answers",
                "session still serves `SELECT 1`",
            ],
            &rows,
        ));
        s.push_str(
            "\n- Each app connection (mysql_async, `max_allowed_packet` raised on the client so it \
             sends them) sends `SELECT 'xxx…` — an unterminated string the policy reads to the end \
             and refuses, so nothing reaches MariaDB; the dbproxy process is `devinprod up`'s child. \
             A packet of 64 KiB or more is read into memory taken from one budget \
             (`max_packet_memory_bytes` = 256 MiB by default, `max_packet_bytes` = 64 MiB each), \
             counted three times (the copies parsing it makes); a packet that finds no room \
             within 2 s is answered 1041 and its connection closed. A statement over the \
             database's `max_allowed_packet` is refused (1153) before it is parsed. Before the \
             budget (issue 15), four connections sending 64 MB packets cost +754 MB.\n",
        );
    }
    for f in &r.failures {
        s.push_str(&format!(
            "- **FAILED**: {}\n",
            f.lines().next().unwrap_or_default()
        ));
    }
    s
}
