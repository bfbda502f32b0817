//! `bianque completions SHELL` and `bianque man`: shell completions and the man page, generated
//! from the same clap definition as the parser, so they never disagree with it.

use std::io::Write;

use bianque::agent::AgentError;
use clap::Args;

#[derive(Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// Prints the completion script for `a.shell` to stdout.
pub fn completions(a: CompletionsArgs, mut cmd: clap::Command) -> Result<(), AgentError> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(a.shell, &mut cmd, name, &mut std::io::stdout().lock());
    Ok(())
}

/// Prints the man page (roff, section 1) to stdout: `bianque man | man -l -`.
pub fn man(cmd: clap::Command) -> Result<(), AgentError> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| AgentError::Runtime(anyhow::anyhow!("rendering the man page: {e}")))?;
    std::io::stdout()
        .lock()
        .write_all(&out)
        .map_err(|e| AgentError::Runtime(anyhow::anyhow!("writing the man page: {e}")))?;
    Ok(())
}
