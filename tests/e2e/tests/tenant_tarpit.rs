//! A noisy neighbour (docs/multi-tenant.md#analysis): a tenant's 20 StormServices measure a
//! "tarpit" that accepts connections and never answers, so each measurement holds its slot until
//! the timeout cap (30 s). Another namespace's rollout measures, moves on and aborts meanwhile,
//! and an abort of a tarpit StormService itself does not wait for its hanging measurement.
//!
//! Measurements are shared between namespaces only through the controller's pool, so this
//! suite runs one controller for both namespaces: cluster-wide, which is why it is alone in its
//! test binary (the other suites each run a controller scoped to their own namespace). The pool
//! is set smaller than the tarpit (8 slots, 4 per namespace): without the per-namespace limit
//! the tarpit would hold every slot, and the other namespace's measurement would wait 30 s.

use anyhow::{Result, ensure};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storm_e2e::canary_storm_service;
use storm_shared::StormService;
use storm_shared::types::analysis::AnalysisTemplate;
use storm_shared::types::stormservice::RolloutPhase;
use storm_test_support::process::Controller;
use storm_test_support::{TestNamespace, dump_logs_on_error, wait_for};

/// StormServices of the noisy tenant.
const TARPITS: usize = 20;
/// How long an abort may take to show: traffic back on stable, phase Aborted.
const ABORT_GOAL: Duration = Duration::from_secs(10);
/// How long the other namespace's analysis step may take, measurement included.
const STEP_GOAL: Duration = Duration::from_secs(20);
const ABORT: &str = "stormservice.aibrix.ai/rollout-abort";

/// Accepts connections and never answers them; counts them.
fn tarpit() -> Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let held: Mutex<Vec<TcpStream>> = Mutex::default();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.lock().map(|mut h| h.push(stream)).ok();
        }
    });
    Ok((format!("http://{addr}/rate"), accepted))
}

/// Answers every request at once with `{"rate": 1}`; counts them.
fn quick() -> Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = r#"{"rate": 1}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok((format!("http://{addr}/rate"), hits))
}

fn template(name: &str, url: &str) -> Result<AnalysisTemplate> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": name},
        "spec": {"metrics": [{
            "name": "rate",
            "provider": {"web": {"url": url, "jsonPath": "{$.rate}", "timeout": "30s"}},
            "successCondition": "result < 5"
        }]}
    }))?)
}

/// StormService `name` with one RoleSet of one Pod, its own Services, and `steps`.
fn storm_service(name: &str, steps: Value) -> Value {
    canary_storm_service(name, 1, 1, steps)
}

async fn create(ns: &TestNamespace, name: &str, steps: Value) -> Result<()> {
    let services: Api<k8s_openapi::api::core::v1::Service> = ns.api();
    for role in ["stable", "canary"] {
        let svc = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-{role}")},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))?;
        services.create(&PostParams::default(), &svc).await?;
    }
    let obj: StormService = serde_json::from_value(storm_service(name, steps))?;
    ns.api::<StormService>()
        .create(&PostParams::default(), &obj)
        .await?;
    Ok(())
}

async fn set_image(api: &Api<StormService>, name: &str, image: &str) -> Result<()> {
    let patch = json!([{"op": "replace", "path": "/spec/template/spec/roles/0/template/spec/containers/0/image", "value": image}]);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(patch)?),
    )
    .await?;
    Ok(())
}

