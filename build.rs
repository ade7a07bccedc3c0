//! Records the git commit for `callback-bridge --version` (or "unknown" outside a checkout).
fn main() {
    let commit = std::env::var("CALLBACK_BRIDGE_GIT_COMMIT")
        .ok()
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=CALLBACK_BRIDGE_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=CALLBACK_BRIDGE_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
