//! Analysis gates: which analysis runs the rollout wants, and what their results mean for it.
//!
//! The runs live in `rolloutStatus.analysisRuns`. The state machine starts a run by adding it with
//! phase `Running`; the analysis runner (outside this pure module) takes its measurements before
//! each decision and sets its phase; the state machine reads the phase here.

use super::Machine;
use crate::analysis::Source;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;
use storm_shared::types::stormservice::{
    AnalysisPhase, AnalysisRunStatus, RolloutStrategyType, StormServiceSpec,
};
use storm_shared::units::int_or_string_percent;

/// The run of `autoRollback.onFailure.errorRate`.
pub const ERROR_RATE: &str = "error-rate";
/// Blue-green analysis before the active Service switches.
pub const PRE_PROMOTION: &str = "pre-promotion";
/// Blue-green analysis after the active Service switched.
pub const POST_PROMOTION: &str = "post-promotion";
/// Runs kept in the status: the running ones, and the newest decided ones up to this many in all.
const KEPT: usize = 8;

/// The run of canary step `idx`.
pub fn step(idx: usize) -> String {
    format!("step-{idx}")
}

/// Where a gate stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Still measuring: a sentence on its progress.
    Running(String),
    /// Every metric succeeded (or a person accepted an inconclusive result).
    Passed,
    /// A metric failed, or the analysis could not run: why.
    Failed(String),
    /// Neither: a person decides.
    Inconclusive(String),
}

