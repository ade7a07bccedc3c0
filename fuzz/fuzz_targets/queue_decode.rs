//! PENDING — not built yet: the queue transport's file module is not on `main`. This target is
//! written against the API expected from branch `queue` (`src/transport/queue/file.rs`):
//!
//! ```text
//! callback_bridge::transport::queue::file::{
//!     envelope_limit(max_body_bytes: u64) -> u64,
//!     decode_body(body: &str, encoding: Option<&str>, max: u64) -> Result<Vec<u8>, FileError>,
//!     encode_body(bytes: &[u8]) -> (String, Option<String>),
//!     RequestFile::parse(bytes: &[u8], stem: &str, envelope: u64) -> Result<RequestFile, FileError>,
//!     ResponseFile::parse(bytes: &[u8], expected_id: &str, envelope: u64) -> Result<ResponseFile, FileError>,
//!     RequestFile::to_bytes / ResponseFile::to_bytes, FileError::EnvelopeTooLarge { .. },
//! }
//! ```
//!
//! To enable it once that module has landed: add a `[[bin]] name = "queue_decode"` entry to
//! `fuzz/Cargo.toml`, move `check` below into the library next to the decoder (e.g.
//! `transport::queue::file::invariants`, `#[doc(hidden)]`) so that a proptest can share it, seed
//! `fuzz/corpus/queue_decode/` with a few request and response files, and add it to the table in
//! `fuzz/README.md`; add `base64 = "0.22"` to `fuzz/Cargo.toml` for the canonical-encoding check.
//!
//! Invariants: arbitrary bytes as a request or response file never panic; a file larger than the
//! envelope bound is refused before anything is parsed (no allocation proportional to it), and
//! parsing never allocates more than a small multiple of the (bounded) input; a decoded body
//! never exceeds the body limit; base64 bodies are canonical (re-encoding the decoded bytes
//! reproduces the file's string exactly) and text bodies are carried byte for byte; what
//! `to_bytes` writes parses back to the same value.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use callback_bridge::transport::queue::file::{
    decode_body, encode_body, envelope_limit, FileError, RequestFile, ResponseFile,
};
use libfuzzer_sys::fuzz_target;

/// Counts live and peak heap bytes so the target can bound what decoding allocates.
/// `unsafe` is required by `GlobalAlloc`; this wrapper only adds counters around `System`.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes allocated on top of what was live, during `f`.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// JSON parsing allocates per value (strings, map nodes): a generous constant factor of the
/// input, which the envelope bounds. A decoder that trusted a declared length would blow past it.
const ALLOC_PER_INPUT_BYTE: usize = 32;
const ALLOC_SLACK: usize = 64 * 1024;

fn check(data: &[u8]) {
    let [selector, hi, lo, rest @ ..] = data else {
        return;
    };
    // Small body limits so that the limits are reached.
    let max = u64::from(u16::from_be_bytes([*hi, *lo]));
    let envelope = envelope_limit(max);
    let id = "0193f2c4-7a1e-7b55-9d3c-5e8f0a1b2c3d";
    let (body, encoding, peak) = if selector & 1 == 0 {
        let (parsed, peak) = peak_during(|| RequestFile::parse(rest, id, envelope));
        match parsed {
            Ok(file) => {
                let again = RequestFile::parse(&file.to_bytes(), id, u64::MAX).expect("re-parse");
                assert_eq!(again, file, "request file does not round-trip");
                (file.body, file.body_encoding, peak)
            }
            Err(e) => return check_refusal(rest, envelope, &e, peak),
        }
    } else {
        let (parsed, peak) = peak_during(|| ResponseFile::parse(rest, id, envelope));
        match parsed {
            Ok(file) => {
                let again = ResponseFile::parse(&file.to_bytes(), id, u64::MAX).expect("re-parse");
                assert_eq!(again, file, "response file does not round-trip");
                (file.body, file.body_encoding, peak)
            }
            Err(e) => return check_refusal(rest, envelope, &e, peak),
        }
    };
    assert!(
        rest.len() as u64 <= envelope,
        "a file over the envelope was parsed"
    );
    assert!(
        peak <= rest.len() * ALLOC_PER_INPUT_BYTE + ALLOC_SLACK,
        "parsing {} bytes allocated {peak}",
        rest.len()
    );
    let (decoded, peak) = peak_during(|| decode_body(&body, encoding.as_deref(), max));
    let Ok(bytes) = decoded else {
        return;
    };
    assert!(bytes.len() as u64 <= max, "decoded body above the limit");
    assert!(
        peak <= body.len() + ALLOC_SLACK,
        "decoding allocated {peak}"
    );
    match encoding.as_deref() {
        Some("base64") => assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            body,
            "accepted base64 that is not canonical"
        ),
        _ => assert_eq!(
            bytes,
            body.as_bytes(),
            "text body not carried byte for byte"
        ),
    }
    let (text, enc) = encode_body(&bytes);
    assert_eq!(
        decode_body(&text, enc.as_deref(), max).as_deref(),
        Ok(&bytes[..]),
        "encode_body does not round-trip"
    );
}

/// A refused file: an oversized one is refused as such, before any parsing allocation.
fn check_refusal(rest: &[u8], envelope: u64, e: &FileError, peak: usize) {
    if rest.len() as u64 > envelope {
        assert!(matches!(e, FileError::EnvelopeTooLarge { .. }), "{e:?}");
        assert!(peak < 4096, "refusing an oversized file allocated {peak}");
    } else {
        assert!(!matches!(e, FileError::EnvelopeTooLarge { .. }), "{e:?}");
    }
}

fuzz_target!(|data: &[u8]| check(data));
