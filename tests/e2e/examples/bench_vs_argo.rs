//! `make bench-vs-argo`: Argo Rollouts and Storm Rollouts doing the same work on the same local
//! control plane, one after the other in one session, measured the same way.
//!
//! Each side gets its own namespace and its own controller process, started for that side and
//! stopped at its end (the namespace is then deleted, and the next side starts once it is gone):
//! Argo's `rollouts-controller` (the build of `make argo-rollouts`, out of cluster with the admin
//! kubeconfig, leader election off, its CRDs applied server-side), then our `storm-controller`
//! (the release build, limited to its namespace, as `bench_controller` runs it). Kwok fake nodes
//! make the Pods Ready.
//!
//! The work, per side, on N objects:
//! 1. Create N canaries of 4 Pods (Argo: a Rollout with `replicas: 4`; ours: a StormService with
//!    `replicas: 4` and one role of one Pod, so 4 RoleSets), each with a stable and a canary
//!    Service selecting its app, and the steps 25% / pause 1s / 50% / pause 1s / 100% (no traffic
//!    router: both split by replicas). Wait until every first version settled (it goes straight to
//!    100%): Argo `Healthy` with `stableRS == currentPodHash` and 4 available; ours `Healthy`.
//! 2. Change the image of all N, timed until all N completed (Argo: `Healthy` again on the new
//!    Pod hash; ours: phase `Completed`): `seconds_to_all_completed`.
//! 3. On ABORTS of them, change the image again with the steps 25% then an indefinite pause (Argo
//!    `pause: {}`, ours `pause: {untilApproval: true}`), wait until all are paused there with the
//!    canary Service on the canary, then abort all at once (Argo: `status.abort: true` through the
//!    status subresource; ours: the `rollout-abort` annotation), concurrently, with the observer
//!    (watches on Services and ReplicaSets or RoleSets, checked every 5 ms) already running; t0 is
//!    when the sending starts. `abort_to_traffic_on_stable`: until both Services select the stable
//!    revision; `abort_to_stable`: until, as well, stable has its 4 Pods Ready (Argo: the stable
//!    ReplicaSet 4 ready, the canary ReplicaSet scaled to 0; ours: 4 stable RoleSets Ready, no
//!    canary RoleSet left). p50 and p99 in ms.
//!
//! Per side also: the controller's peak RSS (`VmHWM`) and CPU seconds (utime + stime) from /proc
//! over the whole side, and its API requests from its own metrics (ours
//! `storm_kube_requests_total`, Argo `controller_clientset_k8s_request_total`).
//!
//! Writes `target/bench/vs-argo.json` (both sides and the ratios storm/argo) and prints a markdown
//! table. Fails, naming what did not complete, when a side does not get there within a generous
//! timeout.
//!
//! Environment: `STORM_BENCH_LOG` (our controller's log filter, default `warn`),
//! `STORM_BENCH_ARGO_LOG` (Argo's `--loglevel`, default `warn`), `STORM_KEEP_LOGS` (keep both
//! controllers' logs).
//!
//! Usage: cargo run --release -p storm-e2e --example bench_vs_argo -- [SERVICES] [ABORTS]

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use storm_e2e::canary_storm_service;
use storm_shared::keys::{LABEL_NAME, LABEL_REVISION};
use storm_shared::types::stormservice::RolloutPhase;
use storm_shared::{RoleSet, StormService};
use storm_test_support::bench::{add_nodes, metric_sum, percentile, proc_usage};
use storm_test_support::process::{Controller, free_port, http_get, release_binary};
use storm_test_support::{Cluster, TestNamespace, wait_for};
use tokio::task::JoinHandle;

const ABORT: &str = "stormservice.aibrix.ai/rollout-abort";
/// The label Argo Rollouts pins in the Services' selectors.
const ARGO_HASH: &str = "rollouts-pod-template-hash";
/// Pods (Argo) and RoleSets of one Pod (ours) per object.
const REPLICAS: i64 = 4;
const ARGO_METRIC: &str = "controller_clientset_k8s_request_total";
const STORM_METRIC: &str = "storm_kube_requests_total";
/// How long the aborted subset may take to land.
const ABORT_TIMEOUT: Duration = Duration::from_secs(120);

/// Rollouts of all N: generous, growing with N.
fn rollout_timeout(n: usize) -> Duration {
    Duration::from_secs(600 + 3 * n as u64)
}

