use super::*;
use crate::cache::{CachedContainerStatus, CachedPod};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, EnvVar, PodCondition, PodSpec, PodStatus,
    PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use storm_shared::keys::{LABEL_NAME, LABEL_REVISION};
use storm_shared::types::roleset::RoleSetSpec;

pub(crate) const UID: &str = "0000-rs-uid";

pub(crate) fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub(crate) fn role(name: &str, replicas: Option<i32>) -> RoleSpec {
    RoleSpec {
        name: name.to_string(),
        replicas,
        template: std::sync::Arc::new(PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), format!("llm-{name}"))].into()),
                annotations: Some([("note".to_string(), name.to_string())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "engine".to_string(),
                    image: Some(format!("registry.invalid/{name}:1")),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }),
        ..RoleSpec::default()
    }
}

/// RoleSet `llm-abc123-0` in `ns`, as the StormService controller would label it.
pub(crate) fn roleset(roles: Vec<RoleSpec>) -> RoleSet {
    let mut rs = RoleSet::new(
        "llm-abc123-0",
        RoleSetSpec {
            roles,
            ..RoleSetSpec::default()
        },
    );
    rs.metadata.namespace = Some("ns".to_string());
    rs.metadata.uid = Some(UID.to_string());
    rs.metadata.generation = Some(3);
    rs.metadata.labels = Some(
        [
            (LABEL_NAME.to_string(), "llm".to_string()),
            (LABEL_REVISION.to_string(), "abc123".to_string()),
            // A template label of the StormService that wins over the role template's.
            ("app".to_string(), "llm".to_string()),
        ]
        .into(),
    );
    rs
}

