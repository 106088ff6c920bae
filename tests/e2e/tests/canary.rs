//! Canary rollouts end to end: the real controller against the local control plane, where kwok
//! makes Pods Ready (or fail, on a label).

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::time::Duration;
use storm_shared::keys::{LABEL_NAME, LABEL_REVISION};
use storm_shared::types::stormservice::RolloutPhase;
use storm_shared::{RoleSet, StormService};
use storm_test_support::process::Controller;
use storm_test_support::{FAIL_LABEL, NEVER_READY_LABEL, TestNamespace, wait_for};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A StormService named `app` with one role, `replicas` RoleSets, and a canary strategy.
fn storm_service(replicas: i32, steps: Value, auto_rollback: Option<Value>) -> Value {
    let mut strategy = json!({
        "type": "Canary",
        "canary": {"stableService": "app-stable", "canaryService": "app-canary", "steps": steps}
    });
    if let Some(ar) = auto_rollback {
        strategy["autoRollback"] = ar;
    }
    json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "StormService",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": replicas,
            // Only the revisions in use are kept: checked after the seed canary completes.
            "revisionHistoryLimit": 0,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {"roles": [{"name": "server", "replicas": 1, "template": {
                    "metadata": {"labels": {"app": "app"}},
                    "spec": {"containers": [{"name": "server", "image": "app:v1"}]}
                }}]}
            },
            "rolloutStrategy": strategy
        }
    })
}

/// The seed's canary with the 5m pause shortened to 3s.
fn seed_steps() -> Value {
    json!([
        {"weight": 10, "pause": {"duration": "3s"}},
        {"weight": 25, "pause": {"untilApproval": true}},
        {"weight": 50},
        {"weight": 100}
    ])
}

struct Env {
    ns: TestNamespace,
    controller: Controller,
    api: Api<StormService>,
}

async fn setup(prefix: &str) -> Result<Env> {
    let ns = TestNamespace::new(prefix).await?;
    ns.cluster().install_crds()?;
    let controller = Controller::start(ns.cluster(), ns.name())?;
    let api = ns.api::<StormService>();
    let services: Api<Service> = ns.api();
    for name in ["app-stable", "app-canary"] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "app"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))?;
        services.create(&PostParams::default(), &svc).await?;
    }
    Ok(Env {
        ns,
        controller,
        api,
    })
}

async fn create(env: &Env, obj: Value) -> Result<()> {
    let obj: StormService = serde_json::from_value(obj)?;
    env.api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

async fn set_image(env: &Env, image: &str) -> Result<()> {
    let patch = json!([{"op": "replace", "path": "/spec/template/spec/roles/0/template/spec/containers/0/image", "value": image}]);
    env.api
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(patch)?),
        )
        .await?;
    Ok(())
}

async fn annotate(env: &Env, key: &str) -> Result<()> {
    let body = json!({"metadata": {"annotations": {key: "true"}}});
    env.api
        .patch("app", &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// (phase, step, weight, Paused reason) as the status says.
fn progress(obj: &StormService) -> (Option<RolloutPhase>, Option<i32>, i32, Option<String>) {
    let rs = obj
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.clone())
        .unwrap_or_default();
    let paused = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Paused" && c.status == "True")
        .and_then(|c| c.reason.clone());
    (
        rs.phase,
        rs.current_step_index,
        rs.canary_status.map_or(0, |c| c.current_weight),
        paused,
    )
}

async fn wait_phase(env: &Env, phase: RolloutPhase, step: Option<i32>) -> Result<StormService> {
    wait_for(
        &format!("phase {phase:?} at step {step:?}"),
        TIMEOUT,
        || async {
            let obj = env.api.get("app").await?;
            let (p, s, _, _) = progress(&obj);
            Ok((p == Some(phase) && (step.is_none() || s == step)).then_some(obj))
        },
    )
    .await
    .with_context(|| {
        // What the controller was doing is the first thing to read when a rollout stalls.
        format!("controller log:\n{}", env.controller.process.log_tail(60))
    })
}

/// RoleSets per revision.
async fn rolesets(env: &Env) -> Result<std::collections::BTreeMap<String, usize>> {
    let list = env
        .ns
        .api::<RoleSet>()
        .list(&ListParams::default().labels(&format!("{LABEL_NAME}=app")))
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for r in list
        .items
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
    {
        let rev = r
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_REVISION))
            .cloned()
            .unwrap_or_default();
        *out.entry(rev).or_insert(0) += 1;
    }
    Ok(out)
}

/// The stable revision, at rest.
async fn stable_revision(env: &Env) -> Result<String> {
    let s = env.api.get("app").await?.status.context("status")?;
    s.current_revision.context("currentRevision")
}

/// (stable, canary) revisions once the controller has seen the template change.
async fn revisions(env: &Env) -> Result<(String, String)> {
    wait_for(
        "the controller to see the new template",
        TIMEOUT,
        || async {
            let obj = env.api.get("app").await?;
            let s = obj.status.context("status")?;
            let current = s.current_revision.context("currentRevision")?;
            let update = s.update_revision.context("updateRevision")?;
            let seen = s.observed_generation == obj.metadata.generation;
            Ok((seen && current != update).then_some((current, update)))
        },
    )
    .await
}