/// What one side measured.
struct Side {
    seconds_to_all_completed: f64,
    /// Sorted, ms.
    traffic_ms: Vec<f64>,
    /// Sorted, ms.
    stable_ms: Vec<f64>,
    rss_mib: f64,
    cpu_seconds: f64,
    api_requests: f64,
}

/// The report's keys of a side, in order.
const KEYS: [&str; 8] = [
    "seconds_to_all_completed",
    "abort_to_traffic_on_stable_ms_p50",
    "abort_to_traffic_on_stable_ms_p99",
    "abort_to_stable_ms_p50",
    "abort_to_stable_ms_p99",
    "controller_peak_rss_mib",
    "controller_cpu_seconds",
    "api_requests",
];

impl Side {
    fn json(&self) -> Value {
        json!({
            "seconds_to_all_completed": round(self.seconds_to_all_completed, 1),
            "abort_to_traffic_on_stable_ms_p50": percentile(&self.traffic_ms, 0.5).round(),
            "abort_to_traffic_on_stable_ms_p99": percentile(&self.traffic_ms, 0.99).round(),
            "abort_to_stable_ms_p50": percentile(&self.stable_ms, 0.5).round(),
            "abort_to_stable_ms_p99": percentile(&self.stable_ms, 0.99).round(),
            "controller_peak_rss_mib": round(self.rss_mib, 1),
            "controller_cpu_seconds": round(self.cpu_seconds, 2),
            "api_requests": self.api_requests.round() as u64,
        })
    }
}

/// A controller that may have exited under us.
trait Running {
    fn ensure_running(&mut self) -> Result<()>;
}

impl Running for Controller {
    fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }
}

/// Argo's `rollouts-controller`, out of cluster, in a temporary working directory that holds its
/// log; killed when dropped.
struct ArgoController {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    metrics_port: u16,
}

impl ArgoController {
    fn start(program: &Path, kubeconfig: &Path, namespace: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("storm-bench-argo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("rollouts-controller.log");
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // Its metrics and healthz listen on every address: two distinct free ports.
        let metrics_port = free_port()?;
        let mut healthz_port = free_port()?;
        while healthz_port == metrics_port {
            healthz_port = free_port()?;
        }
        let level = std::env::var("STORM_BENCH_ARGO_LOG").unwrap_or_else(|_| "warn".into());
        let child = Command::new(program)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--leader-elect=false".to_string(),
                format!("--metricsPort={metrics_port}"),
                format!("--healthzPort={healthz_port}"),
                format!("--loglevel={level}"),
            ])
            // Where it looks for its (optional) argo-rollouts-config ConfigMap.
            .env("POD_NAMESPACE", namespace)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            child,
            dir,
            log,
            metrics_port,
        })
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(self.metrics_port, "/metrics")?;
        ensure!(code == 200, "rollouts-controller /metrics answered {code}");
        Ok(body)
    }
}

impl Running for ArgoController {
    fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "rollouts-controller exited ({status}); log:\n{}",
                self.log_tail(60)
            );
        }
        Ok(())
    }
}

