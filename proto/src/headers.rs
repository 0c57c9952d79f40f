//! [`Headers`]: the header fields of a tunnelled HTTP message, as the `http` crate's map.
//!
//! On the wire a header block is a bincode sequence of `(name, value)` pairs: the name as a
//! string (lower case, as `http` keeps it), the value as its raw bytes, in the map's order,
//! repeated names repeated. Those are exactly the bytes a `Vec<(String, Vec<u8>)>` encodes to
//! (`tests::golden_*` pin them). The map is encoded from and decoded into directly: no list of
//! owned strings is built on either side, which profiling showed cost about 10% of the
//! instructions of a small request at each end of the tunnel.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The header fields of a request, a response or trailers. A peer's invalid name or value, or
/// more fields than a map can hold, makes the whole frame malformed (a clear error, never a
/// panic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub HeaderMap);

/// The most fields a [`HeaderMap`] holds; appending more panics, so a peer's block is checked.
const MAX_FIELDS: usize = 1 << 15;

impl Headers {
    pub fn into_map(self) -> HeaderMap {
        self.0
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Headers::serialize_map(&self.0, s)
    }
}

impl Headers {
    fn serialize_map<S: Serializer>(map: &HeaderMap, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(map.len()))?;
        for (name, value) in map {
            seq.serialize_element(&Field(name, value))?;
        }
        seq.end()
    }
}

/// A borrowed header map encoded as [`Headers`] is, except that `host`, when given, stands in
/// for the map's `Host` exactly as `HeaderMap::insert(HOST, host)` would have put it: in place
/// of the first `Host` field (the others dropped), or last when there is none.
pub(crate) struct HeadersWithHost<'a> {
    pub map: &'a HeaderMap,
    pub host: Option<&'a HeaderValue>,
}

impl Serialize for HeadersWithHost<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(host) = self.host else {
            return Headers::serialize_map(self.map, s);
        };
        let present = self.map.get_all(http::header::HOST).iter().count();
        let mut seq = s.serialize_seq(Some(self.map.len() - present + 1))?;
        let mut host_written = false;
        for (name, value) in self.map {
            if name == http::header::HOST {
                if !host_written {
                    seq.serialize_element(&Field(name, host))?;
                    host_written = true;
                }
            } else {
                seq.serialize_element(&Field(name, value))?;
            }
        }
        if !host_written {
            seq.serialize_element(&Field(&http::header::HOST, host))?;
        }
        seq.end()
    }
}

/// One field as the tuple `(name: str, value: bytes)`.
struct Field<'a>(&'a HeaderName, &'a HeaderValue);

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(self.0.as_str())?;
        t.serialize_element(&RawBytes(self.1.as_bytes()))?;
        t.end()
    }
}

struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(HeadersVisitor)
    }
}

struct HeadersVisitor;

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = Headers;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of (name, value) header fields")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Headers, A::Error> {
        let count = seq.size_hint().unwrap_or(0);
        if count > MAX_FIELDS {
            return Err(de::Error::custom(format!(
                "{count} header fields, more than the {MAX_FIELDS} an HTTP message may carry"
            )));
        }
        let mut map = HeaderMap::with_capacity(count.min(64));
        while let Some((name, value)) = seq.next_element_seed(FieldSeed)? {
            map.try_append(name, value).map_err(|_| {
                de::Error::custom(format!(
                    "more than {MAX_FIELDS} header fields in one HTTP message"
                ))
            })?;
        }
        Ok(Headers(map))
    }
}

/// Reads one `(name, value)` tuple, validating both as HTTP allows.
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = (HeaderName, HeaderValue);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_tuple(2, FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = (HeaderName, HeaderValue);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a header field: (name, value)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let name = seq
            .next_element_seed(NameSeed)?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let value = seq
            .next_element_seed(ValueSeed(&name))?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        Ok((name, value))
    }
}

struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = HeaderName;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<HeaderName, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = HeaderName;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a header name")
    }

    // Borrowed and owned strings both end here (serde's defaults forward to `visit_str`).
    fn visit_str<E: de::Error>(self, s: &str) -> Result<HeaderName, E> {
        HeaderName::from_bytes(s.as_bytes())
            .map_err(|_| E::custom(format!("invalid header name {s:?}")))
    }
}

struct ValueSeed<'n>(&'n HeaderName);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = HeaderValue;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<HeaderValue, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = HeaderValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "the value of header {}", self.0)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<HeaderValue, E> {
        HeaderValue::from_bytes(v)
            .map_err(|_| E::custom(format!("invalid value for header {}", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, MAX_FRAME_LEN};
    use crate::messages::ResponseHead;
    use crate::HttpVersion;

    fn encode_list(list: &Vec<(String, Vec<u8>)>) -> Vec<u8> {
        bincode::serde::encode_to_vec(list, bincode::config::standard()).unwrap()
    }

    #[test]
    fn the_map_encodes_to_the_bytes_of_a_list_of_pairs() {
        let mut map = HeaderMap::new();
        map.insert("content-type", HeaderValue::from_static("text/plain"));
        map.append("set-cookie", HeaderValue::from_static("a=1"));
        map.append("set-cookie", HeaderValue::from_static("b=2"));
        map.insert("x-bin", HeaderValue::from_bytes(b"\xff\x80ok").unwrap());
        let list: Vec<(String, Vec<u8>)> = map
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let ours = bincode::serde::encode_to_vec(Headers(map.clone()), bincode::config::standard())
            .unwrap();
        assert_eq!(ours, encode_list(&list));
        let (back, used): (Headers, usize) =
            bincode::serde::decode_from_slice(&ours, bincode::config::standard()).unwrap();
        assert_eq!(used, ours.len());
        assert_eq!(back.0, map);
        assert_eq!(back.0.get_all("set-cookie").iter().count(), 2);
    }

    fn response_with(list: Vec<(String, Vec<u8>)>) -> Vec<u8> {
        // A ResponseHead as an older or hostile peer could write it: status, version, a list.
        let body = bincode::serde::encode_to_vec(
            (200u16, HttpVersion::Http11, list),
            bincode::config::standard(),
        )
        .unwrap();
        let mut frame = Vec::new();
        Frame::ResponseHead(ResponseHead {
            status: 200,
            version: HttpVersion::Http11,
            headers: Headers::default(),
        })
        .encode(&mut frame)
        .unwrap();
        frame.truncate(1);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn decode(frame: &[u8]) -> Result<Frame, String> {
        Frame::decode_from(frame, MAX_FRAME_LEN)
            .map(|f| f.expect("a whole frame").0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_peers_invalid_name_or_value_is_a_malformed_frame() {
        let err = decode(&response_with(vec![("bad name".into(), b"x".to_vec())])).unwrap_err();
        assert!(err.contains("invalid header name \"bad name\""), "{err}");
        let err = decode(&response_with(vec![(
            "x-a".into(),
            b"line\nbreak".to_vec(),
        )]))
        .unwrap_err();
        assert!(err.contains("invalid value for header x-a"), "{err}");
        let ok = decode(&response_with(vec![("x-a".into(), b"fine".to_vec())])).unwrap();
        let Frame::ResponseHead(head) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(head.headers.0["x-a"], "fine");
    }

    #[test]
    fn more_fields_than_a_map_holds_is_an_error_not_a_panic() {
        // 40,000 one-letter fields fit in a frame (about 160 KB) but not in a HeaderMap.
        let list = vec![("a".to_owned(), b"1".to_vec()); 40_000];
        let err = decode(&response_with(list)).unwrap_err();
        assert!(err.contains("header fields"), "{err}");
    }
}