async fn service_revision(env: &Env, name: &str) -> Result<Option<String>> {
    let svc = env.ns.api::<Service>().get(name).await?;
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    ensure!(
        selector.get("app").map(String::as_str) == Some("app"),
        "the user's selector key survives: {selector:?}"
    );
    Ok(selector.get(LABEL_REVISION).cloned())
}

async fn wait_rolesets(env: &Env, stable: &str, s: usize, canary: &str, c: usize) -> Result<()> {
    wait_for(
        &format!("{s} stable and {c} canary RoleSets"),
        TIMEOUT,
        || async {
            let r = rolesets(env).await?;
            let got = (
                r.get(stable).copied().unwrap_or(0),
                r.get(canary).copied().unwrap_or(0),
            );
            Ok((got == (s, c) && r.len() <= 2).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn seed_canary_completes_after_one_approval() -> Result<()> {
    let mut env = setup("canary-seed").await?;
    create(&env, storm_service(4, seed_steps(), None)).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    // `kubectl get stormservice -w` shows phase, step and weight as they change.
    let mut watch = env
        .ns
        .kubectl()
        .args(["get", "stormservice", "app", "-w"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    set_image(&env, "app:v2").await?;
    let (v1, v2) = revisions(&env).await?;
    ensure!(v1 != v2);
    let obj = wait_phase(&env, RolloutPhase::Paused, Some(0)).await?;
    ensure!(
        progress(&obj).2 == 10,
        "weight 10 at step 0: {:?}",
        progress(&obj)
    );
    wait_rolesets(&env, &v1, 3, &v2, 1).await?;
    ensure!(service_revision(&env, "app-stable").await? == Some(v1.clone()));
    ensure!(service_revision(&env, "app-canary").await? == Some(v2.clone()));
    let obj = wait_phase(&env, RolloutPhase::Paused, Some(1)).await?;
    ensure!(
        progress(&obj).3.as_deref() == Some("WaitingForApproval"),
        "{:?}",
        progress(&obj)
    );
    ensure!(progress(&obj).2 == 25);
    // It waits: no approval, no progress.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        progress(&env.api.get("app").await?).1 == Some(1),
        "still at step 1 without approval"
    );
    annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
    let obj = wait_phase(&env, RolloutPhase::Completed, None).await?;
    ensure!(progress(&obj).2 == 100);
    let status = obj.status.context("status")?;
    ensure!(status.current_revision.as_deref() == Some(v2.as_str()));
    ensure!(
        obj.metadata.annotations.unwrap_or_default().is_empty(),
        "the approval annotation was removed"
    );
    wait_rolesets(&env, &v1, 0, &v2, 4).await?;
    ensure!(service_revision(&env, "app-stable").await? == Some(v2.clone()));
    // revisionHistoryLimit 0: v1's stored template goes once v2 is stable.
    wait_for(
        "only the stable revision's template kept",
        TIMEOUT,
        || async {
            let crs = env
                .ns
                .api::<k8s_openapi::api::apps::v1::ControllerRevision>()
                .list(&ListParams::default().labels(&format!("{LABEL_NAME}=app")))
                .await?;
            let names: Vec<String> = crs
                .items
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            Ok((names == vec![format!("app-{v2}")]).then_some(()))
        },
    )
    .await?;
    env.controller.process.ensure_running()?;
    // The watch printed the journey.
    let _ = watch.kill();
    let out = watch.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let has = |phase: &str, step: &str, weight: &str| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[1] == phase && f[2] == step && f[3] == weight
        })
    };
    ensure!(has("Paused", "0", "10"), "kubectl -w output:\n{text}");
    ensure!(has("Paused", "1", "25"), "kubectl -w output:\n{text}");
    ensure!(has("Completed", "4", "100"), "kubectl -w output:\n{text}");
    env.ns.cleanup().await
}

#[tokio::test]
async fn abort_at_fifty_percent_returns_to_stable_and_retry_restarts() -> Result<()> {
    let env = setup("canary-abort").await?;
    let steps =
        json!([{"weight": 25}, {"weight": 50, "pause": {"untilApproval": true}}, {"weight": 100}]);
    create(&env, storm_service(4, steps, None)).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    set_image(&env, "app:v2").await?;
    let (v1, v2) = revisions(&env).await?;
    wait_phase(&env, RolloutPhase::Paused, Some(1)).await?;
    wait_rolesets(&env, &v1, 2, &v2, 2).await?;
    annotate(&env, "stormservice.aibrix.ai/rollout-abort").await?;
    let obj = wait_phase(&env, RolloutPhase::Aborted, None).await?;
    ensure!(progress(&obj).2 == 0, "weight back to 0");
    ensure!(
        service_revision(&env, "app-canary").await? == Some(v1.clone()),
        "all traffic on stable"
    );
    wait_rolesets(&env, &v1, 4, &v2, 0).await?;
    // The stable RoleSets recreated by the abort run the stable template, not the canary's.
    wait_for("every Pod back on app:v1", TIMEOUT, || async {
        let pods = env
            .ns
            .api::<k8s_openapi::api::core::v1::Pod>()
            .list(&ListParams::default().labels(&format!("{LABEL_NAME}=app")))
            .await?;
        let images: Vec<String> = pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .flat_map(|p| {
                p.spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .filter_map(|c| c.image.clone())
            })
            .collect();
        Ok((images.len() == 4 && images.iter().all(|i| i == "app:v1")).then_some(()))
    })
    .await?;
    // Aborted stays aborted while the template still differs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(progress(&env.api.get("app").await?).0 == Some(RolloutPhase::Aborted));
    annotate(&env, "stormservice.aibrix.ai/rollout-retry").await?;
    wait_phase(&env, RolloutPhase::Paused, Some(1)).await?;
    wait_rolesets(&env, &v1, 2, &v2, 2).await?;
    env.ns.cleanup().await
}

#[tokio::test]
async fn failing_canary_pods_are_rolled_back() -> Result<()> {
    let env = setup("canary-health").await?;
    create(&env, storm_service(3, seed_steps(), None)).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    let v1 = stable_revision(&env).await?;
    // The new revision's Pods carry the label that makes kwok fail them.
    let patch = json!([{"op": "add", "path": "/spec/template/spec/roles/0/template/metadata/labels/storm.test~1fail", "value": "true"}]);
    env.api
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(patch)?),
        )
        .await?;
    ensure!(FAIL_LABEL == "storm.test/fail");
    let obj = wait_phase(&env, RolloutPhase::Degraded, None).await?;
    let rs = obj
        .status
        .and_then(|s| s.rollout_status)
        .context("rolloutStatus")?;
    let degraded = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .context("Degraded condition")?;
    ensure!(
        degraded.reason.as_deref() == Some("HealthCheckFailed"),
        "{degraded:?}"
    );
    let (_, v2) = revisions(&env).await?;
    wait_rolesets(&env, &v1, 3, &v2, 0).await?;
    ensure!(service_revision(&env, "app-canary").await? == Some(v1));
    env.ns.cleanup().await
}

