//! Header allowlists (SPEC §4.4). TEMPORARY STUB (replaced by the policy branch).
use http::{HeaderMap, HeaderName};

#[derive(Debug, Clone)]
pub struct HeaderRules {
    request: Vec<HeaderName>,
    response: Vec<HeaderName>,
}

impl Default for HeaderRules {
    fn default() -> Self {
        let n = |v: &[&str]| {
            v.iter()
                .map(|s| HeaderName::from_bytes(s.as_bytes()).unwrap())
                .collect()
        };
        HeaderRules {
            request: n(&[
                "accept",
                "content-type",
                "if-match",
                "if-none-match",
                "idempotency-key",
                "x-paperclip-github-capability",
            ]),
            response: n(&[
                "content-type",
                "etag",
                "last-modified",
                "cache-control",
                "location",
                "retry-after",
                "x-paperclip-bridge-outcome",
            ]),
        }
    }
}

impl HeaderRules {
    pub fn new(
        request: &[String],
        response: &[String],
    ) -> Result<HeaderRules, http::header::InvalidHeaderName> {
        let n = |v: &[String]| {
            v.iter()
                .map(|s| HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(HeaderRules {
            request: n(request)?,
            response: n(response)?,
        })
    }
    pub fn request_names(&self) -> &[HeaderName] {
        &self.request
    }
    pub fn response_names(&self) -> &[HeaderName] {
        &self.response
    }
    fn filter(names: &[HeaderName], headers: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        for n in names {
            for v in headers.get_all(n) {
                out.append(n.clone(), v.clone());
            }
        }
        out
    }
    pub fn filter_request(&self, headers: &HeaderMap) -> HeaderMap {
        Self::filter(&self.request, headers)
    }
    pub fn filter_response(&self, headers: &HeaderMap) -> HeaderMap {
        Self::filter(&self.response, headers)
    }
}