/// The Pod the plan would create for `name`, with a status added.
pub(crate) fn existing(rs: &RoleSet, name: &str, phase: &str, ready: bool) -> CachedPod {
    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("ns".to_string()),
            uid: Some(format!("uid-{name}")),
            owner_references: rs.controller_owner_ref(&()).map(|o| vec![o]),
            creation_timestamp: Some(Time(ts("2026-01-01T00:00:00Z"))),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    pod.status = Some(PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".to_string(),
            status: if ready { "True" } else { "False" }.to_string(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    CachedPod::from(&pod)
}

fn failed_at(rs: &RoleSet, name: &str, at: &str) -> CachedPod {
    let mut pod = existing(rs, name, "Failed", false);
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = Some(vec![CachedContainerStatus {
            name: "engine".to_string(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    finished_at: Some(Time(ts(at))),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..CachedContainerStatus::default()
        }]);
    }
    pod
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| p.name_any()).collect()
}

fn deleted(plan: &PodPlan) -> Vec<(&str, DeleteReason)> {
    plan.delete
        .iter()
        .map(|d| (d.name.as_str(), d.reason))
        .collect()
}

const NOW: &str = "2026-01-01T00:10:00Z";

#[test]
fn a_new_roleset_gets_every_pod_of_every_role() {
    let rs = roleset(vec![role("prefill", Some(2)), role("decode", None)]);
    let plan = plan_pods(&rs, &[], ts(NOW)).unwrap();
    assert_eq!(
        names(&plan.create),
        [
            "llm-abc123-0-decode-0",
            "llm-abc123-0-prefill-0",
            "llm-abc123-0-prefill-1"
        ]
    );
    assert!(plan.delete.is_empty());
    assert_eq!(plan.requeue_after, None);
}

#[test]
fn created_pods_carry_labels_owner_namespace_and_template() {
    let rs = roleset(vec![role("decode", Some(1))]);
    let plan = plan_pods(&rs, &[], ts(NOW)).unwrap();
    let pod = &plan.create[0];
    assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
    let labels = pod.metadata.labels.clone().unwrap();
    let want: BTreeMap<String, String> = [
        ("app", "llm"), // the RoleSet's label overrides the role template's
        (LABEL_NAME, "llm"),
        (LABEL_REVISION, "abc123"),
        (LABEL_ROLE, "decode"),
        (AIBRIX_LABEL_STORM_SERVICE_NAME, "llm"),
        (AIBRIX_LABEL_ROLESET_NAME, "llm-abc123-0"),
        (AIBRIX_LABEL_ROLE_NAME, "decode"),
        (
            AIBRIX_LABEL_ROLE_TEMPLATE_HASH,
            role_template_hash(&rs.spec.roles[0]).as_str(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(labels, want);
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap().get("note"),
        Some(&"decode".to_string())
    );
    let owners = pod.metadata.owner_references.as_ref().unwrap();
    assert_eq!(owners.len(), 1);
    let owner = &owners[0];
    assert_eq!(owner.api_version, "orchestration.aibrix.ai/v1alpha1");
    assert_eq!(owner.kind, "RoleSet");
    assert_eq!(owner.name, "llm-abc123-0");
    assert_eq!(owner.uid, UID);
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
    // The role's Pod template, with AIBrix's env injected and the StormService's DNS domain.
    let spec = pod.spec.as_ref().unwrap();
    let template = rs.spec.roles[0].template.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].image, template.containers[0].image);
    assert_eq!(spec.subdomain.as_deref(), Some("llm"));
    assert_eq!(
        spec.hostname, None,
        "a stateless role's Pods have no stable hostname"
    );
    assert!(is_owned_by(&CachedPod::from(pod), &rs));
}

fn env_of(pod: &Pod) -> Vec<(String, String)> {
    pod.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn pods_get_aibrix_env_first_and_the_users_own_of_those_names_is_dropped() {
    let mut r = role("prefill", Some(2));
    r.stateful = Some(true);
    std::sync::Arc::make_mut(&mut r.template)
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .env = Some(vec![
        EnvVar {
            name: "ROLE_NAME".into(),
            value: Some("mine".into()),
            value_from: None,
        },
        EnvVar {
            name: "ENGINE_ID".into(),
            value: Some("$(ROLE_REPLICA_INDEX)".into()),
            value_from: None,
        },
    ]);
    let mut rs = roleset(vec![r]);
    rs.metadata.annotations =
        Some([(AIBRIX_ANNOTATION_ROLESET_INDEX.to_string(), "3".to_string())].into());
    let plan = plan_pods(&rs, &[], ts(NOW)).unwrap();
    let pod = plan
        .create
        .iter()
        .find(|p| p.name_any() == "llm-abc123-0-prefill-1")
        .unwrap();
    let hash = role_template_hash(&rs.spec.roles[0]);
    let want: Vec<(String, String)> = [
        ("STORM_SERVICE_NAME", "llm"),
        ("ROLESET_NAME", "llm-abc123-0"),
        ("ROLESET_INDEX", "3"),
        ("ROLE_NAME", "prefill"),
        ("ROLE_TEMPLATE_HASH", hash.as_str()),
        ("ROLE_REPLICA_INDEX", "1"),
        ("ENGINE_ID", "$(ROLE_REPLICA_INDEX)"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env_of(pod), want);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("llm-abc123-0-prefill-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("llm"));
    let labels = pod.metadata.labels.as_ref().unwrap();
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        labels.get(AIBRIX_ROLE_REPLICA_INDEX).map(String::as_str),
        Some("1")
    );
    assert_eq!(
        annotations
            .get(AIBRIX_ROLE_REPLICA_INDEX)
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        annotations
            .get(AIBRIX_ANNOTATION_ROLESET_INDEX)
            .map(String::as_str),
        Some("3")
    );
}

#[test]
fn role_template_labels_survive_when_the_roleset_has_none_of_them() {
    let mut rs = roleset(vec![role("decode", Some(1))]);
    rs.metadata.labels = None; // a RoleSet applied on its own, without a StormService
    let plan = plan_pods(&rs, &[], ts(NOW)).unwrap();
    let labels = plan.create[0].metadata.labels.clone().unwrap();
    assert_eq!(labels.get("app"), Some(&"llm-decode".to_string()));
    assert!(!labels.contains_key(AIBRIX_LABEL_STORM_SERVICE_NAME));
    assert_eq!(
        labels.get(AIBRIX_LABEL_ROLESET_NAME),
        Some(&"llm-abc123-0".to_string())
    );
}

#[test]
fn only_missing_pods_are_created() {
    let rs = roleset(vec![role("prefill", Some(2))]);
    let p0 = existing(&rs, "llm-abc123-0-prefill-0", "Running", true);
    let plan = plan_pods(&rs, &[&p0], ts(NOW)).unwrap();
    assert_eq!(names(&plan.create), ["llm-abc123-0-prefill-1"]);
    assert!(plan.delete.is_empty());
}

#[test]
fn scale_down_deletes_the_highest_indices() {
    let rs = roleset(vec![role("prefill", Some(1))]);
    let p0 = existing(&rs, "llm-abc123-0-prefill-0", "Running", true);
    let p1 = existing(&rs, "llm-abc123-0-prefill-1", "Running", true);
    let p2 = existing(&rs, "llm-abc123-0-prefill-2", "Pending", false);
    let plan = plan_pods(&rs, &[&p0, &p1, &p2], ts(NOW)).unwrap();
    assert!(plan.create.is_empty());
    assert_eq!(
        deleted(&plan),
        [
            ("llm-abc123-0-prefill-1", DeleteReason::Excess),
            ("llm-abc123-0-prefill-2", DeleteReason::Excess)
        ]
    );
    assert_eq!(
        plan.delete[0].uid.as_deref(),
        Some("uid-llm-abc123-0-prefill-1")
    );
}

#[test]
fn zero_replicas_deletes_the_whole_role() {
    let rs = roleset(vec![role("prefill", Some(0))]);
    let p0 = existing(&rs, "llm-abc123-0-prefill-0", "Running", true);
    let plan = plan_pods(&rs, &[&p0], ts(NOW)).unwrap();
    assert!(plan.create.is_empty());
    assert_eq!(
        deleted(&plan),
        [("llm-abc123-0-prefill-0", DeleteReason::Excess)]
    );
}

#[test]
fn pods_of_removed_roles_and_foreign_names_are_deleted() {
    let rs = roleset(vec![role("decode", Some(1))]);
    let decode = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    let old_role = existing(&rs, "llm-abc123-0-prefill-0", "Running", true);
    let odd = existing(&rs, "llm-abc123-0-decode-01", "Running", true);
    let plan = plan_pods(&rs, &[&decode, &old_role, &odd], ts(NOW)).unwrap();
    assert!(plan.create.is_empty());
    assert_eq!(
        deleted(&plan),
        [
            ("llm-abc123-0-prefill-0", DeleteReason::Excess),
            ("llm-abc123-0-decode-01", DeleteReason::Excess)
        ]
    );
}

#[test]
fn terminating_pods_are_neither_deleted_again_nor_recreated_under_their_name() {
    let rs = roleset(vec![role("decode", Some(1))]);
    let mut gone = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    gone.metadata.deletion_timestamp = Some(Time(ts("2026-01-01T00:09:00Z")));
    let mut excess = existing(&rs, "llm-abc123-0-decode-5", "Running", true);
    excess.metadata.deletion_timestamp = Some(Time(ts("2026-01-01T00:09:00Z")));
    let plan = plan_pods(&rs, &[&gone, &excess], ts(NOW)).unwrap();
    // Its deletion event triggers the reconcile that refills the slot.
    assert!(plan.create.is_empty());
    assert!(plan.delete.is_empty());
}

#[test]
fn a_failed_pod_is_kept_for_the_grace_period_then_replaced() {
    let rs = roleset(vec![role("decode", Some(2))]);
    let ok = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    let failed = failed_at(&rs, "llm-abc123-0-decode-1", "2026-01-01T00:09:50Z");

    // 10 s after the failure: keep it, look again when the 30 s are up.
    let plan = plan_pods(&rs, &[&ok, &failed], ts(NOW)).unwrap();
    assert!(plan.delete.is_empty() && plan.create.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(20)));

    // Exactly at the deadline: delete; the next reconcile (after the delete event) re-creates it.
    let plan = plan_pods(&rs, &[&ok, &failed], ts("2026-01-01T00:10:20Z")).unwrap();
    assert_eq!(
        deleted(&plan),
        [("llm-abc123-0-decode-1", DeleteReason::Failed)]
    );
    assert!(plan.create.is_empty());
    assert_eq!(plan.requeue_after, None);

    // Once it is gone from the cache, its slot is filled again.
    let plan = plan_pods(&rs, &[&ok], ts("2026-01-01T00:10:21Z")).unwrap();
    assert_eq!(names(&plan.create), ["llm-abc123-0-decode-1"]);
}

#[test]
fn the_earliest_grace_deadline_decides_the_requeue() {
    let rs = roleset(vec![role("decode", Some(2))]);
    let a = failed_at(&rs, "llm-abc123-0-decode-0", "2026-01-01T00:09:45Z");
    let b = failed_at(&rs, "llm-abc123-0-decode-1", "2026-01-01T00:09:55Z");
    let plan = plan_pods(&rs, &[&b, &a], ts(NOW)).unwrap();
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(15)));
}

