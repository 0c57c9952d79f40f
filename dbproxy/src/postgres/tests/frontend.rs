use super::{decode_bytewise, decode_error};
use crate::postgres::frontend::*;
use crate::postgres::{Format, Peer, PgWireError, Problem, Severity, SqlState};
use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend as pp;
use postgres_protocol::IsNull;

const MAX: usize = 1 << 20;

fn decode_one(bytes: &[u8]) -> FrontendMessage {
    let mut decoder = FrontendDecoder::new(MAX);
    decode_bytewise(bytes, |buf| decoder.decode(buf))
}

fn frontend_error(bytes: &[u8]) -> PgWireError {
    let mut decoder = FrontendDecoder::new(MAX);
    decode_error(bytes, |buf| decoder.decode(buf))
}

fn problem(error: PgWireError) -> Problem {
    match error {
        PgWireError::Malformed {
            from: Peer::App,
            problem,
            ..
        } => problem,
        other => panic!("expected a malformed message from the app, got {other:?}"),
    }
}

/// A message with this type and body, its length computed.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![tag];
    bytes.put_u32(body.len() as u32 + 4);
    bytes.extend_from_slice(body);
    bytes
}

/// What `write` produced, decoded byte by byte.
fn written_by(write: impl FnOnce(&mut BytesMut)) -> FrontendMessage {
    let mut buf = BytesMut::new();
    write(&mut buf);
    decode_one(&buf)
}

#[test]
fn postgres_query_golden_bytes_decode() {
    // 'Q', Int32 13 (4 + "select 1\0"), the string.
    assert_eq!(
        decode_one(b"Q\x00\x00\x00\x0dselect 1\0"),
        FrontendMessage::Query {
            sql: "select 1".into()
        }
    );
}

#[test]
fn postgres_bodiless_messages_golden_bytes_decode() {
    for (bytes, expected) in [
        (b"S\0\0\0\x04", FrontendMessage::Sync),
        (b"H\0\0\0\x04", FrontendMessage::Flush),
        (b"X\0\0\0\x04", FrontendMessage::Terminate),
        (b"c\0\0\0\x04", FrontendMessage::CopyDone),
    ] {
        assert_eq!(decode_one(bytes), expected);
    }
}

#[test]
fn postgres_bind_golden_bytes_decode_with_a_null_parameter() {
    // 'B', Int32 26, portal "", statement "s1", 1 format code (binary), 2 parameters
    // ("hi", NULL), 0 result format codes.
    let bytes = b"B\x00\x00\x00\x1a\0s1\0\x00\x01\x00\x01\x00\x02\x00\x00\x00\x02hi\xff\xff\xff\xff\x00\x00";
    let FrontendMessage::Bind(bind) = decode_one(bytes) else {
        panic!("not a Bind");
    };
    assert_eq!(bind.portal, "");
    assert_eq!(bind.statement, "s1");
    assert_eq!(bind.param_formats, [Format::Binary]);
    assert_eq!(bind.params, [Some(Bytes::from_static(b"hi")), None]);
    assert_eq!(bind.param_format(1), Format::Binary);
    assert!(bind.result_formats.is_empty());
}

#[test]
fn postgres_execute_golden_bytes_decode() {
    // 'E', Int32 11, portal "p1", Int32 max rows 100.
    assert_eq!(
        decode_one(b"E\x00\x00\x00\x0bp1\0\x00\x00\x00\x64"),
        FrontendMessage::Execute {
            portal: "p1".into(),
            max_rows: 100
        }
    );
}

