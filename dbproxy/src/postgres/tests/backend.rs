//! The builders: golden bytes, round trips through the upstream parser, and what
//! `postgres-protocol`'s client-side parser makes of them.

use super::decode_bytewise;
use crate::postgres::backend::*;
use crate::postgres::startup::{ProtocolNegotiation, ProtocolVersion};
use crate::postgres::upstream::{AuthenticationRequest, BackendFrameDecoder, BackendMessage};
use crate::postgres::{Format, PgError, PgWireError, Severity, SqlState};
use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message as PpMessage;

fn written(write: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    write(&mut out);
    out
}

/// Decodes what a builder wrote with the upstream decoder and parser.
fn round_trip(bytes: &[u8]) -> BackendMessage {
    let mut decoder = BackendFrameDecoder::new(1 << 20);
    let frame = decode_bytewise(bytes, |buf| decoder.decode(buf));
    BackendMessage::parse(frame).expect("parses")
}

/// Parses what a builder wrote with `postgres-protocol`, which must take all of it.
fn pp_parse(bytes: &[u8]) -> PpMessage {
    let mut buf = BytesMut::from(bytes);
    let message = PpMessage::parse(&mut buf)
        .expect("postgres-protocol parses it")
        .expect("postgres-protocol finds it complete");
    assert!(buf.is_empty(), "postgres-protocol left {} bytes", buf.len());
    message
}

fn int4_column(name: &str) -> FieldDescription {
    FieldDescription {
        name: name.into(),
        table_oid: 16_384,
        column_attr: 1,
        type_oid: 23,
        type_len: 4,
        type_modifier: -1,
        format: Format::Text,
    }
}

#[test]
fn postgres_fixed_size_messages_golden_bytes() {
    assert_eq!(&written(authentication_ok)[..], b"R\0\0\0\x08\0\0\0\0");
    assert_eq!(
        &written(authentication_cleartext_password)[..],
        b"R\0\0\0\x08\0\0\0\x03"
    );
    assert_eq!(
        &written(|o| ready_for_query(o, TransactionStatus::Idle))[..],
        b"Z\0\0\0\x05I"
    );
    assert_eq!(
        &written(|o| ready_for_query(o, TransactionStatus::InTransaction))[..],
        b"Z\0\0\0\x05T"
    );
    assert_eq!(
        &written(|o| ready_for_query(o, TransactionStatus::Failed))[..],
        b"Z\0\0\0\x05E"
    );
    for (write, tag) in [
        (empty_query_response as fn(&mut BytesMut), b'I'),
        (parse_complete, b'1'),
        (bind_complete, b'2'),
        (close_complete, b'3'),
        (no_data, b'n'),
        (portal_suspended, b's'),
    ] {
        assert_eq!(&written(write)[..], [tag, 0, 0, 0, 4]);
    }
}

#[test]
fn postgres_variable_messages_golden_bytes() {
    // 'C', Int32 13, "SELECT 1\0".
    assert_eq!(
        &written(|o| command_complete(o, "SELECT 1").unwrap())[..],
        b"C\x00\x00\x00\x0dSELECT 1\0"
    );
    // 'D', Int32 15, Int16 2 columns, Int32 1 "1", Int32 -1 (NULL).
    assert_eq!(
        &written(|o| data_row(o, &[Some(b"1"), None]).unwrap())[..],
        b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x011\xff\xff\xff\xff"
    );
    // 'S', Int32 25, "client_encoding\0UTF8\0".
    assert_eq!(
        &written(|o| parameter_status(o, "client_encoding", "UTF8").unwrap())[..],
        b"S\x00\x00\x00\x19client_encoding\0UTF8\0"
    );
    // 'K', Int32 12, process id 4660, key 0xdeadbeef.
    assert_eq!(
        &written(|o| backend_key_data(o, 0x1234, b"\xde\xad\xbe\xef").unwrap())[..],
        b"K\x00\x00\x00\x0c\x00\x00\x12\x34\xde\xad\xbe\xef"
    );
    // 'R', Int32 23, Int32 10, "SCRAM-SHA-256\0", "\0".
    assert_eq!(
        &written(|o| authentication_sasl(o, &["SCRAM-SHA-256"]).unwrap())[..],
        b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\0\0"
    );
    // 'T', Int32 26, Int16 1, "a\0", table 16384, attr 1, type 23, len 4, typmod -1, text.
    assert_eq!(
        &written(|o| row_description(o, &[int4_column("a")]).unwrap())[..],
        b"T\x00\x00\x00\x1a\x00\x01a\0\x00\x00\x40\x00\x00\x01\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
    );
}

