//! `kubectl storm promote|approve|pause|resume|abort|retry`: the seed's control annotations, set only
//! when they can act, with a message that says why not otherwise.

use crate::error::Error;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use storm_shared::StormService;
use storm_shared::keys::{
    ANNOTATION_ABORT, ANNOTATION_APPROVAL, ANNOTATION_PAUSE, ANNOTATION_PROMOTE_FULL,
    ANNOTATION_RESUME, ANNOTATION_RETRY,
};
use storm_shared::status::{rollout_status, waiting_for_approval};
use storm_shared::types::stormservice::{RolloutPhase, RolloutStatus};

/// A manual control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Approve a step (or blue-green promotion) that waits for approval.
    Approve,
    /// Pause a running rollout.
    Pause,
    /// Resume a paused (or stopped) rollout, or accept an inconclusive analysis.
    Resume,
    /// Abort the rollout: everything back on stable.
    Abort,
    /// Restart an aborted or degraded rollout at step 0.
    Retry,
    /// Promote in full: skip the remaining steps, pauses, approvals and analyses.
    PromoteFull,
}

impl Control {
    /// The annotation the control sets.
    pub fn annotation(self) -> &'static str {
        match self {
            Control::Approve => ANNOTATION_APPROVAL,
            Control::Pause => ANNOTATION_PAUSE,
            Control::Resume => ANNOTATION_RESUME,
            Control::Abort => ANNOTATION_ABORT,
            Control::Retry => ANNOTATION_RETRY,
            Control::PromoteFull => ANNOTATION_PROMOTE_FULL,
        }
    }

    /// The command's name, as in "cannot approve".
    pub fn command(self) -> &'static str {
        match self {
            Control::Approve => "approve",
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
            Control::Retry => "retry",
            Control::PromoteFull => "promote --full",
        }
    }

    /// Pending control annotations this one replaces: the last request wins, and the webhook denies
    /// the pairs that contradict each other (abort with resume, approve or promote; pause with resume).
    pub fn supersedes(self) -> &'static [&'static str] {
        match self {
            Control::Abort => &[
                ANNOTATION_RESUME,
                ANNOTATION_APPROVAL,
                ANNOTATION_PROMOTE_FULL,
            ],
            Control::Pause => &[ANNOTATION_RESUME],
            Control::Resume => &[ANNOTATION_PAUSE],
            Control::Approve | Control::Retry | Control::PromoteFull => &[],
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Control::Approve => "approved",
            Control::Pause => "pause requested",
            Control::Resume => "resume requested",
            Control::Abort => "abort requested",
            Control::Retry => "retry requested",
            Control::PromoteFull => "full promotion requested",
        }
    }
}

fn phase_of(obj: &StormService) -> Option<RolloutPhase> {
    rollout_status(obj)?.phase
}

fn paused_by_user(obj: &StormService) -> bool {
    rollout_status(obj).is_some_and(RolloutStatus::paused_by_user)
}

/// Paused on an inconclusive analysis: the resume annotation accepts it and the rollout goes on.
fn paused_on_inconclusive_analysis(obj: &StormService) -> bool {
    rollout_status(obj).is_some_and(RolloutStatus::inconclusive)
}

/// Stopped in place after a failure with autoRollback disabled: what resume can continue.
fn halted(obj: &StormService) -> bool {
    rollout_status(obj).is_some_and(RolloutStatus::halted)
}

/// Why a control cannot act on the object as it stands, or `None` when it can.
pub fn refusal(control: Control, obj: &StormService) -> Option<String> {
    let abort_pending = obj
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_ABORT));
    if abort_pending
        && matches!(
            control,
            Control::Resume | Control::Approve | Control::PromoteFull
        )
    {
        return Some(format!(
            "an abort is pending ({ANNOTATION_ABORT}); it wins over {}: wait for phase Aborted, then `kubectl storm retry {}`",
            control.command(),
            obj.name_any()
        ));
    }
    let phase = phase_of(obj);
    let in_rollout = matches!(
        phase,
        Some(RolloutPhase::Progressing | RolloutPhase::Paused)
    );
    let shown = phase.map_or("no rollout yet".to_string(), |p| format!("phase {p:?}"));
    match control {
        Control::Approve if !waiting_for_approval(obj) => Some(format!(
            "nothing is waiting for approval ({shown}); see `kubectl storm status {}`",
            obj.name_any()
        )),
        Control::Pause if !in_rollout => Some(format!("no rollout is running ({shown})")),
        Control::Pause if paused_by_user(obj) => Some("the rollout is already paused".into()),
        Control::Resume
            if !paused_by_user(obj) && !paused_on_inconclusive_analysis(obj) && !halted(obj) =>
        {
            Some(format!("the rollout is not paused ({shown})"))
        }
        Control::Abort if !in_rollout && phase != Some(RolloutPhase::Degraded) => {
            Some(format!("no rollout is in progress ({shown})"))
        }
        Control::Retry
            if !matches!(phase, Some(RolloutPhase::Aborted | RolloutPhase::Degraded)) =>
        {
            Some(format!(
                "retry only restarts an Aborted or Degraded rollout ({shown})"
            ))
        }
        Control::PromoteFull if !in_rollout || halted(obj) => Some(format!(
            "promote --full acts on a running rollout ({shown}{}); retry or resume it first",
            if halted(obj) {
                ", stopped after a failure"
            } else {
                ""
            }
        )),
        _ => None,
    }
}