#[test]
fn postgres_function_call_golden_bytes_decode() {
    // 'F', function 1598, 1 format (text), 1 argument "7", result format binary.
    let mut body = Vec::new();
    body.put_u32(1598);
    body.extend_from_slice(b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x017\x00\x01");
    let FrontendMessage::FunctionCall(call) = decode_one(&message(b'F', &body)) else {
        panic!("not a FunctionCall");
    };
    assert_eq!(call.function, 1598);
    assert_eq!(call.arg_formats, [Format::Text]);
    assert_eq!(call.args, [Some(Bytes::from_static(b"7"))]);
    assert_eq!(call.result_format, Format::Binary);
}

#[test]
fn postgres_extended_query_messages_written_by_postgres_protocol_decode() {
    assert_eq!(
        written_by(|b| pp::parse("s1", "select $1::int, $2", [23, 0], b).unwrap()),
        FrontendMessage::Parse(Parse {
            statement: "s1".into(),
            sql: "select $1::int, $2".into(),
            param_types: vec![23, 0],
        })
    );
    let bind = written_by(|b| {
        let values: [Option<&[u8]>; 3] = [Some(b"\x00\x00\x00\x2a"), None, Some(b"")];
        let serialize = |v: Option<&[u8]>, out: &mut BytesMut| {
            Ok(match v {
                Some(bytes) => {
                    out.put_slice(bytes);
                    IsNull::No
                }
                None => IsNull::Yes,
            })
        };
        assert!(pp::bind("p1", "s1", [1, 0, 0], values, serialize, [1], b).is_ok());
    });
    assert_eq!(
        bind,
        FrontendMessage::Bind(Bind {
            portal: "p1".into(),
            statement: "s1".into(),
            param_formats: vec![Format::Binary, Format::Text, Format::Text],
            params: vec![
                Some(Bytes::from_static(b"\x00\x00\x00\x2a")),
                None,
                Some(Bytes::new())
            ],
            result_formats: vec![Format::Binary],
        })
    );
    assert_eq!(
        written_by(|b| pp::describe(b'S', "s1", b).unwrap()),
        FrontendMessage::Describe {
            target: Target::Statement,
            name: "s1".into()
        }
    );
    assert_eq!(
        written_by(|b| pp::describe(b'P', "", b).unwrap()),
        FrontendMessage::Describe {
            target: Target::Portal,
            name: String::new()
        }
    );
    assert_eq!(
        written_by(|b| pp::execute("p1", 0, b).unwrap()),
        FrontendMessage::Execute {
            portal: "p1".into(),
            max_rows: 0
        }
    );
    assert_eq!(
        written_by(|b| pp::close(b'P', "p1", b).unwrap()),
        FrontendMessage::Close {
            target: Target::Portal,
            name: "p1".into()
        }
    );
    assert_eq!(written_by(pp::sync), FrontendMessage::Sync);
    assert_eq!(written_by(pp::flush), FrontendMessage::Flush);
    assert_eq!(written_by(pp::terminate), FrontendMessage::Terminate);
    assert_eq!(
        written_by(|b| pp::query("select 'é'", b).unwrap()),
        FrontendMessage::Query {
            sql: "select 'é'".into()
        }
    );
}

#[test]
fn postgres_copy_messages_written_by_postgres_protocol_decode() {
    assert_eq!(
        written_by(|b| pp::CopyData::new(&b"1\tx\n"[..]).unwrap().write(b)),
        FrontendMessage::CopyData(Bytes::from_static(b"1\tx\n"))
    );
    assert_eq!(written_by(pp::copy_done), FrontendMessage::CopyDone);
    assert_eq!(
        written_by(|b| pp::copy_fail("gave up", b).unwrap()),
        FrontendMessage::CopyFail {
            message: "gave up".into()
        }
    );
}

#[test]
fn postgres_authentication_answers_written_by_postgres_protocol_decode() {
    let FrontendMessage::AuthenticationResponse(password) =
        written_by(|b| pp::password_message(b"s\xe9cret", b).unwrap())
    else {
        panic!("not a password message");
    };
    // Not UTF-8, and still a password: the server compares bytes.
    assert_eq!(&password.password().unwrap()[..], b"s\xe9cret");

    let FrontendMessage::AuthenticationResponse(initial) =
        written_by(|b| pp::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", b).unwrap())
    else {
        panic!("not a SASL message");
    };
    assert_eq!(
        initial.sasl_initial_response().unwrap(),
        SaslInitialResponse {
            mechanism: "SCRAM-SHA-256".into(),
            data: Some(Bytes::from_static(b"n,,n=,r=abc"))
        }
    );

    let FrontendMessage::AuthenticationResponse(response) =
        written_by(|b| pp::sasl_response(b"c=biws,r=abc,p=xyz", b).unwrap())
    else {
        panic!("not a SASL message");
    };
    assert_eq!(response.sasl_response(), b"c=biws,r=abc,p=xyz");
}

#[test]
fn postgres_sasl_initial_response_without_data_and_malformed_answers() {
    let response = AuthenticationResponse(Bytes::from_static(b"SCRAM-SHA-256\0\xff\xff\xff\xff"));
    assert_eq!(response.sasl_initial_response().unwrap().data, None);
    let truncated =
        AuthenticationResponse(Bytes::from_static(b"SCRAM-SHA-256\0\x00\x00\x00\x09ab"));
    assert_eq!(
        problem(truncated.sasl_initial_response().unwrap_err()),
        Problem::EndsEarly {
            field: "initial response"
        }
    );
    let no_nul = AuthenticationResponse(Bytes::from_static(b"secret"));
    assert_eq!(
        problem(no_nul.password().unwrap_err()),
        Problem::MissingNul { field: "password" }
    );
}

#[test]
fn postgres_a_stream_of_messages_decodes_each_only_when_complete() {
    let mut stream = BytesMut::new();
    pp::parse("", "select 1", [], &mut stream).unwrap();
    pp::describe(b'S', "", &mut stream).unwrap();
    pp::sync(&mut stream);
    let mut decoder = FrontendDecoder::new(MAX);
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in stream.iter() {
        buf.put_u8(*byte);
        while let Some(message) = decoder.decode(&mut buf).unwrap() {
            decoded.push(message);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(decoded.len(), 3);
    assert_eq!(decoded[2], FrontendMessage::Sync);
}

#[test]
fn postgres_unknown_message_type_is_refused_at_its_first_byte_and_named() {
    let error = frontend_error(b"x");
    assert_eq!(
        error,
        PgWireError::UnknownMessageType {
            from: Peer::App,
            tag: b'x'
        }
    );
    assert_eq!(
        error.to_string(),
        "the app sent a message of unknown type 'x' (0x78)"
    );
    assert_eq!(
        frontend_error(b"\x00").to_string(),
        "the app sent a message of unknown type 0x00"
    );
    let fatal = error.to_pg_error();
    assert_eq!(
        (fatal.severity, fatal.code),
        (Severity::Fatal, SqlState::PROTOCOL_VIOLATION)
    );
}

#[test]
fn postgres_lengths_under_4_are_refused() {
    for length in [0i32, 3, -1, i32::MIN] {
        let mut bytes = vec![b'Q'];
        bytes.put_i32(length);
        let error = frontend_error(&bytes);
        assert_eq!(
            error,
            PgWireError::LengthTooShort {
                from: Peer::App,
                message: "Query",
                length: length.into(),
                minimum: 4
            }
        );
    }
}

#[test]
fn postgres_messages_over_the_limit_are_refused_from_their_header() {
    let mut decoder = FrontendDecoder::new(64);
    let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x41"[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(PgWireError::TooLong {
            from: Peer::App,
            message: "Query",
            length: 65,
            limit: 64
        })
    );
    // The limit itself is waited for.
    let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x40"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    // Small messages have the server's small limit whatever the caller allows.
    let mut decoder = FrontendDecoder::new(MAX);
    for tag in [b'D', b'C', b'E', b'S', b'H', b'X', b'c', b'f'] {
        let mut buf = BytesMut::from(&[tag][..]);
        buf.put_u32(SMALL_MESSAGE_LIMIT as u32 + 1);
        let error = decoder.decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                error,
                PgWireError::TooLong {
                    limit: SMALL_MESSAGE_LIMIT,
                    ..
                }
            ),
            "{error:?}"
        );
    }
    let mut buf = BytesMut::from(&b"p"[..]);
    buf.put_u32(AUTHENTICATION_MESSAGE_LIMIT as u32 + 1);
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(PgWireError::TooLong {
            limit: AUTHENTICATION_MESSAGE_LIMIT,
            ..
        })
    ));
}

