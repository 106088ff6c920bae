//! Which Pods a RoleSet should have, and which of its Pods must go. Pure: no client, no clock
//! (`now` is passed in), so every rule here is tested without a cluster.

use super::update::{self, ANNOTATION_SHAPE_HASH, InPlace, role_template_hash};
use crate::cache::CachedPod;
use k8s_openapi::api::core::v1::{EnvVar, Pod, PodAffinityTerm, PodSpec, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use storm_shared::keys::{
    AIBRIX_ANNOTATION_ROLESET_INDEX, AIBRIX_LABEL_ROLE_NAME, AIBRIX_LABEL_ROLE_TEMPLATE_HASH,
    AIBRIX_LABEL_ROLESET_NAME, AIBRIX_LABEL_STORM_SERVICE_NAME, AIBRIX_ROLE_REPLICA_INDEX,
    AIBRIX_ROLE_REVISION, AIBRIX_ROLE_REVISION_NAME, ENV_ROLE_NAME, ENV_ROLE_REPLICA_INDEX,
    ENV_ROLE_TEMPLATE_HASH, ENV_ROLESET_INDEX, ENV_ROLESET_NAME, ENV_STORM_SERVICE_NAME,
    INJECTED_ENV, LABEL_ROLE,
};
use storm_shared::types::roleset::{
    RoleSet, RoleSpec, TopologyMode, TopologyPolicy, TopologyScope,
};

/// How long a Pod stays in phase `Failed` before it is replaced.
///
/// Replacing at once would hide the failure: the StormService controller's health checks (which
/// trigger automatic rollback of a bad canary) look for failed Pods, and a Pod that is deleted and
/// recreated within one reconcile is never seen failed. 30 s is several of its reconcile periods,
/// yet short enough that a stable revision recovers from a lost Pod quickly.
pub const FAILED_POD_GRACE: Duration = Duration::from_secs(30);

/// What the RoleSet controller has to do to the Pods of one RoleSet.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodPlan {
    /// Pods to create (complete objects, names deterministic so a repeated create is harmless).
    pub create: Vec<Pod>,
    /// Pods to delete, by name and UID (the UID guards against deleting a same-named successor).
    pub delete: Vec<PodToDelete>,
    /// Outdated Pods updated in place (only their containers' images changed).
    pub in_place: Vec<InPlace>,
    /// When to look again although nothing may have changed: the moment a failed Pod's grace ends.
    pub requeue_after: Option<Duration>,
}

/// A Pod the plan deletes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodToDelete {
    /// Name of the Pod.
    pub name: String,
    /// UID of the Pod as observed, used as a delete precondition.
    pub uid: Option<String>,
    /// Why it goes.
    pub reason: DeleteReason,
}

/// Why a Pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its index is at or above the role's `replicas`, its role is gone, or its name fits no slot.
    Excess,
    /// It has been `Failed` (or `Succeeded`: a serving Pod must never exit) for [`FAILED_POD_GRACE`].
    Failed,
    /// It was made from an older template of its role; it is made again from the current one.
    Outdated,
}

/// The plan could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Pods need an owner reference to the RoleSet, which needs its name and UID.
    #[error("building the owner reference: the RoleSet has no name or UID yet")]
    BuildOwnerReference,
    /// Pods are created in the RoleSet's namespace.
    #[error("finding the namespace: the RoleSet has none")]
    FindNamespace,
}

/// Desired Pods of a role: `replicas`, defaulting to 1, never negative.
pub fn desired_replicas(role: &RoleSpec) -> i32 {
    role.replicas.unwrap_or(1).max(0)
}

/// Name of the Pod at `index` of `role` in RoleSet `roleset`.
pub fn pod_name(roleset: &str, role: &str, index: i32) -> String {
    format!("{roleset}-{role}-{index}")
}

