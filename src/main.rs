//! The `bianque` command: `run` the agent, read stored `events`, list `tracers`, `check` this
//! kernel.

mod cli;

use std::process::ExitCode;

use bianque::agent::AgentError;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bianque",
    version,
    about = "Linux kernel observability agent: eBPF events, Prometheus metrics, autotracing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run(cli::run::RunArgs),
    /// Show stored events, newest first.
    Events(cli::events::EventsArgs),
    /// List tracers and their status (live from a running agent when one answers).
    Tracers(cli::tracers::TracersArgs),
    /// Report which tracers can run on this kernel, and why not.
    Check(cli::check::CheckArgs),
    /// List the containers a running agent knows.
    Containers(cli::containers::ContainersArgs),
    /// Print a shell completion script (e.g. `bianque completions bash > /etc/bash_completion.d/bianque`).
    Completions(cli::completions::CompletionsArgs),
    /// Print the man page (roff): `bianque man | man -l -`.
    Man,
    /// Show incidents found in the local store: related records grouped and explained.
    Incidents(cli::incidents::IncidentsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cli::run::run(a),
        Command::Events(a) => cli::events::run(a),
        Command::Tracers(a) => cli::tracers::run(a),
        Command::Check(a) => match cli::check::run(a) {
            // An enabled tracer cannot run: the table says which and why.
            Ok(false) => return ExitCode::from(1),
            other => other.map(|_| ()),
        },
        Command::Containers(a) => cli::containers::run(a),
        Command::Completions(a) => cli::completions::completions(a, Cli::command()),
        Command::Man => cli::completions::man(Cli::command()),
        Command::Incidents(a) => cli::incidents::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Config(e)) => {
            eprintln!("bianque: config error: {e}");
            ExitCode::from(2)
        }
        Err(AgentError::Usage(e)) => {
            eprintln!("bianque: {}", cli::text::escape(&e));
            ExitCode::from(2)
        }
        Err(AgentError::Runtime(e)) => {
            eprintln!("bianque: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}
