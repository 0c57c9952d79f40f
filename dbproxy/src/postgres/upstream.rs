//! What a real PostgreSQL server sends the dbproxy (the dbproxy is its client here).
//!
//! Two steps, so that what the dbproxy only passes on is never parsed:
//! [`BackendFrameDecoder`] cuts the stream into frames (type byte and body) with a length
//! bound; [`BackendMessage::parse`] reads a frame the dbproxy must look into (ReadyForQuery's
//! transaction status, an error's SQLSTATE, a row description, a command tag, …).
//!
//! Not covered: the single byte a server answers an SSLRequest with (the dbproxy's upstream
//! connection will read it before using this decoder).

use super::backend::{FieldDescription, TransactionStatus};
use super::body::{take_typed_message, Body, TYPED_HEADER_LENGTH as HEADER_LENGTH};
use super::startup::{ProtocolNegotiation, ProtocolVersion};
use super::{Format, Peer, PgError, PgWireError, Problem};
use bytes::{Bytes, BytesMut};

/// The name of a message a server may send, `None` for a type byte no server sends.
fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'R' => "authentication request",
        b'K' => "BackendKeyData",
        b'S' => "ParameterStatus",
        b'Z' => "ReadyForQuery",
        b'E' => "ErrorResponse",
        b'N' => "NoticeResponse",
        b'C' => "CommandComplete",
        b'I' => "EmptyQueryResponse",
        b'1' => "ParseComplete",
        b'2' => "BindComplete",
        b'3' => "CloseComplete",
        b'n' => "NoData",
        b's' => "PortalSuspended",
        b't' => "ParameterDescription",
        b'T' => "RowDescription",
        b'D' => "DataRow",
        b'v' => "NegotiateProtocolVersion",
        b'G' => "CopyInResponse",
        b'H' => "CopyOutResponse",
        b'W' => "CopyBothResponse",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'A' => "NotificationResponse",
        b'V' => "FunctionCallResponse",
        _ => return None,
    })
}

/// One message from the server, not yet parsed: its type byte and body (without the length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendFrame {
    pub tag: u8,
    pub body: Bytes,
}

/// Cuts what a server sends into [`BackendFrame`]s, one per [`BackendFrameDecoder::decode`]
/// call, from a buffer the caller fills. An unknown type byte is refused as soon as it
/// arrives, a length as soon as its 4 bytes do.
#[derive(Debug, Clone)]
pub struct BackendFrameDecoder {
    max_message_length: usize,
}

impl BackendFrameDecoder {
    /// `max_message_length` bounds the length field (which counts itself, not the type byte).
    pub fn new(max_message_length: usize) -> Self {
        Self { max_message_length }
    }

    /// The next frame, removed from `buf`; `Ok(None)` until `buf` holds all of it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BackendFrame>, PgWireError> {
        let Some(&tag) = buf.first() else {
            return Ok(None);
        };
        let name = message_name(tag).ok_or(PgWireError::UnknownMessageType {
            from: Peer::Server,
            tag,
        })?;
        let Some(frame) = take_typed_message(buf, Peer::Server, name, self.max_message_length)?
        else {
            return Ok(None);
        };
        Ok(Some(BackendFrame {
            tag,
            body: frame.slice(HEADER_LENGTH..),
        }))
    }
}

/// An authentication request (`R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthenticationRequest {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos V5 (2), SCM credentials (6), GSSAPI (7, 8), SSPI (9): the dbproxy answers
    /// none of them; the code and data are kept for the error it reports.
    Other {
        code: i32,
        data: Bytes,
    },
}

/// A server's message, parsed as far as the dbproxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(AuthenticationRequest),
    ParameterStatus {
        name: String,
        value: String,
    },
    /// The key is 4 bytes in protocol 3.0, up to 256 since 3.2.
    BackendKeyData {
        process_id: u32,
        secret_key: Bytes,
    },
    ReadyForQuery(TransactionStatus),
    ErrorResponse(PgError),
    NoticeResponse(PgError),
    CommandComplete {
        tag: String,
    },
    EmptyQueryResponse,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    PortalSuspended,
    ParameterDescription(Vec<u32>),
    RowDescription(Vec<FieldDescription>),
    /// `None` is SQL NULL.
    DataRow(Vec<Option<Bytes>>),
    NegotiateProtocolVersion(ProtocolNegotiation),
    /// Passed on as it is: the COPY responses and data, NotificationResponse,
    /// FunctionCallResponse.
    Other(BackendFrame),
}

