//! The queue file format's invariants as executable checks, shared by the `queue_decode` fuzz
//! target and the property tests (`tests/queue_props.rs`). Not part of the product's API (hidden
//! from the docs); pure, no I/O.
//!
//! Promise checked: whatever bytes a sandbox process plants as a request or response file, the
//! decoder does not panic; a file above the envelope bound is refused as such before it is
//! parsed; an accepted file is read the same way by a second, independent JSON reader (no
//! duplicate-key or type differential); a decoded body never exceeds the body limit; base64
//! bodies are canonical (re-encoding the bytes reproduces the file's string) and text bodies are
//! carried byte for byte; what `to_bytes` writes parses back to the same value. Allocation is
//! measured by the fuzz target itself (a counting global allocator around [`check_queue_file`]).

use base64::Engine;
use serde_json::Value;

use super::file::{
    decode_body, encode_body, envelope_limit, FileError, RequestFile, ResponseFile, BASE64_ENCODING,
};
use crate::policy::invariants::Violation;

/// The request id every checked file is read under (a valid UUID-like stem).
pub const CHECK_ID: &str = "0193f2c4-7a1e-7b55-9d3c-5e8f0a1b2c3d";

/// One file to check: which kind, under which body limit, and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct QueueInput<'a> {
    /// A response file (`responses/<id>.json`) rather than a request file.
    pub response: bool,
    /// The body limit (decoded bytes); small so that the limits are reached.
    pub max_body_bytes: u64,
    /// [`envelope_limit`] of `max_body_bytes`: the largest file accepted.
    pub envelope: u64,
    pub file: &'a [u8],
}

