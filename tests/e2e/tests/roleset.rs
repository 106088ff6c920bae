//! End-to-end tests of the RoleSet controller against the local control plane: the real
//! `storm-controller` binary, limited to each test's namespace, runs as a child process of the
//! test; Pods become Ready on kwok nodes; garbage collection is the real kube-controller-manager's.
//! The binary as deployed (leader election, SIGTERM, its own RBAC) is in `controller_deployment.rs`.
//!
//! Run: `cargo test -p storm-e2e --test roleset` (builds the controller and starts the cluster if needed).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use storm_shared::keys::{
    AIBRIX_LABEL_ROLE_NAME, AIBRIX_LABEL_ROLESET_NAME, AIBRIX_LABEL_STORM_SERVICE_NAME, LABEL_NAME,
    LABEL_REVISION, LABEL_ROLE,
};
use storm_shared::types::roleset::{RoleSet, RoleSetSpec, RoleSetStatus, RoleSpec};
use storm_test_support::process::Controller;
use storm_test_support::{
    FAIL_LABEL, TestNamespace, dump_logs_on_error, holds_for, pod_is_ready, pod_phase, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The control plane, CRDs, a fresh namespace and a controller watching only that namespace (so
/// concurrent tests and suites never act on each other's objects).
async fn setup(prefix: &str) -> Result<(TestNamespace, Controller)> {
    let ns = TestNamespace::new(prefix).await?;
    ns.cluster().install_crds()?;
    let controller = Controller::start(ns.cluster(), ns.name())?;
    Ok((ns, controller))
}

// ---------------------------------------------------------------------------------------------
// Fixtures and checks.

fn role(name: &str, replicas: i32, extra_labels: &[(&str, &str)]) -> RoleSpec {
    let mut labels: BTreeMap<String, String> = [("app".to_string(), format!("llm-{name}"))].into();
    labels.extend(
        extra_labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    RoleSpec {
        name: name.to_string(),
        replicas: Some(replicas),
        template: std::sync::Arc::new(PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "engine".to_string(),
                    image: Some(format!("registry.invalid/storm/{name}:1.0")),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }),
        ..RoleSpec::default()
    }
}

/// A RoleSet labelled as the StormService controller labels its RoleSets.
fn roleset(name: &str, roles: Vec<RoleSpec>) -> RoleSet {
    let mut rs = RoleSet::new(
        name,
        RoleSetSpec {
            roles,
            ..RoleSetSpec::default()
        },
    );
    rs.metadata.labels = Some(
        [
            (LABEL_NAME.to_string(), "llm".to_string()),
            (LABEL_REVISION.to_string(), "r1".to_string()),
        ]
        .into(),
    );
    rs
}

fn labelled_pods(pods: &[Pod]) -> BTreeMap<String, &Pod> {
    pods.iter().map(|p| (p.name_any(), p)).collect()
}

async fn pods_of(api: &Api<Pod>, roleset: &str) -> Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("{AIBRIX_LABEL_ROLESET_NAME}={roleset}"));
    Ok(api.list(&lp).await?.items)
}

