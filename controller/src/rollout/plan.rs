//! What the state machine sees and what it decides.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use storm_shared::types::Condition;
use storm_shared::types::stormservice::{
    RolloutPhase, RolloutStatus, StormServiceSpec, StormServiceStatus,
};

/// A RoleSet of the StormService, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRoleSet {
    /// Its name, `<service>-<revision>-<index>`.
    pub name: String,
    /// Its revision label.
    pub revision: String,
    /// All its Pods are Ready.
    pub ready: bool,
}

/// A Pod of the StormService, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    /// Its name.
    pub name: String,
    /// Its revision label.
    pub revision: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Its phase is Failed.
    pub failed: bool,
    /// A container is in CrashLoopBackOff or restarted repeatedly.
    pub crash_looping: bool,
    /// When it last became unready (or was created, if it never was Ready).
    pub unready_since: Option<Timestamp>,
}

/// Everything the controller observed of a StormService's world.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Its RoleSets that are not being deleted.
    pub rolesets: Vec<ObservedRoleSet>,
    /// Its Pods that are not being deleted.
    pub pods: Vec<ObservedPod>,
    /// The canary weight the traffic routers report (None without routers, when they disagree,
    /// or when their objects could not be read).
    pub router_weight: Option<i32>,
}

impl Observed {
    /// RoleSets of a revision.
    pub fn existing(&self, revision: &str) -> i32 {
        count(self.rolesets.iter().filter(|r| r.revision == revision))
    }

    /// Ready RoleSets of a revision.
    pub fn ready(&self, revision: &str) -> i32 {
        count(
            self.rolesets
                .iter()
                .filter(|r| r.revision == revision && r.ready),
        )
    }

    /// Every revision with RoleSets.
    pub fn revisions(&self) -> BTreeSet<String> {
        self.rolesets.iter().map(|r| r.revision.clone()).collect()
    }
}

fn count<T>(it: impl Iterator<Item = T>) -> i32 {
    i32::try_from(it.count()).unwrap_or(i32::MAX)
}

/// The input of one decision.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The StormService's name.
    pub name: &'a str,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: &'a StormServiceSpec,
    /// The status as last written.
    pub status: Option<&'a StormServiceStatus>,
    /// The annotations (manual controls).
    pub annotations: &'a BTreeMap<String, String>,
    /// The observed RoleSets and Pods.
    pub observed: &'a Observed,
    /// The time of the decision.
    pub now: Timestamp,
}

/// A Kubernetes Event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// A Warning (true) or Normal event.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// The sentence.
    pub message: String,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Desired RoleSet count per revision; revisions not listed go to zero.
    pub scale: BTreeMap<String, i32>,
    /// Services to pin to a revision: (Service name, revision).
    pub services: Vec<(String, String)>,
    /// The canary's share of traffic, for routers.
    pub weight: i32,
    /// The status to write.
    pub status: StormServiceStatus,
    /// Events to record.
    pub notes: Vec<Note>,
    /// Control annotations to remove (after the status is written).
    pub remove_annotations: Vec<String>,
    /// When to look again even if nothing changes.
    pub requeue_after: Option<std::time::Duration>,
    /// The reason of an automatic rollback triggered by this decision.
    pub rollback: Option<String>,
}

/// Sets a condition, keeping its timestamps when nothing about it changes (so replaying an
/// observation writes the same status).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let status_text = if status { "True" } else { "False" };
    let time = Some(Time(now));
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let same = c.status == status_text
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message);
            if same {
                return;
            }
            if c.status != status_text {
                c.last_transition_time = time.clone();
            }
            c.status = status_text.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_update_time = time;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status_text.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_update_time: time.clone(),
            last_transition_time: time,
        }),
    }
}

/// The condition of a type, if it is True.
pub fn condition_true<'a>(rs: &'a RolloutStatus, type_: &str) -> Option<&'a Condition> {
    rs.conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// The reason of a condition, whatever its status.
pub fn condition_reason<'a>(rs: &'a RolloutStatus, type_: &str) -> Option<&'a str> {
    rs.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .and_then(|c| c.reason.as_deref())
}

