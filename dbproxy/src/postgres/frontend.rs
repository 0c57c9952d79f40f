//! What an app sends after its start-up: typed messages (`Byte1` type, `Int32` length that
//! counts itself but not the type, body), decoded by [`FrontendDecoder`].
//!
//! The limits are the server's: the messages that carry statements or data (Query, Parse,
//! Bind, FunctionCall, CopyData) may be as long as the caller allows; the small ones
//! (Describe, Close, Execute, Sync, Flush, Terminate, CopyDone, CopyFail) at most
//! [`SMALL_MESSAGE_LIMIT`]; password and SASL answers at most [`AUTHENTICATION_MESSAGE_LIMIT`].
//! Text the protocol calls a string (SQL, statement and portal names) must be UTF-8: the
//! dbproxy will ask apps for `client_encoding` UTF8.

use super::body::{take_typed_message, Body, TYPED_HEADER_LENGTH as HEADER_LENGTH};
use super::{Format, Peer, PgWireError, Problem};
use bytes::{Bytes, BytesMut};

/// The longest small message, the server's `PQ_SMALL_MESSAGE_LIMIT`.
pub const SMALL_MESSAGE_LIMIT: usize = 10_000;
/// The longest password or SASL message, the server's `PG_MAX_AUTH_TOKEN_LENGTH`.
pub const AUTHENTICATION_MESSAGE_LIMIT: usize = 65_535;

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `S`: a prepared statement.
    Statement,
    /// `P`: a portal.
    Portal,
}

/// Parse: prepare `sql` as `statement` ("" is the unnamed statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub statement: String,
    pub sql: String,
    /// Parameter type OIDs the app fixed in advance (0: let the server infer it).
    pub param_types: Vec<u32>,
}

/// Bind: make `portal` from `statement` with these parameter values. The decoder has checked
/// that there are 0, 1 or one-per-parameter format codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<Format>,
    /// `None` is SQL NULL.
    pub params: Vec<Option<Bytes>>,
    /// 0 (all text), 1 (applies to every column) or one per result column.
    pub result_formats: Vec<Format>,
}

impl Bind {
    /// The format of parameter `index`: none given means text, one given applies to all.
    pub fn param_format(&self, index: usize) -> Format {
        match self.param_formats.as_slice() {
            [] => Format::Text,
            [only] => *only,
            all => all.get(index).copied().unwrap_or_default(),
        }
    }
}

/// FunctionCall (the fast-path interface): call the function with this OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    pub function: u32,
    pub arg_formats: Vec<Format>,
    pub args: Vec<Option<Bytes>>,
    pub result_format: Format,
}

/// The body of a `p` message, whose meaning depends on the authentication request it
/// answers: PasswordMessage (cleartext or MD5), SASLInitialResponse or SASLResponse (or a
/// GSSAPI/SSPI token). Kept raw; the helpers read it as what the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticationResponse(pub Bytes);

/// A SASLInitialResponse: the mechanism chosen and its first message, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: String,
    pub data: Option<Bytes>,
}

impl AuthenticationResponse {
    /// Read as a PasswordMessage: the password's bytes, without the terminating NUL. Not
    /// required to be UTF-8: the server compares bytes.
    pub fn password(&self) -> Result<Bytes, PgWireError> {
        let mut body = Body::new(Peer::App, "PasswordMessage", self.0.clone());
        let password = body.cstr_bytes("password")?;
        body.finish()?;
        Ok(password)
    }

    /// Read as a SASLInitialResponse.
    pub fn sasl_initial_response(&self) -> Result<SaslInitialResponse, PgWireError> {
        let mut body = Body::new(Peer::App, "SASLInitialResponse", self.0.clone());
        let mechanism = body.cstr("mechanism")?;
        let data = body.nullable_value("initial response")?;
        body.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    /// Read as a SASLResponse: all of it is the mechanism's data.
    pub fn sasl_response(&self) -> &[u8] {
        &self.0
    }
}

/// One message from the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    /// `Q`: simple query (one or more statements).
    Query { sql: String },
    /// `P`
    Parse(Parse),
    /// `B`
    Bind(Bind),
    /// `D`
    Describe { target: Target, name: String },
    /// `E`: run `portal`; `max_rows` 0 means all.
    Execute { portal: String, max_rows: u32 },
    /// `C`
    Close { target: Target, name: String },
    /// `S`
    Sync,
    /// `H`
    Flush,
    /// `X`
    Terminate,
    /// `p`
    AuthenticationResponse(AuthenticationResponse),
    /// `d`
    CopyData(Bytes),
    /// `c`
    CopyDone,
    /// `f`
    CopyFail { message: String },
    /// `F`
    FunctionCall(FunctionCall),
}