impl Drop for ArgoController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("STORM_KEEP_LOGS").is_some() {
            eprintln!(
                "STORM_KEEP_LOGS set: rollouts-controller log kept at {}",
                self.log.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Polls `pending` (the names not there yet) every 200 ms until none is left. Fails naming them
/// once `timeout` passed, and at once when the controller exits.
async fn wait_all(
    what: &str,
    timeout: Duration,
    controller: &mut dyn Running,
    mut pending: impl AsyncFnMut() -> Result<Vec<String>>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<Vec<String>> = None;
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        controller
            .ensure_running()
            .with_context(|| format!("while waiting for {what}"))?;
        match pending().await {
            Ok(left) if left.is_empty() => return Ok(()),
            Ok(left) => last = Some(left),
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            let left = last.map_or_else(
                || "unknown (no successful check)".to_string(),
                |left| {
                    let shown: Vec<&str> = left.iter().take(10).map(String::as_str).collect();
                    format!(
                        "{} not there: {}{}",
                        left.len(),
                        shown.join(", "),
                        if left.len() > shown.len() {
                            ", ..."
                        } else {
                            ""
                        }
                    )
                },
            );
            let error = last_error
                .map(|e| format!("; last error: {e:#}"))
                .unwrap_or_default();
            bail!("{what} did not happen within {timeout:?}: {left}{error}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches `api` into a store, ready before it returns.
async fn watched<K>(api: Api<K>) -> Result<Store<K>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    tokio::spawn(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    );
    store.wait_until_ready().await?;
    Ok(store)
}

/// While the aborts are sent (`sending`, started at `t0`), checks every 5 ms what `state` says of
/// each pending object: (traffic on stable, traffic and capacity on stable). Returns the sorted
/// latencies of both, in ms.
async fn observe_aborts(
    names: &[String],
    t0: Instant,
    sending: JoinHandle<Result<()>>,
    controller: &mut dyn Running,
    mut state: impl FnMut(&[String]) -> Vec<(bool, bool)>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut sending = Some(sending);
    let mut pending: Vec<String> = names.to_vec();
    let mut traffic: BTreeMap<String, f64> = BTreeMap::new();
    let mut stable = Vec::new();
    while !pending.is_empty() {
        if let Some(done) = sending.take_if(|s| s.is_finished()) {
            done.await?.context("sending the aborts")?;
        }
        let states = state(&pending);
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut left = Vec::new();
        for (name, (on_traffic, on_stable)) in pending.into_iter().zip(states) {
            if on_traffic {
                traffic.entry(name.clone()).or_insert(ms);
            }
            if on_stable {
                stable.push(ms);
            } else {
                left.push(name);
            }
        }
        pending = left;
        if !pending.is_empty() && t0.elapsed() > ABORT_TIMEOUT {
            controller.ensure_running()?;
            bail!(
                "aborts did not land within {ABORT_TIMEOUT:?} (traffic and capacity back on stable): {}",
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(sending) = sending {
        sending.await?.context("sending the aborts")?;
    }
    let mut traffic: Vec<f64> = traffic.into_values().collect();
    traffic.sort_by(f64::total_cmp);
    stable.sort_by(f64::total_cmp);
    Ok((traffic, stable))
}

/// The stable and canary Services of `name`, selecting its app.
async fn create_services(api: &Api<Service>, name: &str) -> Result<()> {
    for suffix in ["stable", "canary"] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-{suffix}")},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}
        }))?;
        api.create(&PostParams::default(), &svc).await?;
    }
    Ok(())
}

/// What `key` of the Service's selector is, from the store.
fn selector(store: &Store<Service>, ns: &str, name: &str, key: &str) -> Option<String> {
    let svc = store.get(&ObjectRef::new(name).within(ns))?;
    svc.spec.as_ref()?.selector.as_ref()?.get(key).cloned()
}

/// What `key` of every Service's selector is, by Service name, from one list.
async fn selectors(api: &Api<Service>, key: &str) -> Result<BTreeMap<String, String>> {
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|svc| {
            let value = svc.spec.as_ref()?.selector.as_ref()?.get(key)?.clone();
            Some((svc.name_any(), value))
        })
        .collect())
}

async fn json_patch<K>(api: &Api<K>, name: &str, ops: Value) -> Result<()>
where
    K: Clone + std::fmt::Debug + k8s_openapi::serde::de::DeserializeOwned,
{
    let patch: json_patch::Patch = serde_json::from_value(ops)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .with_context(|| format!("patching {name}"))?;
    Ok(())
}

/// Deletes the side's namespace and waits until it is gone: `before_next` (another side follows)
/// fails the run if it is not gone in time, as the next side would run beside its deletion;
/// otherwise that only warns (the numbers are taken).
async fn remove_namespace(ns: TestNamespace, n: usize, before_next: bool) -> Result<()> {
    let name = ns.name().to_string();
    let client = ns.client();
    let kept = std::env::var("STORM_KEEP_NAMESPACES").is_ok_and(|v| !v.is_empty() && v != "0");
    ns.cleanup().await?;
    if kept {
        return Ok(());
    }
    let namespaces: Api<Namespace> = Api::all(client);
    let gone = wait_for(
        &format!("namespace {name} deleted"),
        Duration::from_secs(300 + 2 * n as u64),
        || async { Ok(namespaces.get_opt(&name).await?.is_none().then_some(())) },
    )
    .await;
    match gone {
        Err(e) if !before_next => {
            eprintln!("bench: warning: {e:#}");
            Ok(())
        }
        gone => gone,
    }
}

// ---------------------------------------------------------------------------------------------
// Argo Rollouts
// ---------------------------------------------------------------------------------------------

fn rollout(name: &str) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "server", "image": "app:v1"}]}
            },
            "strategy": {"canary": {
                "stableService": format!("{name}-stable"),
                "canaryService": format!("{name}-canary"),
                "steps": [
                    {"setWeight": 25},
                    {"pause": {"duration": "1s"}},
                    {"setWeight": 50},
                    {"pause": {"duration": "1s"}}
                ]
            }}
        }
    })
}

