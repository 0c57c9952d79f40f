//! The command line contract (DESIGN.md). Extend it; never rename or drop a flag.

use clap::{Args, Parser, Subcommand};
// Secrets (a token, a database URL with its password) are parsed into `Secret`, so the derived
// `Debug` of these structs cannot show them.
use proto::Secret;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "devinprod",
    version,
    about = "Develop in production, safely: route your own requests to your laptop."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the operator's PKI: CA, relay, edge and dbproxy certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run the relay (QUIC server for developers, edges and dbproxies; admin API).
    Relay(RelayArgs),
    /// Run an edge (HTTP reverse proxy) as its own process, connected to a relay.
    Edge(EdgeArgs),
    /// Run a dbproxy (developer sessions in never-committed transactions) as its own process.
    Dbproxy(DbproxyArgs),
    /// Run relay and edge in one process (PKI and tokens under --dir).
    Up(UpArgs),
    /// Run everything on this machine: `up`, a sample production app, a sample developer app
    /// and a connected client; prints the curl lines that show both answering.
    Demo(DemoArgs),
    /// Issue, list and revoke developer tokens through the relay's admin API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Connect this machine to a relay and serve your local app under www-<key>.
    Connect(ConnectArgs),
    /// Your database session, through a running `connect --mysql-listen`.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Show the session's age, statements run and whether it holds writes.
    Status {
        /// The MySQL listener of your `devinprod connect`.
        #[arg(long, default_value = "127.0.0.1:13306")]
        mysql: String,
    },
    /// End the session now: everything it wrote is rolled back; a new one begins.
    Reset {
        /// The MySQL listener of your `devinprod connect`.
        #[arg(long, default_value = "127.0.0.1:13306")]
        mysql: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Write ca.pem ca.key relay.pem relay.key edge.pem edge.key dbproxy.pem dbproxy.key into
    /// DIR, keeping files that already exist.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Name (DNS or IP) the relay is reached by; repeat for several. Default: localhost,
        /// 127.0.0.1.
        #[arg(long = "relay-name")]
        relay_names: Vec<String>,
    },
}

#[derive(Args, Debug, Default)]
pub struct RelayArgs {
    /// TOML file with the relay's settings (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// UDP address of the QUIC listener [default: 127.0.0.1:4433].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TCP address of the admin API [default: 127.0.0.1:4480].
    #[arg(long = "admin-listen")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory of the PKI files and the token store [default: ./.devinprod].
    #[arg(long = "state-dir")]
    pub state_dir: Option<PathBuf>,
    /// Preview URL template sent to developers, `{key}` is the routing key; repeatable.
    #[arg(long = "public-url")]
    pub public_urls: Vec<String>,
    /// Network allowed to use the admin API (CIDR); repeatable [default: loopback only].
    #[arg(long = "admin-allow")]
    pub admin_allow: Vec<ipnet::IpNet>,
    #[command(flatten)]
    pub runtime: ServerThreads,
}

#[derive(Args, Debug, Default)]
pub struct EdgeArgs {
    /// TOML file with the edge's settings (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// TCP address of the public HTTP listener [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Production upstream for requests without a routing key, e.g. http://127.0.0.1:3000.
    #[arg(long)]
    pub production: Option<String>,
    /// The relay, HOST:PORT (UDP).
    #[arg(long)]
    pub relay: Option<String>,
    /// Directory of ca.pem, edge.pem and edge.key [default: ./.devinprod].
    #[arg(long = "state-dir")]
    pub state_dir: Option<PathBuf>,
    /// CA of the relay's certificate [default: <state-dir>/ca.pem].
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The edge's client certificate [default: <state-dir>/edge.pem].
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The edge's private key [default: <state-dir>/edge.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Who may reach developer routes: anyone, networks (allowed_networks in edge.toml) or
    /// staff (staff_secret in edge.toml). Required, here or in the file.
    #[arg(long, value_enum)]
    pub access: Option<AccessArg>,
    #[command(flatten)]
    pub runtime: ServerThreads,
}

/// `--threads` of `relay`, `edge` and `dbproxy` (the default is `main.rs`'s `runtime_for`).
#[derive(Args, Debug, Default)]
pub struct ServerThreads {
    /// Worker threads of this server [default: relay and dbproxy one per CPU core on hosts
    /// with more than two cores, else 1; edge one per CPU core, each serving visitor
    /// connections on its own (`workers` in edge.toml)]. 1 runs it on a single thread.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum AccessArg {
    Anyone,
    Networks,
    Staff,
}

impl From<AccessArg> for edge::access::AccessMode {
    fn from(a: AccessArg) -> Self {
        match a {
            AccessArg::Anyone => edge::access::AccessMode::Anyone,
            AccessArg::Networks => edge::access::AccessMode::Networks,
            AccessArg::Staff => edge::access::AccessMode::Staff,
        }
    }
}

