//! What the controller sees of one StormService: its RoleSets and Pods from the watch caches, and
//! the weight its traffic routers report.

use super::routing::Routing;
use crate::cache::CachedPod;
use crate::owned::Owned;
use crate::rollout::{Observed, ObservedPod, ObservedRoleSet};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::WriterDropped;
use kube::{Client, Resource, ResourceExt};
use storm_shared::keys::{AIBRIX_ANNOTATION_ROLESET_INDEX, LABEL_REVISION};
use storm_shared::status::ConditionType;
use storm_shared::{RoleSet, StormService};
use tracing::debug;

/// The watch caches of the StormService controller.
pub struct Caches {
    /// RoleSets carrying the StormService name label, by StormService.
    pub rolesets: Owned<RoleSet>,
    /// Pods carrying the StormService name label, by StormService.
    pub pods: Owned<CachedPod>,
    /// Every Service (slimmed to what pinning needs).
    pub services: Store<Service>,
    /// ControllerRevisions carrying the StormService name label, by StormService.
    pub revisions: Owned<ControllerRevision>,
}

impl Caches {
    /// Whether every cache has had its first list.
    pub fn ready(&self) -> bool {
        let ready = |f: Option<Result<(), WriterDropped>>| matches!(f, Some(Ok(())));
        self.rolesets.listed()
            && self.pods.listed()
            && ready(self.services.wait_until_ready().now_or_never())
            && self.revisions.listed()
    }

    /// The RoleSets and Pods of StormService `ns/name` that are not being deleted, and what its
    /// RoleSets hold of `budget` (the capacity budget's resource), those being deleted too.
    pub fn observe(&self, ns: &str, name: &str, budget: Option<&str>) -> Observed {
        let owned = self.rolesets.owned_by(ns, name);
        let holds = |r: &RoleSet| {
            budget.map_or(0, |resource| {
                storm_shared::capacity::roleset_use(&r.spec.roles, resource).unwrap_or(0)
            })
        };
        let held_by_terminating = owned
            .iter()
            .filter(|r| r.meta().deletion_timestamp.is_some())
            .map(|r| holds(r))
            .sum();
        let rolesets = owned
            .iter()
            // A RoleSet without our revision label was made by AIBrix and is not adopted yet
            // (`adopt`): it is not counted, and never deleted as excess.
            .filter(|r| {
                r.meta().deletion_timestamp.is_none() && r.labels().contains_key(LABEL_REVISION)
            })
            .map(|r| ObservedRoleSet {
                name: r.name_any(),
                index: roleset_index(r),
                revision: r.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
                ready: ready_and_current(r),
                role_status: r
                    .status
                    .as_ref()
                    .map(|s| s.roles.clone())
                    .unwrap_or_default(),
                roles: r
                    .spec
                    .roles
                    .iter()
                    .map(|role| (role.name.clone(), role.replicas.unwrap_or(1).max(0)))
                    .collect(),
                holds: holds(r),
            })
            .collect();
        let pods = self
            .pods
            .owned_by(ns, name)
            .iter()
            .filter(|p| p.meta().deletion_timestamp.is_none())
            .map(|p| observe_pod(p))
            .collect();
        Observed {
            rolesets,
            pods,
            router_weight: None,
            router_error: None,
            held_by_terminating,
        }
    }
}

/// A RoleSet's slot: its `roleset-index` annotation, else the number its name ends with.
pub fn roleset_index(r: &RoleSet) -> Option<i32> {
    r.annotations()
        .get(AIBRIX_ANNOTATION_ROLESET_INDEX)
        .and_then(|i| i.parse().ok())
        .or_else(|| r.name_any().rsplit('-').next()?.parse().ok())
}

/// Whether a RoleSet serves its current spec: `Ready`, with a status written for its current
/// generation, and no role still running Pods of an older template (an in-place update).
fn ready_and_current(r: &RoleSet) -> bool {
    let Some(s) = r.status.as_ref() else {
        return false;
    };
    let ready = s
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::Ready.as_str() && c.status == "True");
    let generation = r.metadata.generation;
    let seen = s.observed_generation.is_none()
        || generation.is_none()
        || s.observed_generation == generation;
    ready
        && seen
        && s.roles
            .iter()
            .all(|role| role.updated_replicas == role.replicas)
}

/// A Pod as the rollout sees it: facts only; `rollout::health` judges them.
pub fn observe_pod(p: &CachedPod) -> ObservedPod {
    let status = p.status.as_ref();
    // The Pod's own `Ready` condition (Kubernetes' vocabulary, not ours).
    let ready_cond = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let ready = ready_cond.is_some_and(|c| c.status == "True");
    let containers = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let restarts = containers
        .iter()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let back_off = containers.iter().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff")
    });
    let unready_since = if ready {
        None
    } else {
        ready_cond
            .and_then(|c| c.last_transition_time.as_ref())
            .or(p.meta().creation_timestamp.as_ref())
            .map(|t| t.0)
    };
    ObservedPod {
        name: p.name_any(),
        revision: p.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
        ready,
        failed: status.and_then(|s| s.phase.as_deref()) == Some("Failed"),
        restarts,
        back_off,
        unready_since,
    }
}

/// Reads the routers' weight back (a canary step is reached only when it is in place). Whether a
/// read error matters is the decision's to say; here it is only recorded.
pub async fn read_routers(
    client: &Client,
    obj: &StormService,
    ns: &str,
    update: &str,
    observed: &mut Observed,
) {
    let stable = obj
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .unwrap_or(update);
    let Some(routing) = Routing::of(obj, ns, stable, update) else {
        return;
    };
    match routing.read(client).await {
        Ok(w) => observed.router_weight = w,
        Err(e) => {
            debug!(namespace = %ns, name = %obj.name_any(), error = %e, "traffic routers not readable");
            observed.router_error = Some(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_facts_from_status() {
        let pod: CachedPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {LABEL_REVISION: "r"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:01:00Z"}],
                       "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 5}]}
        }))
        .expect("pod");
        let o = observe_pod(&pod);
        assert!(!o.ready && !o.failed && !o.back_off);
        assert_eq!(o.restarts, 5);
        assert_eq!(o.unready_since.map(|t| t.as_second()), Some(1_767_225_660));
        assert_eq!(o.revision, "r");
        let now = k8s_openapi::jiff::Timestamp::from_second(1_767_225_700).expect("ts");
        assert_eq!(
            crate::rollout::health::problem(
                &o,
                k8s_openapi::jiff::SignedDuration::from_secs(600),
                now
            ),
            Some(crate::rollout::health::PodProblem::CrashLooping),
            "5 restarts is crash-looping"
        );
    }
}
