//! `kubectl-storm`: rollout status, manual controls and offline lint for StormServices.
#![forbid(unsafe_code)]

mod crds;
mod lint;
mod schema;

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
    /// Check StormService, AnalysisTemplate and RolloutPolicy manifests offline, with the webhook's rules.
    ///
    /// Reads multi-document YAML files (`-` for standard input); documents of other kinds are ignored.
    /// Prints every error as `FILE: Kind/name: path: message` and every warning. Exits 0 when all
    /// objects are valid, 1 when any is not, 2 when an input cannot be read.
    Lint {
        /// Files to check; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Apply the RolloutPolicies in this file as well (every policy applies: namespaces are unknown offline).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Print only errors and warnings, no summary.
        #[arg(long, short)]
        quiet: bool,
    },
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
        Command::Lint {
            files,
            policy,
            quiet,
        } => run_lint(&files, policy.as_deref(), quiet),
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

fn run_lint(files: &[PathBuf], policy: Option<&std::path::Path>, quiet: bool) -> ExitCode {
    let policies = match policy.map(lint::read_policies).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let linter = match lint::Linter::new(policies) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: building the schemas: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut checked, mut errors, mut warnings, mut unreadable) = (0, 0, 0, false);
    for file in files {
        let result =
            lint::read_input(file).and_then(|(label, text)| linter.lint_text(&label, &text));
        match result {
            Ok(out) => {
                for line in &out.lines {
                    println!("{line}");
                }
                checked += out.checked;
                errors += out.errors;
                warnings += out.warnings;
            }
            Err(e) => {
                eprintln!("error: {e}");
                unreadable = true;
            }
        }
    }
    if !quiet {
        eprintln!("{checked} object(s) checked: {errors} error(s), {warnings} warning(s)");
    }
    if unreadable {
        ExitCode::from(2)
    } else if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
