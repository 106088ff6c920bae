//! AIBrix's own StormServices (`../shared/fixtures/aibrix/`, read in place) run by our controller
//! on the local control plane: the object graph AIBrix's components read (headless Service, Pod
//! env, labels, per-Pod DNS through EndpointSlices), and scaling a role in place.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use storm_shared::keys::{
    AIBRIX_ANNOTATION_ROLESET_INDEX, AIBRIX_LABEL_ROLE_NAME, AIBRIX_LABEL_ROLE_TEMPLATE_HASH,
    AIBRIX_LABEL_ROLESET_NAME, AIBRIX_LABEL_STORM_SERVICE_NAME, AIBRIX_ROLE_REPLICA_INDEX,
};
use storm_shared::types::stormservice::RolloutPhase;
use storm_shared::{RoleSet, StormService};
use storm_test_support::process::Controller;
use storm_test_support::{TestNamespace, pod_is_ready, repo_root, wait_for};

const TIMEOUT: Duration = Duration::from_secs(90);

/// AIBrix's sample `file`, from `../shared/fixtures/aibrix/` beside the repository.
fn sample(file: &str) -> PathBuf {
    repo_root().join("../shared/fixtures/aibrix").join(file)
}

/// A namespace with the CRDs and a controller for it; `file` applied with kubectl, unchanged.
async fn apply_sample(prefix: &str, file: &str) -> Result<(TestNamespace, Controller, String)> {
    let ns = TestNamespace::new(prefix).await?;
    ns.cluster().install_crds()?;
    let controller = Controller::start(ns.cluster(), ns.name())?;
    let path = sample(file);
    ensure!(
        path.exists(),
        "{} is missing: AIBrix's samples are read from ../shared beside the checkout",
        path.display()
    );
    let out = ns
        .kubectl()
        .args(["apply", "-f"])
        .arg(&path)
        .output()
        .context("kubectl apply")?;
    ensure!(
        out.status.success(),
        "kubectl apply {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = ns
        .api::<StormService>()
        .list(&ListParams::default())
        .await?
        .items
        .first()
        .map(ResourceExt::name_any)
        .context("the sample's StormService")?;
    Ok((ns, controller, name))
}

fn env_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .map(|s| &s.containers[0])
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
}

fn env_value(pod: &Pod, name: &str) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// Waits for every Pod of the StormService, as many as its roles ask for.
async fn wait_pods(ns: &TestNamespace, name: &str, want: usize) -> Result<Vec<Pod>> {
    wait_for(&format!("{want} Pods of {name} ready"), TIMEOUT, || async {
        let pods = ns
            .api::<Pod>()
            .list(
                &ListParams::default().labels(&format!("{AIBRIX_LABEL_STORM_SERVICE_NAME}={name}")),
            )
            .await?
            .items;
        Ok((pods.len() == want && pods.iter().all(pod_is_ready)).then_some(pods))
    })
    .await
}

/// Pods a StormService should have: replicas × Σ role replicas.
fn expected_pods(obj: &StormService) -> usize {
    let per_roleset: i32 = obj
        .spec
        .template
        .spec
        .iter()
        .flat_map(|s| &s.roles)
        .map(|r| r.replicas.unwrap_or(1) * r.pod_group_size.unwrap_or(1).max(1))
        .sum();
    usize::try_from(obj.spec.replicas.unwrap_or(1) * per_roleset).unwrap_or(0)
}

