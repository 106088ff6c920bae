//! The Pods of a PodSet and its status. Pure: no client, no clock (`now` is passed in).
//!
//! A PodSet of size `n` has Pods `<podset>-0` … `<podset>-(n-1)`, made from its template with the
//! group's env first in every container and init container (`PODSET_NAME`, `POD_GROUP_INDEX`,
//! `POD_GROUP_SIZE`; a template variable of one of those names is dropped), the labels
//! `podset-name` and `pod-group-index`, and its name as `hostname` (per-Pod DNS through the
//! StormService's headless Service, whose domain the template's `subdomain` names). A Pod that
//! ended is replaced after the same grace as a RoleSet's (`recoveryPolicy: Recreate` replaces the
//! whole group instead).

use crate::cache::CachedPod;
use crate::roleset::plan::{
    FAILED_POD_GRACE, is_ready, is_terminal, is_terminating, terminal_since,
};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::time::Duration;
use storm_shared::keys::{
    AIBRIX_LABEL_POD_GROUP_INDEX, AIBRIX_LABEL_PODSET_NAME, ENV_POD_GROUP_INDEX,
    ENV_POD_GROUP_SIZE, ENV_PODSET_NAME,
};
use storm_shared::types::podset::{PodSet, PodSetPhase, PodSetStatus};
use storm_shared::types::roleset::PodRecoveryPolicy;

/// What to do to a PodSet's Pods.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GroupPods {
    /// Pods to create.
    pub create: Vec<Pod>,
    /// Pods to delete: (name, UID).
    pub delete: Vec<(String, Option<String>)>,
    /// When a failed Pod's grace ends.
    pub requeue_after: Option<Duration>,
}

/// The name of Pod `index` of a PodSet.
pub fn member_name(podset: &str, index: i32) -> String {
    format!("{podset}-{index}")
}

/// Plans the Pods of `podset` given the Pods it owns.
pub fn plan(
    podset: &PodSet,
    owned: &[&CachedPod],
    owner: &OwnerReference,
    now: Timestamp,
) -> GroupPods {
    let name = podset.name_any();
    let size = podset.spec.pod_group_size.max(1);
    let desired: Vec<String> = (0..size).map(|i| member_name(&name, i)).collect();
    let mut out = GroupPods::default();
    let grace = SignedDuration::try_from(FAILED_POD_GRACE).unwrap_or(SignedDuration::ZERO);
    let recreate_all = podset.spec.recovery_policy == Some(PodRecoveryPolicy::Recreate);
    let mut failed_any = false;
    let mut taken = BTreeSet::new();
    for pod in owned {
        let pod_name = pod.name_any();
        taken.insert(pod_name.clone());
        if is_terminating(pod) {
            continue;
        }
        if !desired.contains(&pod_name) {
            out.delete.push((pod_name, pod.uid()));
            continue;
        }
        if is_terminal(pod) {
            match terminal_since(pod).and_then(|t| t.checked_add(grace).ok()) {
                Some(due) if due > now => {
                    let wait = Duration::try_from(due.duration_since(now)).unwrap_or_default();
                    out.requeue_after = Some(out.requeue_after.map_or(wait, |w| w.min(wait)));
                }
                _ => {
                    failed_any = true;
                    out.delete.push((pod_name, pod.uid()));
                }
            }
        }
    }
    if failed_any && recreate_all {
        // The whole group goes and comes back together.
        for pod in owned.iter().filter(|p| !is_terminating(p)) {
            if !out.delete.iter().any(|(n, _)| *n == pod.name_any()) {
                out.delete.push((pod.name_any(), pod.uid()));
            }
        }
    }
    for (i, member) in desired.iter().enumerate() {
        if !taken.contains(member) {
            let index = i32::try_from(i).unwrap_or(i32::MAX);
            out.create
                .push(build_member(podset, member, index, size, owner.clone()));
        }
    }
    out
}

fn build_member(podset: &PodSet, name: &str, index: i32, size: i32, owner: OwnerReference) -> Pod {
    let template = &podset.spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(AIBRIX_LABEL_PODSET_NAME.into(), podset.name_any());
    labels.insert(AIBRIX_LABEL_POD_GROUP_INDEX.into(), index.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    let group = [
        (ENV_PODSET_NAME, podset.name_any()),
        (ENV_POD_GROUP_INDEX, index.to_string()),
        (ENV_POD_GROUP_SIZE, size.to_string()),
    ];
    let first: Vec<EnvVar> = group
        .iter()
        .map(|(n, v)| EnvVar {
            name: (*n).to_string(),
            value: Some(v.clone()),
            value_from: None,
        })
        .collect();
    let prepend = |env: &mut Option<Vec<EnvVar>>| {
        let own = env.take().unwrap_or_default();
        let mut all = first.clone();
        all.extend(
            own.into_iter()
                .filter(|e| !group.iter().any(|(n, _)| *n == e.name)),
        );
        *env = Some(all);
    };
    for c in &mut spec.containers {
        prepend(&mut c.env);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        prepend(&mut c.env);
    }
    spec.hostname = Some(name.to_string());
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: podset.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The PodSet's status from its Pods: `Ready` when every member is, `Running` when any runs.
pub fn status(podset: &PodSet, owned: &[&CachedPod]) -> PodSetStatus {
    let live: Vec<&&CachedPod> = owned.iter().filter(|p| !is_terminating(p)).collect();
    let ready = live.iter().filter(|p| is_ready(p)).count();
    let running = live
        .iter()
        .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    let size = usize::try_from(podset.spec.pod_group_size.max(1)).unwrap_or(1);
    let phase = if ready >= size {
        PodSetPhase::Ready
    } else if running {
        PodSetPhase::Running
    } else {
        PodSetPhase::Pending
    };
    PodSetStatus {
        ready_pods: i32::try_from(ready).unwrap_or(i32::MAX),
        total_pods: i32::try_from(live.len()).unwrap_or(i32::MAX),
        phase: Some(phase.as_str().to_string()),
        conditions: podset
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    }
}