#[test]
fn failure_time_is_the_latest_evidence() {
    let rs = roleset(vec![role("decode", Some(1))]);
    let mut pod = failed_at(&rs, "llm-abc123-0-decode-0", "2026-01-01T00:05:00Z");
    if let Some(cs) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        cs[0].last_transition_time = Some(Time(ts("2026-01-01T00:06:00Z")));
    }
    assert_eq!(terminal_since(&pod), Some(ts("2026-01-01T00:06:00Z")));

    // No container or condition times: fall back to the creation time.
    let bare = existing(&rs, "llm-abc123-0-decode-0", "Failed", false);
    assert_eq!(terminal_since(&bare), Some(ts("2026-01-01T00:00:00Z")));
}

#[test]
fn a_succeeded_pod_is_replaced_like_a_failed_one() {
    let rs = roleset(vec![role("decode", Some(1))]);
    let done = existing(&rs, "llm-abc123-0-decode-0", "Succeeded", false);
    let plan = plan_pods(&rs, &[&done], ts(NOW)).unwrap();
    assert_eq!(
        deleted(&plan),
        [("llm-abc123-0-decode-0", DeleteReason::Failed)]
    );
}

#[test]
fn a_terminating_failed_pod_is_not_deleted_twice() {
    let rs = roleset(vec![role("decode", Some(1))]);
    let mut failed = failed_at(&rs, "llm-abc123-0-decode-0", "2026-01-01T00:00:00Z");
    failed.metadata.deletion_timestamp = Some(Time(ts(NOW)));
    let plan = plan_pods(&rs, &[&failed], ts(NOW)).unwrap();
    assert!(plan.delete.is_empty() && plan.create.is_empty());
    assert_eq!(plan.requeue_after, None);
}

