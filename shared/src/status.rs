//! The status vocabulary: rollout phases, condition types, reasons, and the questions asked of a
//! status ("waiting for approval?", "paused by the user?", "halted?").
//!
//! The controller writes these words, the CLI and the admission rules read them, metrics label by
//! them. They are written here once, as types; the strings exist only in `as_str`.

use crate::types::Condition;
use crate::types::podset::PodSetPhase;
use crate::types::stormservice::{AnalysisPhase, RolloutPhase, RolloutStatus, StormService};

impl RolloutPhase {
    /// Every phase, in the order the metrics export them.
    pub const ALL: [RolloutPhase; 6] = [
        RolloutPhase::Healthy,
        RolloutPhase::Progressing,
        RolloutPhase::Paused,
        RolloutPhase::Completed,
        RolloutPhase::Degraded,
        RolloutPhase::Aborted,
    ];

    /// The phase as written in `status.rolloutStatus.phase`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Healthy => "Healthy",
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Completed => "Completed",
            RolloutPhase::Degraded => "Degraded",
            RolloutPhase::Aborted => "Aborted",
        }
    }
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AnalysisPhase {
    /// The phase as written in the status (`Successful`, ...), also the `phase` label of metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            AnalysisPhase::Running => "Running",
            AnalysisPhase::Successful => "Successful",
            AnalysisPhase::Failed => "Failed",
            AnalysisPhase::Inconclusive => "Inconclusive",
            AnalysisPhase::Error => "Error",
        }
    }
}

impl PodSetPhase {
    /// The phase as written in a PodSet's `status.phase`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PodSetPhase::Pending => "Pending",
            PodSetPhase::Running => "Running",
            PodSetPhase::Ready => "Ready",
            PodSetPhase::Failed => "Failed",
        }
    }

    /// The phase a PodSet's `status.phase` names, if it is one of ours.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Running, Self::Ready, Self::Failed]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// Condition types the controller writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// `rolloutStatus`: the rollout moves (True) or stands (False; the reason says why).
    Progressing,
    /// `rolloutStatus`: the rollout waits (True) for a user, a duration, an approval or an analysis.
    Paused,
    /// `rolloutStatus`: the rollout failed (True); the reason names the trigger.
    Degraded,
    /// StormService and RoleSet status: every RoleSet (Pod) is ready.
    Ready,
}

