//! Golden bytes for every frame kind, and the failure modes of the framing.

use super::*;
use bytes::Bytes;

fn token() -> AuthToken {
    AuthToken::parse("k3yx9qabcdefghijklmnopqrstuvwxyz01234567").unwrap()
}

fn hex(frame: &Frame) -> String {
    let mut out = Vec::new();
    frame.encode(&mut out).unwrap();
    out.iter().map(|b| format!("{b:02x}")).collect()
}

fn headers(fields: &[(&'static str, &'static str)]) -> Headers {
    let mut map = ::http::HeaderMap::new();
    for (n, v) in fields {
        map.append(*n, ::http::HeaderValue::from_static(v));
    }
    Headers(map)
}

fn round_trip(frame: Frame) {
    let mut out = Vec::new();
    frame.encode(&mut out).unwrap();
    let (back, used) = Frame::decode_from(&out, MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(used, out.len());
    assert_eq!(back, frame);
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            role: Role::Developer,
            token: Some(token()),
            client_name: "lap".into(),
            capabilities: vec!["http".into()],
        }),
        Frame::Welcome(Welcome {
            session: 7,
            routing_key: Some(token().routing_key()),
            public_urls: vec!["http://www-k3yx9q.example.com".into()],
            limits: Limits {
                max_concurrent_streams: 1024,
                max_frame_len: 1 << 20,
                keep_alive_ms: 10_000,
            },
        }),
        Frame::Refusal(Refusal {
            code: RefusalCode::Revoked,
            reason: "revoked".into(),
        }),
        Frame::StreamHeader(StreamHeader::Http(RequestHead {
            method: "POST".into(),
            scheme: "http".into(),
            authority: "example.com".into(),
            path_and_query: "/a?b=1".into(),
            version: HttpVersion::Http11,
            headers: headers(&[("x-a", "1")]),
        })),
        Frame::Route(RouteRequest {
            key: RoutingKey::parse("k3yx9q").unwrap(),
        }),
        Frame::RouteReply(RouteReply::Offline),
        Frame::ResponseHead(ResponseHead {
            status: 200,
            version: HttpVersion::Http2,
            headers: Headers::default(),
        }),
        Frame::Data(Bytes::from_static(b"hi")),
        Frame::Trailers(headers(&[("grpc-status", "0")])),
        Frame::End,
        Frame::Abort(Abort {
            reason: "app died".into(),
        }),
        Frame::StreamHeader(StreamHeader::Db(DbStreamHeader {
            routing_key: Some(RoutingKey::parse("k3yx9q").unwrap()),
        })),
    ]
}

#[test]
fn every_frame_round_trips() {
    for f in all_frames() {
        round_trip(f);
    }
}

// If one of these fails, the wire format changed: bump PROTOCOL_VERSION or undo the change.
// (`PRINT_GOLDEN=1 cargo test -p proto golden -- --nocapture` prints the current bytes.)
#[test]
fn golden_bytes_of_every_frame() {
    if std::env::var_os("PRINT_GOLDEN").is_some() {
        for f in all_frames() {
            println!("GOLDEN {}", hex(&f));
        }
    }
    let expected = [
        "010000003700010001286b33797839716162636465666768696a6b6c6d6e6f707172737475767778797a3031323334353637036c6170010468747470",
        "02000000330701066b3379783971011d687474703a2f2f7777772d6b33797839712e6578616d706c652e636f6dfb0004fc00001000fb1027",
        "030000000901077265766f6b6564",
        "10000000260004504f535404687474700b6578616d706c652e636f6d062f613f623d31010103782d610131",
        "1100000007066b3379783971",
        "120000000101",
        "2000000003c80200",
        "21000000026869",
        "220000000f010b677270632d7374617475730130",
        "2300000000",
        "2400000009086170702064696564",
        "10000000090101066b3379783971",
    ];
    let got: Vec<String> = all_frames().iter().map(hex).collect();
    for (i, (g, e)) in got.iter().zip(expected.iter()).enumerate() {
        assert_eq!(
            g,
            e,
            "frame #{i} ({}) encodes as {g}, golden {e}",
            all_frames()[i].name()
        );
    }
}

#[test]
fn oversized_frame_is_refused_before_reading_its_payload() {
    // Header claims 2 MiB; only the header is present.
    let mut buf = vec![0x21];
    buf.extend_from_slice(&(2u32 << 20).to_be_bytes());
    let err = Frame::decode_from(&buf, MAX_FRAME_LEN).unwrap_err();
    assert!(
        matches!(err, FrameError::TooLong { len, max } if len == 2 << 20 && max == MAX_FRAME_LEN)
    );
    // A reader with a lower limit applies it.
    let mut small = vec![0x21];
    small.extend_from_slice(&100u32.to_be_bytes());
    assert!(matches!(
        Frame::decode_from(&small, 10),
        Err(FrameError::TooLong { len: 100, max: 10 })
    ));
}

