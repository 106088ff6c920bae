//! Before each decision: the analysis runs that are measuring take the measurements that are due.

use crate::analysis::Runner;
use crate::rollout::{Note, gates};
use k8s_openapi::jiff::Timestamp;
use kube::{Client, ResourceExt};
use std::time::Duration;
use storm_shared::StormService;
use storm_shared::status::Reason;
use storm_shared::types::stormservice::{AnalysisPhase, AnalysisRunStatus, StormServiceStatus};

/// Advances every running run of the revision being rolled out. Returns when the next
/// measurement is due and the events for runs that reached a verdict.
pub async fn advance(
    runner: &Runner,
    client: &Client,
    obj: &StormService,
    ns: &str,
    status: &mut StormServiceStatus,
    update: &str,
    now: Timestamp,
) -> (Option<Duration>, Vec<Note>) {
    let mut next: Option<Duration> = None;
    let mut notes = Vec::new();
    let Some(rs) = status.rollout_status.as_mut() else {
        return (None, notes);
    };
    for run in rs
        .analysis_runs
        .iter_mut()
        .filter(|r| r.phase == AnalysisPhase::Running && r.revision == update)
    {
        let Some(source) = gates::source(&obj.spec, &run.name) else {
            continue;
        };
        let due = runner
            .advance_for(client, ns, &obj.name_any(), source, run, now)
            .await;
        if let Some(d) = due {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        if let Some(note) = verdict_note(run) {
            notes.push(note);
        }
    }
    (next, notes)
}

/// The event for a run that just reached a verdict (the error-rate run only when it fails: it
/// restarts after every other verdict).
fn verdict_note(run: &AnalysisRunStatus) -> Option<Note> {
    let (warning, reason) = match run.phase {
        AnalysisPhase::Running => return None,
        AnalysisPhase::Successful if run.name == gates::ERROR_RATE => return None,
        AnalysisPhase::Inconclusive if run.name == gates::ERROR_RATE => return None,
        AnalysisPhase::Successful => (false, Reason::AnalysisSuccessful),
        AnalysisPhase::Failed => (true, Reason::AnalysisRunFailed),
        AnalysisPhase::Inconclusive => (true, Reason::AnalysisInconclusive),
        AnalysisPhase::Error => (true, Reason::AnalysisError),
    };
    Some(Note {
        warning,
        reason,
        message: format!(
            "analysis {} of revision {}: {:?}{}",
            run.name,
            run.revision,
            run.phase,
            run.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
    })
}
