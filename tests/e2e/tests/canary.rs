//! Canary rollouts end to end: the real controller against the local control plane, where kwok
//! makes Pods Ready (or fail, on a label).

use anyhow::{Context, Result, ensure};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;
use storm_shared::keys::LABEL_NAME;
use storm_shared::types::stormservice::RolloutPhase;
use storm_test_support::{FAIL_LABEL, NEVER_READY_LABEL, wait_for};

mod common;
use common::*;

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
    wait_service(&env, "app-stable", &v1).await?;
    wait_service(&env, "app-canary", &v2).await?;
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
    wait_annotations_removed(&env).await?;
    wait_rolesets(&env, &v1, 0, &v2, 4).await?;
    wait_service(&env, "app-stable", &v2).await?;
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
            f.len() >= 4 && (phase.is_empty() || f[1] == phase) && f[2] == step && f[3] == weight
        })
    };
    // Step 0 is seen (Paused there was checked above through the API): kubectl's watch now and
    // then re-lists under load and shows only the state it re-lists at, not every step between.
    ensure!(has("", "0", "10"), "kubectl -w output:\n{text}");
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
    wait_service(&env, "app-canary", &v1).await?;
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
    wait_service(&env, "app-canary", &v1).await?;
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