#[test]
fn postgres_error_response_golden_bytes() {
    // 'E', Int32 30, S "ERROR", V "ERROR", C "42501", M "no", terminator.
    let error = PgError::error(SqlState::INSUFFICIENT_PRIVILEGE, "no");
    assert_eq!(
        &written(|o| error.write(o).unwrap())[..],
        b"E\x00\x00\x00\x1eSERROR\0VERROR\0C42501\0Mno\0\0"
    );
    // The same as a notice, with a detail and a hint: 'N', D and H after M.
    let notice = PgError::new(Severity::Notice, SqlState::SUCCESSFUL_COMPLETION, "m")
        .with_detail("d")
        .with_hint("h");
    assert_eq!(
        &written(|o| notice.write_notice(o).unwrap())[..],
        b"N\x00\x00\x00\x25SNOTICE\0VNOTICE\0C00000\0Mm\0Dd\0Hh\0\0"
    );
}

#[test]
fn postgres_every_builder_round_trips_through_the_upstream_parser() {
    let cases: Vec<(BytesMut, BackendMessage)> = vec![
        (
            written(authentication_ok),
            BackendMessage::Authentication(AuthenticationRequest::Ok),
        ),
        (
            written(authentication_cleartext_password),
            BackendMessage::Authentication(AuthenticationRequest::CleartextPassword),
        ),
        (
            written(|o| authentication_sasl(o, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]).unwrap()),
            BackendMessage::Authentication(AuthenticationRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
            }),
        ),
        (
            written(|o| authentication_sasl_continue(o, b"r=abc,s=c2FsdA==,i=4096").unwrap()),
            BackendMessage::Authentication(AuthenticationRequest::SaslContinue(
                Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096"),
            )),
        ),
        (
            written(|o| authentication_sasl_final(o, b"v=c2lnbmF0dXJl").unwrap()),
            BackendMessage::Authentication(AuthenticationRequest::SaslFinal(Bytes::from_static(
                b"v=c2lnbmF0dXJl",
            ))),
        ),
        (
            written(|o| parameter_status(o, "server_version", "16.4").unwrap()),
            BackendMessage::ParameterStatus {
                name: "server_version".into(),
                value: "16.4".into(),
            },
        ),
        (
            written(|o| backend_key_data(o, 99, &[7; 32]).unwrap()),
            BackendMessage::BackendKeyData {
                process_id: 99,
                secret_key: Bytes::from(vec![7; 32]),
            },
        ),
        (
            written(|o| ready_for_query(o, TransactionStatus::Failed)),
            BackendMessage::ReadyForQuery(TransactionStatus::Failed),
        ),
        (
            written(|o| command_complete(o, "INSERT 0 3").unwrap()),
            BackendMessage::CommandComplete {
                tag: "INSERT 0 3".into(),
            },
        ),
        (
            written(empty_query_response),
            BackendMessage::EmptyQueryResponse,
        ),
        (written(parse_complete), BackendMessage::ParseComplete),
        (written(bind_complete), BackendMessage::BindComplete),
        (written(close_complete), BackendMessage::CloseComplete),
        (written(no_data), BackendMessage::NoData),
        (written(portal_suspended), BackendMessage::PortalSuspended),
        (
            written(|o| parameter_description(o, &[23, 25, 0]).unwrap()),
            BackendMessage::ParameterDescription(vec![23, 25, 0]),
        ),
        (
            written(|o| {
                let mut binary = int4_column("b");
                binary.format = Format::Binary;
                row_description(o, &[int4_column("a"), binary]).unwrap()
            }),
            BackendMessage::RowDescription(vec![int4_column("a"), {
                let mut binary = int4_column("b");
                binary.format = Format::Binary;
                binary
            }]),
        ),
        (
            written(|o| data_row(o, &[Some(b"42"), None, Some(b"")]).unwrap()),
            BackendMessage::DataRow(vec![
                Some(Bytes::from_static(b"42")),
                None,
                Some(Bytes::new()),
            ]),
        ),
        (
            written(|o| {
                let negotiation = ProtocolNegotiation {
                    newest_version: ProtocolVersion::V3_0,
                    unrecognized_options: vec!["_pq_.a".into(), "_pq_.b".into()],
                };
                negotiate_protocol_version(o, &negotiation).unwrap()
            }),
            BackendMessage::NegotiateProtocolVersion(ProtocolNegotiation {
                newest_version: ProtocolVersion::V3_0,
                unrecognized_options: vec!["_pq_.a".into(), "_pq_.b".into()],
            }),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(round_trip(&bytes), expected, "{bytes:?}");
    }
}