#[test]
fn encoding_refuses_a_frame_over_the_ceiling() {
    let mut out = vec![];
    let err = Frame::Data(Bytes::from(vec![0; MAX_FRAME_LEN + 1]))
        .encode(&mut out)
        .unwrap_err();
    assert!(matches!(err, FrameError::TooLong { .. }));
    assert!(out.is_empty());
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let mut out = Vec::new();
    Frame::Data(Bytes::from_static(b"hello"))
        .encode(&mut out)
        .unwrap();
    for cut in 0..out.len() {
        assert!(Frame::decode_from(&out[..cut], MAX_FRAME_LEN)
            .unwrap()
            .is_none());
    }
}

#[tokio::test]
async fn truncated_stream_is_an_error_and_clean_end_is_none() {
    let mut out = Vec::new();
    Frame::End.encode(&mut out).unwrap();
    Frame::Data(Bytes::from_static(b"hello"))
        .encode(&mut out)
        .unwrap();
    let mut r = &out[..out.len() - 2];
    assert_eq!(
        read_frame(&mut r, MAX_FRAME_LEN).await.unwrap(),
        Some(Frame::End)
    );
    assert!(matches!(
        read_frame(&mut r, MAX_FRAME_LEN).await,
        Err(FrameError::Truncated)
    ));
    let mut empty: &[u8] = &[];
    assert!(read_frame(&mut empty, MAX_FRAME_LEN)
        .await
        .unwrap()
        .is_none());
    let mut half_header: &[u8] = &[0x21, 0];
    assert!(matches!(
        read_frame(&mut half_header, MAX_FRAME_LEN).await,
        Err(FrameError::Truncated)
    ));
}

#[test]
fn hello_of_another_version_is_reported_as_such() {
    let mut out = Vec::new();
    all_frames()[0].encode(&mut out).unwrap();
    out[5..7].copy_from_slice(&7u16.to_be_bytes());
    let err = Frame::decode_from(&out, MAX_FRAME_LEN).unwrap_err();
    assert!(matches!(
        err,
        FrameError::UnsupportedVersion {
            peer: 7,
            ours: PROTOCOL_VERSION
        }
    ));
    assert_eq!(
        err.to_string(),
        "peer speaks protocol version 7, this side speaks 1"
    );
}

#[test]
fn garbage_payloads_are_malformed_not_panics() {
    for kind in 0u8..=0x30 {
        for payload in [
            &b""[..],
            b"\xff",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x00\x01garbage",
        ] {
            let _ = Frame::decode(kind, Bytes::copy_from_slice(payload));
        }
    }
    assert!(matches!(
        Frame::decode(0x7f, Bytes::new()),
        Err(FrameError::UnknownKind(0x7f))
    ));
    // A string length claiming far more than the frame holds.
    assert!(matches!(
        Frame::decode(0x12, Bytes::from_static(b"\x02\xfb\xff\xff")),
        Err(FrameError::Malformed {
            kind: "RouteReply",
            ..
        })
    ));
    // A token that is not a valid token is refused by decoding, not carried along.
    let mut out = Vec::new();
    all_frames()[0].encode(&mut out).unwrap();
    let pos = out.iter().position(|&b| b == b'k').unwrap();
    out[pos] = b'K';
    assert!(matches!(
        Frame::decode_from(&out, MAX_FRAME_LEN),
        Err(FrameError::Malformed { kind: "Hello", .. })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut out = Vec::new();
    Frame::RouteReply(RouteReply::Connected)
        .encode(&mut out)
        .unwrap();
    out.push(0);
    out[4] += 1;
    assert!(matches!(
        Frame::decode_from(&out, MAX_FRAME_LEN),
        Err(FrameError::Malformed {
            kind: "RouteReply",
            ..
        })
    ));
    assert!(matches!(
        Frame::decode(0x23, Bytes::from_static(b"x")),
        Err(FrameError::Malformed { kind: "End", .. })
    ));
}

#[tokio::test]
async fn write_data_splits_large_bodies_into_chunks() {
    let body = vec![7u8; frame::MAX_DATA_CHUNK * 2 + 10];
    let mut out = Vec::new();
    write_data(&mut out, &body).await.unwrap();
    let mut r = &out[..];
    let mut total = 0;
    let mut frames = 0;
    while let Some(f) = read_frame(&mut r, MAX_FRAME_LEN).await.unwrap() {
        let Frame::Data(d) = f else {
            panic!("not data")
        };
        total += d.len();
        frames += 1;
    }
    assert_eq!((total, frames), (body.len(), 3));
}
