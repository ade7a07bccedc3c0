//! Request-target checks (docs/reference.md §4 step 4).
//!
//! Promise: a target that [`RequestTarget::parse`] accepts is canonical origin-form: it starts
//! with one `/`, has no empty, `.` or `..` segment (raw, percent-encoded, or hidden behind a `;`
//! path parameter), no encoded `/`, `\` or NUL, no raw `\`, control character, space, fragment or
//! non-ASCII byte, only well-formed percent-escapes that decode to valid UTF-8, and fits the
//! length limits. Nothing is normalised: the caller forwards exactly the bytes that were checked.
//!
//! Attacks defended: path traversal past the route allowlist through dot segments in any
//! spelling (`/a/../b`, `%2e%2E`, `.%2e`, overlong `%c0%ae`, Tomcat's `..;`), double decoding
//! (`%252e`), encoded separators that an upstream decodes into a new segment (`%2f`, `%5c`),
//! Windows separators, NUL truncation, request splitting through control characters, and
//! parser differentials between this check and the upstream's router (Unicode look-alikes,
//! fragments, absolute-form targets that carry their own authority).
//!
//! Decisions where docs/reference.md §4 leaves a choice:
//! * A `#` anywhere is rejected ([`TargetError::Fragment`]): it is never forwarded, and a
//!   fragment only reaches the bridge from a queue file or a broken client.
//! * Raw bytes >= 0x80 in the path are rejected ([`TargetError::NonAscii`]): a UTF-8 look-alike
//!   must never be compared with a literal. Percent-encoded non-ASCII is allowed, so it can only
//!   ever match a `{param}` segment, but the decoded path must be valid UTF-8, which rejects
//!   overlong encodings such as `%c0%ae` (an old spelling of `.`).
//! * Percent-escapes of control characters (`%0a`, `%7f` …) are rejected like raw ones, and `%25`
//!   followed by two hex digits, raw or themselves encoded (`%252e`, `%25%32%65`: double
//!   encoding), is rejected: no Paperclip id needs them, and an
//!   upstream that decodes twice would otherwise see a different path than the one checked.
//! * Path bytes outside RFC 3986 `pchar` (`"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`)
//!   are rejected rather than forwarded unencoded. The query is not interpreted; besides control
//!   characters and spaces it only refuses `"`, `<` and `>`, which no HTTP client library will
//!   put on the wire unencoded (the `http` crate refuses to build such a URI), so such a query
//!   could not be forwarded byte-for-byte anyway.

use std::fmt;

/// Longest accepted path in bytes (docs/reference.md §4 step 4). Paperclip's longest legitimate path is about
/// 150 bytes (four UUIDs); 2 KiB leaves room for long document keys while bounding the work the
/// matcher and the upstream router do per request.
pub const MAX_PATH_BYTES: usize = 2048;

/// Longest accepted query in bytes, not counting the `?` (docs/reference.md §4 step 4). Paperclip's list
/// endpoints take a handful of filters; 4 KiB is generous and keeps the whole request line well
/// under common upstream limits (Node's default header limit is 16 KiB).
pub const MAX_QUERY_BYTES: usize = 4096;

/// The part of the target a character-class error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPart {
    Path,
    Query,
}

impl fmt::Display for TargetPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetPart::Path => "path",
            TargetPart::Query => "query",
        })
    }
}

