//! MySQL packet framing: `len: u24 LE | seq: u8 | payload`, payloads of 16 MB - 1 or more split
//! into chunks (a chunk of exactly 0xFFFFFF bytes means "more follows"). Hand-written because a
//! proxy must see and set sequence ids, which `mysql_common`'s codec keeps to itself.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_CHUNK: usize = 0xFF_FFFF;

/// One logical packet (chunks joined) and the sequence id of its last chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("packet of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
}

/// Reads packets from one side of a connection, with a size limit.
pub struct PacketReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub fn new(inner: R, max_len: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            max_len,
        }
    }

    /// Reads one logical packet. `Err(Closed)` on a clean end before any byte of it.
    pub async fn read(&mut self) -> Result<Packet, PacketError> {
        let mut payload = Vec::new();
        loop {
            while self.buf.len() < 4 {
                if self.inner.read_buf(&mut self.buf).await? == 0 {
                    return Err(if self.buf.is_empty() && payload.is_empty() {
                        PacketError::Closed
                    } else {
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()
                    });
                }
            }
            let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], 0]) as usize;
            let seq = self.buf[3];
            if payload.len() + len > self.max_len {
                return Err(PacketError::TooLarge(payload.len() + len, self.max_len));
            }
            while self.buf.len() < 4 + len {
                if self.inner.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
            }
            self.buf.advance(4);
            payload.extend_from_slice(&self.buf[..len]);
            self.buf.advance(len);
            if len < MAX_CHUNK {
                return Ok(Packet { seq, payload });
            }
        }
    }
}

/// Appends `payload` framed as one logical packet starting at `seq`; returns the next seq.
pub fn encode(mut seq: u8, payload: &[u8], out: &mut BytesMut) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_CHUNK);
        out.put_uint_le(n as u64, 3);
        out.put_u8(seq);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
        seq = seq.wrapping_add(1);
        if n < MAX_CHUNK {
            return seq;
        }
    }
}

/// Writes packets to one side of a connection; `flush` sends what was queued.
pub struct PacketWriter<W> {
    inner: W,
    buf: BytesMut,
    /// Packets queued since the writer was made (whether they are sent yet or not).
    packets: u64,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            packets: 0,
        }
    }

    /// How many packets were queued so far: a statement that failed before this moved has
    /// told the app nothing yet, and may be tried again.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Queues `payload` with sequence id `seq`; returns the next sequence id.
    pub fn queue(&mut self, seq: u8, payload: &[u8]) -> u8 {
        self.packets += 1;
        encode(seq, payload, &mut self.buf)
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.inner.flush().await
    }

    pub async fn send(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<u8> {
        let next = self.queue(seq, payload);
        self.flush().await?;
        Ok(next)
    }

    pub async fn shutdown(&mut self) {
        let _ = self.inner.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_packets_split_and_rejoin() {
        for size in [
            0usize,
            1,
            MAX_CHUNK - 1,
            MAX_CHUNK,
            MAX_CHUNK + 10,
            2 * MAX_CHUNK,
        ] {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut out = BytesMut::new();
            let next = encode(5, &payload, &mut out);
            let chunks = size / MAX_CHUNK + 1;
            assert_eq!(next, 5 + chunks as u8, "size {size}");
            let mut r = PacketReader::new(&out[..], 64 << 20);
            let p = r.read().await.unwrap();
            assert_eq!(p.payload.len(), size);
            assert_eq!(p.payload, payload);
            assert!(matches!(r.read().await, Err(PacketError::Closed)));
        }
    }

    #[tokio::test]
    async fn oversized_and_truncated_packets_are_errors() {
        let mut out = BytesMut::new();
        encode(0, &[1u8; 100], &mut out);
        assert!(matches!(
            PacketReader::new(&out[..], 50).read().await,
            Err(PacketError::TooLarge(100, 50))
        ));
        assert!(matches!(
            PacketReader::new(&out[..60], 1000).read().await,
            Err(PacketError::Io(_))
        ));
    }
}
