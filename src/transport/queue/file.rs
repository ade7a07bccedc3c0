//! The queue's wire format, shared by the gateway, the relay and the sandbox helper: request and
//! response JSON files (Paperclip `queue_v1`), body encoding, the envelope bound and file names.
//!
//! Promise: a file is parsed once, strictly (wrong types, duplicate keys, unknown body encodings,
//! non-canonical base64 and oversized bodies are errors, never guessed at), and a body is carried
//! byte-exactly (UTF-8 text as a JSON string, anything else as base64). Attacks defended: files
//! planted by anything in the sandbox (every field is untrusted; names are restricted to a safe
//! alphabet so they can be used in paths and shell words), memory blow-ups (size checked before
//! decoding) and parser differentials (duplicate JSON keys are rejected, not "last one wins").

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};

/// Room for the JSON around a body (id, method, path, query, headers, timestamps) in an
/// envelope. Paperclip uses the same 64 KiB (`sandboxBridgeEnvelopeLimit`).
pub const ENVELOPE_HEADROOM: u64 = 64 * 1024;

/// The largest request or response file accepted for a body limit of `max_body_bytes`: JSON
/// escaping can turn one byte of text into six (`\u0000`), so a valid body of the maximum size
/// may take six times its size, plus the headroom. Compatible with Paperclip's
/// `6 * max + 64 KiB`.
pub fn envelope_limit(max_body_bytes: u64) -> u64 {
    max_body_bytes
        .saturating_mul(6)
        .saturating_add(ENVELOPE_HEADROOM)
}

/// Longest request id (file-name stem) accepted. UUIDs have 36 characters; the bound keeps file
/// names far below `NAME_MAX` with the longest suffix (`.json.claimed`).
pub const MAX_ID_LEN: usize = 128;

/// The suffix of a waiting request or of a response.
pub const JSON_SUFFIX: &str = ".json";
/// The suffix of a request the relay has taken (docs/reference.md §6.1); ignored by depth counts.
pub const CLAIMED_SUFFIX: &str = ".json.claimed";
/// The suffix of a file being written; published by renaming it to `<id>.json`.
pub const TMP_SUFFIX: &str = ".json.tmp";

/// The protocol the relay announces in `relay.json` (docs/reference.md §6.1).
pub const CLAIMS_PROTOCOL: &str = "claims_v1";

/// Whether `id` may be used as a queue file stem: 1..=128 characters of `[A-Za-z0-9_-]`. Both
/// our UUIDv7 ids and Paperclip's UUIDv4 ids qualify; anything else (spaces, newlines, dots,
/// slashes) is never turned into a path or a shell word.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a queue file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("queue file of {size} bytes exceeds the envelope limit of {limit} bytes")]
    EnvelopeTooLarge { size: u64, limit: u64 },
    #[error("invalid queue file: {0}")]
    Malformed(String),
    #[error("unsupported body encoding {0:?}")]
    UnsupportedEncoding(String),
    #[error("body is not canonical base64")]
    InvalidBase64,
    #[error("body exceeds the limit of {0} bytes")]
    BodyTooLarge(u64),
}

/// `bodyEncoding: "base64"`: the body string is standard padded base64 of the bytes.
pub const BASE64_ENCODING: &str = "base64";

/// Encodes body bytes for a queue file: valid UTF-8 stays text (no `bodyEncoding`), anything
/// else becomes base64 with `bodyEncoding: "base64"`.
pub fn encode_body(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            Some(BASE64_ENCODING.to_owned()),
        ),
    }
}

/// Decodes a queue file body, refusing more than `max` decoded bytes. Base64 is strict: standard
/// alphabet, canonical padding, no whitespace, and its length is checked before decoding.
pub fn decode_body(body: &str, encoding: Option<&str>, max: u64) -> Result<Vec<u8>, FileError> {
    match encoding {
        None | Some("utf8") | Some("utf-8") => {
            if body.len() as u64 > max {
                return Err(FileError::BodyTooLarge(max));
            }
            Ok(body.as_bytes().to_vec())
        }
        Some(BASE64_ENCODING) => {
            let longest_encoding = max.div_ceil(3).saturating_mul(4);
            if body.len() as u64 > longest_encoding {
                return Err(FileError::BodyTooLarge(max));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| FileError::InvalidBase64)?;
            if bytes.len() as u64 > max {
                return Err(FileError::BodyTooLarge(max));
            }
            Ok(bytes)
        }
        Some(other) => Err(FileError::UnsupportedEncoding(
            other.chars().take(32).collect(),
        )),
    }
}

