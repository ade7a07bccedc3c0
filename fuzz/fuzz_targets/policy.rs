//! A structured request (method, target, token, headers, body framing) through the whole
//! policy: the token check comes first, an `Allow` forwards the checked target to a route that
//! matches it, with unambiguous framing and only allowlisted headers.
#![no_main]

use callback_bridge::policy::invariants::{self, PolicyInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: PolicyInput| {
    if let Err(violation) = invariants::check_policy_input(&input) {
        panic!("{violation}");
    }
});