#[derive(Args, Debug, Default)]
pub struct DbproxyArgs {
    /// TOML file with the dbproxy's settings (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The database, mysql://user:password@host:3306 (prefer the config file: flags show in `ps`).
    #[arg(long)]
    pub mysql: Option<Secret>,
    /// The relay, HOST:PORT (UDP).
    #[arg(long)]
    pub relay: Option<String>,
    /// Directory of ca.pem, dbproxy.pem and dbproxy.key [default: ./.devinprod].
    #[arg(long = "state-dir")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: ServerThreads,
    /// Stop when standard input closes (how `up` runs its dbproxy as a child process).
    #[arg(long = "stop-with-stdin", hide = true)]
    pub stop_with_stdin: bool,
}

#[derive(Args, Debug, Default, Clone)]
pub struct UpArgs {
    /// Directory of the PKI files and the token store [default: ./.devinprod].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Production upstream for requests without a routing key, e.g. http://127.0.0.1:3000.
    #[arg(long)]
    pub production: Option<String>,
    /// The database for developer sessions, mysql://user:password@host:3306: runs the dbproxy
    /// as a child process of this one (its crash never takes the edge or the relay with it).
    #[arg(long)]
    pub mysql: Option<Secret>,
    /// Public HTTP listener [default: 127.0.0.1:8080].
    #[arg(long = "edge-listen")]
    pub edge_listen: Option<SocketAddr>,
    /// QUIC listener (UDP) [default: 127.0.0.1:4433].
    #[arg(long = "relay-listen")]
    pub relay_listen: Option<SocketAddr>,
    /// Admin API [default: 127.0.0.1:4480].
    #[arg(long = "admin-listen")]
    pub admin_listen: Option<SocketAddr>,
    /// TOML file with [relay] and [edge] tables (same keys as their own config files).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Preview URL template sent to developers, `{key}` is the routing key; repeatable.
    #[arg(long = "public-url")]
    pub public_urls: Vec<String>,
    /// Worker threads of the all-in-one stack [default: 1, the least CPU per request]. More
    /// spreads many connections over cores at a higher cost per request.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Threads that serve the edge's visitor connections, each with its own connections to
    /// production [default: one per CPU core; `workers` in the [edge] table].
    #[arg(long = "edge-workers", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub edge_workers: Option<u16>,
}

#[derive(Args, Debug, Default)]
pub struct DemoArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// Make the two requests the demo prints, report them, and exit (0 if both answered as
    /// expected).
    #[arg(long)]
    pub check: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token; prints the token alone on stdout.
    Create {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: String,
        /// A name for the token's owner, shown in `token list`.
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never their secrets) and who is connected.
    List {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: String,
    },
    /// Revoke the token with this routing key and disconnect it.
    Revoke {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: String,
        /// The routing key (the token's first 6 characters).
        key: String,
    },
}

pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:4480";

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// The relay, HOST:PORT (UDP).
    #[arg(long)]
    pub relay: String,
    /// Your token. Prefer --token-file or $DEVINPROD_TOKEN: a flag is visible in `ps`.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<Secret>,
    /// File holding your token.
    #[arg(long = "token-file")]
    pub token_file: Option<PathBuf>,
    /// CA that issued the relay's certificate (the operator's ca.pem) [default: public web roots].
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Your local app, HOST:PORT.
    #[arg(long)]
    pub http: String,
    /// Your local app speaks HTTP/2 without TLS (h2c, prior knowledge), e.g. a gRPC server.
    #[arg(long)]
    pub h2c: bool,
    /// No per-request log lines.
    #[arg(long)]
    pub quiet: bool,
    /// TLS name on the relay's certificate [default: the host of --relay].
    #[arg(long = "server-name")]
    pub server_name: Option<String>,
    /// Local address for your app's MySQL connections, e.g. 127.0.0.1:13306; they reach the
    /// database through your DevInProd session (one never-committed transaction).
    #[arg(long = "mysql-listen")]
    pub mysql_listen: Option<std::net::SocketAddr>,
    /// Seconds between keep-alives (stay well inside NAT timeouts).
    #[arg(long = "keep-alive-secs", default_value_t = 10)]
    pub keep_alive_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_parsed_arguments_never_shows_a_token_or_a_database_password() {
        let token = "k3yx9qabcdefghijklmnopqrstuvwxyz01234567";
        let url = "mysql://dbproxy:Db-Pa55word@db.internal:3306";
        let runs: [&[&str]; 3] = [
            &[
                "devinprod",
                "connect",
                "--relay",
                "r:4433",
                "--token",
                token,
                "--http",
                "a:1",
            ],
            &["devinprod", "dbproxy", "--mysql", url],
            &["devinprod", "up", "--mysql", url],
        ];
        for args in runs {
            let cli = Cli::try_parse_from(args).unwrap();
            let shown = format!("{cli:?}");
            assert!(!shown.contains(token), "{shown}");
            assert!(!shown.contains("Pa55word"), "{shown}");
        }
    }
}