/// Why a request target was refused. `Display` is the human reason placed in the 400
/// `invalid_path` message; it never echoes query content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("request target is empty")]
    Empty,
    #[error("asterisk-form request target (*) is not accepted")]
    AsteriskForm,
    #[error("absolute-form request target is not accepted; send the path only")]
    AbsoluteForm,
    #[error("request target must start with '/'")]
    NotOriginForm,
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    PathTooLong,
    #[error("query is longer than {MAX_QUERY_BYTES} bytes")]
    QueryTooLong,
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path contains an encoded slash (%2F)")]
    EncodedSlash,
    #[error("path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    #[error("path contains a backslash")]
    Backslash,
    #[error("request target contains a NUL byte")]
    Nul,
    #[error("{0} contains a control character")]
    ControlChar(TargetPart),
    #[error("{0} contains a space")]
    Space(TargetPart),
    #[error("request target contains a fragment ('#')")]
    Fragment,
    #[error("path contains invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("path contains double percent-encoding (%25 followed by two hex digits)")]
    DoubleEncoding,
    #[error("path percent-encoding does not decode to valid UTF-8")]
    InvalidUtf8,
    #[error("path contains a non-ASCII byte; percent-encode it")]
    NonAscii,
    #[error("{part} contains {ch:?}, which must be percent-encoded")]
    DisallowedChar { part: TargetPart, ch: char },
}

/// A request target that passed every check: origin-form path plus optional query. Both are
/// slices of the input, so `path` + (`?` + `query`) is byte-identical to what was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    pub path: &'a str,
    /// Query without the leading `?`; `None` when the target has no `?`.
    pub query: Option<&'a str>,
}

impl<'a> RequestTarget<'a> {
    /// Checks a raw request target. Structural checks (form, lengths) come first; then the path
    /// and the query are scanned left to right and the first offending byte names the reason.
    pub fn parse(raw: &'a str) -> Result<Self, TargetError> {
        let bytes = raw.as_bytes();
        match bytes.first() {
            None => return Err(TargetError::Empty),
            Some(b'/') => {}
            Some(b'*') if bytes.len() == 1 => return Err(TargetError::AsteriskForm),
            Some(_) if has_scheme(bytes) => return Err(TargetError::AbsoluteForm),
            Some(_) => return Err(TargetError::NotOriginForm),
        }
        let (path, query) = match raw.find('?') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        if path.len() > MAX_PATH_BYTES {
            return Err(TargetError::PathTooLong);
        }
        if query.is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
            return Err(TargetError::QueryTooLong);
        }
        check_path(path.as_bytes())?;
        if let Some(query) = query {
            check_query(query.as_bytes())?;
        }
        Ok(RequestTarget { path, query })
    }
}

impl fmt::Display for RequestTarget<'_> {
    /// Re-serialises the target; the result equals the parsed input.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path)?;
        if let Some(query) = self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// Whether the target starts like `scheme:` (RFC 3986 §3.1), i.e. absolute-form.
