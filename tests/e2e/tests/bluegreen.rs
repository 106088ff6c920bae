//! Blue-green rollouts end to end: the real controller against the local control plane.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use storm_shared::types::stormservice::{AnalysisPhase, BlueGreenStatus, RolloutPhase};
use storm_test_support::prometheus::{Exporter, Prometheus};
use storm_test_support::{holds_for, wait_for};

mod common;
use common::*;

const ACTIVE: &str = "app-active";
const PREVIEW: &str = "app-preview";

/// The seed's blue-green StormService (tests/fixtures/seed/02-blue-green.yaml) renamed to `app`,
/// with the fields of `bg` overriding its `blueGreen` (the seed's 600 s delay is too long for a
/// test); a `null` drops the field.
fn seed_blue_green(bg: Value) -> Result<Value> {
    let path = storm_test_support::repo_root().join("tests/fixtures/seed/02-blue-green.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut obj: Value = serde_yaml_ng::from_str(&text)?;
    obj["metadata"]["name"] = json!("app");
    obj["spec"]["selector"] = json!({"matchLabels": {"app": "app"}});
    obj["spec"]["template"]["metadata"]["labels"] = json!({"app": "app"});
    obj["spec"]["template"]["spec"]["roles"][0]["template"]["metadata"]["labels"] =
        json!({"app": "app"});
    let strategy = obj["spec"]["rolloutStrategy"]["blueGreen"]
        .as_object_mut()
        .context("seed blueGreen")?;
    for (k, v) in bg.as_object().context("bg")? {
        if v.is_null() {
            strategy.remove(k);
        } else {
            strategy.insert(k.clone(), v.clone());
        }
    }
    obj["spec"]["replicas"] = json!(2);
    Ok(obj)
}

fn bg_status(obj: &storm_shared::StormService) -> BlueGreenStatus {
    obj.status
        .as_ref()
        .and_then(|s| s.rollout_status.as_ref())
        .and_then(|r| r.blue_green_status.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn seed_blue_green_waits_for_approval_promotes_and_keeps_the_old_revision_for_the_delay()
-> Result<()> {
    let mut env = setup_with_services("bg-seed", &[ACTIVE, PREVIEW]).await?;
    // The seed's analyses, as templates measuring the new revision's error rate in a real
    // Prometheus (pre-promotion) and through the web provider (post-promotion).
    let exporter = Exporter::start()?;
    exporter.set("preview", 999, 1);
    let prometheus = Prometheus::start(&[exporter.target()])?;
    let query = exporter.error_percent_query("preview");
    prometheus.wait_for_value(&query, 0.1)?;
    for name in ["integration-tests", "smoke-tests"] {
        create_template(
            &env,
            name,
            json!({"metrics": [{"name": "errors", "successCondition": "result < 1",
                "provider": {"prometheus": {"address": prometheus.base_url(), "query": query}}}]}),
        )
        .await?;
    }
    let url = prometheus.query_url(&query);
    create_template(
        &env,
        "monitoring-check",
        json!({"metrics": [{"name": "errors", "successCondition": "double(result) < 1.0",
            "provider": {"web": {"url": url, "jsonPath": "{$.data.result[0].value[1]}"}}}]}),
    )
    .await?;
    let delay = 8;
    create(
        &env,
        seed_blue_green(json!({
            "activeService": ACTIVE, "previewService": PREVIEW,
            "autoPromotionEnabled": false, "scaleDownDelaySeconds": delay
        }))?,
    )
    .await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    let v1 = stable_revision(&env).await?;
    wait_service(&env, ACTIVE, &v1).await?;
    set_image(&env, "app:v2").await?;
    let (_, v2) = revisions(&env).await?;
    let obj = wait_phase(&env, RolloutPhase::Paused, None).await?;
    ensure!(
        progress(&obj).3.as_deref() == Some("WaitingForApproval"),
        "{:?}",
        progress(&obj)
    );
    wait_rolesets(&env, &v1, 2, &v2, 2).await?;
    wait_service(&env, ACTIVE, &v1).await?;
    wait_service(&env, PREVIEW, &v2).await?;
    let st = bg_status(&obj);
    ensure!(st.active_selector.as_deref() == Some(v1.as_str()), "{st:?}");
    ensure!(
        st.preview_selector.as_deref() == Some(v2.as_str()),
        "{st:?}"
    );
    ensure!(st.preview_expose_time.is_some(), "{st:?}");
    let runs = obj
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.as_ref())
        .map(|r| r.analysis_runs.clone())
        .unwrap_or_default();
    ensure!(
        runs.iter().any(|r| r.name == "pre-promotion"
            && r.metrics.len() == 2
            && r.phase == AnalysisPhase::Successful),
        "approval is asked only after the pre-promotion analysis passed: {runs:#?}"
    );
    // It waits: no approval, no promotion.
    holds_for(
        "no promotion without approval",
        Duration::from_secs(3),
        || async { Ok(service_revision(&env, ACTIVE).await? == Some(v1.clone())) },
    )
    .await?;

    annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
    let promoted_at = Instant::now();
    let obj = wait_phase(&env, RolloutPhase::Completed, None).await?;
    wait_service(&env, ACTIVE, &v2).await?;
    let st = bg_status(&obj);
    ensure!(st.active_selector.as_deref() == Some(v2.as_str()), "{st:?}");
    ensure!(st.scale_down_delay_start_time.is_some(), "{st:?}");
    wait_annotations_removed(&env).await?;
    // The old RoleSets stay for the delay, then go.
    let kept_until = Duration::from_secs(delay) - Duration::from_secs(2);
    holds_for(
        "old RoleSets kept during scaleDownDelaySeconds",
        kept_until.saturating_sub(promoted_at.elapsed()),
        || async { Ok(rolesets(&env).await?.get(&v1).copied().unwrap_or(0) == 2) },
    )
    .await?;
    wait_rolesets(&env, &v1, 0, &v2, 2).await?;
    ensure!(
        promoted_at.elapsed() >= Duration::from_secs(delay - 1),
        "removed only after the delay ({:?})",
        promoted_at.elapsed()
    );
    env.controller.process.ensure_running()?;
    env.ns.cleanup().await
}

#[tokio::test]
async fn automatic_promotion_switches_when_the_preview_is_ready() -> Result<()> {
    let env = setup_with_services("bg-auto", &[ACTIVE, PREVIEW]).await?;
    create(
        &env,
        seed_blue_green(json!({
            "prePromotionAnalysis": null,
            "postPromotionAnalysis": null,
            "activeService": ACTIVE, "previewService": PREVIEW,
            "autoPromotionEnabled": true, "scaleDownDelaySeconds": 0
        }))?,
    )
    .await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    let v1 = stable_revision(&env).await?;
    set_image(&env, "app:v2").await?;
    // The rollout may complete before a poll sees it in progress: wait for the new revision.
    let v2 = wait_for("the new revision", TIMEOUT, || async {
        let s = env.api.get("app").await?.status.context("status")?;
        Ok(s.update_revision.filter(|u| *u != v1))
    })
    .await?;
    let obj = wait_phase(&env, RolloutPhase::Completed, None).await?;
    wait_service(&env, ACTIVE, &v2).await?;
    wait_service(&env, PREVIEW, &v2).await?;
    ensure!(
        obj.status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref())
            == Some(v2.as_str())
    );
    wait_rolesets(&env, &v1, 0, &v2, 2).await?;
    env.ns.cleanup().await
}

#[tokio::test]
async fn failing_preview_pods_roll_back_and_the_active_service_never_moves() -> Result<()> {
    let env = setup_with_services("bg-fail", &[ACTIVE, PREVIEW]).await?;
    create(
        &env,
        seed_blue_green(json!({
            "prePromotionAnalysis": null,
            "postPromotionAnalysis": null,
            "activeService": ACTIVE, "previewService": PREVIEW, "autoPromotionEnabled": true,
            "abortScaleDownDelaySeconds": 4
        }))?,
    )
    .await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    let v1 = stable_revision(&env).await?;
    // The new revision's Pods fail (kwok, on this label).
    let patch = json!([{"op": "add", "path": "/spec/template/spec/roles/0/template/metadata/labels/storm.test~1fail", "value": "true"}]);
    env.api
        .patch(
            "app",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::<()>::Json(serde_json::from_value(patch)?),
        )
        .await?;
    let (_, v2) = revisions(&env).await?;
    let obj = wait_phase(&env, RolloutPhase::Degraded, None).await?;
    let reason = obj
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.as_ref())
        .and_then(|r| r.conditions.iter().find(|c| c.type_ == "Degraded"))
        .and_then(|c| c.reason.clone());
    ensure!(reason.as_deref() == Some("HealthCheckFailed"), "{reason:?}");
    wait_service(&env, ACTIVE, &v1).await?;
    // Rolled back: the new revision drains for abortScaleDownDelaySeconds, then goes.
    wait_drained(&env, &v2, "Aborted", 4).await?;
    wait_rolesets(&env, &v1, 2, &v2, 0).await?;
    wait_for("the status to say active is v1", TIMEOUT, || async {
        let obj = env.api.get("app").await?;
        Ok((bg_status(&obj).active_selector.as_deref() == Some(v1.as_str())).then_some(()))
    })
    .await?;
    env.ns.cleanup().await
}