fn argo_status<'a>(obj: &'a DynamicObject, field: &str) -> Option<&'a str> {
    obj.data["status"][field].as_str()
}

/// The status speaks of the current spec (Argo: `observedGeneration` is the generation, as text).
fn argo_observed(obj: &DynamicObject) -> bool {
    let generation = obj.metadata.generation.map(|g| g.to_string());
    argo_status(obj, "observedGeneration") == generation.as_deref()
}

/// Healthy on its current Pod hash with all Pods available; that hash.
fn argo_settled(obj: &DynamicObject) -> Option<&str> {
    let hash = argo_status(obj, "currentPodHash")?;
    let settled = argo_observed(obj)
        && argo_status(obj, "phase") == Some("Healthy")
        && argo_status(obj, "stableRS") == Some(hash)
        && obj.data["status"]["availableReplicas"].as_i64() == Some(REPLICAS);
    settled.then_some(hash)
}

/// Paused indefinitely at its second step, on a canary of a new Pod hash: (stable, canary) hashes.
fn argo_paused(obj: &DynamicObject) -> Option<(String, String)> {
    let stable = argo_status(obj, "stableRS")?;
    let canary = argo_status(obj, "currentPodHash")?;
    let paused = obj.data["status"]["pauseConditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["reason"] == "CanaryPauseStep"));
    let at = obj.data["status"]["currentStepIndex"].as_i64() == Some(1);
    (argo_observed(obj) && paused && at && stable != canary)
        .then(|| (stable.to_string(), canary.to_string()))
}

/// The ReplicaSet of Rollout `name` for Pod hash `hash`.
fn argo_rs<'a>(
    sets: &'a [std::sync::Arc<ReplicaSet>],
    name: &str,
    hash: &str,
) -> Option<&'a ReplicaSet> {
    sets.iter().map(AsRef::as_ref).find(|rs| {
        rs.labels().get(ARGO_HASH).map(String::as_str) == Some(hash)
            && rs
                .owner_references()
                .iter()
                .any(|o| o.kind == "Rollout" && o.name == name)
    })
}

/// Where `make argo-rollouts` put the controller and its CRDs.
fn argo_dir(cluster: &Cluster) -> Result<PathBuf> {
    let script = cluster
        .repo_root()
        .join("tests/controlplane/argo-rollouts.sh");
    let out = Command::new(&script)
        .arg("--print-dir")
        .current_dir(cluster.repo_root())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --print-dir", script.display()))?;
    ensure!(
        out.status.success(),
        "{} --print-dir failed",
        script.display()
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        dir.join("rollouts-controller").is_file() && dir.join("crds").is_dir(),
        "Argo Rollouts is not built in {}: run `make argo-rollouts`",
        dir.display()
    );
    Ok(dir)
}