async fn abort(api: &Api<StormService>, name: &str) -> Result<()> {
    let body = json!({"metadata": {"annotations": {ABORT: "true"}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// (phase, step, weight) of `name`.
async fn progress(
    api: &Api<StormService>,
    name: &str,
) -> Result<(Option<RolloutPhase>, Option<i32>, i32)> {
    let rs = api
        .get(name)
        .await?
        .status
        .and_then(|s| s.rollout_status)
        .unwrap_or_default();
    Ok((
        rs.phase,
        rs.current_step_index,
        rs.canary_status.map_or(0, |c| c.current_weight),
    ))
}

/// Waits until `name` is in `phase` (at `step` when given) and returns how long it took.
async fn reach(
    api: &Api<StormService>,
    name: &str,
    phase: RolloutPhase,
    step: Option<i32>,
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    wait_for(&format!("{name} {phase:?}"), within, || async {
        let (p, s, _) = progress(api, name).await?;
        Ok((p == Some(phase) && (step.is_none() || s == step)).then_some(()))
    })
    .await?;
    Ok(started.elapsed())
}

#[tokio::test]
async fn a_tarpit_tenant_delays_no_other_namespace_and_no_abort() -> Result<()> {
    let noisy = TestNamespace::new("tarpit").await?;
    let other = TestNamespace::new("neighbour").await?;
    noisy.cluster().install_crds()?;
    let controller = Controller::start_cluster_wide(
        noisy.cluster(),
        &[
            "--analysis-concurrency=8",
            "--analysis-namespace-concurrency=4",
        ],
    )?;
    let result = run(&noisy, &other).await;
    if result.is_err() {
        eprintln!("controller log:\n{}", controller.process.log_tail(80));
    }
    dump_logs_on_error(result)
}

async fn run(noisy: &TestNamespace, other: &TestNamespace) -> Result<()> {
    let (slow_url, accepted) = tarpit()?;
    let (quick_url, hits) = quick()?;
    noisy
        .api::<AnalysisTemplate>()
        .create(&PostParams::default(), &template("slow", &slow_url)?)
        .await?;
    other
        .api::<AnalysisTemplate>()
        .create(&PostParams::default(), &template("quick", &quick_url)?)
        .await?;
    let analysed = |t: &str| json!({"weight": 50, "analysis": {"templates": [{"name": t}]}});
    let names: Vec<String> = (0..TARPITS).map(|i| format!("t{i}")).collect();
    for name in &names {
        create(noisy, name, json!([analysed("slow")])).await?;
    }
    create(
        other,
        "calm",
        json!([analysed("quick"), {"weight": 50, "pause": {"untilApproval": true}}]),
    )
    .await?;
    let noisy_api = noisy.api::<StormService>();
    let other_api = other.api::<StormService>();
    for name in &names {
        reach(
            &noisy_api,
            name,
            RolloutPhase::Healthy,
            None,
            Duration::from_secs(120),
        )
        .await?;
    }
    reach(
        &other_api,
        "calm",
        RolloutPhase::Healthy,
        None,
        Duration::from_secs(60),
    )
    .await?;

    // The tenant's rollouts start measuring the tarpit: 4 connections held, 16 queued.
    for name in &names {
        set_image(&noisy_api, name, "app:v2").await?;
    }
    let filling = Instant::now();
    wait_for(
        "the tarpit's slots to fill",
        Duration::from_secs(60),
        || async { Ok((accepted.load(Ordering::SeqCst) >= 4).then_some(())) },
    )
    .await?;
    let filled_after = filling.elapsed();

    // The neighbour's canary measures and moves to its approval step meanwhile.
    set_image(&other_api, "calm", "app:v2").await?;
    let step = reach(&other_api, "calm", RolloutPhase::Paused, Some(1), STEP_GOAL).await?;
    ensure!(
        hits.load(Ordering::SeqCst) >= 1,
        "the neighbour's metric was measured"
    );
    let held = accepted.load(Ordering::SeqCst);
    // Each tarpit measurement holds its slot for 30 s: within that, only the namespace's 4 ran.
    if filling.elapsed() < Duration::from_secs(29) {
        ensure!(
            held == 4,
            "the tarpit namespace ran {held} measurements at once; its limit is 4"
        );
    }

    // Aborts: the neighbour's, and a tarpit StormService's own while its measurement hangs.
    abort(&other_api, "calm").await?;
    let calm_abort = reach(&other_api, "calm", RolloutPhase::Aborted, None, ABORT_GOAL).await?;
    abort(&noisy_api, "t0").await?;
    let tarpit_abort = reach(&noisy_api, "t0", RolloutPhase::Aborted, None, ABORT_GOAL).await?;
    for (api, name) in [(&other_api, "calm"), (&noisy_api, "t0")] {
        let (_, _, weight) = progress(api, name).await?;
        ensure!(weight == 0, "{name} aborted with weight {weight}");
    }
    let (phase, _, _) = progress(&noisy_api, "t1").await?;
    ensure!(
        phase == Some(RolloutPhase::Progressing),
        "t1 is still measuring the tarpit: {phase:?}"
    );
    eprintln!(
        "tarpit: slots filled in {filled_after:?}; neighbour's analysis step {step:?}; aborts: neighbour {calm_abort:?}, tarpit StormService {tarpit_abort:?}; tarpit connections {held}"
    );
    Ok(())
}
