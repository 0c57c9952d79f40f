//! A real client against the codec: `psql` connects to a tiny scripted server (a std
//! TcpListener on an ephemeral port, one connection, bounded in time) that uses the startup
//! and frontend decoders to read what psql sends and the builders to answer, through a
//! password, one query and its result. psql must print the row the builders wrote.

use crate::postgres::backend::{self, FieldDescription, TransactionStatus};
use crate::postgres::frontend::{FrontendDecoder, FrontendMessage};
use crate::postgres::startup::{StartupDecoder, StartupMessage, StartupPacket};
use crate::postgres::{Format, PgWireError};
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the whole exchange may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the scripted server saw.
#[derive(Debug)]
struct Seen {
    ssl_request: bool,
    startup: StartupMessage,
    password: Vec<u8>,
    query: String,
    terminated: bool,
}

fn psql_or_fail() -> &'static str {
    let found = Command::new("psql")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "psql is not installed: install the Debian package postgresql-client \
         (apt-get install -y postgresql-client; .ci/run does). This test never skips."
    );
    "psql"
}

/// Reads from `stream` into `buf` until `decode` yields.
fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, PgWireError>,
) -> T {
    loop {
        if let Some(value) = decode(buf).unwrap_or_else(|e| panic!("decoding psql's bytes: {e}")) {
            return value;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("reading from psql");
        assert!(n > 0, "psql closed the connection early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The scripted server's side of one connection.
fn serve(mut stream: TcpStream) -> Seen {
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();

    let mut startup_decoder = StartupDecoder::new();
    let mut ssl_request = false;
    let startup = loop {
        match read_until(&mut stream, &mut buf, |b| startup_decoder.decode(b)) {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                ssl_request = true;
                backend::encryption_refused(&mut out);
                stream.write_all(&out).expect("answering SSLRequest");
                out.clear();
            }
            StartupPacket::Startup(startup) => break startup,
            StartupPacket::Cancel(cancel) => panic!("psql sent a CancelRequest: {cancel:?}"),
        }
    };
    // A newer psql may ask for 3.2 (or 3.9999 to test servers): negotiated down to 3.0.
    if let Some(negotiation) = startup.negotiation() {
        backend::negotiate_protocol_version(&mut out, &negotiation).expect("negotiating");
    }
    backend::authentication_cleartext_password(&mut out);
    stream.write_all(&out).expect("asking for a password");
    out.clear();

    let mut decoder = FrontendDecoder::new(1 << 20);
    let FrontendMessage::AuthenticationResponse(answer) =
        read_until(&mut stream, &mut buf, |b| decoder.decode(b))
    else {
        panic!("psql did not answer with a password");
    };
    let password = answer.password().expect("a PasswordMessage").to_vec();

    backend::authentication_ok(&mut out);
    for (name, value) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        backend::parameter_status(&mut out, name, value).expect("ParameterStatus");
    }
    backend::backend_key_data(&mut out, 4242, &[1, 2, 3, 4]).expect("BackendKeyData");
    backend::ready_for_query(&mut out, TransactionStatus::Idle);
    stream.write_all(&out).expect("welcoming psql");
    out.clear();

    let FrontendMessage::Query { sql: query } =
        read_until(&mut stream, &mut buf, |b| decoder.decode(b))
    else {
        panic!("psql did not send a simple query");
    };
    let column = FieldDescription {
        name: "answer".into(),
        table_oid: 0,
        column_attr: 0,
        type_oid: 23,
        type_len: 4,
        type_modifier: -1,
        format: Format::Text,
    };
    backend::row_description(&mut out, &[column]).expect("RowDescription");
    backend::data_row(&mut out, &[Some(b"4217")]).expect("DataRow");
    backend::command_complete(&mut out, "SELECT 1").expect("CommandComplete");
    backend::ready_for_query(&mut out, TransactionStatus::Idle);
    stream.write_all(&out).expect("answering the query");

    let terminated = matches!(
        read_until(&mut stream, &mut buf, |b| decoder.decode(b)),
        FrontendMessage::Terminate
    );
    Seen {
        ssl_request,
        startup,
        password,
        query,
        terminated,
    }
}

#[test]
fn postgres_psql_startup_password_and_query_decode_and_its_answers_display() {
    let psql = psql_or_fail();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let server = std::thread::spawn(move || {
        let started = Instant::now();
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    return serve(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(started.elapsed() < DEADLINE, "psql never connected");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });

    let mut command = Command::new(psql);
    // Whatever PG* settings the environment has would change what psql sends.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            command.env_remove(name);
        }
    }
    let port = port.to_string();
    let mut child = command
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port])
        .args([
            "-U",
            "someone",
            "-d",
            "somedb",
            "-c",
            "select 4217 as answer",
        ])
        .env("PGSSLMODE", "prefer")
        .env("PGGSSENCMODE", "disable")
        .env("PGPASSWORD", "hunter2")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting psql");
    let started = Instant::now();
    while child.try_wait().expect("waiting for psql").is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("psql did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("psql's output");
    let seen = server.join().expect("the scripted server failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}");

    assert!(
        seen.ssl_request,
        "psql with sslmode=prefer asks for SSL first"
    );
    assert_eq!(seen.startup.user(), "someone");
    assert_eq!(seen.startup.database(), "somedb");
    assert_eq!(seen.startup.application_name(), Some("psql"));
    assert_eq!(seen.password, b"hunter2");
    assert_eq!(seen.query, "select 4217 as answer");
    assert!(seen.terminated, "psql ends with Terminate");
    assert_eq!(
        stdout.trim(),
        "4217",
        "psql printed what the builders wrote"
    );
}