fn has_scheme(bytes: &[u8]) -> bool {
    let Some(colon) = bytes.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && bytes[0].is_ascii_alphabetic()
        && bytes[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// RFC 3986 `pchar` minus `%` (escapes are handled separately): unreserved, sub-delims, `:`, `@`.
/// A table, because this runs once per path byte.
const PCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

/// Whether `b` may appear unencoded in a path segment (and in a route template literal).
pub(crate) fn is_pchar(b: u8) -> bool {
    PCHAR[usize::from(b)]
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the escape starting at `bytes[i] == b'%'`.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, TargetError> {
    match (bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(&hi), Some(&lo)) => match (hex_value(hi), hex_value(lo)) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(TargetError::InvalidPercentEncoding),
        },
        _ => Err(TargetError::InvalidPercentEncoding),
    }
}

/// Whether a segment (whose escapes are already validated) is `.` or `..` once decoded, looking
/// only at the part before the first `;` so that `..;x` (a dot segment to Tomcat-style servers)
/// counts too. A dot segment must decode to a leading `.`, so most segments are rejected by
/// their first byte without decoding.
fn is_dot_segment(segment: &[u8]) -> bool {
    let starts_with_dot = match segment {
        [b'.', ..] => true,
        [b'%', b'2', e, ..] => e.eq_ignore_ascii_case(&b'e'),
        _ => false,
    };
    if !starts_with_dot {
        return false;
    }
    let mut dots = 0;
    let mut i = 0;
    while i < segment.len() {
        let decoded = match segment[i] {
            b'%' => match escape_at(segment, i) {
                Ok(decoded) => {
                    i += 3;
                    decoded
                }
                Err(_) => return false,
            },
            raw => {
                i += 1;
                raw
            }
        };
        match decoded {
            b'.' if dots < 2 => dots += 1,
            b';' => break,
            _ => return false,
        }
    }
    dots > 0
}

/// The byte that `bytes[i..]` starts with once percent-decoded, and how many raw bytes it took.
fn decoded_at(bytes: &[u8], i: usize) -> Option<(u8, usize)> {
    match *bytes.get(i)? {
        b'%' => escape_at(bytes, i).ok().map(|b| (b, 3)),
        raw => Some((raw, 1)),
    }
}

/// Whether the two bytes starting at `bytes[i]`, once percent-decoded, are hex digits: then a
/// `%` (from `%25`) just before them starts an escape after one round of decoding, i.e. double
/// encoding. The digits may themselves be encoded: `%25%32%65` decodes to `%2e`, then to `.`.
fn starts_escape_once_decoded(bytes: &[u8], i: usize) -> bool {
    let Some((hi, width)) = decoded_at(bytes, i) else {
        return false;
    };
    hex_value(hi).is_some()
        && decoded_at(bytes, i + width).is_some_and(|(lo, _)| hex_value(lo).is_some())
}

/// Scans the path (starting with `/`, no `?`) byte by byte.
fn check_path(bytes: &[u8]) -> Result<(), TargetError> {
    let mut high_escape = false;
    let mut segment_start = 1;
    // Index 0 is the leading '/', checked by the caller.
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if is_pchar(b) {
            i += 1;
            continue;
        }
        match b {
            b'/' => {
                if bytes[i - 1] == b'/' {
                    return Err(TargetError::EmptySegment);
                }
                if is_dot_segment(&bytes[segment_start..i]) {
                    return Err(TargetError::DotSegment);
                }
                segment_start = i + 1;
            }
            b'%' => {
                match escape_at(bytes, i)? {
                    b'/' => return Err(TargetError::EncodedSlash),
                    b'\\' => return Err(TargetError::EncodedBackslash),
                    0 => return Err(TargetError::Nul),
                    0x01..=0x1f | 0x7f => return Err(TargetError::ControlChar(TargetPart::Path)),
                    b'%' if starts_escape_once_decoded(bytes, i + 3) => {
                        return Err(TargetError::DoubleEncoding)
                    }
                    0x80.. => high_escape = true,
                    _ => {}
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(TargetError::Backslash),
            0 => return Err(TargetError::Nul),
            0x01..=0x1f | 0x7f => return Err(TargetError::ControlChar(TargetPart::Path)),
            b' ' => return Err(TargetError::Space(TargetPart::Path)),
            b'#' => return Err(TargetError::Fragment),
            0x80.. => return Err(TargetError::NonAscii),
            _ => {
                return Err(TargetError::DisallowedChar {
                    part: TargetPart::Path,
                    ch: char::from(b),
                })
            }
        }
        i += 1;
    }
    if is_dot_segment(&bytes[segment_start.min(bytes.len())..]) {
        return Err(TargetError::DotSegment);
    }
    if high_escape && !decodes_to_utf8(bytes) {
        return Err(TargetError::InvalidUtf8);
    }
    Ok(())
}

/// Percent-decodes an already-scanned path (every escape well-formed, at most
/// [`MAX_PATH_BYTES`] long) into a stack buffer and validates it as UTF-8. Only called when an
/// escape decodes to a byte >= 0x80, which is rare.
fn decodes_to_utf8(bytes: &[u8]) -> bool {
    let mut buf = [0u8; MAX_PATH_BYTES];
    let mut len = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            match escape_at(bytes, i) {
                Ok(decoded) => buf[len] = decoded,
                Err(_) => return false,
            }
            i += 3;
        } else {
            buf[len] = bytes[i];
            i += 1;
        }
        len += 1;
    }
    std::str::from_utf8(&buf[..len]).is_ok()
}

