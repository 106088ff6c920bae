//! Analysis-driven rollouts end to end: the controller binary measures AnalysisTemplates against a
//! real Prometheus server (Debian's `prometheus`, started on loopback) that scrapes a fake exporter
//! whose success and error counters the test sets.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use storm_shared::types::stormservice::{AnalysisPhase, RolloutPhase};
use storm_test_support::prometheus::{Exporter, Prometheus};
use storm_test_support::wait_for;

mod common;
use common::*;

/// The label value the exporter counts the canary's requests under.
const CANARY: &str = "app-canary";

/// A template measuring the error percentage of `{{args.revision}}` every second.
fn error_rate_template(prometheus: &Prometheus, exporter: &Exporter, count: i32) -> Value {
    json!({
        "args": [{"name": "revision"}],
        "metrics": [{
            "name": "error-percent",
            "provider": {"prometheus": {
                "address": prometheus.base_url(),
                "query": exporter.error_percent_query("{{args.revision}}")
            }},
            "successCondition": "result < 5",
            "count": count,
            "interval": "1s"
        }]
    })
}

fn degraded_reason(obj: &storm_shared::StormService) -> Option<String> {
    obj.status
        .as_ref()?
        .rollout_status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .and_then(|c| c.reason.clone())
}

fn runs(
    obj: &storm_shared::StormService,
) -> Vec<storm_shared::types::stormservice::AnalysisRunStatus> {
    obj.status
        .as_ref()
        .and_then(|s| s.rollout_status.as_ref())
        .map(|r| r.analysis_runs.clone())
        .unwrap_or_default()
}

async fn started(prefix: &str) -> Result<(Env, Exporter, Prometheus)> {
    let env = setup(prefix).await?;
    let exporter = Exporter::start()?;
    exporter.set(CANARY, 990, 10);
    let prometheus = Prometheus::start(&[exporter.target()])?;
    prometheus.wait_for_value(&exporter.error_percent_query(CANARY), 1.0)?;
    Ok((env, exporter, prometheus))
}

fn analysed_steps() -> Value {
    json!([
        {"weight": 50, "analysis": {
            "templates": [{"name": "error-rate"}],
            "args": [{"name": "revision", "value": CANARY}]
        }}
    ])
}

/// A canary whose step 0 measures the error rate `count` times, rolling out from v1 to v2:
/// (env, exporter, prometheus, v1, v2).
async fn rolling_out(
    prefix: &str,
    count: i32,
) -> Result<(Env, Exporter, Prometheus, String, String)> {
    let (env, exporter, prometheus) = started(prefix).await?;
    create_template(
        &env,
        "error-rate",
        error_rate_template(&prometheus, &exporter, count),
    )
    .await?;
    create(&env, storm_service(2, analysed_steps(), None)).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    set_image(&env, "app:v2").await?;
    let (v1, v2) = revisions(&env).await?;
    Ok((env, exporter, prometheus, v1, v2))
}

#[tokio::test]
async fn a_canary_whose_error_rate_stays_low_completes() -> Result<()> {
    let (env, _exporter, _prometheus, _, v2) = rolling_out("an-pass", 3).await?;
    let obj = wait_phase(&env, RolloutPhase::Completed, None).await?;
    let run = runs(&obj)
        .into_iter()
        .find(|r| r.name == "step-0")
        .context("the step's analysis run stays in the status")?;
    ensure!(run.phase == AnalysisPhase::Successful, "{run:#?}");
    ensure!(run.revision == v2);
    let metric = &run.metrics[0];
    ensure!(metric.name == "error-rate/error-percent", "{metric:#?}");
    ensure!(metric.count == 3 && metric.successful == 3, "{metric:#?}");
    ensure!(
        metric
            .measurements
            .iter()
            .all(|m| m.value.as_deref() == Some("1.0")),
        "1% measured each time: {metric:#?}"
    );
    env.ns.cleanup().await
}

#[tokio::test]
async fn a_canary_whose_error_rate_climbs_is_rolled_back_with_analysis_failed() -> Result<()> {
    let (env, exporter, _prometheus, v1, v2) = rolling_out("an-fail", 30).await?;
    // The analysis measures a healthy canary first...
    wait_for("a first successful measurement", TIMEOUT, || async {
        let obj = env.api.get("app").await?;
        Ok(runs(&obj)
            .iter()
            .any(|r| r.metrics.first().is_some_and(|m| m.successful >= 1))
            .then_some(()))
    })
    .await?;
    // ...then its errors climb to 20%.
    exporter.set(CANARY, 1000, 250);
    let obj = wait_phase(&env, RolloutPhase::Degraded, None).await?;
    ensure!(
        degraded_reason(&obj).as_deref() == Some("AnalysisFailed"),
        "{:?}",
        degraded_reason(&obj)
    );
    let run = runs(&obj)
        .into_iter()
        .find(|r| r.name == "step-0")
        .context("run")?;
    ensure!(run.phase == AnalysisPhase::Failed, "{run:#?}");
    ensure!(
        run.metrics[0]
            .measurements
            .last()
            .and_then(|m| m.value.as_deref())
            == Some("20.0"),
        "{run:#?}"
    );
    wait_rolesets(&env, &v1, 2, &v2, 0).await?;
    wait_service(&env, "app-canary", &v1).await?;
    env.ns.cleanup().await
}