/// The index of `pod_name` if it is a slot of `role` in RoleSet `roleset`
/// (`<roleset>-<role>-<digits>`). Role names are DNS labels, so a name fits at most one role.
pub fn slot_index(roleset: &str, role: &str, pod_name: &str) -> Option<i32> {
    let rest = pod_name.strip_prefix(roleset)?.strip_prefix('-')?;
    let digits = rest.strip_prefix(role)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // "01" would be a second name for slot 1: not one of ours.
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The slot index in an AIBrix Pod name: `<roleset>-<role>-<hash6>-<index>` (a stateful role's
/// Pod made by AIBrix's RoleSet controller).
pub(crate) fn aibrix_slot_index(roleset: &str, role: &str, pod_name: &str) -> Option<i32> {
    let rest = pod_name.strip_prefix(roleset)?.strip_prefix('-')?;
    let rest = rest.strip_prefix(role)?.strip_prefix('-')?;
    let (hash, digits) = rest.split_once('-')?;
    let hex = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() || b.is_ascii_lowercase())
    };
    if !hex(hash) || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The (role, slot) of every Pod the RoleSet owns, terminating ones included. A slot comes from
/// the name (ours, `<roleset>-<role>-<index>`; AIBrix's stateful, `<roleset>-<role>-<hash>-<index>`)
/// or AIBrix's `role-replica-index` label; Pods of a role with neither (AIBrix's stateless Pods,
/// named `<roleset>-<role>-<random>`) take the free slots in name order. Of several Pods in one
/// slot, the one with our name wins, then the first by name; the others get no slot (excess).
pub fn assign_slots(roleset: &RoleSet, owned: &[&CachedPod]) -> BTreeMap<String, (String, i32)> {
    let rs_name = roleset.name_any();
    let roles = unique_roles(roleset);
    let mut by_role: BTreeMap<String, Vec<(String, Option<i32>, bool)>> = BTreeMap::new();
    let mut sorted: Vec<&&CachedPod> = owned.iter().collect();
    sorted.sort_by_key(|p| p.name_any());
    for pod in sorted {
        let name = pod.name_any();
        let role = pod
            .labels()
            .get(AIBRIX_LABEL_ROLE_NAME)
            .and_then(|r| roles.iter().find(|x| &x.name == r))
            .or_else(|| {
                roles.iter().find(|r| {
                    name.strip_prefix(&rs_name)
                        .and_then(|n| n.strip_prefix('-'))
                        .and_then(|n| n.strip_prefix(r.name.as_str()))
                        .is_some_and(|n| n.starts_with('-'))
                })
            });
        let Some(role) = role else {
            continue;
        };
        let ours = slot_index(&rs_name, &role.name, &name);
        let slot = ours
            .or_else(|| aibrix_slot_index(&rs_name, &role.name, &name))
            .or_else(|| {
                pod.labels()
                    .get(storm_shared::keys::AIBRIX_ROLE_REPLICA_INDEX)
                    .and_then(|i| i.parse().ok())
            });
        by_role
            .entry(role.name.clone())
            .or_default()
            .push((name, slot, ours.is_some()));
    }
    let mut out = BTreeMap::new();
    for (role, mut pods) in by_role {
        // Our names first, so they win a slot over a same-slot Pod of another naming.
        pods.sort_by_key(|(name, _, ours)| (!*ours, name.clone()));
        let mut used = BTreeSet::new();
        let mut unslotted = Vec::new();
        for (name, slot, _) in pods {
            match slot {
                Some(i) if used.insert(i) => {
                    out.insert(name, (role.clone(), i));
                }
                Some(_) => {}
                None => unslotted.push(name),
            }
        }
        let mut free = (0..).filter(|i| !used.contains(i));
        for name in unslotted {
            if let Some(i) = free.next() {
                out.insert(name, (role.clone(), i));
            }
        }
    }
    out
}

/// Roles of the spec, first occurrence of each name only (admission denies duplicates; the
/// controller must still not plan two Pods under one name).
pub fn unique_roles(roleset: &RoleSet) -> Vec<&RoleSpec> {
    let mut seen = BTreeSet::new();
    roleset
        .spec
        .roles
        .iter()
        .filter(|r| seen.insert(r.name.as_str()))
        .collect()
}

/// Whether `pod` is controlled by `roleset` (same namespace, controller owner reference with its UID).
pub fn is_owned_by(pod: &CachedPod, roleset: &RoleSet) -> bool {
    crate::cache::controlled_by(pod, roleset)
}

/// Whether the Pod is being deleted: it no longer counts, but is not deleted again.
pub fn is_terminating(pod: &CachedPod) -> bool {
    pod.meta().deletion_timestamp.is_some()
}

/// Whether the Pod ended for good (`Failed`, or `Succeeded`, which for a server is a failure too).
pub fn is_terminal(pod: &CachedPod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

/// Whether the Pod's `Ready` condition is `True`.
pub fn is_ready(pod: &CachedPod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When a terminal Pod ended: the latest of its containers' `finishedAt` and its `Ready=False`
/// transition. Pods don't record the moment their phase changed, so this is the closest evidence;
/// without any, the start or creation time (a Pod can't have failed before it existed).
pub fn terminal_since(pod: &CachedPod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0);
    let unready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "Ready" && c.status == "False")
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    finished.chain(unready).max().or_else(|| {
        status
            .and_then(|s| s.start_time.as_ref())
            .or(pod.meta().creation_timestamp.as_ref())
            .map(|t| t.0)
    })
}

/// Decides the Pods to create and delete for `roleset`, given the Pods it owns (see [`is_owned_by`]).
pub fn plan_pods(
    roleset: &RoleSet,
    owned: &[&CachedPod],
    now: Timestamp,
) -> Result<PodPlan, PlanError> {
    let mut owner = roleset
        .controller_owner_ref(&())
        .ok_or(PlanError::BuildOwnerReference)?;
    // Foreground deletion of a RoleSet (and of its StormService) then waits for the Pods.
    owner.block_owner_deletion = Some(true);
    let namespace = roleset.namespace().ok_or(PlanError::FindNamespace)?;
    let rs_name = roleset.name_any();

    let mut desired: BTreeMap<(String, i32), &RoleSpec> = BTreeMap::new();
    // A role of pod groups has PodSets instead of Pods (`groups`).
    for role in unique_roles(roleset)
        .into_iter()
        .filter(|r| !super::groups::is_group(r))
    {
        for index in 0..desired_replicas(role) {
            desired.insert((role.name.clone(), index), role);
        }
    }

    let mut plan = PodPlan::default();
    let grace = SignedDuration::try_from(FAILED_POD_GRACE).unwrap_or(SignedDuration::ZERO);
    // Slots held by an existing Pod, terminating or not: a terminating Pod's slot is refilled when
    // its deletion event arrives. Pods are matched to slots by index, not by name, so Pods made by
    // AIBrix's controllers (other names) keep their slots.
    let slots = assign_slots(roleset, owned);
    let mut taken = BTreeSet::new();
    for pod in owned {
        let name = pod.name_any();
        let slot = slots.get(&name).cloned();
        if let Some(s) = &slot {
            taken.insert(s.clone());
        }
        if is_terminating(pod) {
            continue;
        }
        let reason = if slot.is_none_or(|s| !desired.contains_key(&s)) {
            DeleteReason::Excess
        } else if is_terminal(pod) {
            match terminal_since(pod).and_then(|t| t.checked_add(grace).ok()) {
                Some(due) if due > now => {
                    let wait = Duration::try_from(due.duration_since(now)).unwrap_or_default();
                    plan.requeue_after = Some(plan.requeue_after.map_or(wait, |w| w.min(wait)));
                    continue;
                }
                _ => DeleteReason::Failed,
            }
        } else {
            continue;
        };
        plan.delete.push(PodToDelete {
            name,
            uid: pod.meta().uid.clone(),
            reason,
        });
    }

    let updates = update::plan_updates(roleset, owned);
    for (name, uid) in updates.replace {
        if !plan.delete.iter().any(|d| d.name == name) {
            plan.delete.push(PodToDelete {
                name,
                uid,
                reason: DeleteReason::Outdated,
            });
        }
    }
    plan.in_place = updates.in_place;

    for ((role_name, index), role) in &desired {
        if !taken.contains(&(role_name.clone(), *index)) {
            plan.create.push(build_pod(
                roleset,
                role,
                &pod_name(&rs_name, role_name, *index),
                *index,
                &namespace,
                owner.clone(),
            ));
        }
    }
    Ok(plan)
}

/// Labels of a role's Pods: the role template's, overlaid with the RoleSet's own (which carry the
/// StormService name and revision, so Services can select a revision), then the role labels, ours
/// and AIBrix's, so they can't be overridden by a template.
pub fn pod_labels(roleset: &RoleSet, role: &RoleSpec) -> BTreeMap<String, String> {
    let mut labels = role
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.extend(roleset.labels().clone());
    labels.insert(LABEL_ROLE.to_string(), role.name.clone());
    if let Some(service) = stormservice_of(roleset) {
        labels.insert(AIBRIX_LABEL_STORM_SERVICE_NAME.to_string(), service.clone());
    }
    labels.insert(AIBRIX_LABEL_ROLESET_NAME.to_string(), roleset.name_any());
    labels.insert(AIBRIX_LABEL_ROLE_NAME.to_string(), role.name.clone());
    labels
}

use crate::owned::stormservice_of;

/// The env AIBrix injects, in its order: who the Pod is. A role's own variables of these names are
/// dropped (theirs would contradict it); its other variables keep their order after ours, so they
/// can expand `$(ROLE_REPLICA_INDEX)` and the like.
pub fn injected_env(roleset: &RoleSet, role: &RoleSpec, index: i32) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    };
    let mut env = Vec::new();
    if let Some(service) = stormservice_of(roleset) {
        env.push(var(ENV_STORM_SERVICE_NAME, service.clone()));
    }
    env.push(var(ENV_ROLESET_NAME, roleset.name_any()));
    env.push(var(ENV_ROLESET_INDEX, roleset_index(roleset)));
    env.push(var(ENV_ROLE_NAME, role.name.clone()));
    env.push(var(ENV_ROLE_TEMPLATE_HASH, role_template_hash(role)));
    if role.stateful == Some(true) {
        env.push(var(ENV_ROLE_REPLICA_INDEX, index.to_string()));
    }
    env
}