async fn check_object_graph(file: &str) -> Result<()> {
    let (ns, mut controller, name) = apply_sample(&format!("aibrix-{}", &file[..4]), file).await?;
    let result: Result<()> = async {
        let obj = ns.api::<StormService>().get(&name).await?;
        let pods = wait_pods(&ns, &name, expected_pods(&obj)).await?;
        // The headless Service: per-Pod DNS for the whole StormService.
        let svc: Service = wait_for("the headless Service", TIMEOUT, || async {
            Ok(ns.api::<Service>().get_opt(&name).await?)
        })
        .await?;
        let spec = svc.spec.clone().context("Service spec")?;
        ensure!(
            spec.cluster_ip.as_deref() == Some("None"),
            "clusterIP: {:?}",
            spec.cluster_ip
        );
        ensure!(spec.publish_not_ready_addresses == Some(true));
        ensure!(
            spec.selector
                .as_ref()
                .and_then(|s| s.get(AIBRIX_LABEL_STORM_SERVICE_NAME))
                == Some(&name)
        );
        let roles = obj
            .spec
            .template
            .spec
            .clone()
            .context("template spec")?
            .roles;
        let mut stateful_hosts = BTreeSet::new();
        for pod in &pods {
            let pod_name = pod.name_any();
            let labels = pod.labels();
            let role_name = labels
                .get(AIBRIX_LABEL_ROLE_NAME)
                .context("role-name label")?;
            let role = roles
                .iter()
                .find(|r| &r.name == role_name)
                .context("the Pod's role")?;
            let roleset = labels
                .get(AIBRIX_LABEL_ROLESET_NAME)
                .context("roleset-name label")?;
            ensure!(labels.get(AIBRIX_LABEL_STORM_SERVICE_NAME) == Some(&name));
            ensure!(
                labels.contains_key(AIBRIX_LABEL_ROLE_TEMPLATE_HASH),
                "{pod_name}: no role-template-hash"
            );
            ensure!(
                pod.annotations()
                    .contains_key(AIBRIX_ANNOTATION_ROLESET_INDEX),
                "{pod_name}: no roleset-index"
            );
            // The revision that introduced the role's template: the first and only one here.
            ensure!(
                labels
                    .get("stormservice.orchestration.aibrix.ai/role-revision")
                    .map(String::as_str)
                    == Some("1"),
                "{pod_name}: role-revision {:?}",
                labels.get("stormservice.orchestration.aibrix.ai/role-revision")
            );
            ensure!(
                labels
                    .get("stormservice.orchestration.aibrix.ai/role-revision-name")
                    .is_some_and(|n| n.starts_with(&format!("{name}-"))),
                "{pod_name}: no role-revision-name"
            );
            // AIBrix's env first, in its order; the sample's own after it.
            let env = env_names(pod);
            let stateful = role.stateful == Some(true);
            let group = role.pod_group_size.is_some_and(|n| n > 1);
            let mut want = Vec::new();
            if group {
                // A PodSet's Pods: the group's env first, and the PodSet as owner.
                want.extend(["PODSET_NAME", "POD_GROUP_INDEX", "POD_GROUP_SIZE"]);
                ensure!(
                    labels.contains_key("stormservice.orchestration.aibrix.ai/pod-group-index"),
                    "{pod_name}: no pod-group-index"
                );
                let owner = pod.owner_references().first().context("owner")?;
                ensure!(
                    owner.kind == "PodSet",
                    "{pod_name} is owned by a {}",
                    owner.kind
                );
            }
            want.extend([
                "STORM_SERVICE_NAME",
                "ROLESET_NAME",
                "ROLESET_INDEX",
                "ROLE_NAME",
                "ROLE_TEMPLATE_HASH",
            ]);
            if stateful {
                want.push("ROLE_REPLICA_INDEX");
            }
            ensure!(
                env.len() >= want.len() && env[..want.len()] == want[..],
                "{pod_name}: env {env:?}"
            );
            ensure!(env_value(pod, "STORM_SERVICE_NAME").as_deref() == Some(name.as_str()));
            ensure!(env_value(pod, "ROLESET_NAME").as_ref() == Some(roleset));
            ensure!(env_value(pod, "ROLE_NAME").as_ref() == Some(role_name));
            let pod_spec = pod.spec.as_ref().context("Pod spec")?;
            ensure!(
                pod_spec.subdomain.as_deref() == Some(name.as_str()),
                "{pod_name}: subdomain {:?}",
                pod_spec.subdomain
            );
            if stateful || group {
                ensure!(
                    pod_spec.hostname.as_deref() == Some(pod_name.as_str()),
                    "{pod_name}: hostname {:?}",
                    pod_spec.hostname
                );
                stateful_hosts.insert(pod_name.clone());
            }
            if stateful {
                ensure!(labels.contains_key(AIBRIX_ROLE_REPLICA_INDEX));
                ensure!(
                    env_value(pod, "ROLE_REPLICA_INDEX")
                        == labels.get(AIBRIX_ROLE_REPLICA_INDEX).cloned()
                );
                stateful_hosts.insert(pod_name.clone());
            }
        }
        // status.roleStatuses: per role, summed over RoleSets, sorted by name (as AIBrix writes it).
        let mut want: Vec<(String, i32)> = roles
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.replicas.unwrap_or(1) * obj.spec.replicas.unwrap_or(1),
                )
            })
            .collect();
        want.sort();
        wait_for("status.roleStatuses", TIMEOUT, || async {
            let o = ns.api::<StormService>().get(&name).await?;
            let got: Vec<(String, i32)> = o
                .status
                .iter()
                .flat_map(|s| &s.role_statuses)
                .map(|r| (r.name.clone(), r.ready_replicas))
                .collect();
            Ok((got == want).then_some(()))
        })
        .await?;
        // `<pod>.<stormservice>.<namespace>.svc` resolves: the headless Service's EndpointSlices
        // carry each named Pod's hostname (what cluster DNS serves).
        wait_for(
            "EndpointSlices with every stateful Pod's hostname",
            TIMEOUT,
            || async {
                let slices = ns
                    .api::<EndpointSlice>()
                    .list(
                        &ListParams::default()
                            .labels(&format!("kubernetes.io/service-name={name}")),
                    )
                    .await?;
                let hosts: BTreeSet<String> = slices
                    .items
                    .iter()
                    .flat_map(|s| &s.endpoints)
                    .filter_map(|e| e.hostname.clone())
                    .collect();
                Ok(stateful_hosts.is_subset(&hosts).then_some(()))
            },
        )
        .await?;
        controller.process.ensure_running()?;
        Ok(())
    }
    .await;
    if result.is_err() {
        storm_test_support::dump_logs();
        eprintln!("{}", controller.process.log_tail(60));
    }
    result?;
    ns.cleanup().await
}

