//! Reading the fields of one complete message body. Every read names its field, so a
//! malformed message is reported as, say, "the app sent a malformed Bind: it ends before its
//! parameter value" rather than as an offset.

use super::{Peer, PgWireError, Problem};
use bytes::{Bytes, BytesMut};

pub(crate) struct Body {
    bytes: Bytes,
    pos: usize,
    from: Peer,
    message: &'static str,
}

impl Body {
    pub(crate) fn new(from: Peer, message: &'static str, bytes: Bytes) -> Self {
        Self {
            bytes,
            pos: 0,
            from,
            message,
        }
    }

    pub(crate) fn malformed(&self, problem: Problem) -> PgWireError {
        PgWireError::Malformed {
            from: self.from,
            message: self.message,
            problem,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], PgWireError> {
        let end = self.pos + N;
        let Some(slice) = self.bytes.get(self.pos..end) else {
            return Err(self.malformed(Problem::EndsEarly { field }));
        };
        let mut array = [0; N];
        array.copy_from_slice(slice);
        self.pos = end;
        Ok(array)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, PgWireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, PgWireError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, PgWireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, PgWireError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, PgWireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// The next `len` bytes, shared with the message (no copy).
    pub(crate) fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, PgWireError> {
        if len > self.remaining() {
            return Err(self.malformed(Problem::EndsEarly { field }));
        }
        let bytes = self.bytes.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(bytes)
    }

    /// A length-prefixed value: Int32 length, -1 for NULL, then that many bytes.
    pub(crate) fn nullable_value(
        &mut self,
        field: &'static str,
    ) -> Result<Option<Bytes>, PgWireError> {
        match self.i32(field)? {
            -1 => Ok(None),
            len if len < 0 => Err(self.malformed(Problem::InvalidValue {
                field,
                value: len.into(),
            })),
            // A non-negative i32 always fits a usize on the targets we build for (32 bits+).
            len => self.bytes(len as usize, field).map(Some),
        }
    }

    /// A NUL-terminated string's bytes, without the NUL.
    pub(crate) fn cstr_bytes(&mut self, field: &'static str) -> Result<Bytes, PgWireError> {
        let rest = &self.bytes[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.malformed(Problem::MissingNul { field }));
        };
        let bytes = self.bytes.slice(self.pos..self.pos + nul);
        self.pos += nul + 1;
        Ok(bytes)
    }

    /// A NUL-terminated string that the protocol says is text: it must be UTF-8.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<String, PgWireError> {
        let bytes = self.cstr_bytes(field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed(Problem::InvalidUtf8 { field }))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> Bytes {
        let bytes = self.bytes.slice(self.pos..);
        self.pos = self.bytes.len();
        bytes
    }

    /// Ends the reading: a byte left over means the message is not what its type says.
    pub(crate) fn finish(self) -> Result<(), PgWireError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.malformed(Problem::TrailingBytes { count })),
        }
    }

    /// Room for `count` items of at least `min_size` bytes each: never more than the body
    /// could hold, so a count field alone cannot make the decoder allocate.
    pub(crate) fn capacity_for(&self, count: usize, min_size: usize) -> usize {
        count.min(self.remaining() / min_size.max(1))
    }
}

/// Bytes before a typed message's body: its type byte and its length word.
pub(super) const TYPED_HEADER_LENGTH: usize = 5;

/// Cuts the typed message at the front of `buf` (type byte, length, body) once it is all there:
/// `Ok(None)` until then. `from` sent it; `name` names it in errors. Its length is checked
/// against `limit` as soon as the 4 bytes of it arrive, before anything waits for the body.
pub(super) fn take_typed_message(
    buf: &mut BytesMut,
    from: Peer,
    name: &'static str,
    limit: usize,
) -> Result<Option<Bytes>, PgWireError> {
    let Some(header) = buf.get(1..TYPED_HEADER_LENGTH) else {
        return Ok(None);
    };
    let length = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if length < 4 {
        return Err(PgWireError::LengthTooShort {
            from,
            message: name,
            length: length.into(),
            minimum: 4,
        });
    }
    // A positive i32 always fits a usize on the targets we build for (32 bits+).
    let length = length as usize;
    if length > limit {
        return Err(PgWireError::TooLong {
            from,
            message: name,
            length: length as u64,
            limit,
        });
    }
    if buf.len() < 1 + length {
        return Ok(None);
    }
    Ok(Some(buf.split_to(1 + length).freeze()))
}
