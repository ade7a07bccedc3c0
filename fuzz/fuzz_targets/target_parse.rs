//! Arbitrary bytes as a request target: the parser never panics, accepts exactly what the
//! reference rules accept, and anything accepted is canonical and re-serialises identically.
#![no_main]

use callback_bridge::policy::invariants;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = invariants::check_target_bytes(data) {
        panic!("{violation}");
    }
});
