//! Generates shell completions and the man pages from the clap definitions in `src/cli.rs`.
//! Kept out of the binary (which is copied into sandboxes) as a build-time tool:
//!
//! ```sh
//! cargo run --example generate -- man > callback-bridge.1     # the top-level page only
//! cargo run --example generate -- man DIR                     # every page, written into DIR
//! cargo run --example generate -- completions bash > callback-bridge.bash
//! ```
//! `man DIR` writes `callback-bridge.1` and one page per subcommand (`callback-bridge-serve.1`,
//! `callback-bridge-gateway.1`, …; the hidden sandbox helper gets none) and prints their paths.
//! Shells: bash, zsh, fish, elvish, powershell.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, ValueEnum};

use callback_bridge::cli::Cli;

/// Writes the top-level man page and one per visible subcommand into `dir` (created if
/// missing); returns the files written, the top-level page first.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Fills in each subcommand's display name (`callback-bridge-serve`), which names its page.
    cmd.build();
    let mut written = vec![clap_mangen::Man::new(cmd.clone()).generate_to(dir)?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(clap_mangen::Man::new(sub.clone()).generate_to(dir)?);
    }
    Ok(written)
}

#[allow(dead_code)] // tests/man_pages.rs includes this file for `write_man_pages` alone
fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = Cli::command();
    let mut out = std::io::stdout();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["man"] => clap_mangen::Man::new(cmd).render(&mut out),
        ["man", dir] => {
            for path in write_man_pages(Path::new(dir))? {
                println!("{}", path.display());
            }
            Ok(())
        }
        ["completions", shell] => {
            let shell = clap_complete::Shell::from_str(shell, true).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?;
            clap_complete::generate(shell, &mut cmd, "callback-bridge", &mut out);
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: generate man [DIR] | generate completions <bash|zsh|fish|elvish|powershell>"
            );
            std::process::exit(2);
        }
    }
}
