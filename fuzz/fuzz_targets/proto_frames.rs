//! Frames from any peer: whatever the bytes, decoding returns a frame, "more bytes needed" or
//! an error — never a panic, never an allocation beyond the frame limit — and a decoded frame
//! encodes again.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 64 * 1024;
    let mut rest = data;
    while let Ok(Some((frame, used))) = proto::Frame::decode_from(rest, max) {
        let mut out = Vec::new();
        let _ = frame.encode(&mut out);
        if used == 0 || used > rest.len() {
            panic!("decode_from consumed {used} of {} bytes", rest.len());
        }
        rest = &rest[used..];
    }
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(_)) = proto::Frame::split_from(&mut buf, max) {}
    let _ = proto::Frame::bytes_missing(data);
});