#[tokio::test]
async fn vllm_1p1d_makes_aibrix_object_graph() -> Result<()> {
    check_object_graph("1p1d.yaml").await
}

#[tokio::test]
async fn vllm_replica_2p1d_makes_aibrix_object_graph() -> Result<()> {
    check_object_graph("replica.yaml").await
}

#[tokio::test]
async fn stateless_inplace_sample_makes_aibrix_object_graph() -> Result<()> {
    check_object_graph("stormservice-inplace-update.yaml").await
}

/// Multi-node tensor parallelism: `podGroupSize: 2` roles run as PodSets of two Pods each.
#[tokio::test]
async fn sglang_tp_pod_groups_make_podsets() -> Result<()> {
    check_object_graph("sglang-tp-1p1d.yaml").await
}

#[tokio::test]
async fn sglang_pool_makes_aibrix_object_graph() -> Result<()> {
    check_object_graph("sglang-pool.yaml").await
}

/// AIBrix's autoscaler writes `roles[i].replicas`: Pods are added inside the existing RoleSets, no
/// RoleSet is made and no rollout starts.
#[tokio::test]
async fn scaling_a_role_adds_pods_and_no_roleset() -> Result<()> {
    let (ns, mut controller, name) = apply_sample("aibrix-scale", "1p1d.yaml").await?;
    let result: Result<()> = async {
        let api = ns.api::<StormService>();
        let obj = api.get(&name).await?;
        let before = wait_pods(&ns, &name, expected_pods(&obj)).await?;
        let obj = wait_for("Healthy", TIMEOUT, || async {
            let o = api.get(&name).await?;
            let phase = o
                .status
                .as_ref()
                .and_then(|s| s.rollout_status.as_ref())
                .and_then(|r| r.phase);
            Ok((phase == Some(RolloutPhase::Healthy)).then_some(o))
        })
        .await?;
        let revision = obj.status.as_ref().and_then(|s| s.update_revision.clone());
        let rolesets: BTreeSet<(String, String)> = ns
            .api::<RoleSet>()
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|r| (r.name_any(), r.uid().unwrap_or_default()))
            .collect();
        let uids: BTreeSet<String> = before.iter().filter_map(|p| p.uid()).collect();
        // prefill: 1 → 3.
        let patch =
            json!([{"op": "replace", "path": "/spec/template/spec/roles/0/replicas", "value": 3}]);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(patch)?),
        )
        .await?;
        let after = wait_pods(&ns, &name, before.len() + 2).await?;
        let now_rolesets: BTreeSet<(String, String)> = ns
            .api::<RoleSet>()
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|r| (r.name_any(), r.uid().unwrap_or_default()))
            .collect();
        ensure!(
            now_rolesets == rolesets,
            "RoleSets changed: {rolesets:?} -> {now_rolesets:?}"
        );
        let after_uids: BTreeSet<String> = after.iter().filter_map(|p| p.uid()).collect();
        ensure!(
            uids.is_subset(&after_uids),
            "a Pod was replaced by a role scale"
        );
        let obj = api.get(&name).await?;
        ensure!(
            obj.status.as_ref().and_then(|s| s.update_revision.clone()) == revision,
            "a new revision"
        );
        let phase = obj
            .status
            .as_ref()
            .and_then(|s| s.rollout_status.as_ref())
            .and_then(|r| r.phase);
        ensure!(
            phase == Some(RolloutPhase::Healthy),
            "no rollout: {phase:?}"
        );
        controller.process.ensure_running()?;
        Ok(())
    }
    .await;
    if result.is_err() {
        storm_test_support::dump_logs();
        eprintln!("{}", controller.process.log_tail(60));
    }
    result?;
    ns.cleanup().await
}

/// Every Pod of the StormService by name: (uid, image of the first container, ready).
async fn pod_states(
    ns: &TestNamespace,
    name: &str,
) -> Result<std::collections::BTreeMap<String, (String, String, bool)>> {
    Ok(ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("{AIBRIX_LABEL_STORM_SERVICE_NAME}={name}")))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers[0].image.clone())
                .unwrap_or_default();
            (
                p.name_any(),
                (p.uid().unwrap_or_default(), image, pod_is_ready(p)),
            )
        })
        .collect())
}

fn rolesets_of(list: &[RoleSet]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|r| (r.name_any(), r.uid().unwrap_or_default()))
        .collect()
}

async fn wait_completed(api: &kube::Api<StormService>, name: &str) -> Result<StormService> {
    wait_for("the update Completed", TIMEOUT, || async {
        let o = api.get(name).await?;
        let status = o.status.as_ref();
        let phase = status
            .and_then(|s| s.rollout_status.as_ref())
            .and_then(|r| r.phase);
        let done = phase == Some(RolloutPhase::Completed)
            && status.and_then(|s| s.current_revision.as_ref())
                == status.and_then(|s| s.update_revision.as_ref());
        Ok(done.then_some(o))
    })
    .await
}