/// A JSON object of string values that refuses duplicate keys (a planted file must not be able
/// to show one header to one reader and another to the next).
fn unique_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.insert(k.to_ascii_lowercase(), v).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate header {:?}",
                        k.chars().take(64).collect::<String>()
                    )));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// `requests/<id>.json` (docs/reference.md §6.1; Paperclip `queue_v1`). Field order is Paperclip's. Unknown
/// fields are ignored (they have no effect), so a newer writer stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFile {
    pub id: String,
    pub method: String,
    pub path: String,
    /// Empty, or starting with `?`.
    #[serde(default)]
    pub query: String,
    /// Lower-case names; repeated values joined with `, `.
    #[serde(default, deserialize_with = "unique_string_map")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
    #[serde(
        rename = "bodyEncoding",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub body_encoding: Option<String>,
    #[serde(rename = "createdAt", default)]
    pub created_at: String,
    /// How long the writing gateway waits for the answer, in milliseconds (our gateway writes
    /// it; Paperclip's does not, and its host worker ignores it). The relay answers well before
    /// `createdAt` + this (docs/queue-transport.md, "Nested timeouts").
    #[serde(
        rename = "responseTimeoutMs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub response_timeout_ms: Option<u64>,
}

/// `responses/<id>.json` (docs/reference.md §6.1; Paperclip `queue_v1`). Field order is Paperclip's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFile {
    pub id: String,
    pub status: u16,
    #[serde(default, deserialize_with = "unique_string_map")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
    #[serde(
        rename = "bodyEncoding",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub body_encoding: Option<String>,
    #[serde(rename = "completedAt", default)]
    pub completed_at: String,
}