#[test]
fn postgres_sync_with_a_body_is_refused() {
    assert_eq!(
        problem(frontend_error(b"S\0\0\0\x05x")),
        Problem::TrailingBytes { count: 1 }
    );
}

#[test]
fn postgres_strings_without_nul_are_refused() {
    assert_eq!(
        problem(frontend_error(&message(b'Q', b"select 1"))),
        Problem::MissingNul {
            field: "query string"
        }
    );
    assert_eq!(
        problem(frontend_error(&message(b'P', b"s1\0select 1"))),
        Problem::MissingNul {
            field: "query string"
        }
    );
}

#[test]
fn postgres_invalid_utf8_text_is_refused() {
    assert_eq!(
        problem(frontend_error(&message(b'Q', b"select '\xff'\0"))),
        Problem::InvalidUtf8 {
            field: "query string"
        }
    );
    assert_eq!(
        problem(frontend_error(&message(b'P', b"s\xc3\0select 1\0\0\0"))),
        Problem::InvalidUtf8 {
            field: "statement name"
        }
    );
}

#[test]
fn postgres_bind_with_more_formats_than_parameters_is_refused() {
    // 2 format codes, 1 parameter.
    let body = b"\0s1\0\x00\x02\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01x\x00\x00";
    assert_eq!(
        problem(frontend_error(&message(b'B', body))),
        Problem::FormatCountMismatch {
            formats: 2,
            params: 1
        }
    );
}