/// The labels `role-revision` and `role-revision-name` of `role`'s Pods: the revision that
/// introduced the role's Pod template, from the RoleSet's `role-revision.<role>` and
/// `role-revision-name.<role>` annotations (set by the StormService controller).
pub fn role_revision_labels(roleset: &RoleSet, role: &RoleSpec) -> BTreeMap<String, String> {
    [AIBRIX_ROLE_REVISION, AIBRIX_ROLE_REVISION_NAME]
        .into_iter()
        .filter_map(|key| {
            let value = roleset.annotations().get(&format!("{key}.{}", role.name))?;
            Some((key.to_string(), value.clone()))
        })
        .collect()
}

/// The RoleSet's `topologyPolicy` as AIBrix applies it: a pod affinity on `key` for the Pods of
/// its scope (the StormService, this RoleSet, or this role across the StormService), required or
/// preferred with the strongest weight (100). A term the template already has is not repeated.
fn place_together(spec: &mut PodSpec, roleset: &RoleSet, role: &RoleSpec, policy: &TopologyPolicy) {
    let Some(service) = stormservice_of(roleset) else {
        return;
    };
    let mut match_labels =
        BTreeMap::from([(AIBRIX_LABEL_STORM_SERVICE_NAME.to_string(), service.clone())]);
    match policy.scope {
        TopologyScope::StormService => {}
        TopologyScope::RoleSet => {
            match_labels.insert(AIBRIX_LABEL_ROLESET_NAME.to_string(), roleset.name_any());
        }
        TopologyScope::Role => {
            match_labels.insert(AIBRIX_LABEL_ROLE_NAME.to_string(), role.name.clone());
        }
    }
    let term = PodAffinityTerm {
        topology_key: policy.key.clone(),
        label_selector: Some(LabelSelector {
            match_labels: Some(match_labels),
            match_expressions: None,
        }),
        ..PodAffinityTerm::default()
    };
    let affinity = spec
        .affinity
        .get_or_insert_with(Default::default)
        .pod_affinity
        .get_or_insert_with(Default::default);
    match policy.mode.unwrap_or_default() {
        TopologyMode::Required => {
            let terms = affinity
                .required_during_scheduling_ignored_during_execution
                .get_or_insert_with(Vec::new);
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
        TopologyMode::Preferred => {
            let weighted = WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: term,
            };
            let terms = affinity
                .preferred_during_scheduling_ignored_during_execution
                .get_or_insert_with(Vec::new);
            if !terms.contains(&weighted) {
                terms.push(weighted);
            }
        }
    }
}