/// Checks the size, then parses a JSON document of type `T`.
fn parse_bounded<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    envelope: u64,
) -> Result<T, FileError> {
    let size = bytes.len() as u64;
    if size > envelope {
        return Err(FileError::EnvelopeTooLarge {
            size,
            limit: envelope,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| FileError::Malformed(one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl RequestFile {
    /// Parses `requests/<stem>.json`; the `id` inside must equal the file-name stem.
    pub fn parse(bytes: &[u8], stem: &str, envelope: u64) -> Result<RequestFile, FileError> {
        let file: RequestFile = parse_bounded(bytes, envelope)?;
        if file.id != stem {
            return Err(FileError::Malformed(
                "the id field does not match the file name".into(),
            ));
        }
        if !file.query.is_empty() && !file.query.starts_with('?') {
            return Err(FileError::Malformed(
                "query must be empty or start with '?'".into(),
            ));
        }
        Ok(file)
    }

    /// One line of compact JSON plus `\n`, as Paperclip writes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The request target as the agent sent it: path plus query.
    pub fn target(&self) -> String {
        let mut t = String::with_capacity(self.path.len() + self.query.len());
        t.push_str(&self.path);
        t.push_str(&self.query);
        t
    }
}

impl ResponseFile {
    /// Parses `responses/<id>.json`; an `id` field, when non-empty, must be the expected one.
    pub fn parse(
        bytes: &[u8],
        expected_id: &str,
        envelope: u64,
    ) -> Result<ResponseFile, FileError> {
        let file: ResponseFile = parse_bounded(bytes, envelope)?;
        if !file.id.is_empty() && file.id != expected_id {
            return Err(FileError::Malformed(
                "the id field does not match the request".into(),
            ));
        }
        if !(200..=599).contains(&file.status) {
            return Err(FileError::Malformed(format!(
                "status {} is not a final HTTP status",
                file.status
            )));
        }
        Ok(file)
    }

    /// One line of compact JSON plus `\n`, as Paperclip writes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// `relay.json`: written by the relay when it starts; tells the gateway that requests are taken
/// by the `.claimed` hand-off (docs/reference.md §6.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayAnnouncement {
    pub protocol: String,
    pub pid: u32,
    #[serde(rename = "startedAt")]
    pub started_at: String,
}

/// `ready.json`: written by the gateway after binding (Paperclip's keys, in Paperclip's order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyFile {
    pub pid: u32,
    /// TCP only (absent on a Unix socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Unix socket only: its absolute path.
    #[serde(rename = "socketPath", skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(rename = "baseUrl")]
    pub base_url: String,
    #[serde(rename = "startedAt")]
    pub started_at: String,
}

/// The current time as ISO-8601 UTC with milliseconds (`2025-01-31T12:00:00.000Z`), the format
/// of JavaScript's `toISOString()`.
pub fn now_iso8601() -> String {
    iso8601(SystemTime::now())
}

/// Formats a time as ISO-8601 UTC with milliseconds.
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Milliseconds since the Unix epoch of an ISO-8601 UTC time as [`iso8601`] and JavaScript's
/// `toISOString()` write it (`2025-01-31T12:00:00.000Z`; the fraction is optional, 1–9 digits).
/// Anything else is `None`.
pub fn parse_iso8601_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || !s.is_ascii() || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let millis = match &s[19..s.len() - 1] {
        "" => 0,
        frac if frac.len() >= 2 && frac.len() <= 10 && frac.starts_with('.') => {
            let digits = &frac[1..];
            let n = num(20..20 + digits.len())?;
            // Scale to milliseconds: `.5` is 500 ms, `.123456` is 123 ms.
            match digits.len() {
                1 => n * 100,
                2 => n * 10,
                3 => n,
                k => n / 10u64.pow(k as u32 - 3),
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y as i64, m as u32, d as u32);
    let secs = u64::try_from(days).ok()? * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(secs * 1000 + millis)
}

/// Milliseconds since the Unix epoch now.
pub fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// (year, month, day) to days since 1970-01-01 (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_iso8601_like_javascript() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(iso8601(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn parses_what_iso8601_writes() {
        for ms in [0u64, 1_709_210_096_789, 951_782_400_000, 4_102_444_799_999] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(parse_iso8601_ms(&iso8601(t)), Some(ms));
        }
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:01.123456Z"), Some(1123));
        for bad in [
            "",
            "t",
            "2024-02-29T12:34:56.789",
            "2024-02-29 12:34:56.789Z",
            "2024-13-01T00:00:00.000Z",
            "2024-02-29T12:34:56.+89Z",
            "2024-02-29T12:34:56.Z",
            "+024-02-29T12:34:56.789Z",
        ] {
            assert_eq!(parse_iso8601_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_are_restricted_to_a_safe_alphabet() {
        assert!(valid_id("0190b8a2-7c4e-7d5e-9f00-1234567890ab"));
        assert!(valid_id("a_b-C"));
        for bad in [
            "",
            "a b",
            "a.json",
            "../x",
            "a\nb",
            "a/b",
            "a'b",
            &"x".repeat(129),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn text_bodies_stay_text_and_bytes_become_base64() {
        assert_eq!(encode_body(b"{\"a\":1}"), ("{\"a\":1}".to_owned(), None));
        let (s, enc) = encode_body(&[0xff, 0x00, 0x10]);
        assert_eq!(enc.as_deref(), Some("base64"));
        assert_eq!(
            decode_body(&s, enc.as_deref(), 3).unwrap(),
            vec![0xff, 0x00, 0x10]
        );
    }

    #[test]
    fn base64_bodies_are_strict_and_bounded() {
        assert_eq!(
            decode_body("AAEC", Some("base64"), 3).unwrap(),
            vec![0, 1, 2]
        );
        // Whitespace, bad padding, non-zero trailing bits, url-safe alphabet.
        for bad in ["AAE C", "AAE", "AAE==", "AAF=", "-_8=", "AA\n=="] {
            assert!(decode_body(bad, Some("base64"), 100).is_err(), "{bad:?}");
        }
        assert_eq!(
            decode_body("AAECAw==", Some("base64"), 3),
            Err(FileError::BodyTooLarge(3))
        );
        assert_eq!(
            decode_body("abcd", None, 3),
            Err(FileError::BodyTooLarge(3))
        );
        assert!(matches!(
            decode_body("x", Some("gzip"), 3),
            Err(FileError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn request_files_round_trip_in_paperclip_shape() {
        let f = RequestFile {
            id: "abc".into(),
            method: "POST".into(),
            path: "/api/issues/1/comments".into(),
            query: "?x=1".into(),
            headers: BTreeMap::from([("content-type".into(), "application/json".into())]),
            body: "{}".into(),
            body_encoding: None,
            created_at: "2024-01-01T00:00:00.000Z".into(),
            response_timeout_ms: None,
        };
        let bytes = f.to_bytes();
        assert!(bytes.ends_with(b"}\n"));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with("{\"id\":\"abc\",\"method\":\"POST\",\"path\":"),
            "{text}"
        );
        assert!(!text.contains("bodyEncoding"));
        assert_eq!(RequestFile::parse(&bytes, "abc", 1 << 20).unwrap(), f);
        assert!(RequestFile::parse(&bytes, "other", 1 << 20).is_err());
        assert!(matches!(
            RequestFile::parse(&bytes, "abc", 10),
            Err(FileError::EnvelopeTooLarge { .. })
        ));
    }

    #[test]
    fn refuses_duplicate_keys_wrong_types_and_bad_queries() {
        let dup = br#"{"id":"a","method":"GET","path":"/","headers":{"accept":"x","Accept":"y"}}"#;
        assert!(RequestFile::parse(dup, "a", 1 << 20).is_err());
        let dup_field = br#"{"id":"a","method":"GET","method":"POST","path":"/"}"#;
        assert!(RequestFile::parse(dup_field, "a", 1 << 20).is_err());
        let num = br#"{"id":"a","method":"GET","path":"/","headers":{"accept":1}}"#;
        assert!(RequestFile::parse(num, "a", 1 << 20).is_err());
        let query = br#"{"id":"a","method":"GET","path":"/","query":"x=1"}"#;
        assert!(RequestFile::parse(query, "a", 1 << 20).is_err());
    }

    #[test]
    fn response_files_need_a_final_status_and_the_right_id() {
        let ok = br#"{"id":"a","status":201,"headers":{},"body":"","completedAt":""}"#;
        assert_eq!(ResponseFile::parse(ok, "a", 1 << 20).unwrap().status, 201);
        assert!(ResponseFile::parse(ok, "b", 1 << 20).is_err());
        let info = br#"{"id":"a","status":101,"headers":{},"body":""}"#;
        assert!(ResponseFile::parse(info, "a", 1 << 20).is_err());
        let text = br#"{"id":"a","status":"200","headers":{},"body":""}"#;
        assert!(ResponseFile::parse(text, "a", 1 << 20).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_body_bytes_round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let (text, enc) = encode_body(&bytes);
            proptest::prop_assert_eq!(decode_body(&text, enc.as_deref(), 512).unwrap(), bytes);
        }

        #[test]
        fn request_decoding_never_panics_and_keeps_its_invariants(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)
        ) {
            if let Ok(f) = RequestFile::parse(&bytes, "a", 1 << 16) {
                proptest::prop_assert_eq!(f.id.as_str(), "a");
                proptest::prop_assert!(f.query.is_empty() || f.query.starts_with('?'));
                let _ = decode_body(&f.body, f.body_encoding.as_deref(), 64);
            }
            let _ = ResponseFile::parse(&bytes, "a", 1 << 16);
        }

        #[test]
        fn take_output_parsing_never_yields_unsafe_ids(
            bytes in proptest::collection::vec(proptest::sample::select(b":FBEMDR 0aZ-_/.\n=+AQ".to_vec()), 0..256)
        ) {
            let parsed = crate::transport::queue::scripts::parse_take(&bytes);
            for item in &parsed.items {
                proptest::prop_assert!(valid_id(item.id()));
            }
        }
    }

    #[test]
    fn envelope_is_six_times_the_body_plus_headroom() {
        assert_eq!(envelope_limit(10), 60 + 65_536);
        assert_eq!(envelope_limit(u64::MAX), u64::MAX);
    }
}
