use super::{decode_bytewise, decode_error};
use crate::postgres::backend;
use crate::postgres::startup::*;
use crate::postgres::{Peer, PgWireError, Problem, SqlState};
use bytes::{BufMut, BytesMut};

/// StartupMessage, protocol 3.0, user "bob", database "shop", written from the layout:
/// Int32 length (32), Int32 196608 (0x00030000), name\0value\0 pairs, a final \0.
const STARTUP_GOLDEN: &[u8] = b"\x00\x00\x00\x20\x00\x03\x00\x00user\0bob\0database\0shop\0\0";
/// SSLRequest: Int32 8, Int32 80877103 (0x04d2162f).
const SSL_REQUEST_GOLDEN: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
/// GSSENCRequest: Int32 8, Int32 80877104 (0x04d21630).
const GSSENC_REQUEST_GOLDEN: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16\x30";
/// CancelRequest: Int32 16, Int32 80877102 (0x04d2162e), process id 4660, key 0xdeadbeef.
const CANCEL_GOLDEN: &[u8] = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x12\x34\xde\xad\xbe\xef";

fn decode_one(bytes: &[u8]) -> StartupPacket {
    let mut decoder = StartupDecoder::new();
    decode_bytewise(bytes, |buf| decoder.decode(buf))
}

fn startup_error(bytes: &[u8]) -> PgWireError {
    let mut decoder = StartupDecoder::new();
    decode_error(bytes, |buf| decoder.decode(buf))
}

/// A start-up packet for `version` with these parameters.
fn startup_packet(version: u32, parameters: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_u32(version);
    for (name, value) in parameters {
        body.extend_from_slice(name);
        body.put_u8(0);
        body.extend_from_slice(value);
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn cancel_packet(key: &[u8]) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.put_u32(12 + key.len() as u32);
    packet.put_u32(CANCEL_REQUEST_CODE);
    packet.put_u32(7);
    packet.extend_from_slice(key);
    packet
}

fn malformed_problem(error: PgWireError) -> Problem {
    match error {
        PgWireError::Malformed {
            from: Peer::App,
            problem,
            ..
        } => problem,
        other => panic!("expected a malformed packet from the app, got {other:?}"),
    }
}

#[test]
fn postgres_startup_message_golden_bytes_decode_to_user_and_database() {
    let StartupPacket::Startup(startup) = decode_one(STARTUP_GOLDEN) else {
        panic!("not a StartupMessage");
    };
    assert_eq!(startup.version, ProtocolVersion::V3_0);
    assert_eq!(startup.user(), "bob");
    assert_eq!(startup.database(), "shop");
    assert_eq!(startup.application_name(), None);
    assert_eq!(
        startup.parameters(),
        [
            ("user".to_string(), "bob".to_string()),
            ("database".to_string(), "shop".to_string())
        ]
    );
    assert!(startup.negotiation().is_none());
}

#[test]
fn postgres_encryption_requests_golden_bytes_decode_and_are_refused_with_n() {
    assert_eq!(decode_one(SSL_REQUEST_GOLDEN), StartupPacket::SslRequest);
    assert_eq!(
        decode_one(GSSENC_REQUEST_GOLDEN),
        StartupPacket::GssEncRequest
    );
    let mut out = BytesMut::new();
    backend::encryption_refused(&mut out);
    assert_eq!(&out[..], b"N");
}

#[test]
fn postgres_ssl_and_gssenc_requests_then_startup_decode_in_order_from_one_buffer() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(SSL_REQUEST_GOLDEN);
    buf.extend_from_slice(GSSENC_REQUEST_GOLDEN);
    buf.extend_from_slice(STARTUP_GOLDEN);
    buf.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
    let mut decoder = StartupDecoder::new();
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(StartupPacket::SslRequest)
    );
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(StartupPacket::GssEncRequest)
    );
    assert!(!decoder.is_complete());
    assert!(matches!(
        decoder.decode(&mut buf).unwrap(),
        Some(StartupPacket::Startup(_))
    ));
    assert!(decoder.is_complete());
    // What the app sent after its StartupMessage stays for the frontend decoder.
    assert_eq!(&buf[..], b"Q\0\0\0\x0dselect 1\0");
    assert_eq!(decoder.decode(&mut buf), Err(PgWireError::StartupComplete));
}

