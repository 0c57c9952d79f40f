//! What an app sends the dbproxy's PostgreSQL side (start-up packets, then messages) and what
//! an upstream PostgreSQL server sends it, through the decoders and parsers; what parses is
//! written back with the builders and must parse to the same again. Nothing may panic.
#![no_main]
use bytes::BytesMut;
use dbproxy::postgres::backend;
use dbproxy::postgres::frontend::{FrontendDecoder, FrontendMessage};
use dbproxy::postgres::startup::{StartupDecoder, StartupPacket};
use dbproxy::postgres::upstream::{BackendFrameDecoder, BackendMessage};
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 1 << 20;
/// Bounds each loop: a decoder that yields without consuming would spin forever.
const MAX_MESSAGES: usize = 256;

fn app_messages(buf: &mut BytesMut) {
    let mut decoder = FrontendDecoder::new(MAX_MESSAGE);
    for _ in 0..MAX_MESSAGES {
        match decoder.decode(buf) {
            Ok(Some(FrontendMessage::AuthenticationResponse(answer))) => {
                let _ = answer.password();
                let _ = answer.sasl_initial_response();
            }
            Ok(Some(FrontendMessage::Bind(bind))) => {
                for i in 0..bind.params.len() {
                    let _ = bind.param_format(i);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// Writes `message` back with the builders; what was written must parse to it again.
fn write_back(message: &BackendMessage) {
    let mut out = BytesMut::new();
    let written = match message {
        BackendMessage::ErrorResponse(error) => error.write(&mut out),
        BackendMessage::NoticeResponse(notice) => notice.write_notice(&mut out),
        BackendMessage::RowDescription(fields) => backend::row_description(&mut out, fields),
        BackendMessage::DataRow(values) => {
            let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            backend::data_row(&mut out, &values)
        }
        BackendMessage::ParameterStatus { name, value } => {
            backend::parameter_status(&mut out, name, value)
        }
        BackendMessage::CommandComplete { tag } => backend::command_complete(&mut out, tag),
        BackendMessage::ParameterDescription(oids) => {
            backend::parameter_description(&mut out, oids)
        }
        BackendMessage::NegotiateProtocolVersion(negotiation) => {
            backend::negotiate_protocol_version(&mut out, negotiation)
        }
        BackendMessage::ReadyForQuery(status) => {
            backend::ready_for_query(&mut out, *status);
            Ok(())
        }
        _ => return,
    };
    written.expect("what was parsed can be written");
    let frame = BackendFrameDecoder::new(usize::MAX)
        .decode(&mut out)
        .expect("what was written decodes")
        .expect("what was written is complete");
    assert!(out.is_empty(), "bytes left after the message written");
    let again = BackendMessage::parse(frame).expect("what was written parses");
    assert_eq!(&again, message, "written back differently");
}

fuzz_target!(|data: &[u8]| {
    // The app's side: start-up packets until the start-up is complete, then messages.
    let mut buf = BytesMut::from(data);
    let mut startup = StartupDecoder::new();
    let mut out = BytesMut::new();
    for _ in 0..MAX_MESSAGES {
        match startup.decode(&mut buf) {
            Ok(Some(StartupPacket::Startup(message))) => {
                let _ = (
                    message.user(),
                    message.database(),
                    message.application_name(),
                );
                if let Some(negotiation) = message.negotiation() {
                    backend::negotiate_protocol_version(&mut out, &negotiation)
                        .expect("a negotiation can be written");
                }
                app_messages(&mut buf);
                break;
            }
            Ok(Some(StartupPacket::Cancel(_))) => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // The same bytes as messages from the first byte: most inputs never pass the start-up.
    app_messages(&mut BytesMut::from(data));

    // The upstream side.
    let mut buf = BytesMut::from(data);
    let mut decoder = BackendFrameDecoder::new(MAX_MESSAGE);
    for _ in 0..MAX_MESSAGES {
        let Ok(Some(frame)) = decoder.decode(&mut buf) else {
            break;
        };
        if let Ok(message) = BackendMessage::parse(frame) {
            write_back(&message);
        }
    }
});
