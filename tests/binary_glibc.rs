//! The binary copied into sandboxes must not need a newer glibc than Debian 12's (2.36).

use std::process::Command;

/// Debian 12 (bookworm) ships glibc 2.36.
const MAX_GLIBC: (u32, u32) = (2, 36);

#[test]
fn binary_requires_no_glibc_newer_than_debian_12() {
    let bin = env!("CARGO_BIN_EXE_callback-bridge");
    let Ok(out) = Command::new("objdump").args(["-T", bin]).output() else {
        eprintln!("objdump not available; skipping the glibc symbol check");
        return;
    };
    assert!(out.status.success(), "objdump failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut newest = (0, 0);
    for word in text.split_whitespace() {
        let word = word.trim_matches(|c| c == '(' || c == ')');
        if let Some(v) = word.strip_prefix("GLIBC_") {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            newest = newest.max(version);
        }
    }
    assert!(newest > (0, 0), "no GLIBC symbol versions found: {text}");
    assert!(
        newest <= MAX_GLIBC,
        "binary needs GLIBC_{}.{}, newer than Debian 12's {}.{}",
        newest.0,
        newest.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );
}
