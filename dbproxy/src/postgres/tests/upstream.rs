//! What a server sends: frames, and the messages the dbproxy looks into.

use super::{decode_bytewise, decode_error};
use crate::postgres::backend::TransactionStatus;
use crate::postgres::upstream::*;
use crate::postgres::{Peer, PgError, PgWireError, Problem, Severity, SqlState};
use bytes::{BufMut, Bytes, BytesMut};

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![tag];
    bytes.put_u32(body.len() as u32 + 4);
    bytes.extend_from_slice(body);
    bytes
}

fn parse(bytes: &[u8]) -> Result<BackendMessage, PgWireError> {
    let mut decoder = BackendFrameDecoder::new(1 << 20);
    BackendMessage::parse(decode_bytewise(bytes, |buf| decoder.decode(buf)))
}

fn problem(error: PgWireError) -> Problem {
    match error {
        PgWireError::Malformed {
            from: Peer::Server,
            problem,
            ..
        } => problem,
        other => panic!("expected a malformed message from the server, got {other:?}"),
    }
}

/// An ErrorResponse as PostgreSQL 16 sends it for `select * from x` (fields in its order).
const SERVER_ERROR: &[u8] = b"SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0P15\0Fparse_relation.c\0L1449\0RparserOpenTable\0\0";

#[test]
fn postgres_server_error_response_parses_and_is_written_back_unchanged() {
    let bytes = frame(b'E', SERVER_ERROR);
    let BackendMessage::ErrorResponse(error) = parse(&bytes).unwrap() else {
        panic!("not an ErrorResponse");
    };
    assert_eq!(error.severity, Severity::Error);
    assert_eq!(error.code, SqlState::parse("42P01").unwrap());
    assert_eq!(error.message, "relation \"x\" does not exist");
    assert_eq!(error.detail, None);
    assert_eq!(
        error.other_fields,
        [
            (b'P', "15".to_string()),
            (b'F', "parse_relation.c".to_string()),
            (b'L', "1449".to_string()),
            (b'R', "parserOpenTable".to_string())
        ]
    );
    let mut out = BytesMut::new();
    error.write(&mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
}

#[test]
fn postgres_notice_without_v_takes_its_severity_from_s() {
    // Servers before 9.6 send no V field.
    let bytes = frame(b'N', b"SWARNING\0C01000\0Mcareful\0\0");
    let BackendMessage::NoticeResponse(notice) = parse(&bytes).unwrap() else {
        panic!("not a NoticeResponse");
    };
    assert_eq!(notice.severity, Severity::Warning);
}

#[test]
fn postgres_server_errors_missing_their_code_or_severity_are_refused() {
    assert_eq!(
        problem(parse(&frame(b'E', b"SERROR\0VERROR\0Mno code\0\0")).unwrap_err()),
        Problem::Missing {
            field: "valid SQLSTATE"
        }
    );
    assert_eq!(
        problem(parse(&frame(b'E', b"SERROR\0VERROR\0Cabc\0Mbad code\0\0")).unwrap_err()),
        Problem::Missing {
            field: "valid SQLSTATE"
        }
    );
    assert_eq!(
        problem(parse(&frame(b'E', b"C42000\0Mno severity\0\0")).unwrap_err()),
        Problem::Missing { field: "severity" }
    );
    assert_eq!(
        problem(parse(&frame(b'E', b"VERROR\0C42000\0Mno end\0")).unwrap_err()),
        Problem::EndsEarly {
            field: "field code"
        }
    );
}

#[test]
fn postgres_ready_for_query_status_is_read_and_checked() {
    assert_eq!(
        parse(b"Z\0\0\0\x05T").unwrap(),
        BackendMessage::ReadyForQuery(TransactionStatus::InTransaction)
    );
    assert_eq!(
        problem(parse(b"Z\0\0\0\x05?").unwrap_err()),
        Problem::InvalidValue {
            field: "transaction status",
            value: i64::from(b'?')
        }
    );
    assert_eq!(
        problem(parse(b"Z\0\0\0\x06II").unwrap_err()),
        Problem::TrailingBytes { count: 1 }
    );
}

#[test]
fn postgres_backend_key_data_of_protocol_3_2_keeps_its_long_key() {
    let mut body = 77u32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0x5A; 32]);
    assert_eq!(
        parse(&frame(b'K', &body)).unwrap(),
        BackendMessage::BackendKeyData {
            process_id: 77,
            secret_key: Bytes::from(vec![0x5A; 32])
        }
    );
}

