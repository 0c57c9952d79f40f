//! Strings another party chose reach the operator's terminal and logs escaped, never obeyed: a
//! developer picks their client's name, and the operator reads it in `token list` and in the
//! relay's log.

mod common;

use client::{Agent, AgentConfig, AgentEvent};
use common::{bin, token_create, up, WAIT};
use std::sync::Arc;

/// Clears the screen, homes the cursor, forges a row of `token list`, retitles the window.
const HOSTILE_NAME: &str =
    "\x1b[2J\x1b[Hlaptop\nzzzzzz  root  active    yes  \u{202e}\x1b]0;pwned\x07";
const ESCAPED_NAME: &str =
    r"\u{1b}[2J\u{1b}[Hlaptop\nzzzzzz  root  active    yes  \u{202e}\u{1b}]0;pwned\u{7}";

#[test]
fn token_list_and_the_relay_log_show_a_hostile_client_name_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut stack, _edge, relay, admin) = up(dir.path(), None);
    let token = proto::AuthToken::parse(token_create(&admin).trim()).unwrap();

    // A developer whose client says its name is HOSTILE_NAME.
    // Its own worker thread drives the agent while this test blocks on processes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut config = AgentConfig::new(relay.to_string(), token, "127.0.0.1:9".into());
    config.ca = Some(dir.path().join("ca.pem"));
    config.client_name = HOSTILE_NAME.into();
    let (connected_tx, connected) = std::sync::mpsc::channel();
    let in_runtime = runtime.enter(); // the agent binds its QUIC endpoint on this runtime
    let agent = Agent::new(
        config,
        Arc::new(move |e| {
            if let AgentEvent::Connected { .. } = e {
                let _ = connected_tx.send(());
            }
        }),
    )
    .unwrap();
    let _agent = runtime.spawn(async move { agent.run(std::future::pending()).await });
    connected.recv_timeout(WAIT).expect("the client connected");

    let out = bin()
        .args(["token", "list", "--admin", &admin])
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        !listed.contains(['\x1b', '\x07', '\u{202e}']),
        "raw control characters reached the terminal: {listed:?}"
    );
    assert_eq!(listed.lines().count(), 2, "a header and one row: {listed}");
    assert!(listed.contains(ESCAPED_NAME), "{listed}");

    let log = stack.stderr_now();
    assert!(
        log.contains(ESCAPED_NAME),
        "the relay logs the name escaped: {log}"
    );
    assert!(!log.contains("\x1b[2J"), "{log:?}");
    drop(in_runtime);
    runtime.shutdown_timeout(WAIT);
}
