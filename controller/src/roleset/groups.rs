//! Roles with `podGroupSize > 1` (multi-node engines): each replica is a PodSet of `podGroupSize`
//! Pods, not a Pod. The RoleSet owns one PodSet per replica, named like the Pod slot would be
//! (`<roleset>-<role>-<index>`); the PodSet controller makes its Pods. Pure, like the plan.
//!
//! A PodSet made from an older template of its role is replaced (AIBrix: the old group goes, then
//! the new one comes), at most `maxUnavailable` groups of a role at a time.

use super::plan::{build_pod, desired_replicas, pod_name, slot_index, unique_roles};
use super::update::{is_outdated, role_template_hash};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use storm_shared::types::podset::{PodSet, PodSetSpec};
use storm_shared::types::roleset::{RoleSet, RoleSpec, RoleStatus};

/// Whether a role runs as pod groups.
pub fn is_group(role: &RoleSpec) -> bool {
    role.pod_group_size.is_some_and(|n| n > 1)
}

/// What the RoleSet does to its PodSets.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GroupPlan {
    /// PodSets to create.
    pub create: Vec<PodSet>,
    /// PodSets to delete: (name, UID).
    pub delete: Vec<(String, Option<String>)>,
}

/// Whether a PodSet serves: every Pod of its group Ready.
pub fn podset_ready(p: &PodSet) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.ready_pods >= p.spec.pod_group_size && p.meta().deletion_timestamp.is_none()
    })
}

/// Plans the PodSets of `roleset`'s group roles, given the PodSets it owns.
pub fn plan_groups(
    roleset: &RoleSet,
    owned: &[&PodSet],
    namespace: &str,
    owner: &OwnerReference,
) -> GroupPlan {
    let name = roleset.name_any();
    let mut plan = GroupPlan::default();
    let mut desired: BTreeMap<(String, i32), &RoleSpec> = BTreeMap::new();
    for role in unique_roles(roleset).into_iter().filter(|r| is_group(r)) {
        for i in 0..desired_replicas(role) {
            desired.insert((role.name.clone(), i), role);
        }
    }
    let slots = group_slots(roleset, owned);
    for p in owned {
        let in_slot = slots
            .get(&p.name_any())
            .is_some_and(|s| desired.contains_key(s));
        if p.meta().deletion_timestamp.is_none() && !in_slot {
            plan.delete.push((p.name_any(), p.uid()));
        }
    }
    // Outdated groups, per role within its budget (groups already down count first).
    for role in unique_roles(roleset).into_iter().filter(|r| is_group(r)) {
        let hash = role_template_hash(role);
        let mine: Vec<&&PodSet> = owned
            .iter()
            .filter(|p| {
                slot_index(&name, &role.name, &p.name_any())
                    .is_some_and(|i| i < desired_replicas(role))
            })
            .collect();
        let down = usize::try_from(desired_replicas(role))
            .unwrap_or(0)
            .saturating_sub(mine.iter().filter(|p| podset_ready(p)).count());
        let budget = usize::try_from(super::update::max_unavailable(role))
            .unwrap_or(1)
            .saturating_sub(down);
        let mut outdated: Vec<&&PodSet> = mine
            .into_iter()
            .filter(|p| p.meta().deletion_timestamp.is_none() && is_outdated(**p, &hash))
            .collect();
        outdated.sort_by_key(|p| std::cmp::Reverse(p.name_any()));
        let (unready, ready): (Vec<&&PodSet>, Vec<&&PodSet>) =
            outdated.into_iter().partition(|p| !podset_ready(p));
        plan.delete
            .extend(unready.iter().map(|p| (p.name_any(), p.uid())));
        plan.delete
            .extend(ready.iter().take(budget).map(|p| (p.name_any(), p.uid())));
    }
    let taken: Vec<&(String, i32)> = slots.values().collect();
    for ((role_name, index), role) in &desired {
        if !taken.contains(&&(role_name.clone(), *index)) {
            let slot = pod_name(&name, role_name, *index);
            plan.create.push(build_podset(
                roleset,
                role,
                &slot,
                *index,
                namespace,
                owner.clone(),
            ));
        }
    }
    plan
}

/// The (role, slot) of each PodSet: from our name `<roleset>-<role>-<index>` or AIBrix's
/// `<roleset>-<role>-<hash>-<index>`; of two in one slot, ours (then the first by name) wins.
fn group_slots(roleset: &RoleSet, owned: &[&PodSet]) -> BTreeMap<String, (String, i32)> {
    let name = roleset.name_any();
    let mut found: Vec<(bool, String, String, i32)> = Vec::new();
    for p in owned {
        let n = p.name_any();
        for role in unique_roles(roleset).into_iter().filter(|r| is_group(r)) {
            let ours = slot_index(&name, &role.name, &n);
            let slot = ours.or_else(|| super::plan::aibrix_slot_index(&name, &role.name, &n));
            if let Some(i) = slot {
                found.push((ours.is_none(), n.clone(), role.name.clone(), i));
                break;
            }
        }
    }
    found.sort();
    let mut used = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for (_, n, role, i) in found {
        if used.insert((role.clone(), i)) {
            out.insert(n, (role, i));
        }
    }
    out
}