#[test]
fn duplicate_role_names_plan_one_set_of_pods() {
    let rs = roleset(vec![role("decode", Some(1)), role("decode", Some(3))]);
    let plan = plan_pods(&rs, &[], ts(NOW)).unwrap();
    assert_eq!(names(&plan.create), ["llm-abc123-0-decode-0"]);
}

#[test]
fn a_roleset_without_uid_or_namespace_cannot_be_planned() {
    let mut rs = roleset(vec![role("decode", Some(1))]);
    rs.metadata.uid = None;
    assert_eq!(
        plan_pods(&rs, &[], ts(NOW)),
        Err(PlanError::BuildOwnerReference)
    );
    let mut rs = roleset(vec![role("decode", Some(1))]);
    rs.metadata.namespace = None;
    assert_eq!(plan_pods(&rs, &[], ts(NOW)), Err(PlanError::FindNamespace));
}

#[test]
fn ownership_needs_the_controller_reference_with_the_uid() {
    let rs = roleset(vec![role("decode", Some(1))]);
    let mut pod = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    assert!(is_owned_by(&pod, &rs));
    if let Some(owners) = pod.metadata.owner_references.as_mut() {
        owners[0].uid = "someone-else".to_string();
    }
    assert!(!is_owned_by(&pod, &rs));
    let mut other_ns = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    other_ns.metadata.namespace = Some("elsewhere".to_string());
    assert!(!is_owned_by(&other_ns, &rs));
}