/// Applies Argo's CRDs server-side (they exceed the client-side annotation limit) and waits until
/// they are Established.
fn install_argo_crds(cluster: &Cluster, dir: &Path) -> Result<()> {
    let crds = dir.join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&crds)
        .with_context(|| format!("reading {}", crds.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    ensure!(!files.is_empty(), "no CRD in {}", crds.display());
    cluster.apply_crd_files(&files)?;
    Ok(())
}

async fn run_argo(program: &Path, n: usize, aborts: usize) -> Result<Side> {
    let ns = TestNamespace::new("bench-vs-argo-argo").await?;
    let mut argo = ArgoController::start(program, ns.cluster().kubeconfig(), ns.name())?;
    let side = argo_side(&ns, &mut argo, n, aborts).await;
    if side.is_err() {
        eprintln!(
            "bench: rollouts-controller log (last 40 lines):\n{}",
            argo.log_tail(40)
        );
    }
    let side = side?;
    drop(argo);
    remove_namespace(ns, n, true).await?;
    Ok(side)
}

async fn argo_side(
    ns: &TestNamespace,
    argo: &mut ArgoController,
    n: usize,
    aborts: usize,
) -> Result<Side> {
    let pid = argo.child.id();
    wait_for(
        "rollouts-controller serving its metrics",
        Duration::from_secs(60),
        || async { Ok(argo.metrics().ok().map(|_| ())) },
    )
    .await?;
    argo.ensure_running()?;
    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"));
    let api: Api<DynamicObject> = Api::namespaced_with(ns.client(), ns.name(), &resource);
    let services: Api<Service> = ns.api();
    let names: Vec<String> = (0..n).map(|i| format!("ro-{i:04}")).collect();
    eprintln!("bench: argo: creating {n} Rollouts in {}", ns.name());
    for name in &names {
        create_services(&services, name).await?;
        api.create(
            &PostParams::default(),
            &serde_json::from_value(rollout(name))?,
        )
        .await
        .with_context(|| format!("creating Rollout {name}"))?;
    }
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    wait_all(
        "argo: every first version Healthy",
        rollout_timeout(n),
        argo,
        async || {
            let list = api.list(&ListParams::default()).await?;
            for obj in &list.items {
                if let Some(hash) = argo_settled(obj) {
                    first.insert(obj.name_any(), hash.to_string());
                }
            }
            Ok(names
                .iter()
                .filter(|n| !first.contains_key(*n))
                .cloned()
                .collect())
        },
    )
    .await?;

    eprintln!("bench: argo: all healthy; rolling out");
    let started = Instant::now();
    for name in &names {
        json_patch(
            &api,
            name,
            json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image",
                    "value": "app:v2"}]),
        )
        .await?;
    }
    wait_all(
        "argo: every rollout Healthy on its new Pod hash",
        rollout_timeout(n),
        argo,
        async || {
            let list = api.list(&ListParams::default()).await?;
            let done: Vec<String> = list
                .items
                .iter()
                .filter(|o| {
                    argo_settled(o)
                        .is_some_and(|h| first.get(&o.name_any()).map(String::as_str) != Some(h))
                })
                .map(|o| o.name_any())
                .collect();
            Ok(names
                .iter()
                .filter(|n| !done.contains(n))
                .cloned()
                .collect())
        },
    )
    .await?;
    let seconds_to_all_completed = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: argo: all {n} completed in {seconds_to_all_completed:.1}s; measuring aborts on {aborts}"
    );

    let subset: Vec<String> = names.iter().take(aborts).cloned().collect();
    for name in &subset {
        json_patch(
            &api,
            name,
            json!([
                {"op": "replace", "path": "/spec/strategy/canary/steps",
                 "value": [{"setWeight": 25}, {"pause": {}}]},
                {"op": "replace", "path": "/spec/template/spec/containers/0/image",
                 "value": "app:v3"}
            ]),
        )
        .await?;
    }
    let mut hashes: BTreeMap<String, (String, String)> = BTreeMap::new();
    wait_all(
        "argo: the abort subset paused at its first step, canary Service on the canary",
        Duration::from_secs(300),
        argo,
        async || {
            let rollouts = api.list(&ListParams::default()).await?;
            let selected = selectors(&services, ARGO_HASH).await?;
            for obj in &rollouts.items {
                let name = obj.name_any();
                if let Some((stable, canary)) = argo_paused(obj)
                    && selected.get(&format!("{name}-stable")) == Some(&stable)
                    && selected.get(&format!("{name}-canary")) == Some(&canary)
                {
                    hashes.insert(name, (stable, canary));
                }
            }
            Ok(subset
                .iter()
                .filter(|n| !hashes.contains_key(*n))
                .cloned()
                .collect())
        },
    )
    .await?;

    // Watches, not repeated lists: the observer must not load the API server it measures.
    let svc_store = watched(services.clone()).await?;
    let rs_store = watched(ns.api::<ReplicaSet>()).await?;
    // The aborts are sent at once, each timed from when the sending starts, and watched while
    // they are sent.
    let t0 = Instant::now();
    let sending = tokio::spawn({
        let api = api.clone();
        let subset = subset.clone();
        async move {
            let body = json!({"status": {"abort": true}});
            let (params, patch) = (PatchParams::default(), Patch::Merge(&body));
            let sends = subset
                .iter()
                .map(|name| api.patch_status(name, &params, &patch));
            futures::future::try_join_all(sends).await?;
            Ok(())
        }
    });
    let namespace = ns.name().to_string();
    let (traffic_ms, stable_ms) = observe_aborts(&subset, t0, sending, argo, |pending| {
        let sets = rs_store.state();
        pending
            .iter()
            .map(|name| {
                let (stable, canary) = &hashes[name];
                let selects_stable = |suffix: &str| {
                    selector(
                        &svc_store,
                        &namespace,
                        &format!("{name}-{suffix}"),
                        ARGO_HASH,
                    )
                    .as_ref()
                        == Some(stable)
                };
                let traffic = selects_stable("stable") && selects_stable("canary");
                let stable_ready = argo_rs(&sets, name, stable)
                    .and_then(|rs| rs.status.as_ref()?.ready_replicas)
                    == Some(REPLICAS as i32);
                let canary_gone = argo_rs(&sets, name, canary)
                    .is_none_or(|rs| rs.spec.as_ref().and_then(|s| s.replicas) == Some(0));
                (traffic, traffic && stable_ready && canary_gone)
            })
            .collect()
    })
    .await?;

    argo.ensure_running()?;
    let (rss_mib, cpu_seconds) = proc_usage(pid)?;
    let metrics = argo.metrics()?;
    ensure!(
        metrics.lines().any(|l| l.starts_with(ARGO_METRIC)),
        "rollouts-controller's /metrics has no {ARGO_METRIC}"
    );
    Ok(Side {
        seconds_to_all_completed,
        traffic_ms,
        stable_ms,
        rss_mib,
        cpu_seconds,
        api_requests: metric_sum(&metrics, ARGO_METRIC),
    })
}

