//! The `devinprod` binary as users and scripts run it: real processes, real sockets.

mod common;

use common::{bin, token_create, up, Proc, WAIT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Minimal HTTP/1.1 GET with a Host header; returns status and body.
fn http_get(addr: SocketAddr, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn token_create_prints_the_token_alone_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, _, _, admin) = up(dir.path(), None);
    let out = token_create(&admin);
    assert!(out.ends_with('\n'));
    let token = out.trim_end();
    assert_eq!(token.lines().count(), 1, "{out:?}");
    assert!(proto_like_token(token), "{token:?}");
    // The token store holds no token in clear.
    let store = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
    assert!(!store.contains(token));
    assert!(store.contains(&token[..6]));
}

fn proto_like_token(t: &str) -> bool {
    t.len() == 40
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[test]
fn demo_check_shows_production_and_the_developer_copy_answering() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args([
            "demo",
            "--check",
            "--edge-listen",
            "127.0.0.1:0",
            "--relay-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("production      → 200 Hello from production"),
        "{stdout}"
    );
    assert!(
        stdout.contains("developer copy  → 200 Hello from the developer's laptop"),
        "{stdout}"
    );
    assert!(stdout.contains("curl -H 'Host: www-"), "{stdout}");
    // The demo's PKI went to ./.devinprod, as `up` would have it.
    assert!(dir.path().join(".devinprod/ca.pem").exists());
}

#[test]
fn certs_init_creates_then_keeps_and_makes_ip_names_ip_sans() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        bin()
            .args(["certs", "init", "--dir"])
            .arg(dir.path())
            .args([
                "--relay-name",
                "relay.example.com",
                "--relay-name",
                "10.1.2.3",
            ])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success());
    assert_eq!(
        String::from_utf8_lossy(&first.stdout)
            .matches("created")
            .count(),
        4
    );
    let second = run();
    assert_eq!(
        String::from_utf8_lossy(&second.stdout)
            .matches("kept")
            .count(),
        4
    );
    for f in [
        "ca.pem",
        "ca.key",
        "relay.pem",
        "relay.key",
        "edge.pem",
        "edge.key",
        "dbproxy.pem",
        "dbproxy.key",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
}

#[test]
fn a_config_error_names_the_file_the_key_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:4433\"\nidle_timeout_ms = \"thirty\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["relay", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("key `idle_timeout_ms`"), "{err}");
    assert!(err.contains("expected"), "{err}");

    std::fs::write(
        &file,
        "[relay]\nlisten = \"127.0.0.1:0\"\n[edge]\nlisen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["up", "--config"])
        .arg(&file)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("key `edge.lisen`: unknown field `lisen`, expected one of"),
        "{err}"
    );
}

#[test]
fn connect_refuses_a_malformed_token_without_dialing() {
    let out = bin()
        .args([
            "connect",
            "--relay",
            "127.0.0.1:9",
            "--token",
            "Not-A-Token",
            "--http",
            "127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the token from --token is malformed"), "{err}");
    assert!(err.contains("40 characters"), "{err}");
    assert!(
        !err.contains("Not-A-Token"),
        "an error must not echo a secret: {err}"
    );
}

#[test]
fn connect_with_a_token_file_serves_then_exits_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let app = tiny_app("hello from the laptop");
    let (_up, edge, relay, admin) = up(dir.path(), None);
    let token = token_create(&admin);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let key = &token[..6];
    let mut connect = Proc::spawn(
        bin()
            .args(["connect", "--relay", &relay.to_string(), "--ca"])
            .arg(dir.path().join("ca.pem"))
            .arg("--token-file")
            .arg(&token_file)
            .args(["--http", &app.to_string()]),
    );
    let line = connect.wait_line("Routing key");
    assert!(line.ends_with(key), "{line}");
    assert_eq!(
        http_get(edge, &format!("www-{key}.example.com")),
        (200, "hello from the laptop".into())
    );
    let log = connect.wait_line("GET / 200");
    assert!(log.ends_with("ms"), "{log}");

    connect.signal("INT");
    let (code, rest) = connect.wait_exit();
    assert_eq!(code, Some(0), "{rest:?}");
    assert!(rest.iter().any(|l| l == "Disconnected."), "{rest:?}");
    // The relay forgot the session: the key is offline again.
    let deadline = Instant::now() + WAIT;
    while http_get(edge, &format!("www-{key}.example.com")).0 != 502 {
        assert!(
            Instant::now() < deadline,
            "relay still routes to a client that quit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connect_comes_back_after_the_relay_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    assert!(bin()
        .args(["certs", "init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap()
        .status
        .success());
    let app = tiny_app("still here");
    // A UDP port that is free now, so the relay can come back on the same one.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay_addr = format!("127.0.0.1:{port}");
    let start_relay = || {
        let mut p = Proc::spawn(
            bin()
                .args([
                    "relay",
                    "--listen",
                    &relay_addr,
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--state-dir",
                ])
                .arg(dir.path()),
        );
        let line = p.wait_line("relay listening");
        let admin = line.rsplit(' ').next().unwrap().to_owned();
        (p, admin)
    };
    let (mut relay, admin) = start_relay();
    let token = token_create(&admin);
    let key = token[..6].to_owned();
    let mut edge = Proc::spawn(
        bin()
            .args([
                "edge",
                "--listen",
                "127.0.0.1:0",
                "--access",
                "anyone",
                "--relay",
                &relay_addr,
                "--state-dir",
            ])
            .arg(dir.path()),
    );
    let edge_addr: SocketAddr = edge
        .wait_line("edge listening")
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut connect = Proc::spawn(
        bin()
            .env("DEVINPROD_TOKEN", token.trim())
            .args([
                "connect",
                "--relay",
                &relay_addr,
                "--keep-alive-secs",
                "1",
                "--quiet",
                "--ca",
            ])
            .arg(dir.path().join("ca.pem"))
            .args(["--http", &app.to_string()]),
    );
    connect.wait_line("Routing key");
    assert_eq!(
        http_get(edge_addr, &format!("www-{key}.example.com")).0,
        200
    );

    // No goodbye: the relay process dies on the spot.
    relay.signal("KILL");
    let _ = relay.wait_exit();
    let (_relay2, _) = start_relay();
    connect.wait_line("Relay unreachable");
    connect.wait_line("Routing key");
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(edge_addr, &format!("www-{key}.example.com"));
        if status == 200 {
            assert_eq!(body, "still here");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edge never reached the developer again: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(edge);
}

/// A one-response-per-connection HTTP app on a thread; answers `body` to everything.
fn tiny_app(body: &'static str) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

#[test]
fn a_standalone_edge_refuses_to_start_without_an_access_choice() {
    let dir = tempfile::tempdir().unwrap();
    assert!(bin()
        .args(["certs", "init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap()
        .status
        .success());
    let out = bin()
        .args([
            "edge",
            "--listen",
            "127.0.0.1:0",
            "--relay",
            "127.0.0.1:9",
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`access` is not set"), "{err}");
}