fn ready_condition(status: &RoleSetStatus) -> Option<(&str, &str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.as_str(), c.reason.as_deref().unwrap_or("")))
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn roleset_gets_labelled_owned_pods_that_become_ready_and_status_says_so() -> Result<()> {
    let (ns, mut controller) = setup("rs-pods").await?;
    let result = async {
        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        let created = rolesets
            .create(
                &PostParams::default(),
                &roleset(
                    "llm-r1-0",
                    vec![role("prefill", 2, &[]), role("decode", 1, &[])],
                ),
            )
            .await?;
        let uid = created.uid().context("created RoleSet has no uid")?;

        let all = wait_for("three Pods Ready", TIMEOUT, || async {
            let list = pods_of(&pods, "llm-r1-0").await?;
            Ok((list.len() == 3 && list.iter().all(pod_is_ready)).then_some(list))
        })
        .await?;
        let by_name = labelled_pods(&all);
        let names: Vec<&str> = by_name.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "llm-r1-0-decode-0",
                "llm-r1-0-prefill-0",
                "llm-r1-0-prefill-1"
            ]
        );
        for (name, pod) in &by_name {
            let role = if name.contains("prefill") {
                "prefill"
            } else {
                "decode"
            };
            let labels = pod.labels();
            for (key, want) in [
                (LABEL_NAME, "llm"),
                (LABEL_REVISION, "r1"),
                (LABEL_ROLE, role),
                (AIBRIX_LABEL_STORM_SERVICE_NAME, "llm"),
                (AIBRIX_LABEL_ROLESET_NAME, "llm-r1-0"),
                (AIBRIX_LABEL_ROLE_NAME, role),
                ("app", &format!("llm-{role}")),
            ] {
                assert_eq!(
                    labels.get(key).map(String::as_str),
                    Some(want),
                    "{name}: {key}"
                );
            }
            let owners = pod.owner_references();
            assert_eq!(owners.len(), 1, "{name}: {owners:?}");
            let owner = &owners[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("RoleSet", "llm-r1-0", uid.as_str())
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(owner.block_owner_deletion, Some(true));
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            assert!(
                node.is_some_and(|n| n.starts_with("kwok-node-")),
                "{name} on {node:?}"
            );
        }

        let status = wait_for("RoleSet status Ready=True", TIMEOUT, || async {
            let rs = rolesets.get("llm-r1-0").await?;
            let status = rs.status.clone().unwrap_or_default();
            let done = status.ready_replicas == 3
                && ready_condition(&status) == Some(("True", "AllPodsReady"));
            Ok(done.then_some(status))
        })
        .await?;
        assert_eq!(status.replicas, 3);
        assert_eq!(status.observed_generation, created.metadata.generation);
        let roles: Vec<(&str, i32, i32, i32)> = status
            .roles
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.replicas,
                    r.ready_replicas,
                    r.not_ready_replicas,
                )
            })
            .collect();
        assert_eq!(roles, [("prefill", 2, 2, 0), ("decode", 1, 1, 0)]);

        // The status is written by server-side apply under the controller's field manager.
        let rs = rolesets.get("llm-r1-0").await?;
        let managers: Vec<&str> = rs
            .managed_fields()
            .iter()
            .filter(|m| m.subresource.as_deref() == Some("status"))
            .filter_map(|m| m.manager.as_deref())
            .collect();
        assert_eq!(managers, ["storm-controller"]);

        // The metrics endpoint saw those reconciles; the health endpoints answer.
        let (code, body) = controller.http_get("/metrics")?;
        assert_eq!(code, 200);
        assert!(
            body.contains("storm_reconcile_duration_seconds_count{kind=\"RoleSet\"}"),
            "{body}"
        );
        assert_eq!(controller.http_get("/healthz")?.0, 200);
        assert_eq!(controller.http_get("/readyz")?.0, 200);
        // The three creations are one Event with a series of 3, as kube-runtime and client-go
        // fold repeats (same object, type, reason and action) within six minutes.
        let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
        let created = wait_for(
            "one SuccessfulCreate Event with a series of 3",
            TIMEOUT,
            || async {
                let list = events.list(&ListParams::default()).await?.items;
                let mine: Vec<_> = list
                    .into_iter()
                    .filter(|e| {
                        e.reason.as_deref() == Some("SuccessfulCreate")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                == Some("llm-r1-0")
                    })
                    .collect();
                let count = |e: &k8s_openapi::api::events::v1::Event| {
                    e.series.as_ref().map_or(1, |s| s.count)
                };
                Ok((mine.len() == 1 && count(&mine[0]) == 3).then(|| mine[0].clone()))
            },
        )
        .await?;
        assert_eq!(
            created.reporting_controller.as_deref(),
            Some("storm-controller")
        );
        assert!(
            created
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("Created Pod llm-r1-0-"))
        );
        controller.process.ensure_running()
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn scaling_a_role_down_or_removing_it_deletes_the_extra_pods() -> Result<()> {
    let (ns, mut controller) = setup("rs-scale").await?;
    let result = async {
        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        rolesets
            .create(
                &PostParams::default(),
                &roleset(
                    "llm-r1-0",
                    vec![role("prefill", 3, &[]), role("decode", 1, &[])],
                ),
            )
            .await?;
        wait_for("four Pods Ready", TIMEOUT, || async {
            let list = pods_of(&pods, "llm-r1-0").await?;
            Ok((list.len() == 4 && list.iter().all(pod_is_ready)).then_some(()))
        })
        .await?;
        let survivor_uid = pods.get("llm-r1-0-prefill-0").await?.uid();

        // prefill: 3 -> 1 (a merge patch of the whole roles list, as kubectl edit would do).
        let roles = serde_json::to_value(vec![role("prefill", 1, &[]), role("decode", 1, &[])])?;
        rolesets
            .patch(
                "llm-r1-0",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": { "roles": roles } })),
            )
            .await?;
        wait_for("prefill-1 and prefill-2 gone", TIMEOUT, || async {
            let names: Vec<String> = pods_of(&pods, "llm-r1-0")
                .await?
                .iter()
                .map(|p| p.name_any())
                .collect();
            Ok((names == ["llm-r1-0-decode-0", "llm-r1-0-prefill-0"]).then_some(()))
        })
        .await?;
        assert_eq!(
            pods.get("llm-r1-0-prefill-0").await?.uid(),
            survivor_uid,
            "the kept Pod must not have been replaced"
        );
        let status = wait_for("status shows 2 Pods", TIMEOUT, || async {
            let status = rolesets.get("llm-r1-0").await?.status.unwrap_or_default();
            Ok((status.replicas == 2 && status.ready_replicas == 2).then_some(status))
        })
        .await?;
        assert_eq!(ready_condition(&status), Some(("True", "AllPodsReady")));
        assert_eq!(status.roles[0].replicas, 1);

        // Nothing comes back while the spec stays as it is.
        holds_for("two Pods", Duration::from_secs(3), || async {
            Ok(pods_of(&pods, "llm-r1-0").await?.len() == 2)
        })
        .await?;

        // Removing a role deletes its Pods too.
        let roles = serde_json::to_value(vec![role("prefill", 1, &[])])?;
        rolesets
            .patch(
                "llm-r1-0",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": { "roles": roles } })),
            )
            .await?;
        wait_for("decode Pod gone", TIMEOUT, || async {
            let names: Vec<String> = pods_of(&pods, "llm-r1-0")
                .await?
                .iter()
                .map(|p| p.name_any())
                .collect();
            Ok((names == ["llm-r1-0-prefill-0"]).then_some(()))
        })
        .await?;
        controller.process.ensure_running()
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn deleting_the_roleset_garbage_collects_its_pods() -> Result<()> {
    let (ns, mut controller) = setup("rs-gc").await?;
    let result = async {
        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        rolesets
            .create(
                &PostParams::default(),
                &roleset("llm-r1-0", vec![role("decode", 2, &[])]),
            )
            .await?;
        wait_for("two Pods", TIMEOUT, || async {
            Ok((pods_of(&pods, "llm-r1-0").await?.len() == 2).then_some(()))
        })
        .await?;
        rolesets
            .delete("llm-r1-0", &DeleteParams::background())
            .await?;
        // kube-controller-manager's garbage collector follows the owner references.
        wait_for("Pods garbage-collected", TIMEOUT, || async {
            Ok(pods_of(&pods, "llm-r1-0").await?.is_empty().then_some(()))
        })
        .await?;
        // And the controller does not bring them back.
        holds_for("no Pods", Duration::from_secs(3), || async {
            Ok(pods_of(&pods, "llm-r1-0").await?.is_empty())
        })
        .await?;
        controller.process.ensure_running()
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn a_failed_pod_is_replaced_only_after_its_grace_period() -> Result<()> {
    let (ns, mut controller) = setup("rs-failed").await?;
    let result = async {
        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        rolesets
            .create(
                &PostParams::default(),
                &roleset("llm-r1-0", vec![role("decode", 1, &[(FAIL_LABEL, "true")])]),
            )
            .await?;
        let first = wait_for("Pod Failed", TIMEOUT, || async {
            let pod = pods.get_opt("llm-r1-0-decode-0").await?;
            Ok(pod.filter(|p| pod_phase(p) == "Failed"))
        })
        .await?;
        let first_uid = first.uid().context("Pod has no uid")?;
        // The status may first be written before the controller's cache holds the Pod (Ready=False
        // with no Pod counted): wait for the one that counts the failed Pod.
        wait_for(
            "status Ready=False with the failed Pod not ready",
            TIMEOUT,
            || async {
                let status = rolesets.get("llm-r1-0").await?.status.unwrap_or_default();
                Ok((ready_condition(&status) == Some(("False", "PodsNotReady"))
                    && status.roles.first().map(|r| r.not_ready_replicas) == Some(1))
                .then_some(()))
            },
        )
        .await?;

        // Health checks must see the failure: the same Pod stays for a good part of the 30 s.
        holds_for("the failed Pod stays", Duration::from_secs(20), || async {
            let pod = pods.get_opt("llm-r1-0-decode-0").await?;
            Ok(pod.and_then(|p| p.uid()).as_deref() == Some(first_uid.as_str()))
        })
        .await?;
        // Then it is replaced by a new Pod under the same name.
        wait_for("replacement Pod", Duration::from_secs(40), || async {
            let pod = pods.get_opt("llm-r1-0-decode-0").await?;
            Ok(pod
                .filter(|p| p.uid().as_deref() != Some(first_uid.as_str()))
                .map(|_| ()))
        })
        .await?;
        controller.process.ensure_running()
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}