impl BackendMessage {
    /// Reads a frame; one the dbproxy does not look into comes back as [`BackendMessage::Other`].
    pub fn parse(frame: BackendFrame) -> Result<Self, PgWireError> {
        let Some(name) = message_name(frame.tag) else {
            return Err(PgWireError::UnknownMessageType {
                from: Peer::Server,
                tag: frame.tag,
            });
        };
        let mut body = Body::new(Peer::Server, name, frame.body.clone());
        let message = match frame.tag {
            b'R' => BackendMessage::Authentication(authentication(&mut body)?),
            b'S' => BackendMessage::ParameterStatus {
                name: body.cstr("parameter name")?,
                value: body.cstr("parameter value")?,
            },
            b'K' => BackendMessage::BackendKeyData {
                process_id: body.u32("process id")?,
                secret_key: body.rest(),
            },
            b'Z' => {
                let status = body.u8("transaction status")?;
                let status = TransactionStatus::from_byte(status).ok_or_else(|| {
                    body.malformed(Problem::InvalidValue {
                        field: "transaction status",
                        value: status.into(),
                    })
                })?;
                BackendMessage::ReadyForQuery(status)
            }
            b'E' => return PgError::parse(body).map(BackendMessage::ErrorResponse),
            b'N' => return PgError::parse(body).map(BackendMessage::NoticeResponse),
            b'C' => BackendMessage::CommandComplete {
                tag: body.cstr("command tag")?,
            },
            b'I' => BackendMessage::EmptyQueryResponse,
            b'1' => BackendMessage::ParseComplete,
            b'2' => BackendMessage::BindComplete,
            b'3' => BackendMessage::CloseComplete,
            b'n' => BackendMessage::NoData,
            b's' => BackendMessage::PortalSuspended,
            b't' => BackendMessage::ParameterDescription(parameter_description(&mut body)?),
            b'T' => BackendMessage::RowDescription(row_description(&mut body)?),
            b'D' => BackendMessage::DataRow(data_row(&mut body)?),
            b'v' => BackendMessage::NegotiateProtocolVersion(negotiation(&mut body)?),
            _ => return Ok(BackendMessage::Other(frame)),
        };
        body.finish()?;
        Ok(message)
    }
}

fn authentication(body: &mut Body) -> Result<AuthenticationRequest, PgWireError> {
    Ok(match body.i32("authentication code")? {
        0 => AuthenticationRequest::Ok,
        3 => AuthenticationRequest::CleartextPassword,
        5 => {
            let salt = body.bytes(4, "salt")?;
            AuthenticationRequest::Md5Password {
                salt: [salt[0], salt[1], salt[2], salt[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let mechanism = body.cstr("mechanism name")?;
                if mechanism.is_empty() {
                    break;
                }
                mechanisms.push(mechanism);
            }
            AuthenticationRequest::Sasl { mechanisms }
        }
        11 => AuthenticationRequest::SaslContinue(body.rest()),
        12 => AuthenticationRequest::SaslFinal(body.rest()),
        code @ (2 | 6 | 7 | 8 | 9) => AuthenticationRequest::Other {
            code,
            data: body.rest(),
        },
        code => {
            return Err(body.malformed(Problem::InvalidValue {
                field: "authentication code",
                value: code.into(),
            }))
        }
    })
}

fn parameter_description(body: &mut Body) -> Result<Vec<u32>, PgWireError> {
    let count = usize::from(body.u16("parameter count")?);
    let mut oids = Vec::with_capacity(body.capacity_for(count, 4));
    for _ in 0..count {
        oids.push(body.u32("parameter type")?);
    }
    Ok(oids)
}

/// A column's fixed part after its name: OIDs, attribute, length, modifier, format.
const FIELD_FIXED_LENGTH: usize = 18;

fn row_description(body: &mut Body) -> Result<Vec<FieldDescription>, PgWireError> {
    let count = usize::from(body.u16("column count")?);
    let mut fields = Vec::with_capacity(body.capacity_for(count, 1 + FIELD_FIXED_LENGTH));
    for _ in 0..count {
        let name = body.cstr("column name")?;
        let table_oid = body.u32("table OID")?;
        let column_attr = body.i16("column attribute number")?;
        let type_oid = body.u32("type OID")?;
        let type_len = body.i16("type length")?;
        let type_modifier = body.i32("type modifier")?;
        let code = body.i16("format code")?;
        let format = Format::from_code(code).ok_or_else(|| {
            body.malformed(Problem::InvalidValue {
                field: "format code",
                value: code.into(),
            })
        })?;
        fields.push(FieldDescription {
            name,
            table_oid,
            column_attr,
            type_oid,
            type_len,
            type_modifier,
            format,
        });
    }
    Ok(fields)
}

fn data_row(body: &mut Body) -> Result<Vec<Option<Bytes>>, PgWireError> {
    let count = usize::from(body.u16("column count")?);
    let mut values = Vec::with_capacity(body.capacity_for(count, 4));
    for _ in 0..count {
        values.push(body.nullable_value("column value")?);
    }
    Ok(values)
}

fn negotiation(body: &mut Body) -> Result<ProtocolNegotiation, PgWireError> {
    let newest_version = ProtocolVersion::from_code(body.u32("newest protocol version")?);
    let count = body.i32("unrecognised option count")?;
    let count = usize::try_from(count).map_err(|_| {
        body.malformed(Problem::InvalidValue {
            field: "unrecognised option count",
            value: count.into(),
        })
    })?;
    let mut unrecognized_options = Vec::with_capacity(body.capacity_for(count, 1));
    for _ in 0..count {
        unrecognized_options.push(body.cstr("option name")?);
    }
    Ok(ProtocolNegotiation {
        newest_version,
        unrecognized_options,
    })
}
