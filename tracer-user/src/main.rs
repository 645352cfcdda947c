//! tcplinger: parse the command line, run the command, map the outcome to an exit code.

use std::process::ExitCode;

use clap::error::ErrorKind;

mod bpf;
mod cli;
mod cmd;
mod error;
mod host;
mod model;
mod output;
mod session;
mod settings;
#[cfg(test)]
mod testutil;

use crate::{
    cmd::{daemon, history, record, report, sockets, top, watch},
    settings::Command,
};

fn main() -> ExitCode {
    let parsed = match cli::parse_from(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(err) => return usage_exit(&err),
    };
    let command = match cli::into_settings(parsed) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("tcplinger: {err}");
            return ExitCode::from(2);
        }
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
        match command {
            Command::Watch(s) => watch::run(s).await,
            Command::Report(s) => report::run(s).await,
            Command::Top(s) => top::run(s).await,
            Command::Sockets(s) => sockets::run(s),
            Command::Daemon(s) => daemon::run(*s).await,
            Command::Record(s) => record::run(s).await,
            Command::RecordInfo(s) => record::info(&s),
            Command::History(s) => history::run(&s),
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
            let mut lines = text.lines();
            let first = lines.next().unwrap_or("invalid arguments");
            let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
            // "the following required arguments were not provided:" lists
            // them on the lines below: they belong on the one line.
            if line.ends_with(':') {
                let listed: Vec<&str> = lines
                    .take_while(|l| l.starts_with(' '))
                    .map(str::trim)
                    .collect();
                line = format!("{line} {}", listed.join(", "));
            }
            eprintln!("tcplinger: {line}");
            ExitCode::from(2)
        }
    }
}