#[test]
fn postgres_a_second_ssl_request_is_refused() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(SSL_REQUEST_GOLDEN);
    buf.extend_from_slice(SSL_REQUEST_GOLDEN);
    let mut decoder = StartupDecoder::new();
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(StartupPacket::SslRequest)
    );
    let error = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(
        error,
        PgWireError::RepeatedRequest {
            request: "SSLRequest"
        }
    );
    assert_eq!(error.to_string(), "the app sent a second SSLRequest");
}

#[test]
fn postgres_ssl_request_with_a_body_is_refused() {
    let error = startup_error(b"\x00\x00\x00\x09\x04\xd2\x16\x2f\x00");
    assert_eq!(
        malformed_problem(error),
        Problem::TrailingBytes { count: 1 }
    );
}

#[test]
fn postgres_cancel_request_golden_bytes_decode() {
    let StartupPacket::Cancel(cancel) = decode_one(CANCEL_GOLDEN) else {
        panic!("not a CancelRequest");
    };
    assert_eq!(cancel.process_id, 0x1234);
    assert_eq!(&cancel.secret_key[..], b"\xde\xad\xbe\xef");
}

#[test]
fn postgres_cancel_request_takes_keys_of_4_to_256_bytes() {
    for length in [4, 32, 256] {
        let key = vec![0xAB; length];
        let StartupPacket::Cancel(cancel) = decode_one(&cancel_packet(&key)) else {
            panic!("not a CancelRequest");
        };
        assert_eq!(cancel.process_id, 7);
        assert_eq!(&cancel.secret_key[..], &key[..]);
    }
    for length in [0, 3, 257] {
        let error = startup_error(&cancel_packet(&vec![0xAB; length]));
        assert_eq!(
            malformed_problem(error),
            Problem::InvalidValue {
                field: "secret key's length",
                value: length as i64
            }
        );
    }
}

#[test]
fn postgres_cancel_request_without_a_process_id_is_refused() {
    let error = startup_error(b"\x00\x00\x00\x0a\x04\xd2\x16\x2e\x00\x00");
    assert_eq!(
        malformed_problem(error),
        Problem::EndsEarly {
            field: "process id"
        }
    );
}

#[test]
fn postgres_startup_packet_over_10000_bytes_after_its_length_is_refused_from_its_length_alone() {
    let error = startup_error(&10_005u32.to_be_bytes());
    assert_eq!(
        error,
        PgWireError::TooLong {
            from: Peer::App,
            message: "start-up packet",
            length: 10_005,
            limit: 4 + MAX_STARTUP_PACKET_LENGTH
        }
    );
    // The longest allowed is waited for.
    let mut buf = BytesMut::from(&10_004u32.to_be_bytes()[..]);
    assert_eq!(StartupDecoder::new().decode(&mut buf), Ok(None));
    // And decodes: 4 + 4 + "user\0bob\0" + "options\0" + 9977 bytes and a NUL + the final NUL.
    let options = vec![b'x'; 9_977];
    let packet = startup_packet(196_608, &[(b"user", b"bob"), (b"options", &options)]);
    assert_eq!(packet.len(), 10_004);
    let StartupPacket::Startup(startup) = decode_one(&packet) else {
        panic!("not a StartupMessage");
    };
    assert_eq!(startup.options().map(str::len), Some(9_977));
}

#[test]
fn postgres_startup_packet_shorter_than_its_header_is_refused() {
    for length in [0u32, 4, 7] {
        let error = startup_error(&length.to_be_bytes());
        assert!(
            matches!(error, PgWireError::LengthTooShort { minimum: 8, .. }),
            "{error:?}"
        );
    }
    let error = startup_error(&u32::MAX.to_be_bytes());
    assert!(matches!(error, PgWireError::TooLong { .. }), "{error:?}");
}

