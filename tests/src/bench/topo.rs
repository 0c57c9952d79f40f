//! The paths under test, all to the same bench app on loopback: the app direct, DevInProd in
//! its two topologies (all-in-one `devinprod up`, and separate `relay` + `edge` processes),
//! and rathole in its plain TCP and its Noise transports.

use super::proc::{self, command, free_tcp_port, wait_serving, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a service may take to start and answer.
const START: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    AllInOne,
    Separate,
    RatholeTcp,
    RatholeNoise,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Direct,
        Kind::AllInOne,
        Kind::Separate,
        Kind::RatholeTcp,
        Kind::RatholeNoise,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct to the app",
            Kind::AllInOne => "DevInProd, all-in-one (`up`)",
            Kind::Separate => "DevInProd, relay + edge processes",
            Kind::RatholeTcp => "rathole, TCP transport",
            Kind::RatholeNoise => "rathole, Noise transport",
        }
    }

    pub fn is_devinprod(self) -> bool {
        matches!(self, Kind::AllInOne | Kind::Separate)
    }
}

/// Where a load generator sends requests for one path.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// The Host header to send (`www-<key>.example.com` through DevInProd).
    pub host: Option<String>,
}

impl Target {
    pub fn host_header(&self) -> String {
        self.host.clone().unwrap_or_else(|| self.addr.to_string())
    }

    /// One `GET /` that must answer 200 with the bench app's body (wrk counts only answers
    /// of 400 and above as errors; this also catches a path that changed its answer).
    pub fn check(&self) -> Result<(), String> {
        match proc::http_get(self.addr, &self.host_header(), "/", Duration::from_secs(5))? {
            (200, body) if body.contains("Hello, world!") => Ok(()),
            (status, body) => Err(format!(
                "GET / answered HTTP {status}: {}",
                proc::tail(&body, 2)
            )),
        }
    }
}

/// A path that is up: its target and the processes that serve it (killed when dropped).
pub struct Running {
    pub target: Target,
    pub procs: Vec<Proc>,
}

impl Running {
    /// `Err` when one of its processes has ended.
    pub fn check(&mut self) -> Result<(), String> {
        self.procs.iter_mut().try_for_each(Proc::check_running)
    }
}

/// What starting a path needs.
pub struct Env {
    pub devinprod: PathBuf,
    pub rathole: Option<PathBuf>,
    pub work: PathBuf,
    pub app: SocketAddr,
}

impl Env {
    /// `devinprod ARGS` with the log level the report states.
    fn devinprod(&self) -> std::process::Command {
        let mut c = command(&self.devinprod);
        c.env("RUST_LOG", log_level());
        c
    }
}

/// The log level of the servers: `$RUST_LOG` when set, else `warn` (the edge logs one line
/// per request at `info`; the benchmark measures the tunnel, not the terminal).
pub fn log_level() -> String {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "warn".into())
}