/// What a type byte is and how long that message may be.
struct MessageKind {
    name: &'static str,
    limit: Limit,
}

enum Limit {
    /// As long as the caller allows.
    Caller,
    /// At most this (or the caller's limit, if lower).
    AtMost(usize),
}

fn kind_of(tag: u8) -> Option<MessageKind> {
    let (name, limit) = match tag {
        b'Q' => ("Query", Limit::Caller),
        b'P' => ("Parse", Limit::Caller),
        b'B' => ("Bind", Limit::Caller),
        b'F' => ("FunctionCall", Limit::Caller),
        b'd' => ("CopyData", Limit::Caller),
        b'D' => ("Describe", Limit::AtMost(SMALL_MESSAGE_LIMIT)),
        b'E' => ("Execute", Limit::AtMost(SMALL_MESSAGE_LIMIT)),
        b'C' => ("Close", Limit::AtMost(SMALL_MESSAGE_LIMIT)),
        b'S' => ("Sync", Limit::AtMost(SMALL_MESSAGE_LIMIT)),
        b'H' => ("Flush", Limit::AtMost(SMALL_MESSAGE_LIMIT)),
        b'X' => ("Terminate", Limit::AtMost(SMALL_MESSAGE_LIMIT)),
        b'c' => ("CopyDone", Limit::AtMost(SMALL_MESSAGE_LIMIT)),
        b'f' => ("CopyFail", Limit::AtMost(SMALL_MESSAGE_LIMIT)),
        b'p' => (
            "password or SASL message",
            Limit::AtMost(AUTHENTICATION_MESSAGE_LIMIT),
        ),
        _ => return None,
    };
    Some(MessageKind { name, limit })
}

/// Decodes what an app sends after its start-up, one message per [`FrontendDecoder::decode`]
/// call, from a buffer the caller fills. The type byte is checked as soon as it arrives and
/// the length as soon as its 4 bytes do, so a hostile header is refused before its body is
/// waited for.
#[derive(Debug, Clone)]
pub struct FrontendDecoder {
    max_message_length: usize,
}

impl FrontendDecoder {
    /// `max_message_length` bounds the length field (which counts itself, not the type byte)
    /// of the messages that carry statements and data, e.g. 64 MiB.
    pub fn new(max_message_length: usize) -> Self {
        Self { max_message_length }
    }

    /// The next message, removed from `buf`; `Ok(None)` until `buf` holds all of it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<FrontendMessage>, PgWireError> {
        let Some(&tag) = buf.first() else {
            return Ok(None);
        };
        let kind = kind_of(tag).ok_or(PgWireError::UnknownMessageType {
            from: Peer::App,
            tag,
        })?;
        let limit = match kind.limit {
            Limit::Caller => self.max_message_length,
            Limit::AtMost(limit) => limit.min(self.max_message_length),
        };
        let Some(frame) = take_typed_message(buf, Peer::App, kind.name, limit)? else {
            return Ok(None);
        };
        let body = Body::new(Peer::App, kind.name, frame.slice(HEADER_LENGTH..));
        parse(tag, body).map(Some)
    }
}