#[test]
fn slot_index_parses_only_our_names() {
    assert_eq!(slot_index("rs", "decode", "rs-decode-0"), Some(0));
    assert_eq!(slot_index("rs", "decode", "rs-decode-12"), Some(12));
    assert_eq!(slot_index("rs", "de", "rs-decode-1"), None);
    assert_eq!(slot_index("rs", "decode", "rs-decode-"), None);
    assert_eq!(slot_index("rs", "decode", "rs-decode-x1"), None);
    assert_eq!(slot_index("rs", "decode", "rs-decode-007"), None);
    assert_eq!(slot_index("rs", "decode-0", "rs-decode-0-1"), Some(1));
    assert_eq!(slot_index("rs", "decode", "rs-decode-0-1"), None);
    assert_eq!(slot_index("rs", "decode", "rs2-decode-0"), None);
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const ROLES: [&str; 3] = ["prefill", "decode", "router"];

    /// A Pod somewhere in the name space the plan could produce (or not).
    #[derive(Debug, Clone)]
    struct Existing {
        role: usize,
        index: i32,
        phase: &'static str,
        terminating: bool,
    }

    fn existing_strategy() -> impl Strategy<Value = Existing> {
        (
            0..ROLES.len(),
            0..6i32,
            prop_oneof![Just("Running"), Just("Pending"), Just("Failed")],
            any::<bool>(),
        )
            .prop_map(|(role, index, phase, terminating)| Existing {
                role,
                index,
                phase,
                terminating,
            })
    }

    fn world(rs: &RoleSet, pods: &[Existing]) -> Vec<CachedPod> {
        let mut seen = BTreeSet::new();
        pods.iter()
            .filter_map(|e| {
                let name = pod_name("llm-abc123-0", ROLES[e.role], e.index);
                if !seen.insert(name.clone()) {
                    return None;
                }
                // Failed long before NOW, so past its grace.
                let mut pod = existing(rs, &name, e.phase, e.phase == "Running");
                if e.terminating {
                    pod.metadata.deletion_timestamp = Some(Time(ts("2026-01-01T00:09:59Z")));
                }
                Some(pod)
            })
            .collect()
    }

    /// Applies a plan the way the cluster would: deletions start terminating, creations appear.
    fn apply(world: &mut Vec<CachedPod>, plan: &PodPlan) {
        for d in &plan.delete {
            for p in world.iter_mut().filter(|p| p.name_any() == d.name) {
                p.metadata.deletion_timestamp = Some(Time(ts(NOW)));
            }
        }
        world.extend(plan.create.iter().map(CachedPod::from));
    }

    proptest! {
        #[test]
        fn plans_are_safe_and_converge(
            replicas in proptest::collection::vec(proptest::option::of(0..4i32), 0..=3),
            pods in proptest::collection::vec(existing_strategy(), 0..12),
        ) {
            let roles: Vec<RoleSpec> = replicas
                .iter()
                .enumerate()
                .map(|(i, r)| role(ROLES[i], *r))
                .collect();
            let rs = roleset(roles);
            let desired: BTreeSet<String> = rs
                .spec
                .roles
                .iter()
                .flat_map(|r| (0..desired_replicas(r)).map(|i| pod_name("llm-abc123-0", &r.name, i)))
                .collect();
            let mut pods = world(&rs, &pods);

            for _round in 0..3 {
                let refs: Vec<&CachedPod> = pods.iter().collect();
                let plan = plan_pods(&rs, &refs, ts(NOW)).unwrap();
                let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
                for pod in &plan.create {
                    // Only desired slots, never over an existing name, always ours.
                    prop_assert!(desired.contains(&pod.name_any()));
                    prop_assert!(!names.contains(&pod.name_any()));
                    prop_assert!(is_owned_by(&CachedPod::from(pod), &rs));
                }
                for d in &plan.delete {
                    let pod = pods.iter().find(|p| p.name_any() == d.name).unwrap();
                    // Never twice, never a healthy Pod in a desired slot.
                    prop_assert!(!is_terminating(pod));
                    prop_assert!(!desired.contains(&d.name) || is_terminal(pod));
                }
                apply(&mut pods, &plan);
                // Terminating Pods finish going away before the next round.
                pods.retain(|p| !is_terminating(p));
            }

            // At rest: exactly the desired Pods, healthy, and nothing left to do.
            let refs: Vec<&CachedPod> = pods.iter().collect();
            let plan = plan_pods(&rs, &refs, ts(NOW)).unwrap();
            prop_assert_eq!(plan, PodPlan::default());
            let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
            prop_assert_eq!(names, desired);
        }
    }
}

/// A Pod as AIBrix's RoleSet controller names and labels it: stateful
/// `<roleset>-<role>-<hash6>-<index>`, stateless `<roleset>-<role>-<random>`.
fn aibrix_pod(rs: &RoleSet, name: &str, role: &str, replica_index: Option<&str>) -> CachedPod {
    let mut pod = existing(rs, name, "Running", true);
    let mut labels: BTreeMap<String, String> = [
        (AIBRIX_LABEL_ROLE_NAME.to_string(), role.to_string()),
        (AIBRIX_LABEL_ROLESET_NAME.to_string(), rs.name_any()),
        ("role-template-hash".to_string(), "7c9f6d8b5".to_string()),
    ]
    .into();
    if let Some(i) = replica_index {
        labels.insert(
            "stormservice.orchestration.aibrix.ai/role-replica-index".into(),
            i.into(),
        );
    }
    pod.metadata.labels = Some(labels);
    pod.metadata.annotations = None;
    pod
}