/// Starts the bench app on a free port.
pub fn start_app(bin: &Path, work: &Path) -> Result<(Proc, SocketAddr), String> {
    let mut cmd = command(bin);
    cmd.arg("127.0.0.1:0");
    let mut p = Proc::spawn("bench-app", cmd, work)?;
    let addr = p.wait_line(START, |l| {
        l.strip_prefix("bench-app listening on ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
    })?;
    wait_serving(addr, &addr.to_string(), START)?;
    Ok((p, addr))
}

pub fn direct(env: &Env) -> Running {
    Running {
        target: Target {
            kind: Kind::Direct,
            addr: env.app,
            host: None,
        },
        procs: Vec::new(),
    }
}

fn token_create(env: &Env, admin: &str) -> Result<String, String> {
    let mut cmd = env.devinprod();
    cmd.args(["token", "create", "--admin", admin, "--name", "bench"]);
    let done = proc::run("devinprod token create", cmd, START, false)?;
    if !done.status.success() {
        return Err(format!("devinprod token create: {}", done.describe()));
    }
    let token = done.stdout.trim().to_owned();
    if token.len() < 6 {
        return Err(format!("devinprod token create printed {token:?}"));
    }
    Ok(token)
}

/// `devinprod connect --http APP --quiet`, waiting until it is connected.
fn connect(env: &Env, name: &str, relay: &str, ca: &Path, token: &str) -> Result<Proc, String> {
    let mut cmd = env.devinprod();
    cmd.env("DEVINPROD_TOKEN", token)
        .args(["connect", "--relay", relay, "--quiet", "--ca"])
        .arg(ca)
        .args(["--http", &env.app.to_string()]);
    let mut p = Proc::spawn(name, cmd, &env.work)?;
    p.wait_line(START, |l| l.contains("Routing key").then_some(()))?;
    Ok(p)
}

/// The word after `prefix` in a line, e.g. the address in `  edge   http://127.0.0.1:8080 …`.
fn word_after(line: &str, prefix: &str) -> Option<String> {
    let rest = line.split_once(prefix)?.1;
    rest.split_whitespace().next().map(|w| w.to_owned())
}

fn parse_addr(word: &str) -> Option<SocketAddr> {
    word.trim_start_matches("http://").parse().ok()
}

/// `devinprod up --production http://APP` + `devinprod connect --http APP --quiet`.
pub fn all_in_one(env: &Env) -> Result<Running, String> {
    let dir = env.work.join("up");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = env.devinprod();
    cmd.arg("up")
        .arg("--dir")
        .arg(&dir)
        .args(["--production", &format!("http://{}", env.app)])
        .args(["--edge-listen", "127.0.0.1:0"])
        .args(["--relay-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"]);
    let mut up = Proc::spawn("devinprod-up", cmd, &env.work)?;
    let edge = up.wait_line(START, |l| {
        l.trim_start()
            .starts_with("edge ")
            .then(|| word_after(l, "edge").and_then(|w| parse_addr(&w)))
            .flatten()
    })?;
    let relay = up.wait_line(START, |l| {
        l.trim_start()
            .starts_with("relay ")
            .then(|| word_after(l, "relay"))
            .flatten()
    })?;
    let admin = up.wait_line(START, |l| {
        l.trim_start()
            .starts_with("admin ")
            .then(|| word_after(l, "admin"))
            .flatten()
    })?;
    let token = token_create(env, &admin)?;
    let client = connect(env, "connect-up", &relay, &dir.join("ca.pem"), &token)?;
    let host = format!("www-{}.example.com", &token[..6]);
    wait_serving(edge, &host, START)?;
    Ok(Running {
        target: Target {
            kind: Kind::AllInOne,
            addr: edge,
            host: Some(host),
        },
        procs: vec![up, client],
    })
}

/// `devinprod certs init`, `devinprod relay`, `devinprod edge --access anyone --relay …`,
/// `devinprod connect`: four processes.
pub fn separate(env: &Env) -> Result<Running, String> {
    let dir = env.work.join("separate");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = env.devinprod();
    cmd.args(["certs", "init", "--dir"]).arg(&dir);
    let done = proc::run("devinprod certs init", cmd, START, false)?;
    if !done.status.success() {
        return Err(format!("devinprod certs init: {}", done.describe()));
    }
    // The relay's UDP port is chosen here so the edge can be told it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no free UDP port: {e}"))?
        .port();
    let relay_addr = format!("127.0.0.1:{port}");
    let mut cmd = env.devinprod();
    cmd.args(["relay", "--listen", &relay_addr])
        .args(["--admin-listen", "127.0.0.1:0", "--state-dir"])
        .arg(&dir);
    let mut relay = Proc::spawn("devinprod-relay", cmd, &env.work)?;
    let admin = relay.wait_line(START, |l| {
        l.starts_with("relay listening")
            .then(|| l.rsplit(' ').next().map(str::to_owned))
            .flatten()
    })?;
    let token = token_create(env, &admin)?;
    let mut cmd = env.devinprod();
    cmd.args(["edge", "--listen", "127.0.0.1:0", "--access", "anyone"])
        .args(["--relay", &relay_addr, "--state-dir"])
        .arg(&dir);
    let mut edge = Proc::spawn("devinprod-edge", cmd, &env.work)?;
    let edge_addr = edge.wait_line(START, |l| {
        l.starts_with("edge listening")
            .then(|| word_after(l, "on").and_then(|w| parse_addr(&w)))
            .flatten()
    })?;
    let client = connect(
        env,
        "connect-separate",
        &relay_addr,
        &dir.join("ca.pem"),
        &token,
    )?;
    let host = format!("www-{}.example.com", &token[..6]);
    wait_serving(edge_addr, &host, START)?;
    Ok(Running {
        target: Target {
            kind: Kind::Separate,
            addr: edge_addr,
            host: Some(host),
        },
        procs: vec![relay, edge, client],
    })
}

/// A fresh X25519 key pair from `rathole --genkey`: (private, public), base64.
fn rathole_keypair(rathole: &Path) -> Result<(String, String), String> {
    let mut cmd = command(rathole);
    cmd.arg("--genkey");
    let done = proc::run("rathole --genkey", cmd, START, false)?;
    if !done.status.success() {
        return Err(format!("rathole --genkey: {}", done.describe()));
    }
    let after = |label: &str| {
        let mut lines = done.stdout.lines().map(str::trim);
        lines.find(|l| l.starts_with(label))?;
        lines.find(|l| !l.is_empty()).map(str::to_owned)
    };
    match (after("Private Key"), after("Public Key")) {
        (Some(private), Some(public)) => Ok((private, public)),
        _ => Err(format!(
            "rathole --genkey printed no key pair: {}",
            done.stdout
        )),
    }
}

/// The server and client TOML configurations of one rathole tunnel.
pub fn rathole_configs(
    control: u16,
    public: u16,
    app: SocketAddr,
    token: &str,
    noise: Option<(&str, &str)>,
) -> (String, String) {
    let (server_transport, client_transport) = match noise {
        None => (
            "[server.transport]\ntype = \"tcp\"\n".to_owned(),
            "[client.transport]\ntype = \"tcp\"\n".to_owned(),
        ),
        // The default pattern, Noise_NK_25519_ChaChaPoly_BLAKE2s: the client knows the
        // server's public key (like TLS with a pinned certificate).
        Some((private, public)) => (
            format!(
                "[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"
            ),
            format!(
                "[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"
            ),
        ),
    };
    let server = format!(
        "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\n{server_transport}\n\
         [server.services.app]\ntoken = \"{token}\"\nbind_addr = \"127.0.0.1:{public}\"\nnodelay = true\n"
    );
    let client = format!(
        "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\n{client_transport}\n\
         [client.services.app]\ntoken = \"{token}\"\nlocal_addr = \"{app}\"\nnodelay = true\n"
    );
    (server, client)
}

/// rathole server + client forwarding a public port to the app, in TCP or Noise transport.
pub fn rathole(env: &Env, noise: bool) -> Result<Running, String> {
    let Some(rathole) = &env.rathole else {
        return Err("rathole is not installed".into());
    };
    let name = if noise {
        "rathole-noise"
    } else {
        "rathole-tcp"
    };
    let dir = env.work.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let keys = if noise {
        Some(rathole_keypair(rathole)?)
    } else {
        None
    };
    let control = free_tcp_port()?;
    let public = free_tcp_port()?;
    let token = format!("bench-{}-{}", std::process::id(), public);
    let (server, client) = rathole_configs(
        control,
        public,
        env.app,
        &token,
        keys.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
    );
    let write = |file: &str, text: &str| {
        let p = dir.join(file);
        std::fs::write(&p, text)
            .map(|_| p.clone())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let server_toml = write("server.toml", &server)?;
    let client_toml = write("client.toml", &client)?;
    let spawn = |role: &str, flag: &str, toml: &Path| {
        let mut cmd = command(rathole);
        cmd.env("RUST_LOG", log_level()).arg(flag).arg(toml);
        Proc::spawn(&format!("{name}-{role}"), cmd, &env.work)
    };
    let server = spawn("server", "--server", &server_toml)?;
    proc::wait_tcp(format!("127.0.0.1:{control}").parse().unwrap(), START)?;
    let client = spawn("client", "--client", &client_toml)?;
    let addr: SocketAddr = format!("127.0.0.1:{public}").parse().unwrap();
    wait_serving(addr, &addr.to_string(), START)?;
    Ok(Running {
        target: Target {
            kind: if noise {
                Kind::RatholeNoise
            } else {
                Kind::RatholeTcp
            },
            addr,
            host: None,
        },
        procs: vec![server, client],
    })
}