/// The gate `name` for the revision being rolled out, starting its run if there is none yet.
pub(crate) fn gate(m: &mut Machine, name: &str) -> Gate {
    let update = m.update.clone();
    let now = m.now;
    let runs = &mut m.rs.analysis_runs;
    let idx = match runs
        .iter()
        .position(|r| r.name == name && r.revision == update)
    {
        Some(i) => i,
        None => {
            runs.push(AnalysisRunStatus {
                name: name.to_string(),
                revision: update.clone(),
                phase: AnalysisPhase::Running,
                started_at: Some(Time(now)),
                message: Some("waiting for the first measurement".into()),
                metrics: Vec::new(),
            });
            bound(runs);
            // The error-rate run restarts after every verdict: only its first start is news.
            if name != ERROR_RATE {
                m.note(
                    false,
                    storm_shared::status::Reason::AnalysisStarted,
                    format!("analysis {name} started for revision {update}"),
                );
            }
            // The runner measures on the next reconcile.
            m.requeue_in(Duration::from_secs(1));
            return Gate::Running(format!("analysis {name} started"));
        }
    };
    let run = &m.rs.analysis_runs[idx];
    let message = run.message.clone().unwrap_or_default();
    match run.phase {
        AnalysisPhase::Running => {
            let done: i32 = run.metrics.iter().map(|x| x.count).sum();
            Gate::Running(format!(
                "analysis {name} running ({done} measurements so far){}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            ))
        }
        AnalysisPhase::Successful => Gate::Passed,
        AnalysisPhase::Failed | AnalysisPhase::Error => Gate::Failed(format!(
            "analysis {name} {}: {}",
            if run.phase == AnalysisPhase::Failed {
                "failed"
            } else {
                "could not run"
            },
            if message.is_empty() {
                failing_metric(run)
            } else {
                message
            }
        )),
        AnalysisPhase::Inconclusive => Gate::Inconclusive(format!(
            "analysis {name} was inconclusive{}; resume to accept it or abort to reject it",
            if message.is_empty() {
                String::new()
            } else {
                format!(" ({message})")
            }
        )),
    }
}

fn failing_metric(run: &AnalysisRunStatus) -> String {
    run.metrics
        .iter()
        .find(|x| matches!(x.phase, AnalysisPhase::Failed | AnalysisPhase::Error))
        .map(|x| {
            let last = x
                .measurements
                .last()
                .and_then(|ms| ms.value.clone().or(ms.message.clone()))
                .unwrap_or_default();
            format!("metric {} {:?} (last value {last})", x.name, x.phase)
        })
        .unwrap_or_else(|| "a metric failed".into())
}

/// Whether run `name` of the revision being rolled out ended in `Error` (it could not measure).
pub(crate) fn errored(m: &Machine, name: &str) -> bool {
    m.rs.analysis_runs
        .iter()
        .any(|r| r.name == name && r.revision == m.update && r.phase == AnalysisPhase::Error)
}

/// When run `name` of the revision being rolled out last took a measurement.
pub(crate) fn last_measured(m: &Machine, name: &str) -> Option<Time> {
    m.rs.analysis_runs
        .iter()
        .filter(|r| r.name == name && r.revision == m.update)
        .flat_map(|r| r.metrics.iter())
        .filter_map(|x| x.measurements.last())
        .filter_map(|ms| ms.finished_at.clone())
        .max_by_key(|t| t.0)
}

/// Forgets run `name` of the revision being rolled out, so the gate starts a new one.
pub(crate) fn restart(m: &mut Machine, name: &str) {
    let update = m.update.clone();
    m.rs.analysis_runs
        .retain(|r| !(r.name == name && r.revision == update));
}

/// Stops every run that is still measuring (abort, rollback, halt, completion): the runner only
/// measures runs listed as `Running`.
pub(crate) fn stop_all(m: &mut Machine) {
    m.rs.analysis_runs
        .retain(|r| r.phase != AnalysisPhase::Running);
}

/// Forgets the decided runs that failed or were inconclusive, so a resumed rollout measures again.
pub(crate) fn forget_failures(m: &mut Machine) {
    m.rs.analysis_runs
        .retain(|r| matches!(r.phase, AnalysisPhase::Running | AnalysisPhase::Successful));
}

/// A person accepted the inconclusive runs of the revision being rolled out.
pub(crate) fn accept_inconclusive(m: &mut Machine) -> bool {
    let update = m.update.clone();
    let mut any = false;
    for r in
        m.rs.analysis_runs
            .iter_mut()
            .filter(|r| r.revision == update && r.phase == AnalysisPhase::Inconclusive)
    {
        r.phase = AnalysisPhase::Successful;
        r.message = Some("inconclusive; accepted by the rollout-resume annotation".into());
        any = true;
    }
    any
}

/// What run `name` measures, from the spec; `None` when the spec no longer has that analysis.
pub fn source<'a>(spec: &'a StormServiceSpec, name: &str) -> Option<Source<'a>> {
    let strategy = spec.rollout_strategy.as_ref()?;
    match name {
        ERROR_RATE => {
            let f = super::settings::auto_rollback_block(spec)?
                .on_failure
                .as_ref()?;
            let threshold = int_or_string_percent(f.error_threshold.as_ref()?).ok()?;
            Some(Source::ErrorRate {
                metric: f.error_rate.as_ref()?,
                threshold,
            })
        }
        PRE_PROMOTION | POST_PROMOTION => {
            if strategy.type_ != RolloutStrategyType::BlueGreen {
                return None;
            }
            let bg = strategy.blue_green.as_ref()?;
            if name == PRE_PROMOTION {
                bg.pre_promotion_analysis.as_ref()
            } else {
                bg.post_promotion_analysis.as_ref()
            }
            .map(Source::Templates)
        }
        step => {
            let idx: usize = step.strip_prefix("step-")?.parse().ok()?;
            strategy
                .canary
                .as_ref()?
                .steps
                .get(idx)?
                .analysis
                .as_ref()
                .map(Source::Templates)
        }
    }
}

/// Drops the running runs whose analysis is no longer in the spec (removed or edited away
/// mid-rollout): nobody would measure them and no gate would read them.
pub(crate) fn drop_orphans(m: &mut Machine) {
    let spec = m.input.spec;
    m.rs.analysis_runs
        .retain(|r| r.phase != AnalysisPhase::Running || source(spec, &r.name).is_some());
}

/// Keeps only the runs of revision `rev` (a new rollout starts with a clean list).
pub(crate) fn keep_revision(m: &mut Machine, rev: &str) {
    m.rs.analysis_runs.retain(|r| r.revision == rev);
}

/// The running runs, and the newest decided ones up to [`KEPT`] in all.
fn bound(runs: &mut Vec<AnalysisRunStatus>) {
    while runs.len() > KEPT {
        match runs.iter().position(|r| r.phase != AnalysisPhase::Running) {
            Some(i) => {
                runs.remove(i);
            }
            None => break,
        }
    }
}
