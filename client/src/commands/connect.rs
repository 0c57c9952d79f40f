//! `devinprod connect`: the developer's side, with a terminal that says what happens.

use crate::agent::{Agent, AgentConfig, AgentEvent, AgentExit};
use crate::cli::ConnectArgs;
use anyhow::{bail, Context};
use proto::{printable, AuthToken};
use std::sync::Arc;
use std::time::Duration;

/// The token from --token, --token-file or $DEVINPROD_TOKEN, in that order.
fn token(args: &ConnectArgs) -> anyhow::Result<AuthToken> {
    let (text, source) = if let Some(t) = &args.token {
        (t.expose().to_owned(), "--token".to_owned())
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
    let events = Arc::new(move |e: AgentEvent| {
        if let Some(lines) = event_lines(&e, &relay, &local, quiet) {
            println!("{lines}");
        }
    });
    let agent = Agent::new(config, events).context("cannot start the client")?;
    if let Some(addr) = agent.mysql_addr() {
        println!("MySQL for your app: {addr} (every connection joins your session's never-committed transaction)");
    }
    let exit = agent.run(super::shutdown_signal()).await;
    match exit_message(&exit) {
        ExitMessage::Out(m) => println!("{m}"),
        ExitMessage::Err(m) => eprintln!("{m}"),
    }
    Ok(exit.exit_code())
}

/// What the terminal shows for an agent event, if anything. Everything the relay or a visitor
/// chose (public URLs, reasons, request lines) is escaped: it must not drive the terminal.
fn event_lines(e: &AgentEvent, relay: &str, local: &str, quiet: bool) -> Option<String> {
    match e {
        AgentEvent::Connected {
            routing_key,
            public_urls,
            ..
        } => {
            let mut out = format!(
                "Connected to relay {relay}. Routing key: {}",
                printable(routing_key)
            );
            for u in public_urls {
                out += &format!("\n  Preview: {}", printable(u));
            }
            out += &format!("\n  Forwarding to your app at http://{local}");
            Some(out)
        }
        AgentEvent::Disconnected { reason, retry_in } => Some(format!(
            "Relay unreachable ({}); reconnecting in {:.1}s…",
            printable(reason),
            retry_in.as_secs_f64()
        )),
        AgentEvent::Request(r) if !quiet => Some(r.to_string()),
        AgentEvent::Request(_) => None,
    }
}

enum ExitMessage {
    Out(String),
    Err(String),
}

/// Why `connect` stopped, in the relay's words where it gave them (escaped).
fn exit_message(exit: &AgentExit) -> ExitMessage {
    match exit {
        AgentExit::Shutdown => ExitMessage::Out("Disconnected.".into()),
        AgentExit::Refused(r) => ExitMessage::Err(format!(
            "devinprod: the relay refused this token: {}",
            printable(&r.reason)
        )),
        AgentExit::Revoked(reason) => {
            ExitMessage::Err(format!("devinprod: {}", printable(reason)))
        }
        AgentExit::Replaced(reason) => ExitMessage::Err(format!(
            "devinprod: {}. Exiting so the two clients do not take turns; stop the other one to use this machine.",
            printable(reason)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::RequestRecord;

    const NASTY: &str = "\x1b[2J\x1b[H\nforged line\u{202e}";
    const SHOWN: &str = r"\u{1b}[2J\u{1b}[H\nforged line\u{202e}";

    fn assert_escaped(text: &str) {
        assert!(!text.contains(['\x1b', '\u{202e}']), "{text:?}");
        assert!(text.contains(SHOWN), "{text:?}");
    }

    #[test]
    fn what_the_relay_sends_is_printed_escaped() {
        let connected = AgentEvent::Connected {
            routing_key: "k3yx9q".into(),
            public_urls: vec![NASTY.into()],
            session: 1,
        };
        let lines = event_lines(&connected, "relay:4433", "127.0.0.1:3000", false).unwrap();
        assert_escaped(&lines);
        assert_eq!(lines.lines().count(), 3, "{lines}");
        let lost = AgentEvent::Disconnected {
            reason: NASTY.into(),
            retry_in: Duration::from_secs(1),
        };
        assert_escaped(&event_lines(&lost, "relay:4433", "127.0.0.1:3000", false).unwrap());
        for exit in [
            AgentExit::Refused(proto::Refusal {
                code: proto::RefusalCode::BadToken,
                reason: NASTY.into(),
            }),
            AgentExit::Revoked(NASTY.into()),
            AgentExit::Replaced(NASTY.into()),
        ] {
            match exit_message(&exit) {
                ExitMessage::Err(m) => assert_escaped(&m),
                ExitMessage::Out(m) => panic!("{m}"),
            }
        }
    }

    #[test]
    fn a_visitors_request_line_is_printed_escaped() {
        let request = AgentEvent::Request(RequestRecord {
            method: "GET".into(),
            path: format!("/{NASTY}"),
            status: 200,
            duration: Duration::from_millis(2),
        });
        let line = event_lines(&request, "relay:4433", "127.0.0.1:3000", false).unwrap();
        assert_escaped(&line);
        assert_eq!(line.lines().count(), 1);
        assert!(event_lines(&request, "relay:4433", "127.0.0.1:3000", true).is_none());
    }
}