/// `updateStrategy.type: InPlaceUpdate` with a role of type `InPlaceIfPossible`: an image bump
/// patches the running Pod (same name and UID), no RoleSet is made or removed.
#[tokio::test]
async fn in_place_if_possible_image_bump_keeps_every_pod() -> Result<()> {
    let (ns, mut controller, name) =
        apply_sample("aibrix-inplace", "stormservice-inplace-update.yaml").await?;
    let result: Result<()> = async {
        let api = ns.api::<StormService>();
        let obj = api.get(&name).await?;
        wait_pods(&ns, &name, expected_pods(&obj)).await?;
        wait_completed_or_healthy(&api, &name).await?;
        let before = pod_states(&ns, &name).await?;
        let rolesets = rolesets_of(&ns.api::<RoleSet>().list(&ListParams::default()).await?.items);
        let patch = json!([{"op": "replace", "path": "/spec/template/spec/roles/0/template/spec/containers/0/image", "value": "registry.k8s.io/e2e-test-images/agnhost:2.54"}]);
        api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(patch)?))
            .await?;
        wait_completed(&api, &name).await?;
        let after = pod_states(&ns, &name).await?;
        ensure!(before.len() == after.len(), "{before:?} -> {after:?}");
        for (pod, (uid, _, _)) in &before {
            let (uid_after, image, _) = after.get(pod).context("a Pod went away")?;
            ensure!(uid == uid_after, "{pod} was replaced");
            ensure!(image.ends_with(":2.54"), "{pod} runs {image}");
        }
        let now = rolesets_of(&ns.api::<RoleSet>().list(&ListParams::default()).await?.items);
        ensure!(now == rolesets, "RoleSets changed: {rolesets:?} -> {now:?}");
        controller.process.ensure_running()?;
        Ok(())
    }
    .await;
    if result.is_err() {
        storm_test_support::dump_logs();
        eprintln!("{}", controller.process.log_tail(60));
    }
    result?;
    ns.cleanup().await
}

