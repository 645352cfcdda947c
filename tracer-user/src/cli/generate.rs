//! Shell completions and man pages, generated from the command line's own definitions (`tcplinger completions`, `tcplinger manpage`).

use std::{
    io::{self, Write},
    path::Path,
};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

/// The completion script for `shell`, on `out`.
pub fn completions(shell: Shell, out: &mut impl Write) -> io::Result<()> {
    let mut command = Cli::command();
    // Into memory first: clap_complete panics on a failed write (a
    // reader that stopped early, `| head`); ours returns it.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "tcplinger", &mut script);
    out.write_all(&script)?;
    out.flush()
}

/// `tcplinger(1)` on `out`; with `dir`, that page and one per command
/// (`tcplinger-watch.1`, ...) written there instead, for packaging.
pub fn manpages(dir: Option<&Path>, out: &mut impl Write) -> anyhow::Result<()> {
    let command = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(command).render(out)?;
        return Ok(out.flush()?);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing the man pages to {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_every_command_and_a_flag() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            for word in ["watch", "report", "top", "daemon", "history", "max-sockets"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn the_man_page_is_roff_with_every_command() {
        let mut out = Vec::new();
        manpages(None, &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH tcplinger"),
            "{page}"
        );
        for command in ["watch", "report", "daemon", "history"] {
            assert!(page.contains(command), "no {command}");
        }
    }

    #[test]
    fn pages_for_each_command_go_to_a_directory() {
        let dir = std::env::temp_dir().join(format!("tcplinger-man-{}", std::process::id()));
        manpages(Some(&dir), &mut Vec::new()).unwrap();
        for page in ["tcplinger.1", "tcplinger-watch.1", "tcplinger-daemon.1"] {
            let text = std::fs::read_to_string(dir.join(page)).unwrap();
            assert!(text.contains(".TH"), "{page}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
