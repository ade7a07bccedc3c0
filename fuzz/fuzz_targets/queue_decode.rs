//! Arbitrary bytes as a queue request or response file (first byte: kind; next two: the body
//! limit): never panics, an oversized file is refused before parsing, an accepted one reads the
//! same to a second JSON reader, bodies decode within the limit and canonically, files
//! round-trip (`transport::queue::invariants`). A counting allocator bounds what the check
//! allocates: nothing for a file over the envelope, a constant factor of the file otherwise.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use callback_bridge::transport::queue::invariants::{self, QueueInput};
use libfuzzer_sys::fuzz_target;

/// Counts live and peak heap bytes. `unsafe` is what `GlobalAlloc` requires; this only adds
/// counters around `System`.
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

/// JSON parsing allocates per value (strings, map nodes) and the check re-serialises: a
/// generous constant factor of the file, which the envelope bounds. A decoder that trusted a
/// declared length, or parsed before checking the size, would blow past it.
const ALLOC_PER_FILE_BYTE: usize = 32;
const ALLOC_SLACK: usize = 64 * 1024;
/// What refusing an oversized file may allocate: an error value, nothing proportional.
const OVERSIZED_ALLOC: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some(input) = QueueInput::from_fuzz_bytes(data) else {
        return;
    };
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    if let Err(violation) = invariants::check_queue_file(&input) {
        panic!("{violation}");
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let bound = if input.file.len() as u64 > input.envelope {
        OVERSIZED_ALLOC
    } else {
        input.file.len() * ALLOC_PER_FILE_BYTE + ALLOC_SLACK
    };
    assert!(
        peak <= bound,
        "checking a {}-byte file (envelope {}) allocated {peak} bytes, bound {bound}",
        input.file.len(),
        input.envelope
    );
});