impl<'a> QueueInput<'a> {
    /// Splits fuzzer bytes: bit 0 of the first byte picks the kind, the next two bytes (big
    /// endian) are the body limit, the rest is the file. `None` for fewer than three bytes.
    pub fn from_fuzz_bytes(data: &'a [u8]) -> Option<QueueInput<'a>> {
        let [selector, hi, lo, file @ ..] = data else {
            return None;
        };
        let max_body_bytes = u64::from(u16::from_be_bytes([*hi, *lo]));
        Some(QueueInput {
            response: selector & 1 == 1,
            max_body_bytes,
            envelope: envelope_limit(max_body_bytes),
            file,
        })
    }
}

fn ensure(cond: bool, message: impl FnOnce() -> String) -> Result<(), Violation> {
    if cond {
        Ok(())
    } else {
        Err(Violation(message()))
    }
}

/// The fields both file kinds carry, as parsed.
struct Parsed {
    body: String,
    body_encoding: Option<String>,
    headers: Vec<(String, String)>,
    /// Scalar fields (JSON name, value) to compare with an independent reader.
    scalars: Vec<(&'static str, Value)>,
    /// Optional string fields (JSON name, value; absent reads as empty).
    optional: Vec<(&'static str, String)>,
}

/// Checks one file (see the module docs).
pub fn check_queue_file(input: &QueueInput<'_>) -> Result<(), Violation> {
    let parsed = if input.response {
        ResponseFile::parse(input.file, CHECK_ID, input.envelope).map(|f| {
            let again = ResponseFile::parse(&f.to_bytes(), CHECK_ID, u64::MAX);
            let round_trip = again.as_ref() == Ok(&f);
            let scalars = vec![
                ("id", Value::from(f.id.clone())),
                ("status", Value::from(f.status)),
            ];
            let optional = vec![("completedAt", f.completed_at.clone())];
            let fields = parsed_fields(f.body, f.body_encoding, &f.headers, scalars, optional);
            (round_trip, fields)
        })
    } else {
        RequestFile::parse(input.file, CHECK_ID, input.envelope).map(|f| {
            let again = RequestFile::parse(&f.to_bytes(), CHECK_ID, u64::MAX);
            let round_trip = again.as_ref() == Ok(&f);
            let mut scalars = vec![
                ("id", Value::from(f.id.clone())),
                ("method", Value::from(f.method.clone())),
                ("path", Value::from(f.path.clone())),
            ];
            if let Some(ms) = f.response_timeout_ms {
                scalars.push(("responseTimeoutMs", Value::from(ms)));
            }
            let optional = vec![
                ("query", f.query.clone()),
                ("createdAt", f.created_at.clone()),
            ];
            let fields = parsed_fields(f.body, f.body_encoding, &f.headers, scalars, optional);
            (round_trip, fields)
        })
    };
    let size = input.file.len() as u64;
    let (round_trip, parsed) = match parsed {
        Err(e) => return check_refusal(input, &e),
        Ok(ok) => ok,
    };
    let what = if input.response {
        "response"
    } else {
        "request"
    };
    ensure(size <= input.envelope, || {
        format!(
            "a {what} file of {size} bytes over the envelope {} was parsed",
            input.envelope
        )
    })?;
    ensure(round_trip, || {
        format!("{what} file does not round-trip through to_bytes")
    })?;
    check_second_reader(input.file, &parsed, what)?;
    check_body(
        &parsed.body,
        parsed.body_encoding.as_deref(),
        input.max_body_bytes,
    )
}

fn parsed_fields(
    body: String,
    body_encoding: Option<String>,
    headers: &std::collections::BTreeMap<String, String>,
    scalars: Vec<(&'static str, Value)>,
    optional: Vec<(&'static str, String)>,
) -> Parsed {
    Parsed {
        body,
        body_encoding,
        headers: headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        scalars,
        optional,
    }
}

/// A refused file: one over the envelope is refused as such (before parsing), one within it for
/// another reason.
fn check_refusal(input: &QueueInput<'_>, e: &FileError) -> Result<(), Violation> {
    let over = input.file.len() as u64 > input.envelope;
    let refused_for_size = matches!(e, FileError::EnvelopeTooLarge { .. });
    ensure(over == refused_for_size, || {
        format!(
            "a file of {} bytes (envelope {}) was refused with {e:?}",
            input.file.len(),
            input.envelope
        )
    })
}

/// The fields of a request file the bridge reads; everything else is ignored by every reader.
const REQUEST_FIELDS: [&str; 9] = [
    "id",
    "method",
    "path",
    "query",
    "headers",
    "body",
    "bodyEncoding",
    "createdAt",
    "responseTimeoutMs",
];

/// The fields of a response file the bridge reads.
const RESPONSE_FIELDS: [&str; 6] = [
    "id",
    "status",
    "headers",
    "body",
    "bodyEncoding",
    "completedAt",
];

/// A lenient, independent JSON reader of a queue file: a top-level object whose known fields are
/// read as generic `Value`s (the last duplicate wins, as in JavaScript's `JSON.parse`) and whose
/// unknown fields are skipped unread, as Paperclip's host worker and this decoder both ignore
/// them. Input bytes are read as text the way Node reads a file (invalid UTF-8 becomes U+FFFD).
struct LenientFile(serde_json::Map<String, Value>);

impl LenientFile {
    fn read(text: &str, known: &'static [&'static str]) -> serde_json::Result<LenientFile> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(text);
        let file = Fields(known).deserialize(&mut de)?;
        de.end()?;
        Ok(file)
    }
}

/// The seed that reads one file, knowing which fields are read.
struct Fields(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for Fields {
    type Value = LenientFile;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<LenientFile, D::Error> {
        struct V(&'static [&'static str]);
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LenientFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<LenientFile, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if self.0.contains(&key.as_str()) {
                        out.insert(key, map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(LenientFile(out))
            }
        }
        d.deserialize_map(V(self.0))
    }
}

/// A lenient second reader ([`LenientFile`]) must see the same document: otherwise a planted
/// file could mean one thing to this decoder and another to, say, Paperclip's host worker.
/// (Content of unknown fields is not compared: serde_json's typed decoder skips it without
/// validating UTF-8, `\u` surrogate escapes or number ranges, which a strict generic parse would
/// refuse — found three times by `queue_decode` — and it cannot change any field the bridge
/// reads. A response's `status` is unknown to a request file and vice versa.)
fn check_second_reader(bytes: &[u8], parsed: &Parsed, what: &str) -> Result<(), Violation> {
    let text = String::from_utf8_lossy(bytes);
    let known: &'static [&'static str] = if what == "response" {
        &RESPONSE_FIELDS
    } else {
        &REQUEST_FIELDS
    };
    let LenientFile(object) = LenientFile::read(&text, known).map_err(|e| {
        Violation(format!(
            "{what} file accepted, but a lenient JSON reader refuses it: {e}"
        ))
    })?;
    for (name, expected) in &parsed.scalars {
        ensure(object.get(*name) == Some(expected), || {
            format!(
                "{what} field {name}: decoded {expected}, a second reader sees {:?}",
                object.get(*name)
            )
        })?;
    }
    for (name, expected) in &parsed.optional {
        let seen = object.get(*name).and_then(Value::as_str).unwrap_or("");
        ensure(seen == expected, || {
            format!("{what} field {name}: decoded {expected:?}, a second reader sees {seen:?}")
        })?;
    }
    let body = object.get("body").and_then(Value::as_str).unwrap_or("");
    ensure(body == parsed.body, || {
        format!("{what} body differs for a second reader")
    })?;
    let encoding = object.get("bodyEncoding").and_then(Value::as_str);
    ensure(encoding == parsed.body_encoding.as_deref(), || {
        format!("{what} bodyEncoding differs for a second reader")
    })?;
    let headers = object.get("headers").and_then(Value::as_object);
    let mut seen: Vec<(String, String)> = headers
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_owned()))
        .collect();
    seen.sort();
    ensure(seen == parsed.headers, || {
        format!(
            "{what} headers differ for a second reader: {seen:?} vs {:?}",
            parsed.headers
        )
    })
}

