//! `devinprod`: parse the command line, set up logging, hand over to the command.

use clap::Parser;
use client::cli::{CertsCommand, Cli, Command, DbCommand, TokenCommand};
use client::commands;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's allocator: a tunnelled request allocates and frees many small
/// buffers (heads, frames, hyper's messages) across tasks, and glibc's malloc, free and
/// consolidation were about a tenth of each process's CPU per request (BENCHMARKS.md, round 3).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Servers log at info by default; the developer's terminal stays for the request log.
    let default_level = match cli.command {
        Command::Relay(_) | Command::Edge(_) | Command::Dbproxy(_) | Command::Up(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match runtime_for(&cli.command).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("devinprod: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The command runs as a task on the runtime's workers rather than on the main thread that
    // `block_on` parks: hot loops (the client's stream accept loop, the servers' accept loops)
    // then wake only pool threads, not one more thread outside the pool, once per request.
    runtime.block_on(async {
        match tokio::spawn(run(cli.command)).await {
            Ok(result) => exit_code(result),
            Err(e) => {
                eprintln!("devinprod: internal error: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

/// The runtime a command runs on. `--threads N` sets a server's worker threads, 1 meaning a
/// single-threaded runtime; without it:
///
/// * the developer's client (`connect`), the one-shot commands and the all-in-one stack (`up`,
///   `demo`) run on one thread. A request crosses several tasks (visitor connection, QUIC
///   connection driver, stream); on one thread they run back to back and the QUIC driver sends
///   the frames of every request that became ready in one pass, where worker threads wake each
///   other (futex, a context switch) and send a packet per write. Measured (BENCHMARKS.md,
///   round 3): `up` at 32 connections 17–22 instead of 27–35 µs CPU per request, 0.13 instead
///   of 1.25 UDP sends per request;
/// * the edge serves visitor connections on worker threads of its own, one per core by
///   default, each a single-threaded runtime with its own production connections (as nginx's
///   worker processes; `edge::Edge::run`): production traffic uses every core without the
///   cross-thread wake-ups of a work-stealing runtime. Its main runtime, like `up`'s, has one
///   thread;
/// * `relay` and `dbproxy` take one worker per core on hosts with more than two cores,
///   where they have cores to spread many developers' or visitors' connections over, and one
///   thread on smaller hosts, where a second worker costs more than it gives (measured on two
///   cores: the edge in front of production 40–42k instead of 31–36k requests/s, the relay a
///   third of the CPU per tunnelled request).
fn runtime_for(command: &Command) -> tokio::runtime::Builder {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_default = if cores > 2 { cores } else { 1 };
    let (asked, default) = match command {
        Command::Relay(a) => (a.runtime.threads, server_default),
        // The edge's `--threads` are its visitor-connection workers, each a single-threaded
        // runtime of its own (`edge::Edge::run`); this runtime keeps the relay connection.
        Command::Edge(_) => (None, 1),
        Command::Dbproxy(a) => (a.runtime.threads, server_default),
        Command::Up(a) => (a.threads, 1),
        Command::Demo(a) => (a.up.threads, 1),
        Command::Certs { .. }
        | Command::Token { .. }
        | Command::Connect(_)
        | Command::Db { .. } => (None, 1),
    };
    let threads = asked.map_or(default, usize::from);
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
}

async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Certs {
            command: CertsCommand::Init { dir, relay_names },
        } => commands::certs_init::run(&dir, &relay_names),
        Command::Relay(args) => commands::servers::relay(args).await,
        Command::Edge(args) => commands::servers::edge(args).await,
        Command::Dbproxy(args) => commands::servers::dbproxy(args).await,
        Command::Up(args) => commands::servers::up(args).await,
        Command::Demo(args) => commands::demo::run(args).await,
        Command::Token { command } => match command {
            TokenCommand::Create { admin, name } => commands::token::create(&admin, name).await,
            TokenCommand::List { admin } => commands::token::list(&admin).await,
            TokenCommand::Revoke { admin, key } => commands::token::revoke(&admin, &key).await,
        },
        Command::Connect(args) => commands::connect::run(args).await,
        Command::Db { command } => match command {
            DbCommand::Status { mysql } => commands::db::status(&mysql).await,
            DbCommand::Reset { mysql } => commands::db::reset(&mysql).await,
        },
    }
}

fn exit_code(result: anyhow::Result<i32>) -> std::process::ExitCode {
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // Errors quote peers (the admin API, the relay, a database): escaped here, once.
            eprintln!("devinprod: {}", proto::printable(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}