/// The merge patch of annotations a control sends: its own set, the pending ones it supersedes
/// removed.
fn annotation_patch(
    control: Control,
    obj: &StormService,
) -> serde_json::Map<String, serde_json::Value> {
    let mut annotations = serde_json::Map::new();
    let pending = obj.metadata.annotations.as_ref();
    for key in control.supersedes() {
        if pending.is_some_and(|a| a.contains_key(*key)) {
            annotations.insert((*key).into(), serde_json::Value::Null);
        }
    }
    annotations.insert(control.annotation().into(), json!("true"));
    annotations
}

/// Sets the control's annotation if it can act ([`Error::Refused`] otherwise); returns what to tell
/// the user.
pub async fn run(api: &Api<StormService>, name: &str, control: Control) -> Result<String, Error> {
    let obj = api
        .get(name)
        .await
        .map_err(|source| Error::ReadStormService {
            name: name.into(),
            source,
        })?;
    if let Some(why) = refusal(control, &obj) {
        return Err(Error::Refused {
            name: name.into(),
            control,
            why,
        });
    }
    let body = json!({"metadata": {"annotations": annotation_patch(control, &obj)}});
    api.patch(
        name,
        &PatchParams {
            field_manager: Some("kubectl-storm".into()),
            ..Default::default()
        },
        &Patch::Merge(&body),
    )
    .await
    .map_err(|source| Error::AnnotateStormService {
        name: name.into(),
        source,
    })?;
    Ok(format!(
        "stormservice/{name} {} ({}=true)",
        control.verb(),
        control.annotation()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_replaces_the_pending_ones_it_contradicts() {
        // Any pending set of controls the webhook admits, then any control the command does not
        // refuse: the annotations it leaves are admitted too (the last request wins).
        let all = [
            Control::Approve,
            Control::Pause,
            Control::Resume,
            Control::Abort,
            Control::Retry,
            Control::PromoteFull,
        ];
        let paused = json!({"rolloutStatus": {"phase": "Paused", "currentStepIndex": 0,
            "conditions": [{"type": "Paused", "status": "True", "reason": "PausedByUser"}]}});
        let steps = json!([{"weight": 10}, {"pause": {"untilApproval": true}}]);
        let valid = |status: &serde_json::Value| -> StormService {
            serde_json::from_value(json!({
                "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
                "metadata": {"name": "a"},
                "spec": {
                    "replicas": 2,
                    "template": {"spec": {"roles": [{"name": "server", "replicas": 1,
                        "template": {"spec": {"containers": [{"name": "server", "image": "app:v1"}]}}}]}},
                    "rolloutStrategy": {"type": "Canary", "canary": {"steps": steps}}
                },
                "status": status
            }))
            .expect("object")
        };
        let admitted = |o: &StormService| {
            storm_shared::rules::validate_storm_service(
                o,
                None,
                &storm_shared::rules::AnalysisBounds::default(),
            )
            .is_valid()
        };
        let mut tried = 0;
        for mask in 0..(1u32 << all.len()) {
            let mut before = valid(&paused);
            before.metadata.annotations = Some(
                all.iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, c)| (c.annotation().to_string(), "true".to_string()))
                    .collect(),
            );
            if mask == 0 {
                let report = storm_shared::rules::validate_storm_service(
                    &before,
                    None,
                    &storm_shared::rules::AnalysisBounds::default(),
                );
                assert!(report.is_valid(), "{:?}", report.errors);
            }
            if !admitted(&before) {
                continue;
            }
            for control in all {
                if refusal(control, &before).is_some() {
                    continue;
                }
                let mut after = before.clone();
                let annotations = after.metadata.annotations.get_or_insert_default();
                for (key, value) in annotation_patch(control, &before) {
                    match value {
                        serde_json::Value::String(v) => {
                            annotations.insert(key, v);
                        }
                        _ => {
                            annotations.remove(&key);
                        }
                    }
                }
                assert!(
                    admitted(&after),
                    "{} after {:?} is denied",
                    control.command(),
                    before.metadata.annotations
                );
                tried += 1;
            }
        }
        assert!(tried > 20, "only {tried} cases tried");
    }

    fn obj(status: serde_json::Value, steps: serde_json::Value) -> StormService {
        serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
            "metadata": {"name": "a"},
            "spec": {"template": {}, "rolloutStrategy": {"type": "Canary", "canary": {"steps": steps}}},
            "status": status
        }))
        .expect("object")
    }

    #[test]
    fn approve_only_when_waiting() {
        let steps = json!([{"weight": 10, "pause": {"untilApproval": true}}]);
        let waiting = obj(
            json!({"rolloutStatus": {"phase": "Paused", "currentStepIndex": 0,
                "conditions": [{"type": "Paused", "status": "True", "reason": "WaitingForApproval"}]}}),
            steps.clone(),
        );
        assert_eq!(refusal(Control::Approve, &waiting), None);
        let running = obj(
            json!({"rolloutStatus": {"phase": "Progressing", "currentStepIndex": 0}}),
            steps,
        );
        assert!(
            refusal(Control::Approve, &running)
                .expect("refused")
                .contains("nothing is waiting")
        );
    }

    #[test]
    fn other_controls_follow_the_phase() {
        let steps = json!([{"weight": 10}]);
        let progressing = obj(
            json!({"rolloutStatus": {"phase": "Progressing"}}),
            steps.clone(),
        );
        assert_eq!(refusal(Control::Pause, &progressing), None);
        assert_eq!(refusal(Control::Abort, &progressing), None);
        assert!(refusal(Control::Resume, &progressing).is_some());
        assert!(refusal(Control::Retry, &progressing).is_some());
        let aborted = obj(
            json!({"rolloutStatus": {"phase": "Aborted"}}),
            steps.clone(),
        );
        assert_eq!(refusal(Control::Retry, &aborted), None);
        assert!(refusal(Control::Abort, &aborted).is_some());
        let paused = obj(
            json!({"rolloutStatus": {"phase": "Paused", "conditions": [{"type": "Paused", "status": "True", "reason": "PausedByUser"}]}}),
            steps.clone(),
        );
        assert_eq!(refusal(Control::Resume, &paused), None);
        // Degraded after a rollback: resume has nothing to continue; after a halt it does.
        let rolled_back = obj(
            json!({"rolloutStatus": {"phase": "Degraded", "conditions": [{"type": "Progressing", "status": "False", "reason": "RolledBack"}]}}),
            steps.clone(),
        );
        assert!(refusal(Control::Resume, &rolled_back).is_some());
        let halted = obj(
            json!({"rolloutStatus": {"phase": "Degraded", "conditions": [{"type": "Progressing", "status": "False", "reason": "Halted"}]}}),
            steps.clone(),
        );
        assert_eq!(refusal(Control::Resume, &halted), None);
        // The resume annotation accepts an inconclusive analysis: the command must set it.
        let inconclusive = obj(
            json!({"rolloutStatus": {"phase": "Paused", "conditions": [{"type": "Paused", "status": "True", "reason": "AnalysisInconclusive"}]}}),
            steps.clone(),
        );
        assert_eq!(refusal(Control::Resume, &inconclusive), None);
        // Once accepted the condition turns false: nothing left to resume.
        let accepted = obj(
            json!({"rolloutStatus": {"phase": "Progressing", "conditions": [{"type": "Paused", "status": "False", "reason": "AnalysisInconclusive"}]}}),
            steps.clone(),
        );
        assert!(refusal(Control::Resume, &accepted).is_some());
        assert!(refusal(Control::Pause, &paused).is_some());
        // A pending abort wins: resume, approve and promote are refused with the reason.
        let mut aborting = paused.clone();
        aborting.metadata.annotations =
            Some([(ANNOTATION_ABORT.to_string(), "true".to_string())].into());
        assert!(
            refusal(Control::Resume, &aborting)
                .expect("refused")
                .contains("an abort is pending")
        );
        assert!(refusal(Control::PromoteFull, &aborting).is_some());
        assert_eq!(refusal(Control::Abort, &aborting), None);
        let completed = obj(json!({"rolloutStatus": {"phase": "Completed"}}), steps);
        assert!(
            refusal(Control::Abort, &completed)
                .expect("refused")
                .contains("no rollout")
        );
    }
}