#[test]
fn postgres_startup_waits_for_four_bytes_of_length() {
    let mut decoder = StartupDecoder::new();
    let mut buf = BytesMut::from(&b"\x00\x00\x00"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 3);
}

#[test]
fn postgres_protocol_versions_other_than_3_are_refused() {
    for (code, major, minor) in [
        (0x0002_0000, 2, 0),
        (0x0004_0000, 4, 0),
        (0x0001_0005, 1, 5),
    ] {
        let error = startup_error(&startup_packet(code, &[(b"user", b"bob")]));
        assert_eq!(error, PgWireError::UnsupportedProtocol { major, minor });
        assert_eq!(error.to_pg_error().code, SqlState::FEATURE_NOT_SUPPORTED);
    }
}

#[test]
fn postgres_protocol_3_2_is_negotiated_down_to_3_0_with_unknown_options_listed() {
    let packet = startup_packet(
        196_610,
        &[
            (b"user", b"bob"),
            (b"_pq_.compression", b"on"),
            (b"application_name", b"app"),
        ],
    );
    let StartupPacket::Startup(startup) = decode_one(&packet) else {
        panic!("not a StartupMessage");
    };
    assert_eq!(startup.version, ProtocolVersion { major: 3, minor: 2 });
    assert_eq!(startup.get("_pq_.compression"), None);
    assert_eq!(
        startup.protocol_options(),
        [("_pq_.compression".to_string(), "on".to_string())]
    );
    let negotiation = startup.negotiation().expect("3.2 needs negotiating");
    assert_eq!(negotiation.newest_version, ProtocolVersion::V3_0);
    assert_eq!(negotiation.unrecognized_options, ["_pq_.compression"]);
    let mut out = BytesMut::new();
    backend::negotiate_protocol_version(&mut out, &negotiation).unwrap();
    // 'v', Int32 length 29, Int32 196608, Int32 1, "_pq_.compression\0".
    assert_eq!(
        &out[..],
        b"v\x00\x00\x00\x1d\x00\x03\x00\x00\x00\x00\x00\x01_pq_.compression\0"
    );
}

#[test]
fn postgres_protocol_3_9999_is_negotiated_down_too() {
    // What libpq's "grease" asks for, to check that servers negotiate.
    let packet = startup_packet(0x0003_270F, &[(b"user", b"bob")]);
    let StartupPacket::Startup(startup) = decode_one(&packet) else {
        panic!("not a StartupMessage");
    };
    let negotiation = startup.negotiation().expect("3.9999 needs negotiating");
    assert_eq!(negotiation.newest_version, ProtocolVersion::V3_0);
    assert!(negotiation.unrecognized_options.is_empty());
}

#[test]
fn postgres_startup_without_a_user_is_refused() {
    for parameters in [&[(&b"database"[..], &b"shop"[..])][..], &[(b"user", b"")]] {
        let error = startup_error(&startup_packet(196_608, parameters));
        assert_eq!(malformed_problem(error), Problem::Missing { field: "user" });
    }
}

#[test]
fn postgres_startup_without_its_final_nul_is_refused() {
    // "user\0bob\0" and no terminating \0.
    let error = startup_error(b"\x00\x00\x00\x11\x00\x03\x00\x00user\0bob\0");
    assert_eq!(
        malformed_problem(error),
        Problem::MissingNul {
            field: "parameter name"
        }
    );
    // A value with no NUL at all.
    let error = startup_error(b"\x00\x00\x00\x10\x00\x03\x00\x00user\0bob");
    assert_eq!(
        malformed_problem(error),
        Problem::MissingNul {
            field: "parameter value"
        }
    );
}

