//! `devinprod connect`: the developer's side, with a terminal that says what happens.

use crate::agent::{Agent, AgentConfig, AgentEvent, AgentExit};
use crate::cli::ConnectArgs;
use anyhow::{bail, Context};
use proto::AuthToken;
use std::sync::Arc;
use std::time::Duration;

/// The token from --token, --token-file or $DEVINPROD_TOKEN, in that order.
fn token(args: &ConnectArgs) -> anyhow::Result<AuthToken> {
    let (text, source) = if let Some(t) = &args.token {
        (t.clone(), "--token".to_owned())
    } else if let Some(f) = &args.token_file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read token file {}", f.display()))?;
        (t, format!("token file {}", f.display()))
    } else if let Ok(t) = std::env::var("DEVINPROD_TOKEN") {
        (t, "$DEVINPROD_TOKEN".to_owned())
    } else {
        bail!("no token: pass --token-file FILE, set DEVINPROD_TOKEN, or pass --token (get one with `devinprod token create`)");
    };
    AuthToken::parse(&text).with_context(|| format!("the token from {source} is malformed"))
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<i32> {
    let token = token(&args)?;
    let mut config = AgentConfig::new(args.relay.clone(), token, args.http.clone());
    config.ca = args.ca.clone();
    config.h2c = args.h2c;
    config.server_name = args.server_name.clone();
    config.keep_alive = Duration::from_secs(args.keep_alive_secs.max(1));
    config.mysql_listen = args.mysql_listen;
    let quiet = args.quiet;
    let relay = args.relay.clone();
    let local = args.http.clone();
    let events = Arc::new(move |e: AgentEvent| match e {
        AgentEvent::Connected {
            routing_key,
            public_urls,
            ..
        } => {
            println!("Connected to relay {relay}. Routing key: {routing_key}");
            for u in &public_urls {
                println!("  Preview: {u}");
            }
            println!("  Forwarding to your app at http://{local}");
        }
        AgentEvent::Disconnected { reason, retry_in } => {
            println!(
                "Relay unreachable ({reason}); reconnecting in {:.1}s…",
                retry_in.as_secs_f64()
            );
        }
        AgentEvent::Request(r) if !quiet => {
            println!(
                "{} {} {} {:.1}ms",
                r.method,
                r.path,
                r.status,
                r.duration.as_secs_f64() * 1e3
            );
        }
        AgentEvent::Request(_) => {}
    });
    let agent = Agent::new(config, events).context("cannot start the client")?;
    if let Some(addr) = agent.mysql_addr() {
        println!("MySQL for your app: {addr} (every connection joins your session's never-committed transaction)");
    }
    let exit = agent.run(super::shutdown_signal()).await;
    match &exit {
        AgentExit::Shutdown => println!("Disconnected."),
        AgentExit::Refused(r) => eprintln!("devinprod: the relay refused this token: {}", r.reason),
        AgentExit::Revoked(reason) => eprintln!("devinprod: {reason}"),
        AgentExit::Replaced(reason) => eprintln!(
            "devinprod: {reason}. Exiting so the two clients do not take turns; stop the other one to use this machine."
        ),
    }
    Ok(exit.exit_code())
}