/// Scans the query (without `?`): not interpreted, only free of bytes that cannot be forwarded.
fn check_query(bytes: &[u8]) -> Result<(), TargetError> {
    for &b in bytes {
        match b {
            0 => return Err(TargetError::Nul),
            0x01..=0x1f | 0x7f => return Err(TargetError::ControlChar(TargetPart::Query)),
            b' ' => return Err(TargetError::Space(TargetPart::Query)),
            b'#' => return Err(TargetError::Fragment),
            b'"' | b'<' | b'>' => {
                return Err(TargetError::DisallowedChar {
                    part: TargetPart::Query,
                    ch: char::from(b),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> RequestTarget<'_> {
        RequestTarget::parse(raw).unwrap_or_else(|e| panic!("{raw:?} was refused: {e}"))
    }

    fn err(raw: &str) -> TargetError {
        match RequestTarget::parse(raw) {
            Ok(t) => panic!("{raw:?} was accepted as {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_canonical_targets_and_splits_query() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/", "/", None),
            ("/api/agents/me", "/api/agents/me", None),
            (
                "/api/issues/abc?x=1&y=2",
                "/api/issues/abc",
                Some("x=1&y=2"),
            ),
            ("/api/issues/abc?", "/api/issues/abc", Some("")),
            ("/a?b?c", "/a", Some("b?c")),
            ("/api/openapi.json", "/api/openapi.json", None),
            ("/a/...", "/a/...", None),
            ("/a/.hidden", "/a/.hidden", None),
            ("/a/b.", "/a/b.", None),
            ("/a/%2e%2e%2e", "/a/%2e%2e%2e", None),
            ("/a/x%2ey", "/a/x%2ey", None),
            ("/a/%41%62", "/a/%41%62", None),
            ("/a/%20", "/a/%20", None),
            ("/a/%c3%a9", "/a/%c3%a9", None),
            ("/a/%E2%82%AC", "/a/%E2%82%AC", None),
            ("/a/%25", "/a/%25", None),
            ("/a/%25zz", "/a/%25zz", None),
            ("/a/", "/a/", None),
            ("/a;b=c/d", "/a;b=c/d", None),
            ("/a/@:!$&'()*+,;=-_~", "/a/@:!$&'()*+,;=-_~", None),
            ("/a?q=%zz", "/a", Some("q=%zz")),
            ("/a?q=a/../b", "/a", Some("q=a/../b")),
            ("/a?q=%2f%00\\", "/a", Some("q=%2f%00\\")),
            ("/a?q=é", "/a", Some("q=é")),
            ("/a?q={}|^`", "/a", Some("q={}|^`")),
        ];
        for &(raw, path, query) in cases {
            let t = ok(raw);
            assert_eq!((t.path, t.query), (path, query), "{raw:?}");
            assert_eq!(t.to_string(), raw);
        }
    }

    #[test]
    fn rejects_non_origin_forms() {
        let cases: &[(&str, TargetError)] = &[
            ("", TargetError::Empty),
            ("*", TargetError::AsteriskForm),
            (
                "http://evil.example/api/agents/me",
                TargetError::AbsoluteForm,
            ),
            ("HTTPS://x/", TargetError::AbsoluteForm),
            ("h2c+x-y.z:foo", TargetError::AbsoluteForm),
            ("api/agents/me", TargetError::NotOriginForm),
            ("*/x", TargetError::NotOriginForm),
            ("?x=1", TargetError::NotOriginForm),
            ("#x", TargetError::NotOriginForm),
            (" /a", TargetError::NotOriginForm),
            ("1http://x/", TargetError::NotOriginForm),
            ("evil.example:80", TargetError::AbsoluteForm),
        ];
        for &(raw, expected) in cases {
            assert_eq!(err(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn rejects_double_slash_anywhere() {
        for raw in [
            "//",
            "//evil.example/a",
            "/a//b",
            "/a/b//",
            "/a//?x",
            "/a///b",
        ] {
            assert_eq!(err(raw), TargetError::EmptySegment, "{raw:?}");
        }
    }

    #[test]
    fn rejects_dot_segment() {
        for raw in [
            "/.",
            "/..",
            "/./a",
            "/../a",
            "/a/.",
            "/a/..",
            "/a/./b",
            "/a/../b",
            "/a/..?x=1",
        ] {
            assert_eq!(err(raw), TargetError::DotSegment, "{raw:?}");
        }
    }

    #[test]
    fn rejects_encoded_dot_segment() {
        for raw in [
            "/a/%2e",
            "/a/%2E",
            "/a/%2e%2e",
            "/a/%2E%2E/b",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a/%2E./b",
            "/%2e%2e",
        ] {
            assert_eq!(err(raw), TargetError::DotSegment, "{raw:?}");
        }
    }

    #[test]
    fn rejects_dot_segment_hidden_behind_path_parameter() {
        for raw in [
            "/a/..;/b",
            "/a/.;x=1/b",
            "/a/..%3b/b",
            "/a/%2e%2e;jsessionid=1",
        ] {
            assert_eq!(err(raw), TargetError::DotSegment, "{raw:?}");
        }
        // A segment that only starts with a parameter is not a dot segment.
        ok("/a/;x/b");
    }

    #[test]
    fn rejects_encoded_slash() {
        for raw in ["/a%2fb", "/a%2Fb", "/api/agents%2f..%2fsecrets"] {
            assert_eq!(err(raw), TargetError::EncodedSlash, "{raw:?}");
        }
    }

    #[test]
    fn rejects_encoded_backslash() {
        for raw in ["/a%5cb", "/a%5Cb", "/a/..%5c"] {
            assert_eq!(err(raw), TargetError::EncodedBackslash, "{raw:?}");
        }
    }

    #[test]
    fn rejects_raw_backslash() {
        for raw in ["/a\\b", "/a/..\\b", "/\\evil"] {
            assert_eq!(err(raw), TargetError::Backslash, "{raw:?}");
        }
    }

    #[test]
    fn rejects_nul_raw_or_encoded() {
        for raw in ["/a\0b", "/a%00", "/a/%00.json", "/a?x=\0"] {
            assert_eq!(err(raw), TargetError::Nul, "{raw:?}");
        }
    }

    #[test]
    fn rejects_control_characters() {
        let path = TargetError::ControlChar(TargetPart::Path);
        let query = TargetError::ControlChar(TargetPart::Query);
        for (raw, expected) in [
            ("/a\r\nHost: evil", path),
            ("/a\tb", path),
            ("/a\x7f", path),
            ("/a\x1b[31m", path),
            ("/a%0d%0aX-Injected: 1", path),
            ("/a%7F", path),
            ("/a?x=\r\n", query),
            ("/a?x=\x7f", query),
            ("/a?\t", query),
        ] {
            assert_eq!(err(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn rejects_spaces_in_path_and_query() {
        assert_eq!(err("/a b"), TargetError::Space(TargetPart::Path));
        assert_eq!(err("/a HTTP/1.1"), TargetError::Space(TargetPart::Path));
        assert_eq!(err("/a?x=1 2"), TargetError::Space(TargetPart::Query));
    }

    #[test]
    fn rejects_fragment() {
        for raw in ["/a#b", "/a#", "/a?x=1#frag", "/a#b?c"] {
            assert_eq!(err(raw), TargetError::Fragment, "{raw:?}");
        }
    }

    #[test]
    fn rejects_invalid_percent_encoding() {
        for raw in [
            "/a%zz", "/a%4", "/a%", "/a%g0", "/a%0g/b", "/a%%32e", "/%4?x",
        ] {
            assert_eq!(err(raw), TargetError::InvalidPercentEncoding, "{raw:?}");
        }
    }

    #[test]
    fn rejects_double_percent_encoding() {
        for raw in [
            "/a/%252e%252e/b",
            "/a%252f",
            "/a%2541",
            // The hex digits after `%25` may be encoded themselves (found by fuzz/target_parse):
            // each of these decodes once to an escape, and twice to `.`, `..`, `/` or `+`.
            "/a/%25%32%65",
            "/a/%25%32%65%25%32%65/b",
            "/a/%252%65",
            "/a/%25%32e",
            "/a/%25%32%66",
            "/a%25%32b",
        ] {
            assert_eq!(err(raw), TargetError::DoubleEncoding, "{raw:?}");
        }
    }

    #[test]
    fn rejects_encoding_that_is_not_utf8() {
        for raw in [
            "/a/%c0%ae%c0%ae/b", // overlong '.'
            "/a/%c0%af",         // overlong '/'
            "/a/%c1%9c",         // overlong '\'
            "/a/%e0%80%ae",      // three-byte overlong '.'
            "/a/%ff",
            "/a/%c3",       // truncated sequence
            "/a/%c3/%a9",   // a sequence split by '/'
            "/a/%ed%a0%80", // UTF-16 surrogate
        ] {
            assert_eq!(err(raw), TargetError::InvalidUtf8, "{raw:?}");
        }
    }

    #[test]
    fn rejects_raw_non_ascii_in_path() {
        // U+FF0E FULLWIDTH FULL STOP and U+2215 DIVISION SLASH are look-alikes of '.' and '/'.
        for raw in [
            "/a/é",
            "/api/agents/\u{ff0e}\u{ff0e}/x",
            "/a\u{2215}b",
            "/ａpi",
        ] {
            assert_eq!(err(raw), TargetError::NonAscii, "{raw:?}");
        }
    }

    #[test]
    fn rejects_characters_outside_pchar() {
        for (raw, ch) in [
            ("/a<b", '<'),
            ("/a>", '>'),
            ("/a\"", '"'),
            ("/a{id}", '{'),
            ("/a|b", '|'),
            ("/a^", '^'),
            ("/a`", '`'),
            ("/a[0]", '['),
        ] {
            assert_eq!(
                err(raw),
                TargetError::DisallowedChar {
                    part: TargetPart::Path,
                    ch
                },
                "{raw:?}"
            );
        }
        for (raw, ch) in [("/a?x=<", '<'), ("/a?x=\"", '"'), ("/a?>", '>')] {
            assert_eq!(
                err(raw),
                TargetError::DisallowedChar {
                    part: TargetPart::Query,
                    ch
                },
                "{raw:?}"
            );
        }
    }

    #[test]
    fn enforces_path_length_limit() {
        let at_limit = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        ok(&at_limit);
        let over = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(err(&over), TargetError::PathTooLong);
        // The limit applies to the path only, not to path + query.
        ok(&format!("{at_limit}?{}", "q".repeat(MAX_QUERY_BYTES)));
    }

    #[test]
    fn enforces_query_length_limit_without_the_question_mark() {
        ok(&format!("/a?{}", "q".repeat(MAX_QUERY_BYTES)));
        assert_eq!(
            err(&format!("/a?{}", "q".repeat(MAX_QUERY_BYTES + 1))),
            TargetError::QueryTooLong
        );
    }

    #[test]
    fn long_path_of_multibyte_escapes_is_validated() {
        // The UTF-8 check decodes into a fixed buffer: make sure a full-length path fits.
        let mut path = String::from("/");
        while path.len() + 6 <= MAX_PATH_BYTES {
            path.push_str("%c3%a9");
        }
        ok(&path);
        path.truncate(path.len() - 3);
        assert_eq!(err(&path), TargetError::InvalidUtf8);
    }

    #[test]
    fn messages_name_the_reason_without_echoing_the_query() {
        assert_eq!(
            err("/a/%2e%2e").to_string(),
            "path contains a '.' or '..' segment"
        );
        let msg = err("/a?secret=\x01").to_string();
        assert!(!msg.contains("secret"), "{msg}");
        assert_eq!(msg, "query contains a control character");
    }
}