/// `InPlaceUpdate` with AIBrix's default role strategy (replace, maxUnavailable 1): a template
/// change replaces the changed role's Pods one at a time inside the same RoleSet; the other role
/// keeps its Pods, and no RoleSet is made or removed.
#[tokio::test]
async fn in_place_update_replaces_a_roles_pods_within_max_unavailable() -> Result<()> {
    let (ns, mut controller, name) = apply_sample("aibrix-recreate", "1p1d.yaml").await?;
    let result: Result<()> = async {
        let api = ns.api::<StormService>();
        // prefill: 3 Pods, so one at a time shows.
        let patch = json!([{"op": "replace", "path": "/spec/template/spec/roles/0/replicas", "value": 3}]);
        api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(patch)?))
            .await?;
        wait_pods(&ns, &name, 4).await?;
        wait_completed_or_healthy(&api, &name).await?;
        let before = pod_states(&ns, &name).await?;
        let rolesets = rolesets_of(&ns.api::<RoleSet>().list(&ListParams::default()).await?.items);
        let patch = json!([{"op": "add", "path": "/spec/template/spec/roles/0/template/spec/containers/0/env/-", "value": {"name": "NEW", "value": "1"}}]);
        api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(patch)?))
            .await?;
        // While it updates, at most one prefill Pod is missing or unready at any time we look.
        let mut worst = 0;
        let done = tokio::time::timeout(TIMEOUT, async {
            loop {
                let pods = pod_states(&ns, &name).await?;
                let prefill_up = pods
                    .iter()
                    .filter(|(n, (_, _, ready))| n.contains("-prefill-") && *ready)
                    .count();
                worst = worst.max(3usize.saturating_sub(prefill_up));
                let o = api.get(&name).await?;
                let st = o.status.as_ref();
                if st.and_then(|s| s.rollout_status.as_ref()).and_then(|r| r.phase)
                    == Some(RolloutPhase::Completed)
                    && st.and_then(|s| s.current_revision.as_ref()) == st.and_then(|s| s.update_revision.as_ref())
                {
                    return anyhow::Ok(pods);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .context("the in-place update did not complete")??;
        ensure!(worst <= 1, "{worst} prefill Pods down at once (maxUnavailable 1)");
        let mut replaced = 0;
        for (pod, (uid, _, _)) in &before {
            let (uid_after, _, _) = done.get(pod).context("a Pod went away")?;
            if pod.contains("-prefill-") {
                replaced += usize::from(uid != uid_after);
            } else {
                ensure!(uid == uid_after, "{pod} of the unchanged role was replaced");
            }
        }
        ensure!(replaced == 3, "{replaced} of 3 prefill Pods replaced");
        let now = rolesets_of(&ns.api::<RoleSet>().list(&ListParams::default()).await?.items);
        ensure!(now == rolesets, "RoleSets changed: {rolesets:?} -> {now:?}");
        controller.process.ensure_running()?;
        Ok(())
    }
    .await;
    if result.is_err() {
        storm_test_support::dump_logs();
        eprintln!("{}", controller.process.log_tail(60));
    }
    result?;
    ns.cleanup().await
}

/// At rest after the first deployment (Healthy) or after an update (Completed).
async fn wait_completed_or_healthy(api: &kube::Api<StormService>, name: &str) -> Result<()> {
    wait_for("at rest", TIMEOUT, || async {
        let o = api.get(name).await?;
        let phase = o
            .status
            .as_ref()
            .and_then(|s| s.rollout_status.as_ref())
            .and_then(|r| r.phase);
        Ok(matches!(phase, Some(RolloutPhase::Healthy | RolloutPhase::Completed)).then_some(()))
    })
    .await
}

/// Switching from AIBrix's controllers to ours: a StormService whose RoleSet, Pods, headless
/// Service and status AIBrix's controllers made (names, labels, owner references, finalizers as
/// AIBrix writes them) is adopted without restarting a Pod; the next update proceeds from there;
/// deleting it does not hang on AIBrix's finalizers.
#[tokio::test]
async fn adopting_aibrix_objects_restarts_no_pod() -> Result<()> {
    let ns = TestNamespace::new("aibrix-adopt").await?;
    ns.cluster().install_crds()?;
    let result: Result<()> = async {
        // 1. What AIBrix's controllers left behind, made here before our controller starts.
        let out = ns.kubectl().args(["apply", "-f"]).arg(sample("1p1d.yaml")).output()?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let api = ns.api::<StormService>();
        let obj = api.get("vllm-1p1d").await?;
        let uid = obj.uid().context("uid")?;
        let aibrix_rev = "vllm-1p1d-7b9c8d6f5";
        let owner = json!({"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
            "name": "vllm-1p1d", "uid": uid, "controller": true, "blockOwnerDeletion": true});
        let spec = serde_json::to_value(obj.spec.template.spec.clone().context("template")?)?;
        let rs: RoleSet = serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RoleSet",
            "metadata": {"name": "vllm-1p1d-roleset-x7k2p",
                "labels": {"app": "vllm-1p1d", "storm-service-name": "vllm-1p1d",
                           "storm-service-revision": aibrix_rev},
                "annotations": {"stormservice.orchestration.aibrix.ai/roleset-index": "0"},
                "finalizers": ["orchestration.aibrix.ai/roleset-finalizer"],
                "ownerReferences": [owner]},
            "spec": spec
        }))?;
        let rs = ns.api::<RoleSet>().create(&Default::default(), &rs).await?;
        let rs_owner = json!({"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RoleSet",
            "name": rs.name_any(), "uid": rs.uid(), "controller": true, "blockOwnerDeletion": true});
        for (role, hash) in [("prefill", "5f7d8c"), ("decode", "a1b2c3")] {
            let tpl = obj.spec.template.spec.as_ref().and_then(|s| s.roles.iter().find(|r| r.name == role)).context("role")?;
            let pod_name = format!("vllm-1p1d-roleset-x7k2p-{role}-{hash}-0");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": pod_name,
                    "labels": {"storm-service-name": "vllm-1p1d", "roleset-name": "vllm-1p1d-roleset-x7k2p",
                               "role-name": role, "role-template-hash": hash,
                               "stormservice.orchestration.aibrix.ai/role-replica-index": "0"},
                    "ownerReferences": [rs_owner]},
                "spec": tpl.template.spec
            }))?;
            ns.api::<Pod>().create(&Default::default(), &pod).await?;
        }
        let status = json!({"status": {"currentRevision": aibrix_rev, "updateRevision": aibrix_rev,
            "replicas": 1, "readyReplicas": 1, "observedGeneration": 1}});
        api.patch_status("vllm-1p1d", &PatchParams::default(), &Patch::Merge(&status)).await?;
        let before = wait_for("AIBrix's Pods Ready", TIMEOUT, || async {
            let pods = pod_states(&ns, "vllm-1p1d").await?;
            Ok((pods.len() == 2 && pods.values().all(|(_, _, r)| *r)).then_some(pods))
        })
        .await?;

        // 2. Our controller takes over.
        let mut controller = Controller::start(ns.cluster(), ns.name())?;
        let inner: Result<()> = async {
            wait_for("the RoleSet adopted and the StormService Healthy", TIMEOUT, || async {
                let o = api.get("vllm-1p1d").await?;
                let st = o.status.as_ref();
                let healthy = st.and_then(|s| s.rollout_status.as_ref()).and_then(|r| r.phase)
                    == Some(RolloutPhase::Healthy);
                let r = ns.api::<RoleSet>().get("vllm-1p1d-roleset-x7k2p").await?;
                let adopted = r.labels().contains_key(storm_shared::keys::LABEL_REVISION);
                Ok((healthy && adopted).then_some(()))
            })
            .await?;
            storm_test_support::holds_for("no Pod restarted, no RoleSet made", Duration::from_secs(5), || async {
                let now = pod_states(&ns, "vllm-1p1d").await?;
                let rolesets = ns.api::<RoleSet>().list(&ListParams::default()).await?.items.len();
                Ok(rolesets == 1
                    && now.len() == 2
                    && now.iter().all(|(n, (uid, _, _))| before.get(n).is_some_and(|(u, _, _)| u == uid)))
            })
            .await?;
            // 3. The next update proceeds from there: prefill's Pod is replaced, decode's stays.
            let patch = json!([{"op": "add", "path": "/spec/template/spec/roles/0/template/spec/containers/0/env/-", "value": {"name": "NEW", "value": "1"}}]);
            api.patch("vllm-1p1d", &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(patch)?)).await?;
            let revision = api.get("vllm-1p1d").await?.status.and_then(|s| s.current_revision);
            wait_for("the update completed", TIMEOUT, || async {
                let o = api.get("vllm-1p1d").await?;
                let st = o.status.as_ref();
                let done = st.and_then(|s| s.rollout_status.as_ref()).and_then(|r| r.phase) == Some(RolloutPhase::Completed)
                    && st.and_then(|s| s.current_revision.clone()) != revision
                    && st.and_then(|s| s.current_revision.as_ref()) == st.and_then(|s| s.update_revision.as_ref());
                Ok(done.then_some(()))
            })
            .await?;
            let after = wait_for("two Pods Ready", TIMEOUT, || async {
                let pods = pod_states(&ns, "vllm-1p1d").await?;
                Ok((pods.len() == 2 && pods.values().all(|(_, _, r)| *r)).then_some(pods))
            })
            .await?;
            let decode = before.iter().find(|(n, _)| n.contains("-decode-")).context("decode")?;
            ensure!(after.get(decode.0).map(|p| &p.0) == Some(&decode.1.0), "decode's Pod was restarted: {after:?}");
            ensure!(!after.keys().any(|n| n.contains("-prefill-5f7d8c-")), "prefill's old Pod is still there: {after:?}");
            // 4. Deleting the StormService does not hang on AIBrix's finalizer.
            api.delete("vllm-1p1d", &Default::default()).await?;
            wait_for("the RoleSet gone", TIMEOUT, || async {
                Ok(ns.api::<RoleSet>().list(&ListParams::default()).await?.items.is_empty().then_some(()))
            })
            .await?;
            controller.process.ensure_running()?;
            Ok(())
        }
        .await;
        if inner.is_err() {
            eprintln!("{}", controller.process.log_tail(80));
        }
        inner
    }
    .await;
    if result.is_err() {
        storm_test_support::dump_logs();
    }
    result?;
    ns.cleanup().await
}

