//! Responses the bridge makes itself: JSON `{"error","code"}` with `x-bridge-error`.
//!
//! Promise: every bridge-made response has `content-type: application/json`, a stable code in the
//! body and in `x-bridge-error`, closes the connection after a 400/401/405/408/413/431, and an
//! `outcome_indeterminate` answer tells the agent not to retry blindly. Messages never carry
//! secrets: they are built from the policy's own words, never from request bytes beyond the path.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::Response;

use crate::body::{full, BridgeBody};
use crate::policy::{Deny, DenyCode};

pub const X_BRIDGE_ERROR: &str = "x-bridge-error";
pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_OUTCOME: &str = "x-paperclip-bridge-outcome";

/// The JSON body of a denial (docs/reference.md §4.1, §5).
pub fn deny_body(deny: &Deny) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        code: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        outcome: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retryable: Option<bool>,
    }
    let indeterminate = deny.code == DenyCode::OutcomeIndeterminate;
    let value = Body {
        error: &deny.message,
        code: deny.code.as_str(),
        outcome: indeterminate.then_some("indeterminate"),
        retryable: indeterminate.then_some(false),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Builds the response for a denial.
pub fn deny_response(deny: &Deny) -> Response<BridgeBody> {
    let mut resp = Response::new(full(deny_body(deny)));
    *resp.status_mut() = deny.code.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(X_BRIDGE_ERROR, HeaderValue::from_static(deny.code.as_str()));
    if deny.code == DenyCode::OutcomeIndeterminate {
        h.insert(X_OUTCOME, HeaderValue::from_static("indeterminate"));
    }
    if deny.code.closes_connection() {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 429 with `Retry-After` in whole seconds.
pub fn rate_limited(retry_after_secs: u64) -> Response<BridgeBody> {
    let deny = Deny::new(
        DenyCode::RateLimited,
        format!("Rate limit exceeded; retry after {retry_after_secs} s"),
    );
    let mut resp = deny_response(&deny);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

/// 200 with a JSON body.
pub fn json_ok(body: &'static [u8]) -> Response<BridgeBody> {
    let mut resp = Response::new(full(Bytes::from_static(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// 200 with Prometheus text.
pub fn metrics_text(text: String) -> Response<BridgeBody> {
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