#[tokio::test]
async fn an_error_rate_over_the_threshold_rolls_back_with_error_threshold_exceeded() -> Result<()> {
    let (env, exporter, prometheus) = started("an-threshold").await?;
    let auto_rollback = json!({
        "enabled": true,
        "onFailure": {
            "errorThreshold": "5%",
            "errorRate": {
                "name": "canary-errors",
                "provider": {"prometheus": {
                    "address": prometheus.base_url(),
                    "query": exporter.error_percent_query(CANARY)
                }},
                "interval": "1s"
            }
        }
    });
    let steps = json!([{"weight": 50, "pause": {"untilApproval": true}}]);
    create(&env, storm_service(2, steps, Some(auto_rollback))).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    set_image(&env, "app:v2").await?;
    let (v1, v2) = revisions(&env).await?;
    wait_phase(&env, RolloutPhase::Paused, Some(0)).await?;
    // 1% errors: under the threshold, the rollout waits for its approval.
    wait_for("the error rate measured", TIMEOUT, || async {
        let obj = env.api.get("app").await?;
        Ok(runs(&obj)
            .iter()
            .any(|r| r.name == "error-rate" && r.metrics.first().is_some_and(|m| m.count >= 1))
            .then_some(()))
    })
    .await?;
    ensure!(
        env.api
            .get("app")
            .await?
            .status
            .and_then(|s| s.rollout_status)
            .and_then(|r| r.phase)
            == Some(RolloutPhase::Paused)
    );
    exporter.set(CANARY, 1000, 100);
    let obj = wait_phase(&env, RolloutPhase::Degraded, None).await?;
    ensure!(
        degraded_reason(&obj).as_deref() == Some("ErrorThresholdExceeded"),
        "{:?}",
        degraded_reason(&obj)
    );
    wait_rolesets(&env, &v1, 2, &v2, 0).await?;
    env.ns.cleanup().await
}

/// The web provider against a real HTTP JSON API (Prometheus's own query endpoint), as a
/// blue-green post-promotion analysis: the error rate climbs after promotion, so the active
/// Service switches back.
#[tokio::test]
async fn a_failed_post_promotion_analysis_switches_blue_green_back() -> Result<()> {
    let env = setup_with_services("an-bg", &["app-active", "app-preview"]).await?;
    let exporter = Exporter::start()?;
    exporter.set(CANARY, 1000, 250);
    let prometheus = Prometheus::start(&[exporter.target()])?;
    prometheus.wait_for_value(&exporter.error_percent_query(CANARY), 20.0)?;
    let url = prometheus.query_url(&exporter.error_percent_query(CANARY));
    create_template(
        &env,
        "monitoring-check",
        json!({"metrics": [{
            "name": "errors",
            "provider": {"web": {"url": url, "jsonPath": "{$.data.result[0].value[1]}"}},
            "successCondition": "double(result) < 5.0"
        }]}),
    )
    .await?;
    let mut obj = storm_service(2, json!([]), None);
    obj["spec"]["rolloutStrategy"] = json!({
        "type": "BlueGreen",
        "blueGreen": {
            "activeService": "app-active", "previewService": "app-preview",
            "autoPromotionEnabled": true,
            "postPromotionAnalysis": {"templates": [{"name": "monitoring-check"}]}
        }
    });
    create(&env, obj).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    let v1 = stable_revision(&env).await?;
    set_image(&env, "app:v2").await?;
    let obj = wait_phase(&env, RolloutPhase::Degraded, None).await?;
    ensure!(
        degraded_reason(&obj).as_deref() == Some("AnalysisFailed"),
        "{:?}",
        degraded_reason(&obj)
    );
    let run = runs(&obj)
        .into_iter()
        .find(|r| r.name == "post-promotion")
        .context("post-promotion run")?;
    ensure!(run.phase == AnalysisPhase::Failed, "{run:#?}");
    wait_service(&env, "app-active", &v1).await?;
    let v2 = obj
        .status
        .and_then(|s| s.update_revision)
        .context("updateRevision")?;
    wait_rolesets(&env, &v1, 2, &v2, 0).await?;
    env.ns.cleanup().await
}
