//! The man pages `cargo run --example generate -- man DIR` writes: one for the binary and one per
//! visible subcommand, each documenting every flag of its command. Uses the example's own
//! generator function, so this checks what the documented command produces.

use std::collections::BTreeSet;

use clap::CommandFactory;

use callback_bridge::cli::Cli;

#[path = "../examples/generate.rs"]
mod generate;

/// A page's text with roff's escaped hyphens (`\-`) made plain.
fn page_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("\\-", "-")
}

#[test]
fn every_visible_subcommand_gets_a_page_that_mentions_each_of_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let written = generate::write_man_pages(dir.path()).unwrap();
    let names: BTreeSet<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();

    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let mut expected = BTreeSet::from(["callback-bridge.1".to_owned()]);
    let top = page_text(&dir.path().join("callback-bridge.1"));
    for sub in cli.get_subcommands() {
        let file = format!("callback-bridge-{}.1", sub.get_name());
        if sub.is_hide_set() {
            assert!(
                !dir.path().join(&file).exists(),
                "hidden `{}` must get no page",
                sub.get_name()
            );
            continue;
        }
        assert!(
            top.contains(sub.get_name()),
            "the top-level page lists `{}`",
            sub.get_name()
        );
        let text = page_text(&dir.path().join(&file));
        assert!(
            text.contains(&format!("callback-bridge-{}", sub.get_name())),
            "{file} is titled after its command"
        );
        let mut flags = 0;
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                flags += 1;
                assert!(
                    text.contains(&format!("--{long}")),
                    "{file} does not mention --{long}"
                );
            }
            if let Some(short) = arg.get_short() {
                assert!(
                    text.contains(&format!("-{short}")),
                    "{file} does not mention -{short}"
                );
            }
        }
        assert!(flags > 0, "{file}: `{}` has flags", sub.get_name());
        expected.insert(file);
    }
    assert_eq!(names, expected, "exactly these pages are written");
    for name in ["serve", "gateway", "relay", "check", "explain", "health"] {
        assert!(
            expected.contains(&format!("callback-bridge-{name}.1")),
            "{name} has a page"
        );
    }
}

#[test]
fn the_relay_page_documents_the_upstream_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    generate::write_man_pages(dir.path()).unwrap();
    for name in ["serve", "relay", "check"] {
        let text = page_text(&dir.path().join(format!("callback-bridge-{name}.1")));
        assert!(
            text.contains("--upstream-ca-file")
                && text.contains("CALLBACK_BRIDGE_UPSTREAM_CA_FILE"),
            "{name}'s page documents --upstream-ca-file and its variable"
        );
    }
}