/// The RoleSet's index within its StormService (its annotation; 0 for a RoleSet of its own).
fn roleset_index(roleset: &RoleSet) -> String {
    roleset
        .annotations()
        .get(AIBRIX_ANNOTATION_ROLESET_INDEX)
        .cloned()
        .unwrap_or_else(|| "0".to_string())
}

pub(crate) fn build_pod(
    roleset: &RoleSet,
    role: &RoleSpec,
    name: &str,
    index: i32,
    namespace: &str,
    owner: OwnerReference,
) -> Pod {
    let template_meta = role.template.metadata.clone().unwrap_or_default();
    let stateful = role.stateful == Some(true);
    let mut labels = pod_labels(roleset, role);
    labels.insert(
        AIBRIX_LABEL_ROLE_TEMPLATE_HASH.to_string(),
        role_template_hash(role),
    );
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(
        AIBRIX_ANNOTATION_ROLESET_INDEX.to_string(),
        roleset_index(roleset),
    );
    annotations.insert(
        ANNOTATION_SHAPE_HASH.to_string(),
        update::shape_hash(&role.template),
    );
    labels.extend(role_revision_labels(roleset, role));
    if stateful {
        labels.insert(AIBRIX_ROLE_REPLICA_INDEX.to_string(), index.to_string());
        annotations.insert(AIBRIX_ROLE_REPLICA_INDEX.to_string(), index.to_string());
    }
    // Gang scheduling of the whole RoleSet: its PodGroup is named after it.
    if let Some(strategy) = &roleset.spec.scheduling_strategy {
        let (l, a) = crate::podgroups::pod_marks(strategy, &roleset.name_any());
        labels.extend(l);
        annotations.extend(a);
    }
    let mut spec = role.template.spec.clone().unwrap_or_default();
    let injected = injected_env(roleset, role, index);
    for c in &mut spec.containers {
        let own = c.env.take().unwrap_or_default();
        let mut env = injected.clone();
        env.extend(
            own.into_iter()
                .filter(|e| !INJECTED_ENV.contains(&e.name.as_str())),
        );
        c.env = Some(env);
    }
    // Per-Pod DNS: `<pod>.<stormservice>.<namespace>.svc` through the StormService's headless
    // Service, for the Pods that have a stable name (stateful roles); the others share the domain.
    if let Some(service) = stormservice_of(roleset) {
        spec.subdomain = Some(service.clone());
        if stateful {
            spec.hostname = Some(name.to_string());
        }
    }
    if let Some(policy) = &roleset.spec.topology_policy {
        place_together(&mut spec, roleset, role, policy);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
pub(crate) mod tests;
