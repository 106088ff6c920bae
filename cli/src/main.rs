//! `kubectl-storm`: rollout status, manual controls and offline lint for StormServices.
#![forbid(unsafe_code)]

mod crds;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kubectl-storm",
    version,
    about = "Progressive delivery for AIBrix StormServices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (or write them, one file each, into --out-dir).
    Crds {
        /// Directory to write one YAML file per CRD into.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { out_dir } => match out_dir {
            Some(dir) => match crds::write_all(&dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing CRDs to {}: {e}", dir.display());
                    ExitCode::from(2)
                }
            },
            None => match crds::stream() {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: rendering CRDs: {e}");
                    ExitCode::from(2)
                }
            },
        },
    }
}
