//! What the dbproxy sends an app: each builder appends one complete message to `out`.
//!
//! Messages of fixed size cannot fail. The others return an error — and leave `out` as it
//! was — when their content does not fit the format (more than 65,535 columns, a body over
//! 2 GiB, a cancel key of the wrong length). Strings are written up to their first NUL byte,
//! as the server's C strings are: a NUL inside a name could otherwise end a field early and
//! shift every field after it.

use super::startup::{ProtocolNegotiation, MAX_CANCEL_KEY_LENGTH, MIN_CANCEL_KEY_LENGTH};
use super::{Format, PgWireError};
use bytes::{BufMut, BytesMut};

const AUTHENTICATION: u8 = b'R';
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT_PASSWORD: i32 = 3;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// The transaction status in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (statements are refused until it ends).
    Failed,
}

impl TransactionStatus {
    pub fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }

    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    /// The table's OID if the column is a plain table column, else 0.
    pub table_oid: u32,
    /// The column's attribute number in that table, else 0.
    pub column_attr: i16,
    pub type_oid: u32,
    /// `pg_type.typlen`: negative for variable-width types.
    pub type_len: i16,
    /// `pg_attribute.atttypmod`: type-specific, -1 when none.
    pub type_modifier: i32,
    pub format: Format,
}

/// Appends one message: its type, a length patched in by [`MessageWriter::finish`], a body.
pub(crate) struct MessageWriter<'a> {
    out: &'a mut BytesMut,
    start: usize,
    name: &'static str,
    problem: Option<String>,
}

impl<'a> MessageWriter<'a> {
    pub(crate) fn begin(out: &'a mut BytesMut, tag: u8, name: &'static str) -> Self {
        let start = out.len();
        out.put_u8(tag);
        out.put_i32(0);
        Self {
            out,
            start,
            name,
            problem: None,
        }
    }

    pub(crate) fn out(&mut self) -> &mut BytesMut {
        self.out
    }

    /// Records why the message cannot be written; `finish` then reports it.
    pub(crate) fn refuse(&mut self, problem: String) {
        self.problem.get_or_insert(problem);
    }

    /// A string, up to its first NUL, then a NUL.
    pub(crate) fn cstr(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        self.out.put_slice(&bytes[..end]);
        self.out.put_u8(0);
    }

    /// One field of an ErrorResponse or NoticeResponse.
    pub(crate) fn field(&mut self, code: u8, value: &str) {
        self.out.put_u8(code);
        self.cstr(value);
    }

    /// A count as Int16, refused above 65,535.
    pub(crate) fn count(&mut self, count: usize, what: &str) {
        match u16::try_from(count) {
            Ok(count) => self.out.put_u16(count),
            Err(_) => self.refuse(format!("{count} {what}; the format allows 65535")),
        }
    }

    /// A value as Int32 length (-1 for NULL) and its bytes.
    pub(crate) fn nullable_value(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.out.put_i32(-1),
            Some(bytes) => match i32::try_from(bytes.len()) {
                Ok(len) => {
                    self.out.put_i32(len);
                    self.out.put_slice(bytes);
                }
                Err(_) => self.refuse(format!("a value of {} bytes", bytes.len())),
            },
        }
    }

    /// Patches the length in; on a refusal, removes the message from `out` again.
    pub(crate) fn finish(self) -> Result<(), PgWireError> {
        let length = self.out.len() - self.start - 1;
        let problem = match (self.problem, i32::try_from(length)) {
            (Some(problem), _) => problem,
            (None, Ok(length)) => {
                self.out[self.start + 1..self.start + 5].copy_from_slice(&length.to_be_bytes());
                return Ok(());
            }
            (None, Err(_)) => format!("a body of {length} bytes"),
        };
        self.out.truncate(self.start);
        Err(PgWireError::Unencodable {
            message: self.name,
            problem,
        })
    }
}

/// A message with no body.
fn empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}

fn authentication(out: &mut BytesMut, code: i32) {
    out.put_u8(AUTHENTICATION);
    out.put_i32(8);
    out.put_i32(code);
}

/// The one-byte answer `N` to an SSLRequest or GSSENCRequest: no encryption, go on in the
/// clear with the next start-up packet. (Not a message: no type, no length.)
pub fn encryption_refused(out: &mut BytesMut) {
    out.put_u8(b'N');
}

/// NegotiateProtocolVersion (`v`): the newest version the dbproxy speaks and the protocol
/// options it does not know. Sent after the StartupMessage, before authentication.
pub fn negotiate_protocol_version(
    out: &mut BytesMut,
    negotiation: &ProtocolNegotiation,
) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, b'v', "NegotiateProtocolVersion");
    writer.out().put_u32(negotiation.newest_version.code());
    let count = negotiation.unrecognized_options.len();
    match i32::try_from(count) {
        Ok(count) => writer.out().put_i32(count),
        Err(_) => writer.refuse(format!("{count} options")),
    }
    for option in &negotiation.unrecognized_options {
        writer.cstr(option);
    }
    writer.finish()
}

/// AuthenticationOk: the app is in.
pub fn authentication_ok(out: &mut BytesMut) {
    authentication(out, AUTH_OK);
}

