//! Splicing two QUIC streams: bytes move as received (`read_chunk`, no copy, no parsing), an
//! end becomes an end, a reset becomes a reset, a STOP_SENDING travels back to the source.

use proto::codes;
use quinn::{ReadError, RecvStream, SendStream, WriteError};

fn vi(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(code)
}

async fn pipe(from: RecvStream, to: SendStream) {
    pipe_watched(from, to, std::future::pending()).await
}

/// As [`pipe`]; if `silent` completes before the first byte arrived from `from`, both sides
/// are given up with STREAM_DEVELOPER_SILENT.
async fn pipe_watched(
    mut from: RecvStream,
    mut to: SendStream,
    silent: impl std::future::Future<Output = ()>,
) {
    // A STOP_SENDING on `to` must reach the source even while nothing is being written (a
    // visitor who leaves while the developer's app is still thinking).
    let stopped = to.stopped();
    tokio::pin!(stopped);
    tokio::pin!(silent);
    let mut first_byte = false;
    loop {
        let read = tokio::select! {
            read = from.read_chunk(usize::MAX, true) => read,
            _ = &mut silent, if !first_byte => {
                let _ = to.reset(vi(codes::STREAM_DEVELOPER_SILENT));
                let _ = from.stop(vi(codes::STREAM_DEVELOPER_SILENT));
                return;
            }
            stop = &mut stopped => {
                let code = match stop {
                    Ok(Some(code)) => code,
                    _ => vi(codes::STREAM_PEER_FAILED),
                };
                let _ = from.stop(code);
                return;
            }
        };
        match read {
            Ok(Some(chunk)) => {
                first_byte = true;
                if let Err(e) = to.write_chunk(chunk.bytes).await {
                    let code = match e {
                        WriteError::Stopped(code) => code,
                        _ => vi(codes::STREAM_PEER_FAILED),
                    };
                    let _ = from.stop(code);
                    return;
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return;
            }
            Err(ReadError::Reset(code)) => {
                let _ = to.reset(code);
                return;
            }
            Err(_) => {
                let _ = to.reset(vi(codes::STREAM_PEER_FAILED));
                return;
            }
        }
    }
}

/// Joins `a` and `b` in both directions until both directions have ended; `b_silent`
/// completing before `b` sent its first byte gives up both directions (a developer or a
/// dbproxy gone silent before answering).
pub async fn splice_watched(
    a: (SendStream, RecvStream),
    b: (SendStream, RecvStream),
    b_silent: impl std::future::Future<Output = ()>,
) {
    let (a_send, a_recv) = a;
    let (b_send, b_recv) = b;
    tokio::join!(pipe(a_recv, b_send), pipe_watched(b_recv, a_send, b_silent));
}