/// A body decodes within the limit, canonically, and survives `encode_body` → `decode_body`.
fn check_body(body: &str, encoding: Option<&str>, max: u64) -> Result<(), Violation> {
    let Ok(bytes) = decode_body(body, encoding, max) else {
        return Ok(());
    };
    ensure(bytes.len() as u64 <= max, || {
        format!("decoded {} bytes over the limit {max}", bytes.len())
    })?;
    if encoding == Some(BASE64_ENCODING) {
        let again = base64::engine::general_purpose::STANDARD.encode(&bytes);
        ensure(again == body, || {
            format!("accepted non-canonical base64 {body:?} (canonical: {again:?})")
        })?;
    } else {
        ensure(bytes == body.as_bytes(), || {
            "text body not carried byte for byte".to_owned()
        })?;
    }
    let (text, enc) = encode_body(&bytes);
    ensure(
        decode_body(&text, enc.as_deref(), max).as_deref() == Ok(&bytes[..]),
        || "encode_body does not round-trip".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(response: bool, max: u64, file: &[u8]) -> QueueInput<'_> {
        QueueInput {
            response,
            max_body_bytes: max,
            envelope: envelope_limit(max),
            file,
        }
    }

    #[test]
    fn accepts_and_checks_well_formed_files() {
        let request = format!(
            r#"{{"id":"{CHECK_ID}","method":"POST","path":"/a","query":"?x=1","headers":{{"Content-Type":"application/json"}},"body":"AAEC","bodyEncoding":"base64","createdAt":"t"}}"#
        );
        check_queue_file(&input(false, 16, request.as_bytes())).unwrap();
        let response =
            format!(r#"{{"id":"{CHECK_ID}","status":201,"headers":{{}},"body":"héllo"}}"#);
        check_queue_file(&input(true, 16, response.as_bytes())).unwrap();
    }

    #[test]
    fn oversized_and_malformed_files_are_refused_consistently() {
        let big = vec![b' '; envelope_limit(0) as usize + 1];
        check_queue_file(&input(false, 0, &big)).unwrap();
        check_queue_file(&input(true, 0, b"{\"status\":200,\"status\":201}")).unwrap();
        check_queue_file(&input(true, 0, b"[]")).unwrap();
    }

    #[test]
    fn body_check_passes_canonical_and_refused_bodies() {
        // `decode_body` itself refuses these; the check must flag them if it ever did not.
        assert!(check_body("QQ==", Some("base64"), 10).is_ok());
        let non_canonical = "QR==";
        assert!(decode_body(non_canonical, Some("base64"), 10).is_err());
        assert!(check_body("hello", None, 10).is_ok());
        assert!(
            check_body("hello", None, 4).is_ok(),
            "refused bodies pass trivially"
        );
    }

    #[test]
    fn second_reader_check_catches_a_differential() {
        let parsed = Parsed {
            body: "a".into(),
            body_encoding: None,
            headers: vec![],
            scalars: vec![("id", Value::from("x"))],
            optional: vec![("query", String::new())],
        };
        assert!(check_second_reader(br#"{"id":"x","body":"a"}"#, &parsed, "t").is_ok());
        assert!(check_second_reader(br#"{"id":"x","body":"b"}"#, &parsed, "t").is_err());
        assert!(check_second_reader(br#"{"id":"y","body":"a"}"#, &parsed, "t").is_err());
        assert!(check_second_reader(
            br#"{"id":"x","body":"a","headers":{"a":"1"}}"#,
            &parsed,
            "t"
        )
        .is_err());
        assert!(
            check_second_reader(br#"{"id":"x","body":"a","query":"?q"}"#, &parsed, "t").is_err()
        );
        // The lenient reader keeps the last duplicate, as JSON.parse does.
        let dup_last = br#"{"id":"x","body":"b","body":"a"}"#;
        assert!(check_second_reader(dup_last, &parsed, "t").is_ok());
        let dup_first = br#"{"id":"x","body":"a","body":"b"}"#;
        assert!(check_second_reader(dup_first, &parsed, "t").is_err());
    }

    /// Unknown fields are skipped by the decoder without validation; the check does the same
    /// (each input was found by the queue_decode fuzzer).
    #[test]
    fn unvalidated_unknown_fields_read_the_same() {
        let id = CHECK_ID;
        let invalid_utf8 = [
            format!(r#"{{"id":"{id}","status":201,"headers":{{}},"`ody":""#).into_bytes(),
            b"\xc8\x88\xc2".to_vec(),
            br#"","body":"x"}"#.to_vec(),
        ]
        .concat();
        let lone_surrogate =
            format!(r#"{{"id":"{id}","status":504,"header s":"\udFFF","body":"x"}}"#).into_bytes();
        let number_out_of_range =
            format!(r#"{{"id":"{id}","method":"GET","path":"/a","status":-50e4018}}"#).into_bytes();
        for (response, file) in [
            (true, &invalid_utf8),
            (true, &lone_surrogate),
            (false, &number_out_of_range),
        ] {
            let parsed = if response {
                ResponseFile::parse(file, id, 1 << 16).is_ok()
            } else {
                RequestFile::parse(file, id, 1 << 16).is_ok()
            };
            assert!(
                parsed,
                "the decoder accepts {:?}",
                String::from_utf8_lossy(file)
            );
            assert!(
                serde_json::from_slice::<Value>(file).is_err(),
                "a strict parse refuses it"
            );
            check_queue_file(&input(response, 16, file)).unwrap();
        }
    }
}
