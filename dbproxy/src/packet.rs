//! MySQL packet framing: `len: u24 LE | seq: u8 | payload`, payloads of 16 MB - 1 or more split
//! into chunks (a chunk of exactly 0xFFFFFF bytes means "more follows"). Hand-written because a
//! proxy must see and set sequence ids, which `mysql_common`'s codec keeps to itself.

use bytes::{Buf, BufMut, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    #[error("the dbproxy holds as many large packets as it may ({0} MiB in all); try again")]
    Busy(usize),
}

/// Bytes that the large packets of every reader sharing it may hold at once, in KiB permits.
/// Without it, each app connection could hold a whole `max_packet_bytes` packet (64 MiB): four
/// connections cost 754 MB (issue 15).
#[derive(Clone)]
pub struct PacketBudget {
    permits: Arc<Semaphore>,
    kib: usize,
    mib: usize,
}

impl std::fmt::Debug for PacketBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PacketBudget({} MiB, {} KiB free)",
            self.mib,
            self.available_kib()
        )
    }
}

impl PacketBudget {
    pub fn new(bytes: usize) -> Self {
        let kib = (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(kib)),
            kib,
            mib: bytes >> 20,
        }
    }

    /// KiB not held by any packet now.
    pub fn available_kib(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Packets below this size are not counted against the budget: they are bounded per
/// connection already, and the hot path (every small statement) stays free of it.
const BUDGET_FROM: usize = 64 * 1024;
/// A large packet is counted this many times: itself, and the copies that reading the statement
/// in it makes (the parser's tokens, then its tree). Measured: two 8 MiB statements took a
/// dbproxy from 48 to 106 MiB. Capped at the whole budget, so one packet of `max_packet_bytes`
/// always fits.
const COUNTED_TIMES: usize = 3;
/// How long a large packet waits for room in the budget before the connection is refused.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Reads packets from one side of a connection, with a size limit.
pub struct PacketReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
    budget: Option<PacketBudget>,
    /// The budget the last packet read holds, until the next read.
    held: Option<OwnedSemaphorePermit>,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub fn new(inner: R, max_len: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            max_len,
            budget: None,
            held: None,
        }
    }

    /// Counts large packets against `budget` (each held until the next read).
    pub fn with_budget(mut self, budget: PacketBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Changes the size limit (e.g. a small one for the login packet).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Reads one logical packet. `Err(Closed)` on a clean end before any byte of it.
    pub async fn read(&mut self) -> Result<Packet, PacketError> {
        self.held = None;
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
            self.reserve(payload.len() + len).await?;
            self.buf.advance(4);
            // The chunk goes straight into the payload, never through `buf` too.
            let start = payload.len();
            payload.reserve_exact(len);
            let buffered = self.buf.len().min(len);
            payload.extend_from_slice(&self.buf[..buffered]);
            self.buf.advance(buffered);
            payload.resize(start + len, 0);
            self.inner
                .read_exact(&mut payload[start + buffered..])
                .await?;
            if len < MAX_CHUNK {
                return Ok(Packet { seq, payload });
            }
        }
    }

    /// Makes the budget cover a packet of `total` bytes so far.
    async fn reserve(&mut self, total: usize) -> Result<(), PacketError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        if total < BUDGET_FROM {
            return Ok(());
        }
        let want = total
            .saturating_mul(COUNTED_TIMES)
            .div_ceil(1024)
            .min(budget.kib);
        let have = self.held.as_ref().map_or(0, |p| p.num_permits());
        let more =
            u32::try_from(want.saturating_sub(have)).map_err(|_| PacketError::Busy(budget.mib))?;
        if more == 0 {
            return Ok(());
        }
        let permits = budget.permits.clone();
        match tokio::time::timeout(BUDGET_WAIT, permits.acquire_many_owned(more)).await {
            Ok(Ok(permit)) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                Ok(())
            }
            _ => Err(PacketError::Busy(budget.mib)),
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
    /// Added to every sequence id: replies are written as if the command they answer came in
    /// one packet (ids from 1), but one of 16 MiB or more came in chunks, and the reply's ids
    /// must continue from its last chunk's (a driver otherwise sees "packet out of order").
    seq_base: u8,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            packets: 0,
            seq_base: 0,
        }
    }

    /// The replies that follow answer a command whose last chunk had sequence id `seq`.
    pub fn reply_to(&mut self, seq: u8) {
        self.seq_base = seq;
    }

    /// How many packets were queued so far: a statement that failed before this moved has
    /// told the app nothing yet, and may be tried again.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Queues `payload` with sequence id `seq`; returns the next sequence id.
    pub fn queue(&mut self, seq: u8, payload: &[u8]) -> u8 {
        self.packets += 1;
        encode(seq.wrapping_add(self.seq_base), payload, &mut self.buf).wrapping_sub(self.seq_base)
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

    /// Issue 15: every large packet read counts (three times: itself and what parsing copies)
    /// against one shared budget until its reader reads the next one; a packet that finds no
    /// room is refused, not buffered; one packet never needs more than the whole budget.
    #[tokio::test]
    async fn large_packets_share_one_bounded_budget() {
        let budget = PacketBudget::new(4 << 20);
        let mut big = BytesMut::new();
        encode(0, &vec![7u8; 768 << 10], &mut big);
        encode(0, b"small", &mut big);
        let mut other = BytesMut::new();
        encode(0, &vec![9u8; 768 << 10], &mut other);

        let mut a = PacketReader::new(&big[..], 64 << 20).with_budget(budget.clone());
        assert_eq!(a.read().await.unwrap().payload.len(), 768 << 10);
        assert_eq!(budget.available_kib(), 4096 - 3 * 768);
        let mut b = PacketReader::new(&other[..], 64 << 20).with_budget(budget.clone());
        assert!(matches!(b.read().await, Err(PacketError::Busy(4))));
        // A's next read gives its large packet's room back.
        assert_eq!(a.read().await.unwrap().payload, b"small");
        assert_eq!(budget.available_kib(), 4096);
        let mut b = PacketReader::new(&other[..], 64 << 20).with_budget(budget.clone());
        assert_eq!(b.read().await.unwrap().payload.len(), 768 << 10);
        drop(b);
        assert_eq!(
            budget.available_kib(),
            4096,
            "a dropped reader holds nothing"
        );
        // Three times 2 MiB is more than the budget: capped, it still fits alone.
        let mut huge = BytesMut::new();
        encode(0, &vec![1u8; 2 << 20], &mut huge);
        let mut c = PacketReader::new(&huge[..], 64 << 20).with_budget(budget.clone());
        assert_eq!(c.read().await.unwrap().payload.len(), 2 << 20);
        assert_eq!(budget.available_kib(), 0);
    }
}
