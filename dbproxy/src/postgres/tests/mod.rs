//! Tests of the PostgreSQL codec: golden bytes written by hand from the layouts in the
//! protocol documentation ("Message Formats"), cross-checks against `postgres-protocol` (the
//! client side's codec, written by other people) in both directions, round trips between
//! the builders and the upstream parser, malformed input of every kind, and the bytes a real
//! `psql` sends.

mod backend;
mod frontend;
mod psql;
mod startup;
mod upstream;

use super::PgWireError;
use bytes::BytesMut;
use std::fmt::Debug;

/// Feeds `bytes` one at a time: `decode` must answer "not yet" until the last byte arrives,
/// then yield a value and leave the buffer empty.
fn decode_bytewise<T: Debug>(
    bytes: &[u8],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, PgWireError>,
) -> T {
    let mut buf = BytesMut::new();
    for (i, byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        let decoded = decode(&mut buf).unwrap_or_else(|e| panic!("byte {i}: {e}"));
        if i + 1 < bytes.len() {
            assert!(
                decoded.is_none(),
                "decoded after {} of {} bytes",
                i + 1,
                bytes.len()
            );
        } else {
            assert!(buf.is_empty(), "{} bytes left over", buf.len());
            return decoded.expect("nothing decoded from the complete message");
        }
    }
    panic!("no bytes given");
}

/// Decodes `bytes` in one piece, expecting an error.
fn decode_error<T: Debug>(
    bytes: &[u8],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, PgWireError>,
) -> PgWireError {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf) {
        Err(e) => e,
        Ok(decoded) => panic!("expected an error, decoded {decoded:?}"),
    }
}