/// RoleSets of `rev` whose `Ready` condition is `True`.
async fn ready_rolesets(env: &Env, rev: &str) -> Result<usize> {
    let list = env
        .ns
        .api::<storm_shared::RoleSet>()
        .list(&kube::api::ListParams::default().labels(&format!(
            "{}=app,{}={rev}",
            storm_shared::keys::LABEL_NAME,
            storm_shared::keys::LABEL_REVISION
        )))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|r| storm_e2e::roleset_is_ready(r))
        .count())
}

/// `previewReplicaCount: 1` of 3 and `autoPromotionSeconds`: the preview waits small, promotes on
/// its own, grows to 3, and the active Service switches only once all 3 are ready.
#[tokio::test]
async fn a_small_preview_promotes_itself_and_grows_before_the_switch() -> Result<()> {
    let env = setup_with_services("bg-small", &[ACTIVE, PREVIEW]).await?;
    let auto = 6;
    let mut obj = seed_blue_green(json!({
        "prePromotionAnalysis": null, "postPromotionAnalysis": null,
        "activeService": ACTIVE, "previewService": PREVIEW,
        "autoPromotionEnabled": false, "autoPromotionSeconds": auto,
        "previewReplicaCount": 1, "scaleDownDelaySeconds": 0
    }))?;
    obj["spec"]["replicas"] = json!(3);
    create(&env, obj).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    let v1 = stable_revision(&env).await?;
    set_image(&env, "app:v2").await?;
    let (_, v2) = revisions(&env).await?;
    let paused = wait_phase(&env, RolloutPhase::Paused, None).await?;
    ensure!(
        progress(&paused).3.as_deref() == Some("WaitingForApproval"),
        "{:?}",
        progress(&paused)
    );
    let waiting_since = Instant::now();
    wait_rolesets(&env, &v1, 3, &v2, 1).await?;
    wait_service(&env, PREVIEW, &v2).await?;
    // Until the switch: the preview never has more than 1 RoleSet before the promotion, and the
    // active Service never selects v2 before 3 of its RoleSets are ready.
    let mut grew_at = None;
    let mut max_before_promotion = 0;
    loop {
        ensure!(
            waiting_since.elapsed() < TIMEOUT,
            "no switch within {TIMEOUT:?}"
        );
        let counts = rolesets(&env).await?;
        let preview = counts.get(&v2).copied().unwrap_or(0);
        let obj = env.api.get("app").await?;
        let promoting = bg_status(&obj).promoting == Some(true);
        if !promoting && bg_status(&obj).active_selector.as_deref() != Some(v2.as_str()) {
            max_before_promotion = max_before_promotion.max(preview);
        } else if grew_at.is_none() {
            // How long after the preview was ready the promotion came.
            let exposed = bg_status(&obj)
                .preview_expose_time
                .context("previewExposeTime")?;
            grew_at = Some(k8s_openapi::jiff::Timestamp::now().duration_since(exposed.0));
        }
        let ready = ready_rolesets(&env, &v2).await?;
        if service_revision(&env, ACTIVE).await?.as_deref() == Some(v2.as_str()) {
            ensure!(
                ready == 3,
                "active switched with {ready} of 3 preview RoleSets ready"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        max_before_promotion == 1,
        "preview had {max_before_promotion} RoleSets before the promotion"
    );
    let grew_at = grew_at.context("promotion seen")?;
    ensure!(
        grew_at >= k8s_openapi::jiff::SignedDuration::from_secs(auto - 1),
        "promoted {grew_at:?} after the preview was ready, before autoPromotionSeconds ({auto} s)"
    );
    wait_phase(&env, RolloutPhase::Completed, None).await?;
    wait_rolesets(&env, &v1, 0, &v2, 3).await?;
    env.ns.cleanup().await
}