/// AuthenticationCleartextPassword: the app answers with a PasswordMessage.
pub fn authentication_cleartext_password(out: &mut BytesMut) {
    authentication(out, AUTH_CLEARTEXT_PASSWORD);
}

/// AuthenticationSASL: the mechanisms offered (e.g. `SCRAM-SHA-256`), in order of preference.
pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, AUTHENTICATION, "AuthenticationSASL");
    writer.out().put_i32(AUTH_SASL);
    for mechanism in mechanisms {
        if mechanism.is_empty() {
            // An empty name would end the list.
            writer.refuse("an empty mechanism name".into());
        }
        writer.cstr(mechanism);
    }
    writer.out().put_u8(0);
    writer.finish()
}

/// AuthenticationSASLContinue: the mechanism's challenge.
pub fn authentication_sasl_continue(out: &mut BytesMut, data: &[u8]) -> Result<(), PgWireError> {
    authentication_data(out, AUTH_SASL_CONTINUE, "AuthenticationSASLContinue", data)
}

/// AuthenticationSASLFinal: the mechanism's outcome (the server's signature for SCRAM).
pub fn authentication_sasl_final(out: &mut BytesMut, data: &[u8]) -> Result<(), PgWireError> {
    authentication_data(out, AUTH_SASL_FINAL, "AuthenticationSASLFinal", data)
}

fn authentication_data(
    out: &mut BytesMut,
    code: i32,
    name: &'static str,
    data: &[u8],
) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, AUTHENTICATION, name);
    writer.out().put_i32(code);
    writer.out().put_slice(data);
    writer.finish()
}

/// ParameterStatus: a run-time parameter's value (server_version, client_encoding, …).
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, b'S', "ParameterStatus");
    writer.cstr(name);
    writer.cstr(value);
    writer.finish()
}

/// BackendKeyData: what the app puts in a CancelRequest for this connection. The key is 4
/// bytes for protocol 3.0 (the version the dbproxy negotiates), 4 to 256 since 3.2.
pub fn backend_key_data(
    out: &mut BytesMut,
    process_id: u32,
    secret_key: &[u8],
) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, b'K', "BackendKeyData");
    if !(MIN_CANCEL_KEY_LENGTH..=MAX_CANCEL_KEY_LENGTH).contains(&secret_key.len()) {
        writer.refuse(format!(
            "a secret key of {} bytes (4 to 256 are allowed)",
            secret_key.len()
        ));
    }
    writer.out().put_u32(process_id);
    writer.out().put_slice(secret_key);
    writer.finish()
}

/// ReadyForQuery: the app may send its next query.
pub fn ready_for_query(out: &mut BytesMut, status: TransactionStatus) {
    out.put_u8(b'Z');
    out.put_i32(5);
    out.put_u8(status.byte());
}

/// CommandComplete: the command tag (`SELECT 1`, `INSERT 0 3`, `BEGIN`, …).
pub fn command_complete(out: &mut BytesMut, tag: &str) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, b'C', "CommandComplete");
    writer.cstr(tag);
    writer.finish()
}

/// EmptyQueryResponse: the query string was empty.
pub fn empty_query_response(out: &mut BytesMut) {
    empty(out, b'I');
}

/// ParseComplete
pub fn parse_complete(out: &mut BytesMut) {
    empty(out, b'1');
}

/// BindComplete
pub fn bind_complete(out: &mut BytesMut) {
    empty(out, b'2');
}

/// CloseComplete
pub fn close_complete(out: &mut BytesMut) {
    empty(out, b'3');
}

/// NoData: the statement or portal described returns no rows.
pub fn no_data(out: &mut BytesMut) {
    empty(out, b'n');
}

/// PortalSuspended: Execute's row limit was reached before the portal's end.
pub fn portal_suspended(out: &mut BytesMut) {
    empty(out, b's');
}

/// ParameterDescription: the type OIDs of a prepared statement's parameters.
pub fn parameter_description(out: &mut BytesMut, type_oids: &[u32]) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, b't', "ParameterDescription");
    writer.count(type_oids.len(), "parameters");
    for oid in type_oids {
        writer.out().put_u32(*oid);
    }
    writer.finish()
}

/// RowDescription: the columns of the rows that follow.
pub fn row_description(out: &mut BytesMut, fields: &[FieldDescription]) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, b'T', "RowDescription");
    writer.count(fields.len(), "columns");
    for field in fields {
        writer.cstr(&field.name);
        let out = writer.out();
        out.put_u32(field.table_oid);
        out.put_i16(field.column_attr);
        out.put_u32(field.type_oid);
        out.put_i16(field.type_len);
        out.put_i32(field.type_modifier);
        out.put_i16(field.format.code());
    }
    writer.finish()
}

/// DataRow: one row's values, `None` for NULL.
pub fn data_row(out: &mut BytesMut, values: &[Option<&[u8]>]) -> Result<(), PgWireError> {
    let mut writer = MessageWriter::begin(out, b'D', "DataRow");
    writer.count(values.len(), "columns");
    for value in values {
        writer.nullable_value(*value);
    }
    writer.finish()
}
