//! The connecting side of the control-stream handshake, shared by every peer of the relay.

use crate::frame::{read_frame, write_frame, Frame, FrameError};
use crate::messages::{Hello, Refusal, Welcome};
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The relay said no, and why.
    #[error("the relay refused the connection: {}", .0.reason)]
    Refused(Refusal),
    #[error("handshake failed: {0}")]
    Frame(#[from] FrameError),
    #[error("the relay answered Hello with a {0} frame")]
    Unexpected(&'static str),
    #[error("the relay closed the control stream without answering")]
    NoAnswer,
}

/// Sends `hello` on a freshly opened control stream and reads the relay's answer.
pub async fn handshake<W, R>(
    send: &mut W,
    recv: &mut R,
    hello: Hello,
) -> Result<Welcome, HandshakeError>
where
    W: AsyncWrite + Unpin + ?Sized,
    R: AsyncRead + Unpin + ?Sized,
{
    write_frame(send, &Frame::Hello(hello)).await?;
    match read_frame(recv, crate::MAX_FRAME_LEN).await? {
        Some(Frame::Welcome(w)) => Ok(w),
        Some(Frame::Refusal(r)) => Err(HandshakeError::Refused(r)),
        Some(other) => Err(HandshakeError::Unexpected(other.name())),
        None => Err(HandshakeError::NoAnswer),
    }
}
