//! tcplinger: parse the command line, run the command, map the outcome to an exit code.

use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};

use tracer_user::{
    cli::{Cli, Command},
    cmd::{daemon, report, sockets, top, watch},
    error,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_exit(&err),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tcplinger: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => watch::run(args).await,
            Command::Report(args) => report::run(args).await,
            Command::Top(args) => top::run(args).await,
            Command::Sockets(args) => sockets::run(args),
            Command::Daemon(args) => daemon::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcplinger: {err:#}");
            ExitCode::from(error::exit_code(&err))
        }
    }
}

/// Help and version go to stdout with success; anything else is one line
/// on stderr and exit 2, except a bare `tcplinger`, which gets the help.
fn usage_exit(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(2)
        }
        _ => {
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "tcplinger: {}",
                first.strip_prefix("error: ").unwrap_or(first)
            );
            ExitCode::from(2)
        }
    }
}
