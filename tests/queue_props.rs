//! Property tests of the queue file decoder: whatever a sandbox process writes as a request or
//! response file, the decoder does not panic, refuses oversized files before parsing, reads an
//! accepted file as a second JSON reader would, and decodes bodies within the limit and
//! canonically.
//!
//! The invariants live in `callback_bridge::transport::queue::invariants`, shared with the
//! `queue_decode` fuzz target in `fuzz/`. Random bytes are rarely JSON, so the generator here
//! builds near-valid files: the right fields with hostile values (non-canonical base64, wrong
//! types, duplicate keys, oversized bodies, unknown encodings).

use callback_bridge::transport::queue::file::envelope_limit;
use callback_bridge::transport::queue::invariants::{check_queue_file, QueueInput, CHECK_ID};
use proptest::prelude::*;

/// JSON values for body-like fields: text, canonical and non-canonical base64, odd types.
fn body_value() -> impl Strategy<Value = String> {
    use base64::Engine;
    prop_oneof![
        "[ -~]{0,40}".prop_map(|s| serde_json::Value::from(s).to_string()),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(|bytes| {
            format!(
                "\"{}\"",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        }),
        prop::sample::select(
            &[
                r#""""#,
                r#""QQ==""#,
                r#""QR==""#,
                r#""QQ""#,
                r#""QQ=""#,
                r#""Q Q==""#,
                r#""/w==""#,
                r#""_w==""#,
                r#""AAECAw==\n""#,
                r#""\u0000\u00ff""#,
                r#""héllo""#,
                "null",
                "12",
                "[]",
                "{}",
            ][..],
        )
        .prop_map(str::to_owned),
    ]
}

fn encoding_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        prop::sample::select(
            &[
                r#""base64""#,
                r#""BASE64""#,
                r#""utf8""#,
                r#""utf-8""#,
                r#""hex""#,
                "null",
                "1",
            ][..],
        )
        .prop_map(str::to_owned),
    )
}

fn headers_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(
            &[
                "{}",
                r#"{"content-type":"application/json"}"#,
                r#"{"set-cookie":"s","etag":"\"1\""}"#,
            ][..],
        ),
        1 => prop::sample::select(
            &[r#"{"Accept":"a","accept":"b"}"#, r#"{"a":"1","a":"2"}"#, r#"{"x":1}"#, "[]", "null"][..],
        ),
    ]
    .prop_map(str::to_owned)
}

/// A request or response file as JSON text: fields in random order, some left out, some
/// repeated, values drawn from the hostile sets above.
fn file_strategy() -> impl Strategy<Value = (bool, u16, String)> {
    // Mostly valid values, so that a good share of files is accepted and its body decoded.
    let id = prop_oneof![
        8 => Just(format!(r#""{CHECK_ID}""#)),
        1 => prop::sample::select(&[r#""other""#, r#""""#, "7"][..]).prop_map(str::to_owned),
    ];
    let status = prop_oneof![
        8 => prop::sample::select(&["200", "201", "404", "504"][..]),
        1 => prop::sample::select(&["101", "600", "\"200\"", "-1", "200.5"][..]),
    ];
    let method = prop_oneof![
        8 => prop::sample::select(&[r#""GET""#, r#""POST""#][..]),
        1 => prop::sample::select(&[r#""""#, "1"][..]),
    ];
    let path = prop_oneof![
        8 => prop::sample::select(&[r#""/api/agents/me""#, r#""/a/../b""#][..]),
        1 => prop::sample::select(&[r#""""#, "null"][..]),
    ];
    let query = prop_oneof![
        8 => prop::sample::select(&[r#""""#, r#""?x=1""#][..]),
        1 => prop::sample::select(&[r#""x=1""#, "null"][..]),
    ];
    let dups = prop_oneof![
        6 => Just(vec![]),
        1 => prop::collection::vec(any::<prop::sample::Index>(), 1..3),
    ];
    (
        any::<bool>(),
        prop_oneof![Just(0u16), Just(4), Just(16), Just(64), any::<u16>()],
        id,
        status,
        method,
        path,
        query,
        headers_value(),
        body_value(),
        encoding_value(),
        dups,
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |(
                response,
                max,
                id,
                status,
                method,
                path,
                query,
                headers,
                body,
                encoding,
                dups,
                drop,
            )| {
                let mut fields: Vec<(&str, String)> =
                    vec![("id", id), ("headers", headers), ("body", body)];
                if response {
                    fields.push(("status", status.to_owned()));
                    fields.push(("completedAt", r#""2026-01-01T00:00:00.000Z""#.to_owned()));
                } else {
                    fields.push(("method", method.to_owned()));
                    fields.push(("path", path.to_owned()));
                    fields.push(("query", query.to_owned()));
                    fields.push(("createdAt", r#""""#.to_owned()));
                }
                if let Some(encoding) = encoding {
                    fields.push(("bodyEncoding", encoding));
                }
                for d in dups {
                    let copy = d.get(&fields).clone();
                    fields.push(copy);
                }
                if fields.len() > 4 {
                    let i = drop.index(fields.len());
                    if i % 3 == 0 {
                        fields.remove(i);
                    }
                }
                let body: Vec<String> =
                    fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                (response, max, format!("{{{}}}", body.join(",")))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn planted_queue_files_keep_every_decoder_invariant((response, max, text) in file_strategy()) {
        let max = u64::from(max);
        let input = QueueInput {
            response,
            max_body_bytes: max,
            envelope: envelope_limit(max),
            file: text.as_bytes(),
        };
        if let Err(violation) = check_queue_file(&input) {
            return Err(TestCaseError::fail(format!("{violation}\nfile: {text}")));
        }
    }

    #[test]
    fn arbitrary_bytes_never_break_the_decoder(data in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Some(input) = QueueInput::from_fuzz_bytes(&data) {
            if let Err(violation) = check_queue_file(&input) {
                return Err(TestCaseError::fail(violation.to_string()));
            }
        }
    }
}

#[test]
fn files_over_the_envelope_are_refused_before_parsing() {
    // Whitespace is valid JSON padding: only the size can refuse this file.
    let max = 8;
    let mut text = format!(r#"{{"id":"{CHECK_ID}","status":200,"body":""}}"#).into_bytes();
    text.resize(envelope_limit(max) as usize + 1, b' ');
    for response in [false, true] {
        let input = QueueInput {
            response,
            max_body_bytes: max,
            envelope: envelope_limit(max),
            file: &text,
        };
        check_queue_file(&input).unwrap();
    }
}