#[test]
fn postgres_startup_with_bytes_after_its_terminator_is_refused() {
    let mut packet = startup_packet(196_608, &[(b"user", b"bob")]);
    packet.push(b'x');
    packet[3] += 1;
    assert_eq!(
        malformed_problem(startup_error(&packet)),
        Problem::TrailingBytes { count: 1 }
    );
}

#[test]
fn postgres_startup_with_invalid_utf8_is_refused() {
    let error = startup_error(&startup_packet(196_608, &[(b"user", b"b\xffb")]));
    assert_eq!(
        malformed_problem(error),
        Problem::InvalidUtf8 {
            field: "parameter value"
        }
    );
}

#[test]
fn postgres_startup_with_too_many_parameters_is_refused() {
    let names: Vec<String> = (0..=MAX_STARTUP_PARAMETERS)
        .map(|i| format!("p{i}"))
        .collect();
    let mut parameters: Vec<(&[u8], &[u8])> = vec![(b"user", b"bob")];
    parameters.extend(names.iter().map(|n| (n.as_bytes(), &b"v"[..])));
    let error = startup_error(&startup_packet(196_608, &parameters));
    assert_eq!(
        malformed_problem(error),
        Problem::TooMany {
            what: "parameters",
            count: MAX_STARTUP_PARAMETERS + 1,
            limit: MAX_STARTUP_PARAMETERS
        }
    );
    // The limit itself is fine.
    parameters.truncate(MAX_STARTUP_PARAMETERS);
    assert!(matches!(
        decode_one(&startup_packet(196_608, &parameters)),
        StartupPacket::Startup(_)
    ));
}

#[test]
fn postgres_startup_naming_a_parameter_twice_is_refused() {
    let packet = startup_packet(196_608, &[(b"user", b"bob"), (b"user", b"postgres")]);
    assert_eq!(
        malformed_problem(startup_error(&packet)),
        Problem::DuplicateParameter {
            name: "user".into()
        }
    );
}

#[test]
fn postgres_direct_tls_is_refused_at_its_first_byte() {
    let error = startup_error(b"\x16");
    assert_eq!(error, PgWireError::DirectTls);
    assert!(error.to_string().contains("sslmode=disable"), "{error}");
}

#[test]
fn postgres_database_defaults_to_the_user() {
    let StartupPacket::Startup(startup) = decode_one(&startup_packet(
        196_608,
        &[(b"user", b"bob"), (b"database", b"")],
    )) else {
        panic!("not a StartupMessage");
    };
    assert_eq!(startup.database(), "bob");
}

#[test]
fn postgres_startup_packets_written_by_postgres_protocol_decode() {
    use postgres_protocol::message::frontend;
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    frontend::startup_message(
        [
            ("user", "alice"),
            ("database", "orders"),
            ("application_name", "tokio-postgres"),
            ("client_encoding", "UTF8"),
            ("options", "-c search_path=app"),
            ("replication", "database"),
        ],
        &mut buf,
    )
    .unwrap();
    let mut decoder = StartupDecoder::new();
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(StartupPacket::SslRequest)
    );
    let Some(StartupPacket::Startup(startup)) = decoder.decode(&mut buf).unwrap() else {
        panic!("not a StartupMessage");
    };
    assert!(buf.is_empty());
    assert_eq!(startup.user(), "alice");
    assert_eq!(startup.database(), "orders");
    assert_eq!(startup.application_name(), Some("tokio-postgres"));
    assert_eq!(startup.get("client_encoding"), Some("UTF8"));
    assert_eq!(startup.options(), Some("-c search_path=app"));
    assert_eq!(startup.replication(), Some("database"));

    frontend::cancel_request(42, -2, &mut buf);
    let Some(StartupPacket::Cancel(cancel)) = StartupDecoder::new().decode(&mut buf).unwrap()
    else {
        panic!("not a CancelRequest");
    };
    assert_eq!(cancel.process_id, 42);
    assert_eq!(&cancel.secret_key[..], (-2i32).to_be_bytes());
}
