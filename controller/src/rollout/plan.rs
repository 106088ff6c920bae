//! What the state machine sees and what it decides.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use storm_shared::status::{ConditionType as Cond, Reason};
use storm_shared::types::Condition;
use storm_shared::types::stormservice::{StormServiceSpec, StormServiceStatus};

/// A RoleSet of the StormService, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRoleSet {
    /// Its name, `<service>-<revision>-<index>` (the revision it was created at).
    pub name: String,
    /// Its slot within the StormService (its `roleset-index`; a RoleSet updated in place keeps its
    /// name and slot while its revision label moves on).
    pub index: Option<i32>,
    /// Its revision label.
    pub revision: String,
    /// All its Pods are Ready.
    pub ready: bool,
    /// The replicas its spec gives each role.
    pub roles: BTreeMap<String, i32>,
    /// Its per-role Pod counts, as its status reports them.
    pub role_status: Vec<storm_shared::types::roleset::RoleStatus>,
    /// What it holds of the capacity budget's resource (0 without a budget).
    pub holds: i64,
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
    /// The most restarts of any of its containers.
    pub restarts: i32,
    /// A container waits in `CrashLoopBackOff` (the kubelet's own verdict).
    pub back_off: bool,
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
    /// Why the traffic routers could not be read, when they could not.
    pub router_error: Option<String>,
    /// What RoleSets being deleted still hold of the capacity budget's resource.
    pub held_by_terminating: i64,
}

/// What the analysis runner did just before the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measured {
    /// Events of runs that reached a verdict.
    pub notes: Vec<Note>,
    /// When the next measurement is due.
    pub next_due: Option<std::time::Duration>,
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
    /// The revision of the current template (`revision::of_template`, computed once).
    pub update: &'a str,
    /// The measurements taken before this decision.
    pub measured: &'a Measured,
    /// The time of the decision.
    pub now: Timestamp,
}

/// A Kubernetes Event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// A Warning (true) or Normal event.
    pub warning: bool,
    /// Why: the Event's reason.
    pub reason: Reason,
    /// The sentence.
    pub message: String,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Desired RoleSet count per revision; revisions not listed go to zero.
    pub scale: BTreeMap<String, i32>,
    /// RoleSets to create: (revision, slot). Each revision's lowest free slots.
    pub create: Vec<(String, i32)>,
    /// RoleSets to delete, by name: of each revision with more than `scale` asks, the unready ones
    /// first (they serve nobody), then the highest slots.
    pub delete: Vec<String>,
    /// RoleSets of other revisions that take the update revision's template in place
    /// (`updateStrategy.type: InPlaceUpdate`); they keep their names and slots and count as the
    /// update revision's from now on.
    pub retemplate: Vec<String>,
    /// RoleSets that stay and whose roles are resized in place to the template's `replicas`:
    /// RoleSet name → role name → replicas (only the roles that change).
    pub resize: BTreeMap<String, BTreeMap<String, i32>>,
    /// Services to pin to a revision: (Service name, revision).
    pub services: Vec<(String, String)>,
    /// The canary's share of traffic, for routers.
    pub weight: i32,
    /// The traffic routers to set to `weight`, when the StormService routes its canary.
    pub routers: Option<RouterWrite>,
    /// The status to write.
    pub status: StormServiceStatus,
    /// Events to record.
    pub notes: Vec<Note>,
    /// Control annotations to remove (after the status is written).
    pub remove_annotations: Vec<String>,
    /// When to look again even if nothing changes (at the latest the periodic resync).
    pub requeue_after: std::time::Duration,
    /// The reason of a rollback (automatic, or an abort) triggered by this decision.
    pub rollback: Option<Reason>,
}

/// Where the traffic routers point after the decision, and whether a failure to set them matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterWrite {
    /// The stable revision (after a completion: the new one).
    pub stable_revision: String,
    /// The revision the canary Service selects.
    pub canary_revision: String,
    /// A failed write is a Warning event and a failed reconcile mid-rollout; at rest the user's
    /// router objects may not exist yet, so it is only logged.
    pub report_errors: bool,
}

/// Sets a condition, keeping its timestamps when nothing about it changes (so replaying an
/// observation writes the same status).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: Cond,
    status: bool,
    reason: Reason,
    message: &str,
    now: Timestamp,
) {
    let status_text = if status { "True" } else { "False" };
    let (type_, reason) = (type_.as_str(), reason.as_str());
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
            last_update_micro_time: None,
        }),
    }
}