fn parse(tag: u8, mut body: Body) -> Result<FrontendMessage, PgWireError> {
    let message = match tag {
        b'Q' => FrontendMessage::Query {
            sql: body.cstr("query string")?,
        },
        b'P' => FrontendMessage::Parse(parse_parse(&mut body)?),
        b'B' => FrontendMessage::Bind(parse_bind(&mut body)?),
        b'D' => {
            let target = target(&mut body)?;
            FrontendMessage::Describe {
                target,
                name: body.cstr("name")?,
            }
        }
        b'E' => FrontendMessage::Execute {
            portal: body.cstr("portal name")?,
            max_rows: body.u32("maximum row count")?,
        },
        b'C' => {
            let target = target(&mut body)?;
            FrontendMessage::Close {
                target,
                name: body.cstr("name")?,
            }
        }
        b'S' => FrontendMessage::Sync,
        b'H' => FrontendMessage::Flush,
        b'X' => FrontendMessage::Terminate,
        b'p' => FrontendMessage::AuthenticationResponse(AuthenticationResponse(body.rest())),
        b'd' => FrontendMessage::CopyData(body.rest()),
        b'c' => FrontendMessage::CopyDone,
        b'f' => FrontendMessage::CopyFail {
            message: body.cstr("error message")?,
        },
        b'F' => FrontendMessage::FunctionCall(parse_function_call(&mut body)?),
        // `kind_of` admitted only the tags above.
        _ => {
            return Err(PgWireError::UnknownMessageType {
                from: Peer::App,
                tag,
            })
        }
    };
    body.finish()?;
    Ok(message)
}

fn target(body: &mut Body) -> Result<Target, PgWireError> {
    match body.u8("target (S or P)")? {
        b'S' => Ok(Target::Statement),
        b'P' => Ok(Target::Portal),
        other => Err(body.malformed(Problem::InvalidValue {
            field: "target (S or P)",
            value: other.into(),
        })),
    }
}

fn parse_parse(body: &mut Body) -> Result<Parse, PgWireError> {
    let statement = body.cstr("statement name")?;
    let sql = body.cstr("query string")?;
    let count = usize::from(body.u16("parameter type count")?);
    let mut param_types = Vec::with_capacity(body.capacity_for(count, 4));
    for _ in 0..count {
        param_types.push(body.u32("parameter type")?);
    }
    Ok(Parse {
        statement,
        sql,
        param_types,
    })
}

fn formats(body: &mut Body, field: &'static str) -> Result<Vec<Format>, PgWireError> {
    let count = usize::from(body.u16(field)?);
    let mut formats = Vec::with_capacity(body.capacity_for(count, 2));
    for _ in 0..count {
        formats.push(format(body, "format code")?);
    }
    Ok(formats)
}

fn format(body: &mut Body, field: &'static str) -> Result<Format, PgWireError> {
    let code = body.i16(field)?;
    Format::from_code(code).ok_or_else(|| {
        body.malformed(Problem::InvalidValue {
            field,
            value: code.into(),
        })
    })
}

/// A count of values, then each value (Int32 length, -1 for NULL, then the bytes).
fn values(body: &mut Body, field: &'static str) -> Result<Vec<Option<Bytes>>, PgWireError> {
    let count = usize::from(body.u16(field)?);
    let mut values = Vec::with_capacity(body.capacity_for(count, 4));
    for _ in 0..count {
        values.push(body.nullable_value("parameter value")?);
    }
    Ok(values)
}

fn check_format_count(body: &Body, formats: &[Format], params: usize) -> Result<(), PgWireError> {
    if formats.len() > 1 && formats.len() != params {
        return Err(body.malformed(Problem::FormatCountMismatch {
            formats: formats.len(),
            params,
        }));
    }
    Ok(())
}

fn parse_bind(body: &mut Body) -> Result<Bind, PgWireError> {
    let portal = body.cstr("portal name")?;
    let statement = body.cstr("statement name")?;
    let param_formats = formats(body, "parameter format count")?;
    let params = values(body, "parameter count")?;
    check_format_count(body, &param_formats, params.len())?;
    let result_formats = formats(body, "result format count")?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

fn parse_function_call(body: &mut Body) -> Result<FunctionCall, PgWireError> {
    let function = body.u32("function OID")?;
    let arg_formats = formats(body, "argument format count")?;
    let args = values(body, "argument count")?;
    check_format_count(body, &arg_formats, args.len())?;
    let result_format = format(body, "result format code")?;
    Ok(FunctionCall {
        function,
        arg_formats,
        args,
        result_format,
    })
}
