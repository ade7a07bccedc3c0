//! Entry point: parse the command line, build the configuration, run the command, map errors to
//! exit codes (0 normal end, 2 bad configuration or usage, 1 any other fatal error).

use std::process::ExitCode;

use clap::Parser;

use callback_bridge::cli::{Cli, Command};
use callback_bridge::{commands, config, server, telemetry};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Serve(opts) => serve(opts),
        Command::Gateway(args) => transport_exit(callback_bridge::transport::gateway(args)),
        Command::Relay(args) => transport_exit(callback_bridge::transport::relay(args)),
        Command::Queue(args) => transport_exit(callback_bridge::transport::queue_helper(args)),
        Command::Check(opts) => match opts.with_file().and_then(commands::check) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(&e),
        },
        Command::Explain(mut args) => {
            args.options = match std::mem::take(&mut args.options).with_file() {
                Ok(o) => o,
                Err(e) => return usage_error(&e),
            };
            match commands::explain(args) {
                Ok(v) => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => usage_error(&e),
            }
        }
        Command::Health(args) => match commands::health(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("callback-bridge health: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn transport_exit(result: Result<(), callback_bridge::transport::TransportError>) -> ExitCode {
    use callback_bridge::transport::TransportError;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(TransportError::Config(e)) => usage_error(&e),
        Err(TransportError::Usage(e)) => usage_error(&e),
        Err(e) => {
            eprintln!("callback-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("callback-bridge: {e}");
    ExitCode::from(2)
}

fn serve(opts: callback_bridge::cli::ProxyOptions) -> ExitCode {
    let opts = match opts.with_file() {
        Ok(o) => o,
        Err(e) => return usage_error(&e),
    };
    telemetry::init_logging(&config::log_config(&opts));
    let config = match config::Config::load(opts) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callback-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(_reason) => {
            // Do not wait for blocking readers (stdin lifeline) to notice: we are done.
            runtime.shutdown_background();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callback-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}
