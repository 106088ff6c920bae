//! Helpers shared by the rollout suites: one StormService `app` in a test namespace with its own
//! namespace-scoped controller.
#![allow(dead_code)]

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
use storm_test_support::{TestNamespace, wait_for};

pub const TIMEOUT: Duration = Duration::from_secs(90);

/// A StormService named `app` with one role, `replicas` RoleSets, and a canary strategy.
pub fn storm_service(replicas: i32, steps: Value, auto_rollback: Option<Value>) -> Value {
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
pub fn seed_steps() -> Value {
    json!([
        {"weight": 10, "pause": {"duration": "3s"}},
        {"weight": 25, "pause": {"untilApproval": true}},
        {"weight": 50},
        {"weight": 100}
    ])
}

pub struct Env {
    pub ns: TestNamespace,
    pub controller: Controller,
    pub api: Api<StormService>,
}

pub async fn setup(prefix: &str) -> Result<Env> {
    setup_with_services(prefix, &["app-stable", "app-canary"]).await
}

/// A namespace with the CRDs, a controller for it, and Services selecting `app: app`.
pub async fn setup_with_services(prefix: &str, names: &[&str]) -> Result<Env> {
    let ns = TestNamespace::new(prefix).await?;
    ns.cluster().install_crds()?;
    let controller = Controller::start(ns.cluster(), ns.name())?;
    let api = ns.api::<StormService>();
    let services: Api<Service> = ns.api();
    for name in names {
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

pub async fn create(env: &Env, obj: Value) -> Result<()> {
    let obj: StormService = serde_json::from_value(obj)?;
    env.api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

pub async fn set_image(env: &Env, image: &str) -> Result<()> {
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

pub async fn annotate(env: &Env, key: &str) -> Result<()> {
    let body = json!({"metadata": {"annotations": {key: "true"}}});
    env.api
        .patch("app", &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// (phase, step, weight, Paused reason) as the status says.
pub fn progress(obj: &StormService) -> (Option<RolloutPhase>, Option<i32>, i32, Option<String>) {
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

pub async fn wait_phase(env: &Env, phase: RolloutPhase, step: Option<i32>) -> Result<StormService> {
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
pub async fn rolesets(env: &Env) -> Result<std::collections::BTreeMap<String, usize>> {
    Ok(ready_rolesets(env)
        .await?
        .into_iter()
        .map(|(rev, (_, existing))| (rev, existing))
        .collect())
}

/// RoleSets per revision that are not being deleted: (ready, existing).
pub async fn ready_rolesets(
    env: &Env,
) -> Result<std::collections::BTreeMap<String, (usize, usize)>> {
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
        let e: &mut (usize, usize) = out.entry(rev).or_default();
        e.1 += 1;
        if storm_e2e::roleset_is_ready(r) {
            e.0 += 1;
        }
    }
    Ok(out)
}

/// The stable revision, at rest.
pub async fn stable_revision(env: &Env) -> Result<String> {
    let s = env.api.get("app").await?.status.context("status")?;
    s.current_revision.context("currentRevision")
}

/// (stable, canary) revisions once the controller has seen the template change.
pub async fn revisions(env: &Env) -> Result<(String, String)> {
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

pub async fn service_revision(env: &Env, name: &str) -> Result<Option<String>> {
    let svc = env.ns.api::<Service>().get(name).await?;
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    ensure!(
        selector.get("app").map(String::as_str) == Some("app"),
        "the user's selector key survives: {selector:?}"
    );
    Ok(selector.get(LABEL_REVISION).cloned())
}

/// Waits until Service `name` selects revision `rev`. The controller writes the status first and
/// pins Services after it, so a phase seen in the status may be a moment ahead of the selectors.
pub async fn wait_service(env: &Env, name: &str, rev: &str) -> Result<()> {
    wait_for(
        &format!("Service {name} to select {rev}"),
        TIMEOUT,
        || async { Ok((service_revision(env, name).await?.as_deref() == Some(rev)).then_some(())) },
    )
    .await
}

/// Waits until the control annotations are gone from `app` (removed after the status is written).
pub async fn wait_annotations_removed(env: &Env) -> Result<()> {
    wait_for("the control annotations removed", TIMEOUT, || async {
        let obj = env.api.get("app").await?;
        Ok(obj
            .metadata
            .annotations
            .unwrap_or_default()
            .is_empty()
            .then_some(()))
    })
    .await
}

pub async fn wait_rolesets(
    env: &Env,
    stable: &str,
    s: usize,
    canary: &str,
    c: usize,
) -> Result<()> {
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

/// Creates the AnalysisTemplate `name` with `spec`.
pub async fn create_template(env: &Env, name: &str, spec: Value) -> Result<()> {
    let t: storm_shared::types::analysis::AnalysisTemplate = serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": name},
        "spec": spec
    }))?;
    env.ns
        .api::<storm_shared::types::analysis::AnalysisTemplate>()
        .create(&PostParams::default(), &t)
        .await?;
    Ok(())
}

/// Waits for `revision` to drain for `delay` seconds: listed in `status.rolloutStatus.scaleDowns`
/// for `reason` (`Promoted` or `Aborted`), its RoleSets kept until the due time, then removed.
#[allow(dead_code)]
pub async fn wait_drained(env: &Env, revision: &str, reason: &str, delay: i64) -> Result<()> {
    let due = wait_for(
        &format!("{revision} listed as draining ({reason})"),
        TIMEOUT,
        || async {
            let obj = env.api.get("app").await?;
            let due = obj
                .status
                .and_then(|s| s.rollout_status)
                .into_iter()
                .flat_map(|r| r.scale_downs)
                .find(|d| d.revision == revision)
                .map(|d| (format!("{:?}", d.reason), d.due_time.0));
            Ok(due)
        },
    )
    .await?;
    ensure!(due.0 == reason, "drains for {}, not {reason}", due.0);
    let due = due.1;
    let now = k8s_openapi::jiff::Timestamp::now();
    let left = due.duration_since(now);
    ensure!(
        left.as_secs() <= delay + 2,
        "due {due}, {left:?} from now: more than the {delay} s asked for"
    );
    // Kept until the due time (a second of slack for the clocks' and the poll's granularity).
    while k8s_openapi::jiff::Timestamp::now()
        < due - k8s_openapi::jiff::SignedDuration::from_secs(1)
    {
        let kept = rolesets(env).await?.get(revision).copied().unwrap_or(0);
        ensure!(kept > 0, "{revision}'s RoleSets removed before {due}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_for(
        &format!("{revision}'s RoleSets removed after the drain"),
        TIMEOUT,
        || async { Ok((!rolesets(env).await?.contains_key(revision)).then_some(())) },
    )
    .await?;
    let removed = k8s_openapi::jiff::Timestamp::now();
    ensure!(
        removed >= due - k8s_openapi::jiff::SignedDuration::from_secs(1),
        "removed at {removed}, before {due}"
    );
    Ok(())
}
