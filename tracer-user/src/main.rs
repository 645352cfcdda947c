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
    // Generated from the definitions themselves: no settings to make.
    match &parsed.cli.command {
        cli::Command::Completions(a) => {
            let done = cli::generate::completions(a.shell, &mut std::io::stdout().lock());
            return generated(done.map_err(Into::into));
        }
        cli::Command::Manpage(a) => {
            let done = cli::generate::manpages(a.dir.as_deref(), &mut std::io::stdout().lock());
            return generated(done);
        }
        _ => {}
    }
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

/// The end of `completions` or `manpage`: a reader that stopped early
/// (`| head`) is no error.
fn generated(done: anyhow::Result<()>) -> ExitCode {
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcplinger: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Help and version go to stdout with success; a bare `tcplinger` gets
/// the help and exit 2; anything else is clap's own short block (what is
/// wrong, the values allowed, a "did you mean", the usage line) on stderr
/// under our name, and exit 2.
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
            eprint!("{}", cli::usage_block(&err.to_string()));
            ExitCode::from(2)
        }
    }
}
