#!/usr/bin/env bash
# Builds the binary we ship: the release profile with glibc linked in statically (static-pie).
#
#   scripts/build-static.sh            # prints the binary's absolute path on stdout
#
# The path is absolute so that callers may use it from any directory, and it follows cargo's
# target directory wherever that is (CARGO_TARGET_DIR, `build.target-dir` in a cargo config).
#
# Why static: the binary is copied into sandboxes whose images we do not control (Debian, Alpine,
# distroless/static); with nothing to load at exec it runs in all of them, starts faster, and does
# not map libc.so/libm.so/libgcc_s.so/ld.so (about 1 MiB less idle RSS; see README "Performance").
# Name lookups of the upstream host go through glibc's built-in files/dns resolvers (/etc/hosts,
# /etc/resolv.conf), which static glibc keeps.
#
# `+crt-static` must not reach build scripts and proc-macros (they are host dynamic libraries),
# so the target is passed explicitly: cargo then applies RUSTFLAGS to the target units only, and
# the binary lands in <target dir>/<host-triple>/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
  *-linux-gnu) ;;
  *) echo "static glibc builds are for *-linux-gnu hosts; this host is $host" >&2; exit 2 ;;
esac
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --bin callback-bridge --target "$host" >&2
# Ask cargo where its target directory is rather than assume ./target.
target_dir=$(cargo metadata --format-version 1 --no-deps --locked \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$target_dir" ]; then
  echo "cannot read the target directory from cargo metadata" >&2
  exit 1
fi
bin="$target_dir/$host/release/callback-bridge"
if [ ! -x "$bin" ]; then
  echo "the build finished but $bin is not there" >&2
  exit 1
fi
echo "$bin"