/// Gang scheduling: a RoleSet-level coscheduling strategy makes the PodGroup `<roleset>` (with the
/// real scheduler-plugins CRD installed) and labels every Pod with it; a role-level Volcano strategy
/// whose CRD is not installed gives a Warning event and the Pods are made anyway.
#[tokio::test]
async fn scheduling_strategies_make_podgroups_or_warn() -> Result<()> {
    let ns = TestNamespace::new("aibrix-gang").await?;
    ns.cluster().install_crds()?;
    ns.cluster().install_thirdparty_crds()?;
    let mut controller = Controller::start(ns.cluster(), ns.name())?;
    let result: Result<()> = async {
        let text = std::fs::read_to_string(sample("sglang-tp-1p1d.yaml"))?;
        let mut obj: serde_json::Value = serde_yaml_ng::from_str(&text)?;
        obj["spec"]["template"]["spec"]["schedulingStrategy"] =
            json!({"coschedulingSchedulingStrategy": {"minMember": 5, "scheduleTimeoutSeconds": 60}});
        let roles = obj["spec"]["template"]["spec"]["roles"].as_array_mut().context("roles")?;
        let prefill = roles.iter_mut().find(|r| r["name"] == "prefill").context("prefill")?;
        prefill["schedulingStrategy"] = json!({"volcanoSchedulingStrategy": {"minMember": 2, "queue": "gpu"}});
        let obj: StormService = serde_json::from_value(obj)?;
        let name = obj.name_any();
        ns.api::<StormService>().create(&Default::default(), &obj).await?;
        let obj = ns.api::<StormService>().get(&name).await?;
        let pods = wait_pods(&ns, &name, expected_pods(&obj)).await?;
        let roleset = ns.api::<RoleSet>().list(&ListParams::default()).await?.items.first().map(ResourceExt::name_any).context("RoleSet")?;
        let ar = kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup"),
            "podgroups",
        );
        let groups: kube::Api<kube::core::DynamicObject> = kube::Api::namespaced_with(ns.client(), ns.name(), &ar);
        let pg = wait_for("the coscheduling PodGroup", TIMEOUT, || async { Ok(groups.get_opt(&roleset).await?) }).await?;
        ensure!(pg.data["spec"]["minMember"] == json!(5), "minMember as written: {:?}", pg.data);
        ensure!(
            pg.metadata.owner_references.iter().flatten().any(|o| o.kind == "RoleSet" && o.name == roleset),
            "owned by the RoleSet"
        );
        for pod in &pods {
            ensure!(
                pod.labels().get("scheduling.x-k8s.io/pod-group") == Some(&roleset),
                "{} not in the RoleSet's PodGroup",
                pod.name_any()
            );
            if pod.labels().get("role-name").map(String::as_str) == Some("prefill") {
                let podset = pod.labels().get("stormservice.orchestration.aibrix.ai/podset-name").context("podset")?;
                ensure!(pod.labels().get("scheduling.k8s.io/group-name") == Some(podset));
                ensure!(pod.annotations().get("scheduling.k8s.io/group-name") == Some(podset));
            }
        }
        wait_for("a PodGroupUnavailable Warning for Volcano", TIMEOUT, || async {
            let events = ns
                .api::<k8s_openapi::api::events::v1::Event>()
                .list(&ListParams::default())
                .await?;
            Ok(events
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("PodGroupUnavailable")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note.as_deref().is_some_and(|n| n.contains("scheduling.volcano.sh"))
                })
                .then_some(()))
        })
        .await?;
        controller.process.ensure_running()?;
        Ok(())
    }
    .await;
    if result.is_err() {
        storm_test_support::dump_logs();
        eprintln!("{}", controller.process.log_tail(60));
    }
    result?;
    ns.cleanup().await
}

