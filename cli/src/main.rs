//! `kubectl-storm`: rollout status, manual controls and offline lint for StormServices.
#![forbid(unsafe_code)]

mod controls;
mod crds;
mod error;
mod history;
mod lint;
mod schema;
mod set_image;
mod status;

use clap::{Parser, Subcommand};
use error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use storm_shared::types::stormservice::RolloutPhase;

#[derive(Parser)]
#[command(
    name = "kubectl-storm",
    version,
    about = "Progressive delivery for AIBrix StormServices"
)]
struct Cli {
    /// Namespace of the StormService (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Phases `status --wait-for` can wait for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
#[value(rename_all = "PascalCase")]
enum WaitPhase {
    Healthy,
    Progressing,
    Paused,
    Completed,
    Degraded,
    Aborted,
}

impl From<WaitPhase> for RolloutPhase {
    fn from(p: WaitPhase) -> Self {
        match p {
            WaitPhase::Healthy => RolloutPhase::Healthy,
            WaitPhase::Progressing => RolloutPhase::Progressing,
            WaitPhase::Paused => RolloutPhase::Paused,
            WaitPhase::Completed => RolloutPhase::Completed,
            WaitPhase::Degraded => RolloutPhase::Degraded,
            WaitPhase::Aborted => RolloutPhase::Aborted,
        }
    }
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
        /// Longest analysis request timeout to admit, as the webhook's --analysis-max-timeout.
        #[arg(long, default_value = "30s", value_parser = parse_wait)]
        analysis_max_timeout: std::time::Duration,
        /// Shortest analysis interval to admit, as the webhook's --analysis-min-interval.
        #[arg(long, default_value = "10s", value_parser = parse_wait)]
        analysis_min_interval: std::time::Duration,
    },
    /// Show where a rollout stands: steps, weight, RoleSets per revision, conditions, events.
    ///
    /// Exit codes with --wait-for: 0 the phase was reached, 1 the rollout failed (Degraded or
    /// Aborted) first, 3 the timeout passed, 2 the StormService could not be read.
    Status {
        /// Name of the StormService.
        name: String,
        /// Keep watching and print the status again on every change.
        #[arg(short, long)]
        watch: bool,
        /// Return when the rollout reaches this phase.
        #[arg(long, value_enum, ignore_case = true)]
        wait_for: Option<WaitPhase>,
        /// How long --wait-for (or --watch) may take, e.g. 10m.
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
    /// Approve a step (or a blue-green promotion) that waits for manual approval.
    #[command(alias = "approve")]
    Promote {
        /// Name of the StormService.
        name: String,
        /// Promote in full: skip the remaining steps, pauses, approvals and analyses (the new
        /// revision still gets its full capacity before it takes all traffic).
        #[arg(long)]
        full: bool,
    },
    /// Pause a running rollout.
    Pause {
        /// Name of the StormService.
        name: String,
    },
    /// Resume a paused rollout, accept an inconclusive analysis, or continue one stopped after a
    /// failure with autoRollback disabled.
    Resume {
        /// Name of the StormService.
        name: String,
    },
    /// Abort the rollout: all traffic and capacity back on the stable revision.
    Abort {
        /// Name of the StormService.
        name: String,
    },
    /// Restart an Aborted or Degraded rollout at step 0.
    Retry {
        /// Name of the StormService.
        name: String,
    },
    /// List the stored revisions: number, template hash, age, which is stable or rolling out, images.
    History {
        /// Name of the StormService.
        name: String,
    },
    /// Go back to a stored revision's template (the previous one by default), starting a rollout
    /// to it through the StormService's strategy. Roles keep their current replica counts.
    ///
    /// Exit codes: 0 the template was written, 1 there is no such (or no earlier) revision or it is
    /// the current one, 2 the cluster could not be read or written.
    Undo {
        /// Name of the StormService.
        name: String,
        /// The revision to go back to (a REVISION of `history`).
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Set container images of a StormService's roles, starting a rollout.
    Set {
        #[command(subcommand)]
        what: SetCommand,
    },
    /// Print the CustomResourceDefinitions (or write them, one file each, into --out-dir).
    Crds {
        /// Directory to write one YAML file per CRD into.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SetCommand {
    /// `set image NAME ROLE[/CONTAINER]=IMAGE...`: like `kubectl set image`, for StormService roles.
    Image {
        /// Name of the StormService.
        name: String,
        /// One or more ROLE=IMAGE or ROLE/CONTAINER=IMAGE.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

fn main() -> ExitCode {
    run(Cli::parse()).unwrap_or_else(|e| fail(&e))
}

/// The one place errors reach the user: the error's line on stderr, its exit code.
fn fail(e: &Error) -> ExitCode {
    eprintln!("{}", e.stderr_line());
    ExitCode::from(e.exit_code())
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let namespace = cli.namespace;
    match cli.command {
        Command::Status {
            name,
            watch,
            wait_for,
            timeout,
        } => {
            let timeout = storm_shared::units::parse_duration(&timeout).map_err(|source| {
                Error::InvalidTimeout {
                    value: timeout,
                    source,
                }
            })?;
            Ok(online(namespace, move |client, ns| async move {
                status::run(
                    &client,
                    &ns,
                    &name,
                    watch,
                    wait_for.map(Into::into),
                    timeout,
                )
                .await?;
                Ok(ExitCode::SUCCESS)
            }))
        }
        Command::Promote { name, full: false } => {
            Ok(control(namespace, name, controls::Control::Approve))
        }
        Command::Promote { name, full: true } => {
            Ok(control(namespace, name, controls::Control::PromoteFull))
        }
        Command::Pause { name } => Ok(control(namespace, name, controls::Control::Pause)),
        Command::Resume { name } => Ok(control(namespace, name, controls::Control::Resume)),
        Command::Abort { name } => Ok(control(namespace, name, controls::Control::Abort)),
        Command::Retry { name } => Ok(control(namespace, name, controls::Control::Retry)),
        Command::History { name } => Ok(online(namespace, move |client, ns| async move {
            let (obj, revs) = history::load(&client, &ns, &name).await?;
            print!("{}", history::render(&obj, &revs));
            Ok(ExitCode::SUCCESS)
        })),
        Command::Undo { name, to_revision } => {
            Ok(online(namespace, move |client, ns| async move {
                let msg = history::undo(&client, &ns, &name, to_revision).await?;
                println!("{msg}");
                Ok(ExitCode::SUCCESS)
            }))
        }
        Command::Set {
            what: SetCommand::Image { name, images },
        } => Ok(online(namespace, move |client, ns| async move {
            let api = kube::Api::namespaced(client, &ns);
            let msg = set_image::run(&api, &name, &images).await?;
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        })),
        Command::Lint {
            files,
            policy,
            quiet,
            analysis_max_timeout,
            analysis_min_interval,
        } => run_lint(
            &files,
            policy.as_deref(),
            quiet,
            storm_shared::rules::AnalysisBounds {
                max_timeout: analysis_max_timeout,
                min_interval: analysis_min_interval,
            },
        ),
        Command::Crds { out_dir: Some(dir) } => {
            crds::write_all(&dir).map_err(|source| Error::WriteCrds { dir, source })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds { out_dir: None } => {
            let s = crds::stream().map_err(|source| Error::RenderCrds { source })?;
            print!("{s}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    storm_shared::units::parse_wait(text).map_err(|e| e.to_string())
}

fn run_lint(
    files: &[PathBuf],
    policy: Option<&std::path::Path>,
    quiet: bool,
    bounds: storm_shared::rules::AnalysisBounds,
) -> Result<ExitCode, Error> {
    let policies = policy
        .map(lint::read_policies)
        .transpose()?
        .unwrap_or_default();
    let linter = lint::Linter::new(policies, bounds)?;
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
            // An unreadable input does not stop the others: say so and go on.
            Err(e) => {
                eprintln!("{}", e.stderr_line());
                unreadable = true;
            }
        }
    }
    if !quiet {
        eprintln!("{checked} object(s) checked: {errors} error(s), {warnings} warning(s)");
    }
    Ok(if unreadable {
        ExitCode::from(2)
    } else if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A manual control: 0 when the annotation was set, 1 when the control does not apply (so scripts
/// can tell it from a failure to talk to the cluster, 2).
fn control(namespace: Option<String>, name: String, c: controls::Control) -> ExitCode {
    online(namespace, move |client, ns| async move {
        let api = kube::Api::namespaced(client, &ns);
        let msg = controls::run(&api, &name, c).await?;
        println!("{msg}");
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs a command that talks to the cluster: a client from the kubeconfig, the namespace from the
/// flag or the context. Errors are reported before the runtime shuts down.
fn online<F, Fut>(namespace: Option<String>, f: F) -> ExitCode
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, Error>>,
{
    // One crypto provider, chosen here: the rest of the process must not pick another.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(source) => return fail(&Error::StartRuntime { source }),
    };
    runtime
        .block_on(async move {
            let config = kube::Config::infer()
                .await
                .map_err(|source| Error::Kubeconfig { source })?;
            let ns = namespace.unwrap_or_else(|| config.default_namespace.clone());
            let client =
                kube::Client::try_from(config).map_err(|source| Error::BuildClient { source })?;
            f(client, ns).await
        })
        // While `runtime` still exists: dropping it may wait for its blocking threads.
        .unwrap_or_else(|e| fail(&e))
}