#[test]
fn postgres_md5_and_other_authentication_requests_parse() {
    assert_eq!(
        parse(&frame(b'R', b"\0\0\0\x05salt")).unwrap(),
        BackendMessage::Authentication(AuthenticationRequest::Md5Password { salt: *b"salt" })
    );
    assert_eq!(
        parse(&frame(b'R', b"\0\0\0\x07")).unwrap(),
        BackendMessage::Authentication(AuthenticationRequest::Other {
            code: 7,
            data: Bytes::new()
        })
    );
    assert_eq!(
        problem(parse(&frame(b'R', b"\0\0\0\x63")).unwrap_err()),
        Problem::InvalidValue {
            field: "authentication code",
            value: 99
        }
    );
}

#[test]
fn postgres_messages_passed_on_unparsed_come_back_whole() {
    let bytes = frame(b'd', b"1\tx\n");
    assert_eq!(
        parse(&bytes).unwrap(),
        BackendMessage::Other(BackendFrame {
            tag: b'd',
            body: Bytes::from_static(b"1\tx\n")
        })
    );
}

#[test]
fn postgres_row_description_with_a_bad_format_or_cut_short_is_refused() {
    let mut body = vec![0, 1];
    body.extend_from_slice(b"a\0");
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(&[0, 2]);
    assert_eq!(
        problem(parse(&frame(b'T', &body)).unwrap_err()),
        Problem::InvalidValue {
            field: "format code",
            value: 2
        }
    );
    assert_eq!(
        problem(parse(&frame(b'T', b"\x00\x02a\0")).unwrap_err()),
        Problem::EndsEarly { field: "table OID" }
    );
}

#[test]
fn postgres_server_unknown_type_is_refused_at_its_first_byte() {
    let mut decoder = BackendFrameDecoder::new(1024);
    let error = decode_error(b"Q", |buf| decoder.decode(buf));
    assert_eq!(
        error,
        PgWireError::UnknownMessageType {
            from: Peer::Server,
            tag: b'Q'
        }
    );
    assert_eq!(
        error.to_string(),
        "the PostgreSQL server sent a message of unknown type 'Q' (0x51)"
    );
}

#[test]
fn postgres_server_lengths_under_4_or_over_the_limit_are_refused() {
    let mut decoder = BackendFrameDecoder::new(1024);
    for length in [-1i32, 0, 3] {
        let mut bytes = vec![b'D'];
        bytes.put_i32(length);
        let error = decode_error(&bytes, |buf| decoder.decode(buf));
        assert!(
            matches!(
                error,
                PgWireError::LengthTooShort {
                    from: Peer::Server,
                    ..
                }
            ),
            "{error:?}"
        );
    }
    let error = decode_error(b"D\x00\x00\x04\x01", |buf| decoder.decode(buf));
    assert_eq!(
        error,
        PgWireError::TooLong {
            from: Peer::Server,
            message: "DataRow",
            length: 1025,
            limit: 1024
        }
    );
    assert_eq!(
        error.to_string(),
        "the PostgreSQL server sent a DataRow of 1025 bytes; the limit is 1024 bytes"
    );
}

#[test]
fn postgres_server_frames_wait_for_their_last_byte() {
    let mut stream = BytesMut::new();
    stream.extend_from_slice(b"1\0\0\0\x04");
    stream.extend_from_slice(&frame(b'C', b"SELECT 1\0"));
    stream.extend_from_slice(b"Z\0\0\0\x05I");
    let mut decoder = BackendFrameDecoder::new(1024);
    let mut buf = BytesMut::new();
    let mut tags = Vec::new();
    for byte in stream.iter() {
        buf.put_u8(*byte);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            tags.push(frame.tag);
        }
    }
    assert_eq!(tags, b"1CZ");
    assert!(buf.is_empty());
}

#[test]
fn postgres_negotiate_protocol_version_with_a_negative_count_is_refused() {
    assert_eq!(
        problem(parse(&frame(b'v', b"\x00\x03\x00\x00\xff\xff\xff\xff")).unwrap_err()),
        Problem::InvalidValue {
            field: "unrecognised option count",
            value: -1
        }
    );
}

#[test]
fn postgres_pg_error_to_pg_error_is_a_fatal_protocol_violation() {
    let error = PgWireError::Malformed {
        from: Peer::App,
        message: "Bind",
        problem: Problem::TrailingBytes { count: 2 },
    };
    let fatal: PgError = error.to_pg_error();
    assert_eq!(fatal.severity, Severity::Fatal);
    assert_eq!(fatal.code, SqlState::PROTOCOL_VIOLATION);
    assert_eq!(
        fatal.message,
        "the app sent a malformed Bind: 2 bytes follow its last field"
    );
}
