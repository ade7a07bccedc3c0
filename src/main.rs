//! Entry point: parse the command line, build the configuration, build the one runtime and run
//! the command; map errors to exit codes (0 normal end, 2 bad configuration or usage, 1 any
//! other fatal error).

use std::process::ExitCode;

use clap::Parser;

use callback_bridge::cli::Cli;
use callback_bridge::Run;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let run = match callback_bridge::load(cli.command, &callback_bridge::process_env) {
        Ok(run) => run,
        Err(e) => return fail(2, &e),
    };
    match run {
        Run::Role(role) => {
            callback_bridge::init_logging(role.log(), role.name());
            // One thread: the bridge's work per request is small, and a single-threaded runtime
            // keeps memory and scheduling predictable inside a sandbox.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
            };
            let result = runtime.block_on(callback_bridge::run_role(role));
            // Do not wait for blocking readers (stdin lifeline, handshake) to notice: we are done.
            runtime.shutdown_background();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e.exit_code(), &e),
            }
        }
        Run::Check(config) => {
            print!("{}", callback_bridge::check(&config));
            ExitCode::SUCCESS
        }
        Run::Explain(config) => match callback_bridge::explain(config) {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, &e),
        },
        Run::Health(config) => match callback_bridge::health(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("callback-bridge health: {e}");
                // A URL that cannot be probed is a usage error (2); an unhealthy or unreachable
                // bridge is a failed check (1).
                ExitCode::from(if e.is_usage() { 2 } else { 1 })
            }
        },
        Run::QueueHelper(args) => match callback_bridge::queue_helper(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e.exit_code(), &e),
        },
    }
}

/// Prints the one-line reason and returns the exit code.
fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("callback-bridge: {e}");
    ExitCode::from(code)
}