/// Condition types of `rolloutStatus.conditions`.
pub mod cond {
    /// The rollout moves (True) or stands (False; the reason says why).
    pub const PROGRESSING: &str = "Progressing";
    /// The rollout waits (True): for a user, a duration, an approval or an analysis.
    pub const PAUSED: &str = "Paused";
    /// The rollout failed (True): the reason names the trigger.
    pub const DEGRADED: &str = "Degraded";
}

/// Condition and event reasons.
pub mod reason {
    /// A rollout began.
    pub const STARTED: &str = "RolloutStarted";
    /// A step completed.
    pub const STEP_COMPLETE: &str = "StepComplete";
    /// The current step's canary is in place; its pause and analysis run.
    pub const STEP_REACHED: &str = "StepReached";
    /// Working towards the current step.
    pub const STEP_PROGRESSING: &str = "StepProgressing";
    /// The canary is being promoted.
    pub const PROMOTING: &str = "Promoting";
    /// The rollout completed.
    pub const COMPLETED: &str = "RolloutCompleted";
    /// Paused by the pause annotation.
    pub const PAUSED_BY_USER: &str = "PausedByUser";
    /// Waiting out a step's pause duration.
    pub const PAUSE_DURATION: &str = "PauseDuration";
    /// Waiting for the approval annotation.
    pub const WAITING_FOR_APPROVAL: &str = storm_shared::rules::REASON_WAITING_FOR_APPROVAL;
    /// An analysis is measuring.
    pub const ANALYSIS_RUNNING: &str = "AnalysisRunning";
    /// An analysis was inconclusive: a person decides (resume accepts, abort rejects).
    pub const ANALYSIS_INCONCLUSIVE: &str = "AnalysisInconclusive";
    /// An analysis succeeded.
    pub const ANALYSIS_SUCCESSFUL: &str = "AnalysisSuccessful";
    /// Rollback trigger: an analysis failed.
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    /// Waiting for the traffic routers to report the step's weight.
    pub const WAITING_FOR_ROUTER: &str = "WaitingForTrafficRouter";
    /// Blue-green: the preview RoleSets are being created.
    pub const PREVIEW_PROGRESSING: &str = "PreviewProgressing";
    /// Blue-green: the preview RoleSets are all ready.
    pub const PREVIEW_READY: &str = "PreviewReady";
    /// Blue-green: the active Service was switched to the new revision.
    pub const PROMOTED: &str = "Promoted";
    /// Not paused.
    pub const NOT_PAUSED: &str = "NotPaused";
    /// Resumed by the resume annotation.
    pub const RESUMED: &str = "Resumed";
    /// Approved by the approval annotation.
    pub const APPROVED: &str = "Approved";
    /// Aborted by the abort annotation.
    pub const ABORTED: &str = "RolloutAborted";
    /// Restarted by the retry annotation.
    pub const RETRIED: &str = "RolloutRetried";
    /// Rolled back automatically.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// Stopped in place after a failure (autoRollback disabled).
    pub const HALTED: &str = "Halted";
    /// The template went back to the stable revision.
    pub const REVERTED: &str = "TemplateReverted";
    /// A control annotation arrived when it could not act.
    pub const CONTROL_IGNORED: &str = "ControlIgnored";
    /// At rest, everything ready.
    pub const HEALTHY: &str = "AllRoleSetsReady";
    /// The first RoleSets are being created.
    pub const CREATING: &str = "CreatingRoleSets";
    /// No failure.
    pub const NOT_DEGRADED: &str = "NotDegraded";
    /// Rollback triggers.
    pub const HEALTH_CHECK_FAILED: &str = "HealthCheckFailed";
    /// Rollback trigger: error rate over the threshold.
    pub const ERROR_THRESHOLD_EXCEEDED: &str = "ErrorThresholdExceeded";
    /// Rollback trigger: no progress within onTimeout.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
}

/// The phase of a rollout status.
pub fn phase(rs: &RolloutStatus) -> Option<RolloutPhase> {
    rs.phase
}