#[tokio::test]
async fn a_stuck_step_hits_on_timeout() -> Result<()> {
    let env = setup("canary-timeout").await?;
    let ar = json!({"onTimeout": "6s", "onFailure": {"healthCheckGracePeriod": "10m"}});
    create(&env, storm_service(2, seed_steps(), Some(ar))).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    let patch = json!([{"op": "add", "path": "/spec/template/spec/roles/0/template/metadata/labels/storm.test~1never-ready", "value": "true"}]);
    env.api
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(patch)?),
        )
        .await?;
    ensure!(NEVER_READY_LABEL == "storm.test/never-ready");
    let obj = wait_phase(&env, RolloutPhase::Degraded, None).await?;
    let rs = obj
        .status
        .and_then(|s| s.rollout_status)
        .context("rolloutStatus")?;
    let degraded = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .context("Degraded condition")?;
    ensure!(
        degraded.reason.as_deref() == Some("ProgressDeadlineExceeded"),
        "{degraded:?}"
    );
    env.ns.cleanup().await
}

#[tokio::test]
async fn a_killed_controller_resumes_at_the_same_step() -> Result<()> {
    let mut env = setup("canary-crash").await?;
    let steps = json!([
        {"weight": 25, "pause": {"untilApproval": true}},
        {"weight": 50, "pause": {"untilApproval": true}},
        {"weight": 100}
    ]);
    create(&env, storm_service(4, steps, None)).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    set_image(&env, "app:v2").await?;
    let (v1, v2) = revisions(&env).await?;
    wait_phase(&env, RolloutPhase::Paused, Some(0)).await?;
    wait_rolesets(&env, &v1, 3, &v2, 1).await?;
    let before = env.api.get("app").await?.status;
    env.controller.process.kill()?;
    // While it is down, the user approves once.
    annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        env.api.get("app").await?.status == before,
        "nothing acts while the controller is down"
    );
    env.controller.process.restart()?;
    // One approval, one gate: it stops at step 1, not further.
    wait_phase(&env, RolloutPhase::Paused, Some(1)).await?;
    wait_rolesets(&env, &v1, 2, &v2, 2).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let obj = env.api.get("app").await?;
    ensure!(
        progress(&obj).1 == Some(1),
        "the single approval passed only one gate: {:?}",
        progress(&obj)
    );
    // Killed again in the middle of a step: it picks up where it was, without extra RoleSets.
    env.controller.process.kill()?;
    env.controller.process.restart()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let obj = env.api.get("app").await?;
    ensure!(progress(&obj).1 == Some(1));
    let r = rolesets(&env).await?;
    ensure!(r.get(&v1) == Some(&2) && r.get(&v2) == Some(&2), "{r:?}");
    env.controller.process.ensure_running()?;
    annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
    wait_phase(&env, RolloutPhase::Completed, None).await?;
    env.ns.cleanup().await
}
