//! Generates shell completions and the man page from the clap definitions in `src/cli.rs`.
//! Kept out of the binary (which is copied into sandboxes) as a build-time tool:
//!
//! ```sh
//! cargo run --example generate -- man > callback-bridge.1
//! cargo run --example generate -- completions bash > callback-bridge.bash
//! ```
//! Shells: bash, zsh, fish, elvish, powershell.

use clap::{CommandFactory, ValueEnum};

use callback_bridge::cli::Cli;

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
        ["completions", shell] => {
            let shell = clap_complete::Shell::from_str(shell, true).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?;
            clap_complete::generate(shell, &mut cmd, "callback-bridge", &mut out);
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: generate man | generate completions <bash|zsh|fish|elvish|powershell>"
            );
            std::process::exit(2);
        }
    }
}