/// The PodSet of slot `index` of group role `role`: the role's Pod template rendered as a Pod of
/// this RoleSet would be (labels, annotations, AIBrix's env, the StormService's DNS domain), which
/// the PodSet controller completes per Pod (its name as hostname, the group env).
pub fn build_podset(
    roleset: &RoleSet,
    role: &RoleSpec,
    name: &str,
    index: i32,
    namespace: &str,
    owner: OwnerReference,
) -> PodSet {
    let pod = build_pod(roleset, role, name, index, namespace, owner.clone());
    let mut spec = pod.spec.unwrap_or_default();
    spec.hostname = None;
    let mut labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    // Gang scheduling of each group: its PodGroup is named after the PodSet.
    if let Some(strategy) = &role.scheduling_strategy {
        let (l, a) = crate::podgroups::pod_marks(strategy, name);
        labels.extend(l);
        annotations.extend(a);
    }
    let (labels, annotations) = (Some(labels), Some(annotations));
    PodSet {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: labels.clone(),
            annotations: annotations.clone(),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: PodSetSpec {
            pod_group_size: role.pod_group_size.unwrap_or(2),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels,
                    annotations,
                    finalizers: pod.metadata.finalizers,
                    ..ObjectMeta::default()
                }),
                spec: Some(spec),
            },
            stateful: role.stateful,
            scheduling_strategy: role.scheduling_strategy.clone(),
            recovery_policy: role.pod_recovery_policy,
        },
        status: None,
    }
}

/// The status of a group role: its replicas are PodSets; one is ready when its whole group is.
pub fn group_role_status(
    roleset: &RoleSet,
    role: &RoleSpec,
    owned: &[&PodSet],
) -> (RoleStatus, i32) {
    let hash = role_template_hash(role);
    let desired = desired_replicas(role);
    let slots = group_slots(roleset, owned);
    let mine: Vec<&&PodSet> = owned
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .filter(|p| {
            slots
                .get(&p.name_any())
                .is_some_and(|(r, _)| *r == role.name)
        })
        .collect();
    let count = |f: &dyn Fn(&PodSet) -> bool| {
        i32::try_from(mine.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let existing = count(&|_| true);
    let ready = count(&podset_ready);
    let updated = count(&|p| !is_outdated(p, &hash));
    let updated_ready = count(&|p| podset_ready(p) && !is_outdated(p, &hash));
    let ready_in_slots =
        count(&|p| podset_ready(p) && slots.get(&p.name_any()).is_some_and(|(_, i)| *i < desired));
    (
        RoleStatus {
            name: role.name.clone(),
            replicas: existing,
            ready_replicas: ready,
            not_ready_replicas: existing - ready,
            updated_replicas: updated,
            updated_ready_replicas: updated_ready,
        },
        ready_in_slots,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roleset::plan::tests::{role, roleset};
    use storm_shared::types::podset::PodSetStatus;

    fn group_role(size: i32, replicas: i32) -> RoleSpec {
        let mut r = role("worker", Some(replicas));
        r.pod_group_size = Some(size);
        r.stateful = Some(true);
        r
    }

    fn owner(rs: &RoleSet) -> OwnerReference {
        rs.controller_owner_ref(&()).expect("owner")
    }

    #[test]
    fn a_group_role_gets_one_podset_per_replica_and_no_pods() {
        let rs = roleset(vec![group_role(2, 2), role("router", Some(1))]);
        let plan = plan_groups(&rs, &[], "ns", &owner(&rs));
        let names: Vec<String> = plan.create.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["llm-abc123-0-worker-0", "llm-abc123-0-worker-1"]);
        let p = &plan.create[1];
        assert_eq!(p.spec.pod_group_size, 2);
        let tpl = p.spec.template.spec.as_ref().expect("spec");
        assert_eq!(tpl.hostname, None, "each Pod of the group gets its own");
        assert_eq!(tpl.subdomain.as_deref(), Some("llm"));
        let env: Vec<&str> = tpl.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            env,
            [
                "STORM_SERVICE_NAME",
                "ROLESET_NAME",
                "ROLESET_INDEX",
                "ROLE_NAME",
                "ROLE_TEMPLATE_HASH",
                "ROLE_REPLICA_INDEX"
            ]
        );
        // The RoleSet's own Pods are only the other role's.
        let pods = crate::roleset::plan::plan_pods(
            &rs,
            &[],
            crate::roleset::plan::tests::ts("2026-01-01T00:00:00Z"),
        )
        .expect("plan");
        let pod_names: Vec<String> = pods.create.iter().map(|p| p.name_any()).collect();
        assert_eq!(pod_names, ["llm-abc123-0-router-0"]);
    }

    #[test]
    fn an_outdated_group_is_replaced_whole_within_the_budget() {
        let rs = roleset(vec![group_role(2, 3)]);
        let made = plan_groups(&rs, &[], "ns", &owner(&rs)).create;
        let ready: Vec<PodSet> = made
            .into_iter()
            .map(|mut p| {
                p.metadata.uid = Some(format!("uid-{}", p.name_any()));
                p.status = Some(PodSetStatus {
                    ready_pods: 2,
                    total_pods: 2,
                    ..Default::default()
                });
                p
            })
            .collect();
        let owned: Vec<&PodSet> = ready.iter().collect();
        assert_eq!(
            plan_groups(&rs, &owned, "ns", &owner(&rs)),
            GroupPlan::default()
        );
        let mut changed = rs.clone();
        std::sync::Arc::make_mut(&mut changed.spec.roles[0].template)
            .spec
            .as_mut()
            .expect("spec")
            .containers[0]
            .image = Some("x:2".into());
        let plan = plan_groups(&changed, &owned, "ns", &owner(&rs));
        assert_eq!(
            plan.delete.len(),
            1,
            "one group at a time: {:?}",
            plan.delete
        );
        assert!(plan.create.is_empty());
        let (status, ready_slots) = group_role_status(&changed, &changed.spec.roles[0], &owned);
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.updated_replicas,
                ready_slots
            ),
            (3, 3, 0, 3)
        );
    }
}