/// What AIBrix's controllers leave behind for StormService `name`: RoleSet `rs` of AIBrix revision
/// `rev` running `image`, with `pods` (name suffix, AIBrix hash, image) of role `decode`.
async fn aibrix_roleset(
    ns: &TestNamespace,
    obj: &StormService,
    rs: &str,
    rev: &str,
    image: &str,
    pods: &[(&str, &str, &str)],
) -> Result<()> {
    let name = obj.name_any();
    let owner = json!({"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
        "name": name, "uid": obj.uid(), "controller": true, "blockOwnerDeletion": true});
    let mut spec = serde_json::to_value(obj.spec.template.spec.clone().context("template")?)?;
    spec["roles"][0]["template"]["spec"]["containers"][0]["image"] = json!(image);
    let roleset: RoleSet = serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RoleSet",
        "metadata": {"name": rs,
            "labels": {"app": name, "storm-service-name": name, "storm-service-revision": rev},
            "annotations": {"stormservice.orchestration.aibrix.ai/roleset-index": "0"},
            "ownerReferences": [owner]},
        "spec": spec
    }))?;
    let roleset = ns
        .api::<RoleSet>()
        .create(&Default::default(), &roleset)
        .await?;
    let rs_owner = json!({"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RoleSet",
        "name": rs, "uid": roleset.uid(), "controller": true, "blockOwnerDeletion": true});
    for (index, hash, image) in pods {
        let mut pod_spec = spec["roles"][0]["template"]["spec"].clone();
        pod_spec["containers"][0]["image"] = json!(image);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("{rs}-decode-{hash}-{index}"),
                "labels": {"storm-service-name": name, "roleset-name": rs,
                           "role-name": "decode", "role-template-hash": hash,
                           "stormservice.orchestration.aibrix.ai/role-replica-index": index},
                "annotations": {"stormservice.orchestration.aibrix.ai/role-replica-index": index},
                "ownerReferences": [rs_owner]},
            "spec": pod_spec
        }))?;
        ns.api::<Pod>().create(&Default::default(), &pod).await?;
        // Apart in time: AIBrix makes the current template's Pods after the old ones.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    Ok(())
}

