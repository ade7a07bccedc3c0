//! The binary copied into sandboxes must not need a newer glibc than Debian 12's (2.36).
//!
//! Two builds exist: the one `cargo build` makes (dynamically linked against the host's glibc)
//! and the shipped one, `scripts/build-static.sh` (glibc linked in, no shared library at all).
//! Set `BRIDGE_TEST_BIN` to check another binary than this test run's; CI checks both.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::bridge_binary as binary;

/// Debian 12 (bookworm) ships glibc 2.36.
const MAX_GLIBC: (u32, u32) = (2, 36);

fn tool_output(tool: &str, args: &[&str], bin: &PathBuf) -> Option<String> {
    let Ok(out) = Command::new(tool).args(args).arg(bin).output() else {
        eprintln!("{tool} not available; skipping");
        return None;
    };
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Newest `GLIBC_x.y` symbol version the binary asks the dynamic loader for, if any.
fn newest_glibc_version(dynamic_symbols: &str) -> Option<(u32, u32)> {
    dynamic_symbols
        .split_whitespace()
        .filter_map(|word| word.trim_matches(['(', ')']).strip_prefix("GLIBC_"))
        .map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
        })
        .max()
}

#[test]
fn binary_requires_no_glibc_newer_than_debian_12() {
    let bin = binary();
    let Some(dynamic) = tool_output("readelf", &["-d", "-W"], &bin) else {
        return;
    };
    let Some(symbols) = tool_output("objdump", &["-T"], &bin) else {
        return;
    };
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    let newest = newest_glibc_version(&symbols);
    if needed.is_empty() {
        // Statically linked: nothing is looked up in the sandbox's libc at all.
        assert_eq!(
            newest, None,
            "a static binary asks for glibc symbols: {symbols}"
        );
        let headers = tool_output("readelf", &["-l", "-W"], &bin).unwrap_or_default();
        assert!(
            !headers.contains("program interpreter"),
            "no shared library needed, yet a program interpreter is named: {headers}"
        );
        return;
    }
    let newest = newest.unwrap_or_else(|| panic!("no GLIBC symbol versions found: {symbols}"));
    assert!(
        newest <= MAX_GLIBC,
        "binary needs GLIBC_{}.{}, newer than Debian 12's {}.{}",
        newest.0,
        newest.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );
}

/// CI sets `BRIDGE_TEST_EXPECT_STATIC=1` with `BRIDGE_TEST_BIN` pointing at the shipped build:
/// then the binary must have no shared-library dependency at all.
#[test]
fn shipped_binary_is_static_when_asked() {
    if std::env::var_os("BRIDGE_TEST_EXPECT_STATIC").is_none() {
        return;
    }
    let bin = binary();
    let dynamic = tool_output("readelf", &["-d", "-W"], &bin).expect("readelf is required here");
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(
        needed.is_empty(),
        "{} needs shared libraries: {needed:?}",
        bin.display()
    );
}
