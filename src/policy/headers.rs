//! Header allowlists and content-type rules (docs/reference.md §4.4, §4 steps 7 and 9).
//!
//! Promise: only header names on the request allowlist are forwarded upstream and only names on
//! the response allowlist come back, with every value of each kept in order; the lists can never
//! name a credential, cookie, host, forwarding, framing or hop-by-hop header, nor a name with
//! `_`. A request body's content type is accepted only when it parses strictly as
//! `type/subtype *(; param=value)` and is on the route's list (JSON by default).
//!
//! Attacks defended: the agent passing its own `authorization`, cookies or API keys upstream,
//! spoofing `x-forwarded-*`/`host`, smuggling through framing headers, `_`/`-` aliasing (some
//! servers and CGI-style gateways treat `x_api_key` as `x-api-key`), an allowlisted header made
//! hop-by-hop by `Connection`, and content-type parser differentials (`application/json, text/html`,
//! unbalanced quotes) where the bridge and the upstream would disagree about the body.

use http::header::{HeaderMap, HeaderName, CONNECTION};

/// Request headers forwarded by default (docs/reference.md §4.4).
pub const DEFAULT_REQUEST_HEADERS: [&str; 6] = [
    "accept",
    "content-type",
    "if-match",
    "if-none-match",
    "idempotency-key",
    "x-paperclip-github-capability",
];

/// Response headers returned by default (docs/reference.md §4.4); the bridge adds its own `x-request-id`.
pub const DEFAULT_RESPONSE_HEADERS: [&str; 7] = [
    "content-type",
    "etag",
    "last-modified",
    "cache-control",
    "location",
    "retry-after",
    "x-paperclip-bridge-outcome",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the de-facto `keep-alive`, `proxy-connection`) and
/// the framing headers the bridge writes itself: never copied in either direction.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Request headers that carry the caller's identity or routing: the bridge sets `host` and the
/// credential itself, and the agent must not claim another client address.
const REQUEST_FORBIDDEN: [&str; 6] = [
    "authorization",
    "cookie",
    "host",
    "x-api-key",
    "forwarded",
    "x-real-ip",
];

/// Why a header list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderRulesError {
    #[error("{list}: {name:?} is not a valid header name")]
    InvalidName { list: &'static str, name: String },
    #[error("{list}: {name:?} may not be allowlisted ({reason})")]
    Refused {
        list: &'static str,
        name: String,
        reason: &'static str,
    },
}

/// The compiled request and response header allowlists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRules {
    request: Vec<HeaderName>,
    response: Vec<HeaderName>,
}

impl Default for HeaderRules {
    /// The docs/reference.md §4.4 defaults.
    fn default() -> Self {
        let names =
            |list: &[&'static str]| list.iter().map(|n| HeaderName::from_static(n)).collect();
        HeaderRules {
            request: names(&DEFAULT_REQUEST_HEADERS),
            response: names(&DEFAULT_RESPONSE_HEADERS),
        }
    }
}

impl HeaderRules {
    /// Builds the allowlists. Names are compared case-insensitively (stored lower case);
    /// duplicates are merged.
    pub fn new(request: &[String], response: &[String]) -> Result<HeaderRules, HeaderRulesError> {
        Ok(HeaderRules {
            request: compile_list("request_headers", request, true)?,
            response: compile_list("response_headers", response, false)?,
        })
    }

    pub fn request_names(&self) -> &[HeaderName] {
        &self.request
    }

    pub fn response_names(&self) -> &[HeaderName] {
        &self.response
    }

    /// The allowlisted request headers, all values of each in order.
    pub fn filter_request(&self, headers: &HeaderMap) -> HeaderMap {
        filter(&self.request, headers)
    }