#[test]
fn pods_made_by_aibrix_keep_their_slots_and_are_not_replaced() {
    let rs = roleset(vec![role("prefill", Some(2)), role("decode", Some(2))]);
    let pods = [
        aibrix_pod(&rs, "llm-abc123-0-prefill-7c9f6d-0", "prefill", Some("0")),
        aibrix_pod(&rs, "llm-abc123-0-prefill-7c9f6d-1", "prefill", Some("1")),
        aibrix_pod(&rs, "llm-abc123-0-decode-x7k2p", "decode", None),
        aibrix_pod(&rs, "llm-abc123-0-decode-b9q4z", "decode", None),
    ];
    let owned: Vec<&CachedPod> = pods.iter().collect();
    let plan = plan_pods(&rs, &owned, ts(NOW)).unwrap();
    assert!(plan.create.is_empty(), "{:?}", names(&plan.create));
    assert!(plan.delete.is_empty(), "{:?}", plan.delete);
    assert!(plan.in_place.is_empty());
    // A role scaled down: the Pod in the highest slot goes.
    let mut smaller = rs.clone();
    smaller.spec.roles[0].replicas = Some(1);
    let plan = plan_pods(&smaller, &owned, ts(NOW)).unwrap();
    let gone: Vec<&str> = plan.delete.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(gone, ["llm-abc123-0-prefill-7c9f6d-1"]);
    // Scaled up: the new slot gets our name.
    let mut bigger = rs.clone();
    bigger.spec.roles[1].replicas = Some(3);
    let plan = plan_pods(&bigger, &owned, ts(NOW)).unwrap();
    assert_eq!(names(&plan.create), ["llm-abc123-0-decode-2"]);
    // The template changed: Pods we did not make cannot be told apart, so none is replaced.
    let mut changed = rs.clone();
    std::sync::Arc::make_mut(&mut changed.spec.roles[0].template)
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("x:2".into());
    let plan = plan_pods(&changed, &owned, ts(NOW)).unwrap();
    assert!(plan.delete.is_empty());
}

#[test]
fn topology_policy_places_the_scopes_pods_together() {
    use storm_shared::types::roleset::{TopologyMode, TopologyPolicy, TopologyScope};
    let mut rs = roleset(vec![role("decode", Some(2))]);
    rs.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(AIBRIX_LABEL_STORM_SERVICE_NAME.into(), "llm".into());
    let affinity = |rs: &RoleSet| {
        let pod = plan_pods(rs, &[], ts("2026-01-01T00:00:00Z"))
            .unwrap()
            .create[0]
            .clone();
        pod.spec.unwrap().affinity.and_then(|a| a.pod_affinity)
    };
    assert_eq!(affinity(&rs), None, "no policy, no affinity");
    rs.spec.topology_policy = Some(TopologyPolicy {
        key: "topology.kubernetes.io/zone".into(),
        mode: None,
        scope: TopologyScope::RoleSet,
    });
    let preferred = affinity(&rs)
        .unwrap()
        .preferred_during_scheduling_ignored_during_execution
        .unwrap();
    assert_eq!(preferred.len(), 1);
    assert_eq!(preferred[0].weight, 100);
    let term = &preferred[0].pod_affinity_term;
    assert_eq!(term.topology_key, "topology.kubernetes.io/zone");
    assert_eq!(
        term.label_selector.as_ref().unwrap().match_labels,
        Some(BTreeMap::from([
            ("roleset-name".to_string(), "llm-abc123-0".to_string()),
            ("storm-service-name".to_string(), "llm".to_string()),
        ]))
    );
    rs.spec.topology_policy = Some(TopologyPolicy {
        key: "kubernetes.io/hostname".into(),
        mode: Some(TopologyMode::Required),
        scope: TopologyScope::Role,
    });
    let required = affinity(&rs)
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap();
    assert_eq!(
        required[0].label_selector.as_ref().unwrap().match_labels,
        Some(BTreeMap::from([
            ("role-name".to_string(), "decode".to_string()),
            ("storm-service-name".to_string(), "llm".to_string()),
        ]))
    );
}

#[test]
fn pods_carry_their_roles_revision_from_the_roleset() {
    let mut rs = roleset(vec![role("decode", Some(1))]);
    rs.metadata.annotations = Some(BTreeMap::from([
        (
            "stormservice.orchestration.aibrix.ai/role-revision.decode".to_string(),
            "3".to_string(),
        ),
        (
            "stormservice.orchestration.aibrix.ai/role-revision-name.decode".to_string(),
            "llm-abc123".to_string(),
        ),
    ]));
    let pod = plan_pods(&rs, &[], ts("2026-01-01T00:00:00Z"))
        .unwrap()
        .create[0]
        .clone();
    let labels = pod.metadata.labels.unwrap();
    assert_eq!(labels[AIBRIX_ROLE_REVISION], "3");
    assert_eq!(labels[AIBRIX_ROLE_REVISION_NAME], "llm-abc123");
}