/// Switching over while AIBrix's controllers had an update half done: a rolling update (one
/// RoleSet of the old revision, one of the new) and an in-place update (one RoleSet whose Pods are
/// half old, half new). Both are adopted where they are and the update goes on from there: no Pod
/// that already runs the new template restarts, the old ones are replaced, and it completes.
#[tokio::test]
async fn adopting_an_update_aibrix_left_half_done_finishes_it() -> Result<()> {
    let ns = TestNamespace::new("aibrix-midway").await?;
    ns.cluster().install_crds()?;
    let result: Result<()> = async {
        let api = ns.api::<StormService>();
        let make = |name: &str, replicas: i32, update: &str| {
            json!({"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "stateful": true,
                    "selector": {"matchLabels": {"app": name}},
                    "updateStrategy": {"type": update},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {"roles": [
                        {"name": "decode", "replicas": 2, "stateful": true,
                         "template": {"spec": {"containers": [{"name": "engine", "image": "engine:v2"}]}}}]}}}})
        };
        // 1. A rolling update half done: RoleSet "a" still on v1, RoleSet "b" already on v2.
        let rolling: StormService = serde_json::from_value(make("rolling", 2, "RollingUpdate"))?;
        let rolling = api.create(&Default::default(), &rolling).await?;
        aibrix_roleset(&ns, &rolling, "rolling-roleset-a", "rolling-v1", "engine:v1",
            &[("0", "h1", "engine:v1"), ("1", "h1", "engine:v1")]).await?;
        aibrix_roleset(&ns, &rolling, "rolling-roleset-b", "rolling-v2", "engine:v2",
            &[("0", "h2", "engine:v2"), ("1", "h2", "engine:v2")]).await?;
        let status = json!({"status": {"currentRevision": "rolling-v1", "updateRevision": "rolling-v2",
            "replicas": 2, "readyReplicas": 2, "observedGeneration": 1}});
        api.patch_status("rolling", &PatchParams::default(), &Patch::Merge(&status)).await?;
        // 2. An in-place update half done: one RoleSet on v2 whose Pod 0 is still v1.
        let inplace: StormService = serde_json::from_value(make("inplace", 1, "InPlaceUpdate"))?;
        let inplace = api.create(&Default::default(), &inplace).await?;
        aibrix_roleset(&ns, &inplace, "inplace-roleset-a", "inplace-v2", "engine:v2",
            &[("0", "h1", "engine:v1"), ("1", "h2", "engine:v2")]).await?;
        let status = json!({"status": {"currentRevision": "inplace-v1", "updateRevision": "inplace-v2",
            "replicas": 1, "readyReplicas": 1, "observedGeneration": 1}});
        api.patch_status("inplace", &PatchParams::default(), &Patch::Merge(&status)).await?;
        let before_rolling = wait_for("AIBrix's rolling Pods Ready", TIMEOUT, || async {
            let pods = pod_states(&ns, "rolling").await?;
            Ok((pods.len() == 4 && pods.values().all(|(_, _, r)| *r)).then_some(pods))
        })
        .await?;
        let before_inplace = wait_for("AIBrix's in-place Pods Ready", TIMEOUT, || async {
            let pods = pod_states(&ns, "inplace").await?;
            Ok((pods.len() == 2 && pods.values().all(|(_, _, r)| *r)).then_some(pods))
        })
        .await?;

        // 3. Our controller takes over and finishes both updates.
        let mut controller = Controller::start(ns.cluster(), ns.name())?;
        let inner: Result<()> = async {
            for name in ["rolling", "inplace"] {
                wait_for("the update finished", TIMEOUT, || async {
                    let o = api.get(name).await?;
                    let st = o.status.as_ref();
                    let phase = st.and_then(|s| s.rollout_status.as_ref()).and_then(|r| r.phase);
                    let settled = matches!(phase, Some(RolloutPhase::Completed | RolloutPhase::Healthy))
                        && st.and_then(|s| s.current_revision.as_ref()) == st.and_then(|s| s.update_revision.as_ref());
                    let pods = pod_states(&ns, name).await?;
                    let want = if name == "rolling" { 4 } else { 2 };
                    let all_new = pods.len() == want && pods.values().all(|(_, image, ready)| image == "engine:v2" && *ready);
                    Ok((settled && all_new).then_some(()))
                })
                .await
                .with_context(|| name.to_string())?;
            }
            // Rolling: RoleSet b and its Pods were kept; a is gone, replaced by one of ours.
            let after = pod_states(&ns, "rolling").await?;
            for (pod, (uid, _, _)) in before_rolling.iter().filter(|(n, _)| n.contains("-roleset-b-")) {
                ensure!(after.get(pod).map(|p| &p.0) == Some(uid), "{pod} restarted: {after:?}");
            }
            ensure!(!after.keys().any(|n| n.contains("-roleset-a-")), "the old RoleSet's Pods stay: {after:?}");
            let rolesets = ns.api::<RoleSet>().list(&ListParams::default().labels("storm-service-name=rolling")).await?.items;
            ensure!(rolesets.len() == 2, "two RoleSets: {:?}", rolesets_of(&rolesets));
            ensure!(rolesets.iter().any(|r| r.name_any() == "rolling-roleset-b"), "b kept");
            // In place: the v2 Pod kept its UID, the v1 Pod was replaced, no RoleSet was made.
            let after = pod_states(&ns, "inplace").await?;
            let kept = before_inplace.iter().find(|(_, (_, image, _))| image == "engine:v2").context("v2 Pod")?;
            ensure!(after.get(kept.0).map(|p| &p.0) == Some(&kept.1.0), "the v2 Pod restarted: {after:?}");
            let old = before_inplace.iter().find(|(_, (_, image, _))| image == "engine:v1").context("v1 Pod")?;
            ensure!(after.get(old.0).map(|p| &p.0) != Some(&old.1.0), "the v1 Pod was kept: {after:?}");
            let rolesets = ns.api::<RoleSet>().list(&ListParams::default().labels("storm-service-name=inplace")).await?.items;
            ensure!(rolesets.len() == 1, "one RoleSet: {:?}", rolesets_of(&rolesets));
            controller.process.ensure_running()?;
            Ok(())
        }
        .await;
        if inner.is_err() {
            eprintln!("{}", controller.process.log_tail(80));
        }
        inner
    }
    .await;
    if result.is_err() {
        storm_test_support::dump_logs();
    }
    result?;
    ns.cleanup().await
}