// ---------------------------------------------------------------------------------------------
// Storm Rollouts
// ---------------------------------------------------------------------------------------------

fn storm_service(name: &str) -> Value {
    canary_storm_service(
        name,
        REPLICAS,
        1,
        json!([
            {"weight": 25, "pause": {"duration": "1s"}},
            {"weight": 50, "pause": {"duration": "1s"}},
            {"weight": 100}
        ]),
    )
}

fn phase(obj: &StormService) -> Option<RolloutPhase> {
    obj.status.as_ref()?.rollout_status.as_ref()?.phase
}

/// The names whose StormService is not in phase `want` (yet).
fn not_in(names: &[String], list: &[StormService], want: RolloutPhase) -> Vec<String> {
    let done: Vec<String> = list
        .iter()
        .filter(|o| phase(o) == Some(want))
        .map(|o| o.name_any())
        .collect();
    names
        .iter()
        .filter(|n| !done.contains(n))
        .cloned()
        .collect()
}

async fn run_storm(program: PathBuf, n: usize, aborts: usize) -> Result<Side> {
    let ns = TestNamespace::new("bench-vs-argo-storm").await?;
    // The controller's log filter: warnings unless STORM_BENCH_LOG says otherwise.
    let log = std::env::var("STORM_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let mut controller = Controller::start_program(ns.cluster(), ns.name(), program, &log)?;
    let side = storm_side(&ns, &mut controller, n, aborts).await;
    if side.is_err() {
        eprintln!(
            "bench: storm-controller log (last 40 lines):\n{}",
            controller.process.log_tail(40)
        );
    }
    let side = side?;
    drop(controller);
    remove_namespace(ns, n, false).await?;
    Ok(side)
}

async fn storm_side(
    ns: &TestNamespace,
    controller: &mut Controller,
    n: usize,
    aborts: usize,
) -> Result<Side> {
    let pid = controller.process.pid().context("controller pid")?;
    let api: Api<StormService> = ns.api();
    let services: Api<Service> = ns.api();
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i:04}")).collect();
    eprintln!("bench: storm: creating {n} StormServices in {}", ns.name());
    for name in &names {
        create_services(&services, name).await?;
        api.create(
            &PostParams::default(),
            &serde_json::from_value(storm_service(name))?,
        )
        .await
        .with_context(|| format!("creating StormService {name}"))?;
    }
    wait_all(
        "storm: every StormService Healthy",
        rollout_timeout(n),
        controller,
        async || {
            let list = api.list(&ListParams::default()).await?;
            Ok(not_in(&names, &list.items, RolloutPhase::Healthy))
        },
    )
    .await?;

    eprintln!("bench: storm: all healthy; rolling out");
    let image = "/spec/template/spec/roles/0/template/spec/containers/0/image";
    let started = Instant::now();
    for name in &names {
        json_patch(
            &api,
            name,
            json!([{"op": "replace", "path": image, "value": "app:v2"}]),
        )
        .await?;
    }
    wait_all(
        "storm: every rollout Completed",
        rollout_timeout(n),
        controller,
        async || {
            let list = api.list(&ListParams::default()).await?;
            Ok(not_in(&names, &list.items, RolloutPhase::Completed))
        },
    )
    .await?;
    let seconds_to_all_completed = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: storm: all {n} completed in {seconds_to_all_completed:.1}s; measuring aborts on {aborts}"
    );

    let subset: Vec<String> = names.iter().take(aborts).cloned().collect();
    for name in &subset {
        json_patch(
            &api,
            name,
            json!([
                {"op": "replace", "path": "/spec/rolloutStrategy/canary/steps",
                 "value": [{"weight": 25, "pause": {"untilApproval": true}}, {"weight": 100}]},
                {"op": "replace", "path": image, "value": "app:v3"}
            ]),
        )
        .await?;
    }
    let mut stables: BTreeMap<String, String> = BTreeMap::new();
    wait_all(
        "storm: the abort subset waiting for approval, canary Service on the canary",
        Duration::from_secs(300),
        controller,
        async || {
            let list = api.list(&ListParams::default()).await?;
            let selected = selectors(&services, LABEL_REVISION).await?;
            for obj in &list.items {
                let name = obj.name_any();
                let status = obj.status.as_ref();
                let stable = status.and_then(|s| s.current_revision.as_ref());
                let canary = status.and_then(|s| s.update_revision.as_ref());
                if let (Some(stable), Some(canary)) = (stable, canary)
                    && stable != canary
                    && storm_shared::status::waiting_for_approval(obj)
                    && selected.get(&format!("{name}-stable")) == Some(stable)
                    && selected.get(&format!("{name}-canary")) == Some(canary)
                {
                    stables.insert(name, stable.clone());
                }
            }
            Ok(subset
                .iter()
                .filter(|n| !stables.contains_key(*n))
                .cloned()
                .collect())
        },
    )
    .await?;

    // Watches, not repeated lists: the observer must not load the API server it measures.
    let svc_store = watched(services.clone()).await?;
    let rs_store = watched(ns.api::<RoleSet>()).await?;
    // The aborts are sent at once, each timed from when the sending starts, and watched while
    // they are sent.
    let t0 = Instant::now();
    let sending = tokio::spawn({
        let api = api.clone();
        let subset = subset.clone();
        async move {
            let body = json!({"metadata": {"annotations": {ABORT: "true"}}});
            let (params, patch) = (PatchParams::default(), Patch::Merge(&body));
            let sends = subset.iter().map(|name| api.patch(name, &params, &patch));
            futures::future::try_join_all(sends).await?;
            Ok(())
        }
    });
    let namespace = ns.name().to_string();
    let (traffic_ms, stable_ms) = observe_aborts(&subset, t0, sending, controller, |pending| {
        let sets = rs_store.state();
        pending
            .iter()
            .map(|name| {
                let stable = &stables[name];
                let selects_stable = |suffix: &str| {
                    selector(
                        &svc_store,
                        &namespace,
                        &format!("{name}-{suffix}"),
                        LABEL_REVISION,
                    )
                    .as_ref()
                        == Some(stable)
                };
                let traffic = selects_stable("stable") && selects_stable("canary");
                let mine: Vec<&RoleSet> = sets
                    .iter()
                    .map(AsRef::as_ref)
                    .filter(|r| {
                        r.labels().get(LABEL_NAME) == Some(name)
                            && r.metadata.deletion_timestamp.is_none()
                    })
                    .collect();
                let on_stable = mine
                    .iter()
                    .all(|r| r.labels().get(LABEL_REVISION) == Some(stable));
                let ready = mine
                    .iter()
                    .filter(|r| storm_e2e::roleset_is_ready(r))
                    .count();
                (traffic, traffic && on_stable && ready == REPLICAS as usize)
            })
            .collect()
    })
    .await?;

    controller.ensure_running()?;
    let (rss_mib, cpu_seconds) = proc_usage(pid)?;
    let (_, metrics) = controller.http_get("/metrics")?;
    ensure!(
        metrics.lines().any(|l| l.starts_with(STORM_METRIC)),
        "storm-controller's /metrics has no {STORM_METRIC}"
    );
    Ok(Side {
        seconds_to_all_completed,
        traffic_ms,
        stable_ms,
        rss_mib,
        cpu_seconds,
        api_requests: metric_sum(&metrics, STORM_METRIC),
    })
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let aborts: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20)
        .min(n);
    ensure!(n > 0, "SERVICES must be at least 1");
    let cluster = storm_test_support::cluster()?;
    let argo = argo_dir(cluster)?;
    let argo_version = argo
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix("argo-rollouts-"))
        .unwrap_or("unknown")
        .to_string();
    let program = release_binary("storm-controller", "storm-controller")?;
    cluster.install_crds()?;
    install_argo_crds(cluster, &argo)?;
    let client = cluster.client().await?;
    // Up to 5 Pods per object during a canary (Argo surges by one): room for 6.
    let bench_nodes = add_nodes(&client, "storm-bench-vs-argo-node", n * 6).await?;

    let sides = async {
        let argo = run_argo(&argo.join("rollouts-controller"), n, aborts)
            .await
            .context("the Argo Rollouts side")?;
        let storm = run_storm(program, n, aborts)
            .await
            .context("the Storm Rollouts side")?;
        anyhow::Ok((argo, storm))
    }
    .await;
    let nodes: Api<Node> = Api::all(client);
    for node in bench_nodes {
        if let Err(e) = nodes.delete(&node, &Default::default()).await {
            eprintln!("bench: could not delete node {node}: {e}");
        }
    }
    let (argo, storm) = sides?;

    let (storm, argo) = (storm.json(), argo.json());
    let ratios: serde_json::Map<String, Value> = KEYS
        .iter()
        .map(|k| {
            let ratio = match (storm[k].as_f64(), argo[k].as_f64()) {
                (Some(s), Some(a)) if a > 0.0 => json!(round(s / a, 3)),
                _ => Value::Null,
            };
            ((*k).to_string(), ratio)
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let date = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let report = json!({
        "date": date,
        "services": n,
        "aborts": aborts,
        "argo_rollouts_version": argo_version,
        "storm": storm,
        "argo": argo,
        "ratios": ratios,
        "note": format!(
            "Same work on both sides, one after the other against the same local control plane \
             (kwok fake nodes make Pods Ready), each in its own namespace with its own controller \
             process: N canaries of 4 Pods (Argo: Rollout replicas 4; ours: StormService replicas \
             4, one role of 1 Pod), stable and canary Services, steps 25% / pause 1s / 50% / \
             pause 1s / 100%, split by replicas. seconds_to_all_completed: from the first image \
             change of all N until all N completed (Argo: phase Healthy with stableRS == \
             currentPodHash on the new hash, 4 available; ours: phase Completed), polled every \
             200 ms. Aborts: on {aborts} of them a second image change paused indefinitely at 25% \
             (Argo pause {{}}, ours pause untilApproval), then all aborted at once, concurrently \
             (Argo: status.abort=true on the status subresource; ours: the rollout-abort \
             annotation), timed from when the sending starts while an observer already watches \
             (checked every 5 ms). abort_to_traffic_on_stable: until both Services select the \
             stable revision (Argo: rollouts-pod-template-hash; ours: \
             stormservice.aibrix.ai/revision); abort_to_stable: until, as well, the stable \
             capacity is back (Argo: stable ReplicaSet 4 ready and the canary ReplicaSet scaled to \
             0; ours: 4 stable RoleSets Ready and no canary RoleSet left). Controllers: Argo \
             Rollouts {argo_version} rollouts-controller with its defaults (watching all \
             namespaces, client qps 40 / burst 80), admin kubeconfig; storm-controller release \
             build limited to its namespace with the RBAC of manifests/controller; both out of \
             cluster, leader election off, logging at warn. Peak RSS (VmHWM) and CPU seconds \
             (utime+stime) from /proc over the whole side; api_requests from each controller's \
             own metrics (Argo {ARGO_METRIC}, ours {STORM_METRIC}). ratios: storm / argo. Router \
             runs skipped: Argo needs its Gateway API plugin \
             (argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi), which cannot be built \
             from the Go module proxy (it answers 403 for that module), so neither side routes \
             through an HTTPRoute. The control plane, kwok and the bench share the machine's \
             {cores} cores with the controller."
        ),
    });
    let dir = storm_test_support::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("vs-argo.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!();
    println!("| {n} canaries, {aborts} aborts | storm | argo | storm / argo |");
    println!("|---|---:|---:|---:|");
    for k in KEYS {
        let cell = |v: &Value| match v {
            Value::Null => "-".to_string(),
            v => v.to_string(),
        };
        println!(
            "| {k} | {} | {} | {} |",
            cell(&report["storm"][k]),
            cell(&report["argo"][k]),
            cell(&report["ratios"][k])
        );
    }
    Ok(())
}
