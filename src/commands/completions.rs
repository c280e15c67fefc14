//! `pii-ingest completions <shell>`: a completion script for bash, zsh, fish (or elvish,
//! PowerShell) on stdout, generated from the same clap definitions the binary parses with. It needs
//! no configuration, so it runs before any is loaded.

use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    shell: Shell,
}

pub fn run(Args { shell }: &Args) -> ExitCode {
    clap_complete::generate(*shell, &mut super::Cli::command(), "pii-ingest", &mut std::io::stdout());
    ExitCode::SUCCESS
}