#[test]
fn postgres_bind_with_a_parameter_length_below_minus_one_is_refused() {
    let body = b"\0\0\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00";
    assert_eq!(
        problem(frontend_error(&message(b'B', body))),
        Problem::InvalidValue {
            field: "parameter value",
            value: -2
        }
    );
}

#[test]
fn postgres_bind_with_a_parameter_longer_than_the_message_is_refused() {
    let body = b"\0\0\x00\x00\x00\x01\x00\x00\x10\x00abc";
    assert_eq!(
        problem(frontend_error(&message(b'B', body))),
        Problem::EndsEarly {
            field: "parameter value"
        }
    );
}

#[test]
fn postgres_format_codes_other_than_0_and_1_are_refused() {
    let body = b"\0\0\x00\x01\x00\x02\x00\x00\x00\x00";
    assert_eq!(
        problem(frontend_error(&message(b'B', body))),
        Problem::InvalidValue {
            field: "format code",
            value: 2
        }
    );
}

#[test]
fn postgres_describe_and_close_name_only_statements_or_portals() {
    for tag in [b'D', b'C'] {
        assert_eq!(
            problem(frontend_error(&message(tag, b"Xs1\0"))),
            Problem::InvalidValue {
                field: "target (S or P)",
                value: i64::from(b'X')
            }
        );
    }
}

#[test]
fn postgres_a_large_count_with_no_data_is_refused_without_allocating_for_it() {
    // Parse announcing 65535 parameter types and carrying none.
    assert_eq!(
        problem(frontend_error(&message(b'P', b"\0select 1\0\xff\xff"))),
        Problem::EndsEarly {
            field: "parameter type"
        }
    );
    // Bind announcing 65535 parameters, each at least 4 bytes, carrying none.
    assert_eq!(
        problem(frontend_error(&message(b'B', b"\0\0\x00\x00\xff\xff"))),
        Problem::EndsEarly {
            field: "parameter value"
        }
    );
}

#[test]
fn postgres_execute_cut_short_is_refused() {
    assert_eq!(
        problem(frontend_error(&message(b'E', b"\0\x00\x00"))),
        Problem::EndsEarly {
            field: "maximum row count"
        }
    );
}
