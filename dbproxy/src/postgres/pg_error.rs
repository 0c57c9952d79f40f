//! ErrorResponse and NoticeResponse: one type, [`PgError`], written by the dbproxy to apps and
//! parsed from what the server sends upstream. Both messages are a list of (field code,
//! string) pairs ended by a zero byte; the codes are the protocol's "Error and Notice Message
//! Fields" (S, V, C, M, D, H, P, W, …).

use super::backend::MessageWriter;
use super::body::Body;
use super::{PgWireError, Problem};
use bytes::{BufMut, BytesMut};
use std::fmt;

/// The severity of an error or notice. Written twice, as the server does since 9.6: field `S`
/// (which the server localises) and field `V` (never localised, what drivers match on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ERROR" => Severity::Error,
            "FATAL" => Severity::Fatal,
            "PANIC" => Severity::Panic,
            "WARNING" => Severity::Warning,
            "NOTICE" => Severity::Notice,
            "DEBUG" => Severity::Debug,
            "INFO" => Severity::Info,
            "LOG" => Severity::Log,
            _ => return None,
        })
    }
}

/// A SQLSTATE: five characters, digits and upper-case letters (an invalid one cannot be
/// built, so none is ever written).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    pub const SUCCESSFUL_COMPLETION: SqlState = SqlState(*b"00000");
    pub const CONNECTION_FAILURE: SqlState = SqlState(*b"08006");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState(*b"08P01");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState(*b"0A000");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState(*b"22023");
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState(*b"25P02");
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState(*b"28000");
    pub const INVALID_PASSWORD: SqlState = SqlState(*b"28P01");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState(*b"42501");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState(*b"53300");
    pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState(*b"57P01");

    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 5] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            .then_some(SqlState(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and letters are ever stored (the constants and `parse`).
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.as_str())
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error or notice as PostgreSQL reports it: severity, SQLSTATE, message, optionally a
/// detail and a hint, and any other fields a server sent (position, schema, table, …), kept
/// in order so that a parsed error is written back unchanged. [`PgError::write`] appends it
/// as an ErrorResponse, [`PgError::write_notice`] as a NoticeResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Fields other than S, V, C, M, D and H, as (field code, value).
    pub other_fields: Vec<(u8, String)>,
}

const FIELD_SEVERITY: u8 = b'S';
const FIELD_SEVERITY_NONLOCALIZED: u8 = b'V';
const FIELD_CODE: u8 = b'C';
const FIELD_MESSAGE: u8 = b'M';
const FIELD_DETAIL: u8 = b'D';
const FIELD_HINT: u8 = b'H';

impl PgError {
    pub fn new(severity: Severity, code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity,
            code,
            message: message.into(),
            detail: None,
            hint: None,
            other_fields: Vec::new(),
        }
    }

    /// An ERROR: the statement failed, the connection goes on.
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    /// A FATAL error: the connection ends after it.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends this as an ErrorResponse (`E`).
    pub fn write(&self, out: &mut BytesMut) -> Result<(), PgWireError> {
        self.write_as(b'E', "ErrorResponse", out)
    }

    /// Appends this as a NoticeResponse (`N`).
    pub fn write_notice(&self, out: &mut BytesMut) -> Result<(), PgWireError> {
        self.write_as(b'N', "NoticeResponse", out)
    }

    fn write_as(&self, tag: u8, name: &'static str, out: &mut BytesMut) -> Result<(), PgWireError> {
        let mut writer = MessageWriter::begin(out, tag, name);
        let severity = self.severity.as_str();
        writer.field(FIELD_SEVERITY, severity);
        writer.field(FIELD_SEVERITY_NONLOCALIZED, severity);
        writer.field(FIELD_CODE, self.code.as_str());
        writer.field(FIELD_MESSAGE, &self.message);
        if let Some(detail) = &self.detail {
            writer.field(FIELD_DETAIL, detail);
        }
        if let Some(hint) = &self.hint {
            writer.field(FIELD_HINT, hint);
        }
        for (code, value) in &self.other_fields {
            // A zero code would end the list early.
            if *code != 0 {
                writer.field(*code, value);
            }
        }
        writer.out().put_u8(0);
        writer.finish()
    }

    /// Reads the body of an ErrorResponse or NoticeResponse. The severity comes from `V`, or
    /// from `S` when a server older than 9.6 sent no `V`.
    pub(crate) fn parse(mut body: Body) -> Result<Self, PgWireError> {
        let mut severity_localized = None;
        let mut severity = None;
        let mut code = None;
        let mut text = None;
        let mut detail = None;
        let mut hint = None;
        let mut other_fields = Vec::new();
        loop {
            let field = body.u8("field code")?;
            if field == 0 {
                break;
            }
            let value = body.cstr("field value")?;
            match field {
                FIELD_SEVERITY => severity_localized = Some(value),
                FIELD_SEVERITY_NONLOCALIZED => severity = Some(value),
                FIELD_CODE => code = Some(value),
                FIELD_MESSAGE => text = Some(value),
                FIELD_DETAIL => detail = Some(value),
                FIELD_HINT => hint = Some(value),
                _ => other_fields.push((field, value)),
            }
        }
        let severity_text = severity
            .or(severity_localized)
            .ok_or_else(|| body.malformed(Problem::Missing { field: "severity" }))?;
        let severity = Severity::parse(&severity_text).ok_or_else(|| {
            body.malformed(Problem::Missing {
                field: "known severity",
            })
        })?;
        let code = code.as_deref().and_then(SqlState::parse).ok_or_else(|| {
            body.malformed(Problem::Missing {
                field: "valid SQLSTATE",
            })
        })?;
        let message_text =
            text.ok_or_else(|| body.malformed(Problem::Missing { field: "message" }))?;
        body.finish()?;
        Ok(PgError {
            severity,
            code,
            message: message_text,
            detail,
            hint,
            other_fields,
        })
    }
}