    /// The allowlisted response headers, all values of each in order.
    pub fn filter_response(&self, headers: &HeaderMap) -> HeaderMap {
        filter(&self.response, headers)
    }
}

fn compile_list(
    list: &'static str,
    names: &[String],
    is_request: bool,
) -> Result<Vec<HeaderName>, HeaderRulesError> {
    let mut out: Vec<HeaderName> = Vec::with_capacity(names.len());
    for raw in names {
        let lower = raw.to_ascii_lowercase();
        let refused = |reason| HeaderRulesError::Refused {
            list,
            name: raw.clone(),
            reason,
        };
        let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
            HeaderRulesError::InvalidName {
                list,
                name: raw.clone(),
            }
        })?;
        if HOP_BY_HOP.contains(&lower.as_str()) {
            return Err(refused(
                "hop-by-hop or framing header; the bridge frames messages",
            ));
        }
        if is_request {
            if REQUEST_FORBIDDEN.contains(&lower.as_str()) || lower.starts_with("x-forwarded-") {
                return Err(refused(
                    "credential, cookie, host or forwarding header; the bridge sets these",
                ));
            }
            if lower.contains('_') {
                return Err(refused(
                    "names with '_' are refused; servers may alias them to '-'",
                ));
            }
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// One pass over the message's headers (a handful) rather than one lookup per allowlisted name.
fn filter(allowed: &[HeaderName], headers: &HeaderMap) -> HeaderMap {
    let has_connection = headers.contains_key(CONNECTION);
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if allowed.contains(name) && !(has_connection && nominated_by_connection(headers, name)) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Headers the policy checks and then forwards as the agent sent them. A `Connection` header that
/// names one is refused rather than honoured: honouring it would drop the checked header and
/// forward a body whose type nobody checked. (Nominating `authorization`, `host`,
/// `content-length` or `transfer-encoding` changes nothing forwarded: the bridge checks the token
/// itself and sets those headers on the upstream request, so such a nomination is harmless.)
const CHECKED_FORWARDED_HEADERS: [HeaderName; 1] = [http::header::CONTENT_TYPE];

/// Refuses a `Connection` header naming a header the policy checks and forwards
/// (`Connection: content-type` would have the content type checked, then stripped as hop-by-hop).
pub(crate) fn refuse_nominated_checked_headers(headers: &HeaderMap) -> Result<(), String> {
    if !headers.contains_key(CONNECTION) {
        return Ok(());
    }
    match CHECKED_FORWARDED_HEADERS
        .iter()
        .find(|name| nominated_by_connection(headers, name))
    {
        Some(name) => Err(format!(
            "Connection must not name {name}, a header the bridge checks"
        )),
        None => Ok(()),
    }
}

/// Whether a `Connection` header lists `name`, which makes it hop-by-hop for this message.
fn nominated_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|token| {
            token
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
    })
}

/// RFC 9110 `token` (`tchar`+): header names, media types and parameter names.
pub(crate) fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Whether a `Content-Type` value is acceptable. `accepted` is a route's list (lower case
/// `type/subtype` or `type/*+suffix`); `None` means the default: `application/json` or any
/// `application/*+json`. Type and subtype compare case-insensitively; parameters (`charset`,
/// `boundary` …) are allowed but must be well-formed. Anything that does not parse is refused.
pub fn content_type_allowed(value: &[u8], accepted: Option<&[String]>) -> bool {
    let Some((ty, subtype)) = parse_media_type(value) else {
        return false;
    };
    match accepted {
        None => ty.eq_ignore_ascii_case(b"application") && is_json_subtype(subtype),
        Some(list) => list
            .iter()
            .any(|entry| media_type_matches(entry.as_bytes(), ty, subtype)),
    }
}

fn is_json_subtype(subtype: &[u8]) -> bool {
    subtype.eq_ignore_ascii_case(b"json")
        || (subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

fn media_type_matches(entry: &[u8], ty: &[u8], subtype: &[u8]) -> bool {
    let Some(slash) = entry.iter().position(|&b| b == b'/') else {
        return false;
    };
    let (entry_ty, entry_sub) = (&entry[..slash], &entry[slash + 1..]);
    if !entry_ty.eq_ignore_ascii_case(ty) {
        return false;
    }
    match entry_sub.strip_prefix(b"*") {
        // `type/*+suffix`: any non-empty subtype ending in `+suffix`.
        Some(plus_suffix) => {
            subtype.len() > plus_suffix.len()
                && subtype[subtype.len() - plus_suffix.len()..].eq_ignore_ascii_case(plus_suffix)
        }
        None => entry_sub.eq_ignore_ascii_case(subtype),
    }
}

/// Parses `type "/" subtype *( OWS ";" OWS parameter )` (RFC 9110 §8.3.1) with
/// `parameter = token "=" ( token / quoted-string )`, returning type and subtype.
fn parse_media_type(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let value = value.trim_ascii();
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    let essence = value[..end].trim_ascii_end();
    let slash = essence.iter().position(|&b| b == b'/')?;
    let (ty, subtype) = (&essence[..slash], &essence[slash + 1..]);
    if !is_token(ty) || !is_token(subtype) {
        return None;
    }
    let mut rest = &value[end..];
    while let Some(after_semi) = rest.strip_prefix(b";") {
        let param = after_semi.trim_ascii_start();
        if param.is_empty() {
            // A trailing `;` is tolerated (RFC 9110 allows empty parameters).
            break;
        }
        let eq = param.iter().position(|&b| b == b'=')?;
        if !is_token(&param[..eq]) {
            return None;
        }
        let val = &param[eq + 1..];
        let used = if val.first() == Some(&b'"') {
            quoted_string_len(val)?
        } else {
            val.iter()
                .position(|&b| !is_token(&[b]))
                .unwrap_or(val.len())
        };
        if used == 0 {
            return None;
        }
        rest = val[used..].trim_ascii_start();
        if !rest.is_empty() && rest[0] != b';' {
            return None;
        }
    }
    Some((ty, subtype))
}

/// Length of the quoted-string at the start of `bytes` (which starts with `"`), if well-formed.
fn quoted_string_len(bytes: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let escaped = *bytes.get(i + 1)?;
                if escaped < 0x20 && escaped != b'\t' || escaped == 0x7f {
                    return None;
                }
                i += 2;
            }
            b if b < 0x20 && b != b'\t' || b == 0x7f => return None,
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_lists_match_the_spec() {
        let rules = HeaderRules::default();
        let req: Vec<&str> = rules.request_names().iter().map(|n| n.as_str()).collect();
        let resp: Vec<&str> = rules.response_names().iter().map(|n| n.as_str()).collect();
        assert_eq!(req, DEFAULT_REQUEST_HEADERS);
        assert_eq!(resp, DEFAULT_RESPONSE_HEADERS);
        let rebuilt = HeaderRules::new(
            &strings(&DEFAULT_REQUEST_HEADERS),
            &strings(&DEFAULT_RESPONSE_HEADERS),
        )
        .unwrap();
        assert_eq!(rebuilt, rules);
    }

    #[test]
    fn lower_cases_and_merges_names() {
        let rules = HeaderRules::new(
            &strings(&["Accept", "ACCEPT", "X-Trace"]),
            &strings(&["ETag"]),
        )
        .unwrap();
        let req: Vec<&str> = rules.request_names().iter().map(|n| n.as_str()).collect();
        assert_eq!(req, ["accept", "x-trace"]);
        assert_eq!(rules.response_names()[0].as_str(), "etag");
    }

    #[test]
    fn refuses_dangerous_request_header_names() {
        for name in [
            "authorization",
            "Authorization",
            "proxy-authorization",
            "cookie",
            "host",
            "x-api-key",
            "forwarded",
            "x-forwarded-for",
            "X-Forwarded-Host",
            "x-real-ip",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "content-length",
            "proxy-connection",
            "x_api_key",
            "idempotency_key",
        ] {
            let e = HeaderRules::new(&strings(&[name]), &[]).unwrap_err();
            assert!(matches!(e, HeaderRulesError::Refused { .. }), "{name}: {e}");
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn refuses_hop_by_hop_response_header_names_only() {
        for name in [
            "connection",
            "transfer-encoding",
            "content-length",
            "upgrade",
        ] {
            assert!(HeaderRules::new(&[], &strings(&[name])).is_err(), "{name}");
        }
        // Response lists may name what the request list may not.
        HeaderRules::new(
            &[],
            &strings(&["set-cookie", "x_custom", "www-authenticate"]),
        )
        .unwrap();
    }

    #[test]
    fn refuses_invalid_header_names() {
        for name in ["", "a b", "a:b", "é", "a\n"] {
            let e = HeaderRules::new(&strings(&[name]), &[]).unwrap_err();
            assert!(
                matches!(e, HeaderRulesError::InvalidName { .. }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn filters_to_the_allowlist_keeping_every_value() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer caller"),
            ("cookie", "a=b"),
            ("x-api-key", "k"),
            ("proxy-authorization", "Basic x"),
            ("host", "evil.example"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x_api_key", "k"),
            ("accept", "application/json"),
            ("accept", "text/plain"),
            ("if-match", "\"v1\""),
            ("content-type", "application/json"),
            ("x-paperclip-run-id", "spoof"),
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        let out = HeaderRules::default().filter_request(&h);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "content-type", "if-match"]);
        let accepts: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(accepts, ["application/json", "text/plain"]);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn filters_response_headers() {
        let mut h = HeaderMap::new();
        h.insert("set-cookie", HeaderValue::from_static("s=1"));
        h.insert("etag", HeaderValue::from_static("\"x\""));
        h.insert("server", HeaderValue::from_static("express"));
        h.insert(
            "x-paperclip-bridge-outcome",
            HeaderValue::from_static("indeterminate"),
        );
        let out = HeaderRules::default().filter_response(&h);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["etag", "x-paperclip-bridge-outcome"]);
    }

    #[test]
    fn refuses_connection_naming_a_checked_header() {
        for value in [
            "content-type",
            "keep-alive, Content-Type",
            "x-a,CONTENT-TYPE ",
        ] {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_str(value).unwrap());
            assert!(refuse_nominated_checked_headers(&h).is_err(), "{value}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, if-match, authorization, host"),
        );
        assert!(refuse_nominated_checked_headers(&h).is_ok());
    }

    #[test]
    fn drops_allowlisted_headers_nominated_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, If-Match"),
        );
        h.insert("if-match", HeaderValue::from_static("\"v1\""));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let out = HeaderRules::default().filter_request(&h);
        assert!(out.get("if-match").is_none());
        assert!(out.get("accept").is_some());
    }

    #[test]
    fn default_content_type_accepts_json_only() {
        let allowed = [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"utf-8\"",
            "application/json ; charset=UTF-8",
            "application/json;",
            "application/vnd.api+json; charset=utf-8",
            "application/merge-patch+json",
            "APPLICATION/PROBLEM+JSON",
            " application/json ",
        ];
        for value in allowed {
            assert!(content_type_allowed(value.as_bytes(), None), "{value:?}");
        }
        let denied = [
            "",
            "text/plain",
            "text/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/+json",
            "application/jsonx",
            "application/json-seq",
            "application/json, text/html",
            "application/json text/html",
            "application/json; charset",
            "application/json; charset=",
            "application/json; charset=\"utf-8",
            "application/json; =utf-8",
            "application/json; charset=utf 8",
            "application/json;\x00",
            "application /json",
            "application/",
            "/json",
            "json",
            "*/*",
            "application/*",
        ];
        for value in denied {
            assert!(!content_type_allowed(value.as_bytes(), None), "{value:?}");
        }
    }

    #[test]
    fn route_list_replaces_the_default() {
        let multipart = strings(&["multipart/form-data"]);
        assert!(content_type_allowed(
            b"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            Some(&multipart)
        ));
        assert!(content_type_allowed(
            b"Multipart/Form-Data; boundary=\"a b\"",
            Some(&multipart)
        ));
        assert!(!content_type_allowed(b"application/json", Some(&multipart)));
        assert!(!content_type_allowed(
            b"multipart/mixed; boundary=x",
            Some(&multipart)
        ));

        let suffixed = strings(&["application/*+xml"]);
        assert!(content_type_allowed(
            b"application/atom+xml",
            Some(&suffixed)
        ));
        assert!(!content_type_allowed(b"application/+xml", Some(&suffixed)));
        assert!(!content_type_allowed(b"application/xml", Some(&suffixed)));
    }
}