#[test]
fn postgres_errors_and_notices_round_trip_with_every_field() {
    let mut error = PgError::fatal(SqlState::INVALID_PASSWORD, "password authentication failed")
        .with_detail("the dbproxy checked it")
        .with_hint("see devinprod db status");
    error.other_fields.push((b'P', "15".into()));
    error.other_fields.push((b'R', "auth_failed".into()));
    assert_eq!(
        round_trip(&written(|o| error.write(o).unwrap())),
        BackendMessage::ErrorResponse(error.clone())
    );
    let notice = PgError::new(
        Severity::Warning,
        SqlState::SUCCESSFUL_COMPLETION,
        "careful",
    );
    assert_eq!(
        round_trip(&written(|o| notice.write_notice(o).unwrap())),
        BackendMessage::NoticeResponse(notice)
    );
}

#[test]
fn postgres_builders_are_read_the_same_by_postgres_protocol() {
    assert!(matches!(
        pp_parse(&written(authentication_ok)),
        PpMessage::AuthenticationOk
    ));
    assert!(matches!(
        pp_parse(&written(authentication_cleartext_password)),
        PpMessage::AuthenticationCleartextPassword
    ));
    let PpMessage::AuthenticationSasl(sasl) = pp_parse(&written(|o| {
        authentication_sasl(o, &["SCRAM-SHA-256"]).unwrap()
    })) else {
        panic!("not AuthenticationSASL");
    };
    assert_eq!(
        sasl.mechanisms().collect::<Vec<_>>().unwrap(),
        ["SCRAM-SHA-256"]
    );
    let PpMessage::AuthenticationSaslContinue(cont) = pp_parse(&written(|o| {
        authentication_sasl_continue(o, b"r=1").unwrap()
    })) else {
        panic!("not AuthenticationSASLContinue");
    };
    assert_eq!(cont.data(), b"r=1");
    let PpMessage::AuthenticationSaslFinal(fin) =
        pp_parse(&written(|o| authentication_sasl_final(o, b"v=2").unwrap()))
    else {
        panic!("not AuthenticationSASLFinal");
    };
    assert_eq!(fin.data(), b"v=2");
    let PpMessage::ParameterStatus(status) = pp_parse(&written(|o| {
        parameter_status(o, "TimeZone", "UTC").unwrap()
    })) else {
        panic!("not ParameterStatus");
    };
    assert_eq!(
        (status.name().unwrap(), status.value().unwrap()),
        ("TimeZone", "UTC")
    );
    // postgres-protocol reads protocol 3.0's 4-byte keys only.
    let PpMessage::BackendKeyData(key) =
        pp_parse(&written(|o| backend_key_data(o, 7, &[0, 0, 0, 9]).unwrap()))
    else {
        panic!("not BackendKeyData");
    };
    assert_eq!((key.process_id(), key.secret_key()), (7, 9));
    let PpMessage::ReadyForQuery(ready) = pp_parse(&written(|o| {
        ready_for_query(o, TransactionStatus::InTransaction)
    })) else {
        panic!("not ReadyForQuery");
    };
    assert_eq!(ready.status(), b'T');
    let PpMessage::CommandComplete(complete) =
        pp_parse(&written(|o| command_complete(o, "UPDATE 2").unwrap()))
    else {
        panic!("not CommandComplete");
    };
    assert_eq!(complete.tag().unwrap(), "UPDATE 2");
    for (write, check) in [
        (
            empty_query_response as fn(&mut BytesMut),
            (|m| matches!(m, PpMessage::EmptyQueryResponse)) as fn(&PpMessage) -> bool,
        ),
        (parse_complete, |m| matches!(m, PpMessage::ParseComplete)),
        (bind_complete, |m| matches!(m, PpMessage::BindComplete)),
        (close_complete, |m| matches!(m, PpMessage::CloseComplete)),
        (no_data, |m| matches!(m, PpMessage::NoData)),
        (portal_suspended, |m| {
            matches!(m, PpMessage::PortalSuspended)
        }),
    ] {
        assert!(check(&pp_parse(&written(write))));
    }
    let PpMessage::ParameterDescription(params) =
        pp_parse(&written(|o| parameter_description(o, &[23, 1043]).unwrap()))
    else {
        panic!("not ParameterDescription");
    };
    assert_eq!(params.parameters().collect::<Vec<_>>().unwrap(), [23, 1043]);
    let PpMessage::RowDescription(rows) = pp_parse(&written(|o| {
        row_description(o, &[int4_column("id")]).unwrap()
    })) else {
        panic!("not RowDescription");
    };
    let fields = rows.fields().collect::<Vec<_>>().unwrap();
    assert_eq!(fields.len(), 1);
    let field = &fields[0];
    assert_eq!(
        (
            field.name(),
            field.table_oid(),
            field.column_id(),
            field.type_oid(),
            field.type_size(),
            field.type_modifier(),
            field.format()
        ),
        ("id", 16_384, 1, 23, 4, -1, 0)
    );
    let PpMessage::DataRow(row) = pp_parse(&written(|o| data_row(o, &[Some(b"x"), None]).unwrap()))
    else {
        panic!("not DataRow");
    };
    let ranges = row.ranges().collect::<Vec<_>>().unwrap();
    assert_eq!(ranges.len(), 2);
    assert_eq!(ranges[0].clone().map(|r| &row.buffer()[r]), Some(&b"x"[..]));
    assert_eq!(ranges[1], None);
    let error = PgError::error(SqlState::IN_FAILED_SQL_TRANSACTION, "aborted").with_hint("h");
    let PpMessage::ErrorResponse(body) = pp_parse(&written(|o| error.write(o).unwrap())) else {
        panic!("not ErrorResponse");
    };
    let fields: Vec<(u8, String)> = body
        .fields()
        .map(|f| {
            Ok((
                f.type_(),
                String::from_utf8_lossy(f.value_bytes()).into_owned(),
            ))
        })
        .collect()
        .unwrap();
    assert_eq!(
        fields,
        [
            (b'S', "ERROR".to_string()),
            (b'V', "ERROR".to_string()),
            (b'C', "25P02".to_string()),
            (b'M', "aborted".to_string()),
            (b'H', "h".to_string())
        ]
    );
    assert!(matches!(
        pp_parse(&written(|o| error.write_notice(o).unwrap())),
        PpMessage::NoticeResponse(_)
    ));
}