impl ConditionType {
    /// The type as written in a condition's `type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Progressing => "Progressing",
            ConditionType::Paused => "Paused",
            ConditionType::Degraded => "Degraded",
            ConditionType::Ready => "Ready",
        }
    }
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// Condition and Event reasons the controller writes (CamelCase, one word).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The reason as written in a condition or an Event.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)*
                }
            }

            /// The reason a string names, if it is one of ours.
            pub fn parse(text: &str) -> Option<Reason> {
                match text {
                    $($text => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// A rollout began.
    Started = "RolloutStarted",
    /// A step completed.
    StepComplete = "StepComplete",
    /// The current step's canary is in place; its pause and analysis run.
    StepReached = "StepReached",
    /// Working towards the current step.
    StepProgressing = "StepProgressing",
    /// A step was edited mid-rollout: it starts over.
    StepChanged = "StepChanged",
    /// The canary is being promoted.
    Promoting = "Promoting",
    /// The rollout completed.
    Completed = "RolloutCompleted",
    /// Paused by the pause annotation.
    PausedByUser = "PausedByUser",
    /// Waiting out a step's pause duration.
    PauseDuration = "PauseDuration",
    /// Waiting for the approval annotation.
    WaitingForApproval = "WaitingForApproval",
    /// An analysis run started measuring.
    AnalysisStarted = "AnalysisStarted",
    /// An analysis is measuring.
    AnalysisRunning = "AnalysisRunning",
    /// An analysis was inconclusive: a person decides (resume accepts, abort rejects).
    AnalysisInconclusive = "AnalysisInconclusive",
    /// An analysis succeeded.
    AnalysisSuccessful = "AnalysisSuccessful",
    /// Rollback trigger: an analysis failed.
    AnalysisFailed = "AnalysisFailed",
    /// Event: an analysis run ended Failed.
    AnalysisRunFailed = "AnalysisRunFailed",
    /// Event: an analysis run ended Error (it could not measure).
    AnalysisError = "AnalysisError",
    /// Waiting for the traffic routers to report the step's weight.
    WaitingForRouter = "WaitingForTrafficRouter",
    /// Event: a traffic router could not be read or written.
    TrafficRouterError = "TrafficRouterError",
    /// Event: the StormService is being deleted and its traffic routers are back on stable.
    RoutersReverted = "TrafficRoutersReverted",
    /// Event (Warning): a Service the StormService names has no selector (its Endpoints are
    /// someone's, by hand); the controller never adds one, so it is not pinned.
    ServiceNotPinned = "ServiceNotPinned",
    /// Blue-green: the preview RoleSets are being created.
    PreviewProgressing = "PreviewProgressing",
    /// Blue-green: the preview RoleSets are all ready.
    PreviewReady = "PreviewReady",
    /// Blue-green: the active Service was switched to the new revision.
    Promoted = "Promoted",
    /// Not paused.
    NotPaused = "NotPaused",
    /// Resumed by the resume annotation.
    Resumed = "Resumed",
    /// Approved by the approval annotation.
    Approved = "Approved",
    /// Promoted in full by the promote-full annotation: remaining steps, pauses and analyses skipped.
    PromotedFull = "PromotedFull",
    /// Aborted by the abort annotation.
    Aborted = "RolloutAborted",
    /// Restarted by the retry annotation.
    Retried = "RolloutRetried",
    /// Rolled back automatically.
    RolledBack = "RolledBack",
    /// Stopped in place after a failure (autoRollback disabled).
    Halted = "Halted",
    /// The template went back to the stable revision.
    Reverted = "TemplateReverted",
    /// A control annotation arrived when it could not act.
    ControlIgnored = "ControlIgnored",
    /// StormService at rest, or `Ready`: every RoleSet ready.
    AllRoleSetsReady = "AllRoleSetsReady",
    /// StormService `Ready` is False: some RoleSets are not ready.
    RoleSetsNotReady = "RoleSetsNotReady",
    /// The first RoleSets are being created.
    Creating = "CreatingRoleSets",
    /// No failure.
    NotDegraded = "NotDegraded",
    /// Rollback trigger: new-revision Pods fail or crash-loop.
    HealthCheckFailed = "HealthCheckFailed",
    /// Rollback trigger: error rate over the threshold.
    ErrorThresholdExceeded = "ErrorThresholdExceeded",
    /// Rollback trigger: no progress within onTimeout.
    ProgressDeadlineExceeded = "ProgressDeadlineExceeded",
    /// RoleSet `Ready`: every Pod ready.
    AllPodsReady = "AllPodsReady",
    /// RoleSet `Ready` is False: some Pods are not ready.
    PodsNotReady = "PodsNotReady",
    /// Event: a RoleSet created a Pod.
    SuccessfulCreate = "SuccessfulCreate",
    /// Event: a RoleSet deleted a Pod.
    SuccessfulDelete = "SuccessfulDelete",
    /// Event: a RoleSet replaces a failed Pod.
    ReplacingFailedPod = "ReplacingFailedPod",
    /// Event: a RoleSet replaces a Pod made from an older template of its role.
    ReplacingOutdatedPod = "ReplacingOutdatedPod",
    /// Event: a PodGroup for gang scheduling was created.
    PodGroupCreated = "PodGroupCreated",
    /// Event (Warning): the scheduler's PodGroup CRD is not installed; Pods are scheduled one by one.
    PodGroupUnavailable = "PodGroupUnavailable",
    /// Event: a RoleSet updated a Pod's images in place.
    UpdatedPodInPlace = "UpdatedPodInPlace",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The condition of `type_` in `conditions`, whatever its status.
pub fn condition(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// The condition of `type_`, if it is True.
pub fn condition_true(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    condition(conditions, type_).filter(|c| c.status == "True")
}

/// The reason of the condition of `type_`, whatever its status (None when it is not one of ours).
pub fn condition_reason(conditions: &[Condition], type_: ConditionType) -> Option<Reason> {
    condition(conditions, type_)
        .and_then(|c| c.reason.as_deref())
        .and_then(Reason::parse)
}

/// Whether the condition of `type_` is True with `reason`.
pub fn is_true_because(conditions: &[Condition], type_: ConditionType, reason: Reason) -> bool {
    condition_true(conditions, type_).is_some_and(|c| c.reason.as_deref() == Some(reason.as_str()))
}

impl RolloutStatus {
    /// Paused by the pause annotation (the `Paused` condition is True with `PausedByUser`).
    pub fn paused_by_user(&self) -> bool {
        is_true_because(
            &self.conditions,
            ConditionType::Paused,
            Reason::PausedByUser,
        )
    }

    /// Waits for the approval annotation: phase `Paused` with a `Paused` condition of reason
    /// `WaitingForApproval`. Nothing else counts (a step with `untilApproval` may not be reached
    /// yet, or its analysis may be what it waits for).
    pub fn waiting_for_approval(&self) -> bool {
        self.phase == Some(RolloutPhase::Paused)
            && is_true_because(
                &self.conditions,
                ConditionType::Paused,
                Reason::WaitingForApproval,
            )
    }

    /// Waits for a person to accept or reject an inconclusive analysis.
    pub fn inconclusive(&self) -> bool {
        self.phase == Some(RolloutPhase::Paused)
            && is_true_because(
                &self.conditions,
                ConditionType::Paused,
                Reason::AnalysisInconclusive,
            )
    }

    /// Stopped in place after a failure because autoRollback is disabled (phase `Degraded`, the
    /// `Progressing` reason `Halted`).
    pub fn halted(&self) -> bool {
        self.phase == Some(RolloutPhase::Degraded)
            && self.progressing_reason() == Some(Reason::Halted)
    }

    /// Aborted, or rolled back automatically: everything is on the stable revision.
    pub fn rolled_back(&self) -> bool {
        match self.phase {
            Some(RolloutPhase::Aborted) => true,
            Some(RolloutPhase::Degraded) => self.progressing_reason() != Some(Reason::Halted),
            _ => false,
        }
    }

    /// The reason of the `Progressing` condition.
    pub fn progressing_reason(&self) -> Option<Reason> {
        condition_reason(&self.conditions, ConditionType::Progressing)
    }
}

/// The rollout status of a StormService, if it has one.
pub fn rollout_status(obj: &StormService) -> Option<&RolloutStatus> {
    obj.status.as_ref().and_then(|s| s.rollout_status.as_ref())
}

/// Whether the StormService's own status says it waits for an approval
/// ([`RolloutStatus::waiting_for_approval`]).
pub fn waiting_for_approval(obj: &StormService) -> bool {
    rollout_status(obj).is_some_and(RolloutStatus::waiting_for_approval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
            assert!(seen.insert(r.as_str()), "{} twice", r.as_str());
        }
        assert_eq!(Reason::parse("NoSuchReason"), None);
    }

    #[test]
    fn phases_serialize_as_they_print() {
        for p in RolloutPhase::ALL {
            assert_eq!(
                serde_json::to_value(p).expect("phase"),
                serde_json::json!(p.as_str())
            );
        }
    }

    #[test]
    fn podset_phases_round_trip() {
        for p in [
            PodSetPhase::Pending,
            PodSetPhase::Running,
            PodSetPhase::Ready,
            PodSetPhase::Failed,
        ] {
            assert_eq!(PodSetPhase::parse(p.as_str()), Some(p));
        }
        assert_eq!(PodSetPhase::parse("Unknown"), None);
    }

    fn status(phase: &str, type_: &str, state: &str, reason: &str) -> RolloutStatus {
        serde_json::from_value(serde_json::json!({
            "phase": phase,
            "conditions": [{"type": type_, "status": state, "reason": reason}]
        }))
        .expect("status")
    }

    #[test]
    fn predicates_read_phase_and_condition_together() {
        assert!(status("Paused", "Paused", "True", "WaitingForApproval").waiting_for_approval());
        // The reason alone is not enough: the phase must agree, and the condition must be True.
        assert!(
            !status("Progressing", "Paused", "True", "WaitingForApproval").waiting_for_approval()
        );
        assert!(!status("Paused", "Paused", "False", "WaitingForApproval").waiting_for_approval());
        assert!(status("Paused", "Paused", "True", "PausedByUser").paused_by_user());
        assert!(status("Paused", "Paused", "True", "AnalysisInconclusive").inconclusive());
        assert!(!status("Progressing", "Paused", "False", "AnalysisInconclusive").inconclusive());
        assert!(status("Degraded", "Progressing", "False", "Halted").halted());
        assert!(!status("Degraded", "Progressing", "False", "Halted").rolled_back());
        assert!(status("Degraded", "Progressing", "False", "RolledBack").rolled_back());
        assert!(status("Aborted", "Progressing", "False", "RolloutAborted").rolled_back());
        assert!(!status("Progressing", "Progressing", "True", "StepReached").rolled_back());
    }
}