#[test]
fn postgres_unencodable_messages_are_refused_and_leave_out_unchanged() {
    let mut out = BytesMut::from(&b"before"[..]);
    let too_many: Vec<Option<&[u8]>> = vec![None; 65_536];
    let error = data_row(&mut out, &too_many).unwrap_err();
    assert!(
        matches!(&error, PgWireError::Unencodable { message: "DataRow", problem } if problem.contains("65536 columns")),
        "{error:?}"
    );
    assert_eq!(&out[..], b"before");
    assert!(data_row(&mut out, &too_many[..65_535]).is_ok());
    out.clear();
    for length in [0, 3, 257] {
        assert!(backend_key_data(&mut out, 1, &vec![1; length]).is_err());
        assert!(out.is_empty());
    }
    assert!(authentication_sasl(&mut out, &["SCRAM-SHA-256", ""]).is_err());
    assert!(out.is_empty());
    let many_types = vec![0u32; 65_536];
    assert!(parameter_description(&mut out, &many_types).is_err());
    assert!(out.is_empty());
}

#[test]
fn postgres_strings_are_written_up_to_their_first_nul() {
    // A NUL inside would end the field early and shift the fields after it.
    assert_eq!(
        &written(|o| parameter_status(o, "a\0b", "c").unwrap())[..],
        b"S\x00\x00\x00\x08a\0c\0"
    );
}
