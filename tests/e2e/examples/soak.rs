//! `make soak` (and, short, `make soak-short` in `make test`): N StormServices on the local control
//! plane, with the admission webhook registered, receive a seeded random stream of user actions
//! (image bumps, template reverts, approvals, aborts, retries, pauses, resumes, role scales,
//! deletions) while faults are injected on a seeded schedule. An invariant checker watches the
//! whole run; at the end every StormService is finished or aborted and must come to rest.
//!
//! The StormServices: canaries of 3 RoleSets without a router, canaries of one RoleSet, blue-green
//! with a preview, canaries of 3 RoleSets whose first step measures a web provider that is
//! slow (2–4 s) on 15% of requests and fails (HTTP 500) on another 15%, and canaries of 3
//! RoleSets behind a Gateway API HTTPRoute whose first step measures the real Prometheus.
//!
//! The controller runs as two replicas with leader election (the Lease in storm-system), as the
//! storm-controller ServiceAccount with the RBAC of manifests/controller, both talking to the API
//! server through a TCP relay the soak controls. Faults:
//! - `controller_kill`: SIGKILL of one replica (either), restarted at once;
//! - `leader_kill`: SIGKILL of the replica holding the Lease, restarted at once;
//! - `apiserver_restart`: kube-apiserver killed and started again; the relay takes no connection
//!   until its /readyz passes, as the `kubernetes` Service lists it only then. Two come at
//!   least 150 s apart (kwok and kube-controller-manager back off up to 30 s after each);
//! - `etcd_restart`: etcd killed and started again on the same data;
//! - `blackhole`: the relay stops moving bytes for 30 s (connections stay open, nothing arrives);
//! - `webhook_kill`: SIGKILL of one of the two webhook replicas (soak/webhooks.rs) while 12
//!   `kubectl apply`s of image changes run at once; each apply must succeed or be refused with
//!   an error naming the webhook, within its 30 s timeout, and a refused one must succeed when
//!   applied again once the killed replica has left the Service.
//!
//! After each fault the soak bumps the image of a probe StormService and measures how long until
//! the controller has acted on it (`status.observedGeneration` caught up): the recovery time.
//!
//! Invariants (each violation is counted under its name, the first one kept as an example):
//! - `capacity_floor`: once a StormService has been Healthy, its Ready RoleSets (any revision)
//!   never stay below `replicas − maxUnavailable` for more than 15 s;
//! - `surge`: its RoleSets never stay above `replicas` plus the surge budget for more than 15 s
//!   while a canary moves (twice `replicas` for blue-green and a routed canary, and while an abort or rollback grows
//!   stable back);
//! - `abort`: 60 s after `Aborted`, weight 0 (in the status and the HTTPRoute) and no RoleSet of
//!   the aborted revision (its 5 s drain delay included);
//! - `router_weight`: the HTTPRoute never sends the canary more than the step the rollout is on
//!   (for longer than the 3 s between reading the route and the StormService);
//! - `stable_share`: with a route, Ready stable RoleSets never fall below what the route's
//!   stable share needs minus maxUnavailable for more than 15 s;
//! - `observed_generation`: `status.observedGeneration` never goes back;
//! - `stuck`: a rollout `Progressing` with the same rollout status for 120 s;
//! - `deleted`: 60 s after a StormService is deleted, every RoleSet and Pod of it still there
//!   is garbage collection's (an owner reference to it or its RoleSets; the time collection took
//!   is reported as `deletion_gc`) and its HTTPRoute (the user's) sends nothing to the canary;
//! - `acts_once`: no control annotation acts more often than it was set (the controller's
//!   RolloutAborted, RolloutRetried, PausedByUser, Resumed and Approved Events, counted with their series,
//!   against the annotations the API server accepted);
//! - `rest`: after the stream stops, every StormService reaches Healthy, Completed, Aborted or
//!   Degraded with exactly `replicas` Ready RoleSets of its stable revision within 180 s.
//!
//! Writes `target/bench/soak.json` (seed, services, minutes, actions and faults by kind, when
//! each fault came, violations by invariant with the first example, recovery p50/p99 by fault
//! kind, abort recovery p50/p99) and exits non-zero on any violation.
//! Usage: cargo run -p storm-e2e --example soak -- [SERVICES] [SECONDS] [SEED] [FAULTS]
//! (FAULTS: comma-separated kinds, all by default).

#[path = "soak/webhooks.rs"]
mod webhooks;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use storm_shared::keys::LABEL_REVISION;
use storm_shared::status::Reason;
use storm_shared::types::analysis::AnalysisTemplate;
use storm_shared::types::stormservice::RolloutPhase;
use storm_shared::{RoleSet, StormService};
use storm_test_support::TestNamespace;
use storm_test_support::process::Controller;
use storm_test_support::prometheus::{Exporter, Prometheus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A small deterministic generator: the same seed gives the same stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Canary,
    Single,
    BlueGreen,
    Analysed,
    Routed,
}

fn kind_of(i: usize) -> Kind {
    match i % 5 {
        0 => Kind::Canary,
        1 => Kind::Single,
        2 => Kind::BlueGreen,
        3 => Kind::Analysed,
        _ => Kind::Routed,
    }
}

fn replicas_of(kind: Kind) -> usize {
    if kind == Kind::Single { 1 } else { 3 }
}

fn manifest(name: &str, kind: Kind, image: &str) -> Value {
    let replicas = replicas_of(kind);
    let services = |a: &str, b: &str| (format!("{name}-{a}"), format!("{name}-{b}"));
    let (stable, canary) = services("stable", "canary");
    let strategy = match kind {
        Kind::BlueGreen => json!({"type": "BlueGreen", "blueGreen": {
            "activeService": stable, "previewService": canary,
            "autoPromotionEnabled": false, "scaleDownDelaySeconds": 5,
            "abortScaleDownDelaySeconds": 5}}),
        Kind::Analysed => json!({"type": "Canary", "canary": {
            "stableService": stable, "canaryService": canary,
            "steps": [{"weight": 34, "analysis": {"templates": [{"name": "flaky"}]}},
                      {"weight": 67, "pause": {"untilApproval": true}}, {"weight": 100}]}}),
        Kind::Routed => json!({"type": "Canary", "canary": {
            "stableService": stable, "canaryService": canary,
            "trafficRouting": {"gatewayAPI": {"httpRoute": format!("{name}-route")}},
            // Drains shorter than the defaults (60 s, 30 s): the soak's time goes to faults.
            "scaleDownDelaySeconds": 5, "abortScaleDownDelaySeconds": 5,
            "steps": ROUTED_STEPS.iter().map(|w| match w {
                    34 => json!({"weight": 34, "analysis": {"templates": [{"name": "prometheus"}]}}),
                    67 => json!({"weight": 67, "pause": {"untilApproval": true}}),
                    w => json!({"weight": w}),
                }).collect::<Vec<_>>()}}),
        _ => json!({"type": "Canary", "canary": {
            "stableService": stable, "canaryService": canary,
            "steps": [{"weight": 34, "pause": {"duration": "2s"}}, {"weight": 67, "pause": {"untilApproval": true}}, {"weight": 100}]}}),
    };
    json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"roles": [{"name": "server", "replicas": 1, "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "server", "image": image}]}}}]}},
            "rolloutStrategy": strategy
        }
    })
}

/// The routed canaries' step weights: 34 measures the real Prometheus, 67 waits for approval.
const ROUTED_STEPS: [i64; 3] = [34, 67, 100];

/// The user's HTTPRoute in front of a routed StormService: all traffic on stable.
fn http_route(name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": format!("{name}-route")},
        "spec": {"parentRefs": [{"name": "public"}], "rules": [{"backendRefs": [
            {"name": format!("{name}-stable"), "port": 80, "weight": 100},
            {"name": format!("{name}-canary"), "port": 80, "weight": 0}]}]}
    })
}

/// The canary's share of an HTTPRoute in percent (its second backend's weight over the sum).
fn route_canary_percent(route: &Value) -> Option<i64> {
    let refs = route["spec"]["rules"][0]["backendRefs"].as_array()?;
    let weight = |i: usize| refs.get(i).and_then(|b| b["weight"].as_i64()).unwrap_or(0);
    let total = weight(0) + weight(1);
    (total > 0).then(|| weight(1) * 100 / total)
}

fn phase(obj: &StormService) -> Option<RolloutPhase> {
    obj.status.as_ref()?.rollout_status.as_ref()?.phase
}

/// The analysis provider: fast and fine on 70% of requests, 2–4 s slow on 15%, HTTP 500 on 15%.
fn flaky_provider(seed: u64) -> Result<String> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/rate", listener.local_addr()?);
    std::thread::spawn(move || {
        let rng = std::sync::Mutex::new(Rng(seed.rotate_left(17) | 1));
        for stream in listener.incoming().flatten() {
            let draw = rng.lock().map(|mut r| r.below(100)).unwrap_or(0);
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                if (70..85).contains(&draw) {
                    std::thread::sleep(Duration::from_millis(2000 + 130 * (draw - 70)));
                }
                let (status, body) = if draw >= 85 {
                    ("500 Internal Server Error", r#"{"error":"overloaded"}"#)
                } else {
                    ("200 OK", r#"{"rate":1}"#)
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    Ok(url)
}

/// A TCP relay to the API server that can be paused: while paused it moves no bytes (a
/// blackhole: connections stay open, nothing arrives, nothing is refused). While `ready` is
/// false it closes new connections: the `kubernetes` Service lists an API server only once its
/// /readyz passes, and before that a restarted kube-apiserver answers 403 to everyone (its RBAC
/// caches are still empty).
async fn relay(upstream: String, paused: Arc<AtomicBool>, ready: Arc<AtomicBool>) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if !ready.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let (upstream, paused) = (upstream.clone(), paused.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, paused.clone()), pump(sr, cw, paused));
            });
        }
    });
    Ok(port)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Percentiles of durations in seconds.
fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!({"count": 0});
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    json!({"count": v.len(), "p50_s": (at(0.5) * 10.0).round() / 10.0, "p99_s": (at(0.99) * 10.0).round() / 10.0})
}

/// What the checker remembers between looks.
#[derive(Default)]
struct Watch {
    violations: BTreeMap<&'static str, (u64, String)>,
    healthy_once: BTreeSet<String>,
    below_floor: BTreeMap<String, Instant>,
    above_surge: BTreeMap<String, Instant>,
    aborted_at: BTreeMap<String, (Instant, String, bool)>,
    abort_recovery: Vec<f64>,
    generation: BTreeMap<String, i64>,
    progressing: BTreeMap<String, (String, Instant)>,
    /// Deleted StormServices by name: when, and the uid of the deleted object.
    deleted: BTreeMap<String, (Instant, String)>,
    /// Seconds from a deletion until its last RoleSet and Pod were gone (garbage collection).
    deletion_gc: Vec<f64>,
    over_weight: BTreeMap<String, Instant>,
    below_share: BTreeMap<String, Instant>,
}

impl Watch {
    fn violate(&mut self, invariant: &'static str, example: String) {
        let e = self.violations.entry(invariant).or_insert((0, example));
        e.0 += 1;
    }
}

/// Where the replicas hold their Lease: the controller's own namespace, the only one where the
/// shipped Role lets it.
const LEASE_NAMESPACE: &str = "storm-system";

const GRACE: Duration = Duration::from_secs(15);
/// The least time between two kube-apiserver restarts.
const APISERVER_RESTART_SPACING: Duration = Duration::from_secs(150);
/// The checker reads the route and the StormService one after the other: a weight above the
/// step must last this long to count.
const ROUTER_GRACE: Duration = Duration::from_secs(3);

struct Soak {
    ns: TestNamespace,
    api: Api<StormService>,
    routes: Api<DynamicObject>,
    names: Vec<String>,
    images: BTreeMap<String, Vec<String>>,
    present: BTreeSet<String>,
    watch: Watch,
    started: Instant,
    /// Control annotations the API server accepted, by StormService and the Event reason the
    /// controller records when that control acts.
    controls_sent: BTreeMap<(String, &'static str), u64>,
}

/// The Event reason with which the controller records that a control annotation acted.
fn acted_reason(control: &str) -> &'static str {
    match control {
        "abort" => Reason::Aborted,
        "retry" => Reason::Retried,
        "pause" => Reason::PausedByUser,
        "resume" => Reason::Resumed,
        _ => Reason::Approved,
    }
    .as_str()
}

/// How often each control acted, by StormService and reason, from the controller's Events
/// (an Event that repeats is one object with a series count).
async fn controls_acted(ns: &TestNamespace) -> Result<BTreeMap<(String, String), u64>> {
    let reasons = ["abort", "retry", "pause", "resume", "approve"].map(acted_reason);
    let mut acted = BTreeMap::new();
    for e in ns.api::<Event>().list(&ListParams::default()).await?.items {
        let Some(reason) = e.reason.clone().filter(|r| reasons.contains(&r.as_str())) else {
            continue;
        };
        let Some(name) = e
            .regarding
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("StormService"))
            .and_then(|r| r.name.clone())
        else {
            continue;
        };
        let n = e
            .series
            .as_ref()
            .map_or(1, |s| u64::try_from(s.count).unwrap_or(1));
        *acted.entry((name, reason)).or_default() += n;
    }
    Ok(acted)
}

impl Soak {
    /// One look at every StormService, its RoleSets and (for deleted ones) its Pods.
    async fn check(&mut self) -> Result<()> {
        let t = self.started.elapsed().as_secs();
        // The routes first: the StormService read after them can only be further along.
        let routes: BTreeMap<String, i64> = self
            .routes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|r| {
                let name = r.name_any().strip_suffix("-route")?.to_string();
                Some((name, route_canary_percent(&serde_json::to_value(&r).ok()?)?))
            })
            .collect();
        let all = self.api.list(&ListParams::default()).await?.items;
        let rolesets = self
            .ns
            .api::<RoleSet>()
            .list(&ListParams::default())
            .await?
            .items;
        let mut by_owner: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for r in rolesets
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
        {
            let Some(owner) = r.labels().get("storm-service-name") else {
                continue;
            };
            by_owner
                .entry(owner.clone())
                .or_default()
                .push(revision_and_ready(r));
        }
        let w = &mut self.watch;
        let mut found: Vec<(&'static str, String)> = Vec::new();
        for obj in &all {
            let name = obj.name_any();
            let Some(i) = self.names.iter().position(|n| *n == name) else {
                continue;
            };
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let kind = kind_of(i);
            let replicas = usize::try_from(obj.spec.replicas.unwrap_or(1)).unwrap_or(1);
            let mine = by_owner.get(&name).cloned().unwrap_or_default();
            let p = phase(obj);
            let st = obj.status.as_ref();
            let stable = st
                .and_then(|s| s.current_revision.clone())
                .unwrap_or_default();
            let update = st
                .and_then(|s| s.update_revision.clone())
                .unwrap_or_default();
            if p == Some(RolloutPhase::Healthy) {
                w.healthy_once.insert(name.clone());
            }
            let routed = routes.get(&name).copied().filter(|_| kind == Kind::Routed);
            // router_weight: the route never sends the canary more than the step it is on.
            let step = st
                .and_then(|s| s.rollout_status.as_ref())
                .and_then(|r| r.current_step_index);
            let running = matches!(p, Some(RolloutPhase::Progressing | RolloutPhase::Paused));
            if let (Some(percent), Some(step), true) = (routed, step, running) {
                let bound = ROUTED_STEPS
                    .iter()
                    .take(usize::try_from(step).unwrap_or(0) + 1)
                    .copied()
                    .max()
                    .unwrap_or(0);
                if percent > bound {
                    let since = *w
                        .over_weight
                        .entry(name.clone())
                        .or_insert_with(Instant::now);
                    if since.elapsed() > ROUTER_GRACE {
                        found.push(("router_weight", format!("t={t}s {name} ({p:?}) at step {step}: the HTTPRoute sends {percent}% to the canary for {ROUTER_GRACE:?}, the step {bound}%")));
                        w.over_weight.remove(&name);
                    }
                } else {
                    w.over_weight.remove(&name);
                }
            } else {
                w.over_weight.remove(&name);
            }
            // stable_share: Ready stable RoleSets carry what the route still sends to stable.
            if let Some(percent) = routed.filter(|_| w.healthy_once.contains(&name)) {
                let stable_ready = mine.iter().filter(|(r, ok)| *ok && *r == stable).count();
                let needed = (replicas * usize::try_from(100 - percent).unwrap_or(0)).div_ceil(100);
                let allowed = needed.saturating_sub(replicas / 4);
                if stable_ready < allowed {
                    let since = *w
                        .below_share
                        .entry(name.clone())
                        .or_insert_with(Instant::now);
                    if since.elapsed() > GRACE {
                        found.push(("stable_share", format!("t={t}s {name} ({p:?}): {stable_ready} Ready stable RoleSets for {GRACE:?} while the HTTPRoute sends {}% to stable (needs {allowed})", 100 - percent)));
                        w.below_share.remove(&name);
                    }
                } else {
                    w.below_share.remove(&name);
                }
            }
            // capacity_floor: maxUnavailable is 25% of replicas, rounded down.
            let floor = replicas - replicas / 4;
            let ready = mine.iter().filter(|(_, r)| *r).count();
            if w.healthy_once.contains(&name) && ready < floor {
                let since = *w
                    .below_floor
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() > GRACE {
                    // The Pods themselves, to tell a RoleSet status that lags from capacity lost.
                    let pods = self
                        .ns
                        .api::<Pod>()
                        .list(&ListParams::default().labels(&format!("storm-service-name={name}")))
                        .await?
                        .items;
                    let pods: Vec<String> = pods
                        .iter()
                        .map(|pod| {
                            let ready = pod
                                .status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| {
                                    c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                });
                            format!(
                                "{}{}{}",
                                pod.name_any(),
                                if ready { " Ready" } else { " not Ready" },
                                if pod.metadata.deletion_timestamp.is_some() {
                                    " deleting"
                                } else {
                                    ""
                                }
                            )
                        })
                        .collect();
                    w.violate(
                        "capacity_floor",
                        format!("t={t}s {name} ({p:?}): {ready} Ready RoleSets for {GRACE:?}, floor {floor}: {mine:?}; Pods {pods:?}"),
                    );
                    w.below_floor.remove(&name);
                }
            } else {
                w.below_floor.remove(&name);
            }
            // surge
            let recovering = matches!(p, Some(RolloutPhase::Aborted | RolloutPhase::Degraded));
            let bound = match kind {
                // A preview beside active; a routed canary beside a stable kept at full size
                // (stable shrinks only with dynamicStableScale).
                Kind::BlueGreen | Kind::Routed => 2 * replicas,
                _ if recovering => 2 * replicas,
                _ => replicas + replicas.div_ceil(4).max(1),
            };
            if mine.len() > bound {
                let since = *w
                    .above_surge
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() > GRACE {
                    let mut by_rev: BTreeMap<&str, usize> = BTreeMap::new();
                    for (r, _) in &mine {
                        *by_rev.entry(r.as_str()).or_default() += 1;
                    }
                    w.violate(
                        "surge",
                        format!("t={t}s {name} ({p:?}, stable {stable}, update {update}): {} RoleSets for {GRACE:?}, more than {bound}: {by_rev:?}", mine.len()),
                    );
                    w.above_surge.remove(&name);
                }
            } else {
                w.above_surge.remove(&name);
            }
            // abort
            if p == Some(RolloutPhase::Aborted) && update != stable {
                let weight = st
                    .and_then(|s| s.rollout_status.as_ref())
                    .and_then(|r| r.canary_status.as_ref())
                    .map_or(0, |c| c.current_weight)
                    .max(i32::try_from(routed.unwrap_or(0)).unwrap_or(i32::MAX));
                let left = mine.iter().filter(|(r, _)| *r == update).count();
                let entry = w.aborted_at.entry(name.clone()).or_insert((
                    Instant::now(),
                    update.clone(),
                    false,
                ));
                if entry.1 != update {
                    *entry = (Instant::now(), update.clone(), false);
                }
                if weight == 0 && left == 0 && !entry.2 {
                    entry.2 = true;
                    let took = entry.0.elapsed().as_secs_f64();
                    w.abort_recovery.push(took);
                } else if !entry.2 && entry.0.elapsed() > Duration::from_secs(60) {
                    found.push(("abort", format!("t={t}s {name}: aborted for 60 s, weight {weight}, {left} RoleSets of {update} left")));
                    entry.2 = true;
                }
            } else {
                w.aborted_at.remove(&name);
            }
            // observed_generation
            if let Some(g) = st.and_then(|s| s.observed_generation) {
                let seen = w.generation.entry(name.clone()).or_insert(g);
                if g < *seen {
                    found.push((
                        "observed_generation",
                        format!("t={t}s {name}: observedGeneration {g} after {seen}"),
                    ));
                }
                *seen = (*seen).max(g);
            }
            // stuck
            if p == Some(RolloutPhase::Progressing) {
                let now = serde_json::to_string(&st.and_then(|s| s.rollout_status.clone()))?;
                let entry = w
                    .progressing
                    .entry(name.clone())
                    .or_insert((now.clone(), Instant::now()));
                if entry.0 != now {
                    *entry = (now, Instant::now());
                } else if entry.1.elapsed() > Duration::from_secs(120) {
                    found.push((
                        "stuck",
                        format!("t={t}s {name}: Progressing unchanged for 120 s: {now}"),
                    ));
                    entry.1 = Instant::now();
                }
            } else {
                w.progressing.remove(&name);
            }
        }
        for (invariant, example) in found {
            w.violate(invariant, example);
        }
        // deleted: what the deleted object leaves must be garbage collection's (an owner
        // reference to it or to one of its RoleSets), and its route back on stable. A
        // re-created StormService of the same name has a new uid: its RoleSets and Pods are not
        // leftovers.
        let gone: Vec<(String, Instant, String)> = w
            .deleted
            .iter()
            .map(|(n, (t, uid))| (n.clone(), *t, uid.clone()))
            .collect();
        let owner_uids = |meta: &kube::api::ObjectMeta| -> Vec<String> {
            meta.owner_references
                .iter()
                .flatten()
                .map(|o| o.uid.clone())
                .collect()
        };
        for (name, since, uid) in gone {
            let of_name: Vec<&RoleSet> = rolesets
                .iter()
                .filter(|r| r.labels().get("storm-service-name") == Some(&name))
                .collect();
            let (left, live): (Vec<&RoleSet>, Vec<&RoleSet>) = of_name
                .into_iter()
                .partition(|r| owner_uids(&r.metadata).contains(&uid));
            let live_uids: Vec<String> =
                live.iter().filter_map(|r| r.metadata.uid.clone()).collect();
            let pods: Vec<Pod> = self
                .ns
                .api::<Pod>()
                .list(&ListParams::default().labels(&format!("storm-service-name={name}")))
                .await?
                .items
                .into_iter()
                .filter(|p| {
                    !owner_uids(&p.metadata)
                        .iter()
                        .any(|u| live_uids.contains(u))
                })
                .collect();
            let orphans = pods
                .iter()
                .filter(|p| owner_uids(&p.metadata).is_empty())
                .count();
            // A routed StormService's HTTPRoute is the user's: it stays, all traffic on stable
            // (unless a re-created one is rolling out again).
            let recreated = all.iter().any(|o| o.name_any() == name);
            let route_left = if recreated {
                0
            } else {
                routes.get(&name).copied().unwrap_or(0)
            };
            if left.is_empty() && pods.is_empty() && route_left == 0 {
                w.deletion_gc.push(since.elapsed().as_secs_f64());
                w.deleted.remove(&name);
            } else if since.elapsed() > Duration::from_secs(60) && (orphans > 0 || route_left > 0) {
                w.violate("deleted", format!("t={t}s {name}: deleted 60 s ago, {orphans} Pods of it without an owner, its HTTPRoute sends {route_left}% to the canary"));
                w.deleted.remove(&name);
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    storm_test_support::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let services: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(300);
    let seed: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(20261130);
    // Which faults to inject (comma-separated kinds; all by default).
    let all_faults = [
        "controller_kill",
        "leader_kill",
        "apiserver_restart",
        "etcd_restart",
        "blackhole",
        "webhook_kill",
    ];
    let fault_kinds: Vec<&str> = match args.get(4) {
        Some(list) => all_faults
            .iter()
            .copied()
            .filter(|k| list.split(',').any(|x| x.trim() == *k))
            .collect(),
        None => all_faults.to_vec(),
    };
    anyhow::ensure!(
        !fault_kinds.is_empty(),
        "no known fault kind in {:?}",
        args.get(4)
    );
    let mut rng = Rng(seed | 1);
    // Faults draw from their own stream: the same seed gives the same faults at the same times,
    // however many actions the machine gets through between them.
    let mut fault_rng = Rng(seed.rotate_left(29) | 1);
    let ns = TestNamespace::new("soak").await?;
    let cluster = ns.cluster();
    cluster.install_crds()?;

    // The controllers reach the API server through the relay, as the storm-controller
    // ServiceAccount with the RBAC of manifests/controller.
    let identity = std::fs::read_to_string(cluster.service_account_kubeconfig("controller")?)?;
    let server = identity
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .map(str::trim)
        .context("no server in the kubeconfig")?
        .to_string();
    let upstream = server.trim_start_matches("https://").to_string();
    let paused = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(true));
    let port = relay(upstream, paused.clone(), ready.clone()).await?;
    let relayed =
        std::env::temp_dir().join(format!("storm-soak-{}.kubeconfig", std::process::id()));
    std::fs::write(
        &relayed,
        identity.replace(&server, &format!("https://127.0.0.1:{port}")),
    )?;
    let relayed = relayed.display().to_string();
    // The Lease in the controller's own namespace, where manifests/controller lets it hold one.
    // STORM_SOAK_LOG replaces the replicas' RUST_LOG (to trace one run).
    let log =
        std::env::var("STORM_SOAK_LOG").unwrap_or_else(|_| "info,storm_controller=debug".into());
    let start = |id: &str| {
        Controller::start_in(
            cluster,
            ns.name(),
            &["--leader-elect=true", "--lease-namespace", LEASE_NAMESPACE],
            &[
                ("KUBECONFIG", relayed.as_str()),
                ("POD_NAME", id),
                ("RUST_LOG", log.as_str()),
            ],
        )
    };
    let mut replicas = vec![
        ("soak-a".to_string(), start("soak-a")?),
        ("soak-b".to_string(), start("soak-b")?),
    ];

    let mut webhooks = webhooks::Webhooks::start(cluster).await?;
    let mut burst_applies: BTreeMap<&str, u64> = BTreeMap::new();

    let provider = flaky_provider(seed)?;
    let template: AnalysisTemplate = serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "flaky"},
        "spec": {"metrics": [{"name": "rate",
            "provider": {"web": {"url": provider, "jsonPath": "{$.rate}", "timeout": "5s"}},
            "successCondition": "result < 5", "count": 2, "interval": "1s"}]}
    }))?;
    ns.api::<AnalysisTemplate>()
        .create(&PostParams::default(), &template)
        .await?;

    // The routed canaries measure the real Prometheus (scraping an exporter at 1% errors).
    cluster.install_thirdparty_crds()?;
    let exporter = Exporter::start()?;
    exporter.set("soak", 99, 1);
    let prometheus = Prometheus::start(&[exporter.target()])?;
    let error_percent = exporter.error_percent_query("soak");
    prometheus.wait_for_value(&error_percent, 1.0)?;
    let template: AnalysisTemplate = serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "prometheus"},
        "spec": {"metrics": [{"name": "errors",
            "provider": {"prometheus": {"address": prometheus.base_url(), "query": error_percent, "timeout": "5s"}},
            "successCondition": "result[0] < 5", "count": 2, "interval": "1s"}]}
    }))?;
    ns.api::<AnalysisTemplate>()
        .create(&PostParams::default(), &template)
        .await?;
    let routes: Api<DynamicObject> = Api::namespaced_with(
        ns.client(),
        ns.name(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
        ),
    );

    let api = ns.api::<StormService>();
    let svcs: Api<Service> = ns.api();
    let mut names: Vec<String> = (0..services).map(|i| format!("s{i}")).collect();
    names.push("probe".into());
    let mut soak = Soak {
        ns,
        api: api.clone(),
        routes: routes.clone(),
        names: names.clone(),
        images: BTreeMap::new(),
        present: BTreeSet::new(),
        watch: Watch::default(),
        started: Instant::now(),
        controls_sent: BTreeMap::new(),
    };
    for (i, name) in names.iter().enumerate() {
        for side in ["stable", "canary"] {
            let svc: Service =
                serde_json::from_value(json!({"metadata": {"name": format!("{name}-{side}")},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}))?;
            svcs.create(&PostParams::default(), &svc).await?;
        }
        let kind = if name == "probe" {
            Kind::Single
        } else {
            kind_of(i)
        };
        if kind == Kind::Routed {
            routes
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(http_route(name))?,
                )
                .await?;
        }
        let obj: StormService = serde_json::from_value(manifest(name, kind, "app:v1"))?;
        api.create(&PostParams::default(), &obj).await?;
        soak.images.insert(name.clone(), vec!["app:v1".into()]);
        soak.present.insert(name.clone());
    }
    let stream: Vec<String> = names.iter().filter(|n| *n != "probe").cloned().collect();

    let mut actions: BTreeMap<&str, u64> = BTreeMap::new();
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    // When each fault came (seconds since the start), to set violations beside them.
    let mut timeline: Vec<Value> = Vec::new();
    let mut recovery: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut next_fault = Instant::now() + Duration::from_secs(25 + fault_rng.below(20));
    let mut last_apiserver_restart: Option<Instant> = None;
    let mut down: Option<usize> = None;
    // A replica that exits by itself (a leader that could not renew its Lease in time exits, as
    // it must) is started again, as the kubelet would restart its container.
    let mut exits = 0u64;
    let supervise = |replicas: &mut Vec<(String, Controller)>,
                     down: Option<usize>,
                     exits: &mut u64|
     -> Result<()> {
        for (k, (_, r)) in replicas.iter_mut().enumerate() {
            if Some(k) != down && r.process.ensure_running().is_err() {
                *exits += 1;
                r.process.restart()?;
            }
        }
        Ok(())
    };
    let mut image = 1u64;
    while soak.started.elapsed() < Duration::from_secs(seconds) {
        let name = stream[rng.below(stream.len() as u64) as usize].clone();
        let i = names.iter().position(|n| *n == name).unwrap_or(0);
        let action = if !soak.present.contains(&name) {
            "recreate"
        } else {
            match rng.below(20) {
                0..=4 => "image",
                5 => "revert",
                6..=8 => "approve",
                9 | 10 => "abort",
                11 | 12 => "retry",
                13 => "pause",
                14 => "resume",
                15..=17 => "scale",
                18 => "delete",
                _ => "approve",
            }
        };
        let json_patch = |ops: Value| -> Result<Patch<()>> {
            Ok(Patch::<()>::Json(serde_json::from_value(ops)?))
        };
        let result = match action {
            "image" | "revert" => {
                let images = soak.images.entry(name.clone()).or_default();
                let next = if action == "revert" && images.len() >= 2 {
                    images[images.len() - 2].clone()
                } else {
                    image += 1;
                    format!("app:v{image}")
                };
                images.push(next.clone());
                let patch = json_patch(
                    json!([{"op": "replace", "path": "/spec/template/spec/roles/0/template/spec/containers/0/image", "value": next}]),
                )?;
                api.patch(&name, &PatchParams::default(), &patch)
                    .await
                    .map(|_| ())
            }
            "scale" => {
                let patch = json_patch(
                    json!([{"op": "replace", "path": "/spec/template/spec/roles/0/replicas", "value": 1 + rng.below(2)}]),
                )?;
                api.patch(&name, &PatchParams::default(), &patch)
                    .await
                    .map(|_| ())
            }
            "delete" => {
                let uid = api.get(&name).await.ok().and_then(|o| o.metadata.uid);
                let r = api
                    .delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ());
                if r.is_ok() {
                    soak.present.remove(&name);
                    soak.watch
                        .deleted
                        .insert(name.clone(), (Instant::now(), uid.unwrap_or_default()));
                    for m in [
                        &mut soak.watch.generation as &mut dyn Forget,
                        &mut soak.watch.healthy_once,
                    ] {
                        m.forget(&name);
                    }
                }
                r
            }
            "recreate" => {
                // Once the old object is gone (its finalizer released).
                match api.get_opt(&name).await {
                    Ok(None) => {
                        let image = soak
                            .images
                            .get(&name)
                            .and_then(|v| v.last().cloned())
                            .unwrap_or_else(|| "app:v1".into());
                        let obj: StormService =
                            serde_json::from_value(manifest(&name, kind_of(i), &image))?;
                        let r = api.create(&PostParams::default(), &obj).await.map(|_| ());
                        if r.is_ok() {
                            soak.present.insert(name.clone());
                        }
                        r
                    }
                    _ => Ok(()),
                }
            }
            control => {
                let key = format!(
                    "stormservice.aibrix.ai/rollout-{}",
                    if control == "approve" {
                        "approval"
                    } else {
                        control
                    }
                );
                let body = json!({"metadata": {"annotations": {key: "true"}}});
                let r = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map(|_| ());
                if r.is_ok() {
                    *soak
                        .controls_sent
                        .entry((name.clone(), acted_reason(control)))
                        .or_default() += 1;
                }
                r
            }
        };
        // Admission refuses controls that cannot act, and a fault may refuse anything: answers,
        // not failures of the soak.
        *actions
            .entry(if result.is_ok() { action } else { "refused" })
            .or_default() += 1;

        if Instant::now() >= next_fault {
            let mut kind = fault_kinds[fault_rng.below(fault_kinds.len() as u64) as usize];
            // kube-apiserver restarts come at least APISERVER_RESTART_SPACING apart (another kind
            // is drawn when one would come sooner): the node agents' and controller-manager's
            // client-go watches back off from 0.8 s up to 30 s and reset only after two quiet
            // minutes, so restarts that come sooner leave kwok's Pods unready for a minute or
            // more, which no controller can make up for.
            while kind == "apiserver_restart"
                && fault_kinds.iter().any(|k| *k != kind)
                && last_apiserver_restart.is_some_and(|t| t.elapsed() < APISERVER_RESTART_SPACING)
            {
                kind = fault_kinds[fault_rng.below(fault_kinds.len() as u64) as usize];
            }
            if kind == "apiserver_restart" {
                last_apiserver_restart = Some(Instant::now());
            }
            match kind {
                "controller_kill" => {
                    let k = fault_rng.below(2) as usize;
                    replicas[k].1.process.restart()?;
                }
                "leader_kill" => {
                    // The leader's Pod is gone: the standby must take the Lease over (after it
                    // expires); the killed replica comes back once the probe has recovered.
                    let leases: Api<Lease> = Api::namespaced(soak.ns.client(), LEASE_NAMESPACE);
                    let holder = leases
                        .get_opt("storm-controller")
                        .await
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec?.holder_identity);
                    if let Some(k) = replicas
                        .iter()
                        .position(|(id, _)| Some(id) == holder.as_ref())
                    {
                        replicas[k].1.process.kill()?;
                        down = Some(k);
                    }
                }
                "apiserver_restart" | "etcd_restart" => {
                    let component = if kind == "etcd_restart" {
                        "etcd"
                    } else {
                        "kube-apiserver"
                    };
                    // Out of the Service until it is ready again (cluster.sh waits for /readyz).
                    let apiserver = component == "kube-apiserver";
                    if apiserver {
                        ready.store(false, Ordering::SeqCst);
                    }
                    let out = std::process::Command::new("bash")
                        .arg(storm_test_support::repo_root().join("tests/controlplane/cluster.sh"))
                        .args(["restart", component])
                        .output()?;
                    ready.store(true, Ordering::SeqCst);
                    anyhow::ensure!(
                        out.status.success(),
                        "restarting {component}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                "webhook_kill" => {
                    // Image changes to 12 StormServices that exist, applied at once; one replica
                    // killed while they run.
                    let mut targets: Vec<(String, Value)> = Vec::new();
                    for _ in 0..12 {
                        let name = stream[fault_rng.below(stream.len() as u64) as usize].clone();
                        if !soak.present.contains(&name) || targets.iter().any(|(n, _)| *n == name)
                        {
                            continue;
                        }
                        let i = names.iter().position(|n| *n == name).unwrap_or(0);
                        image += 1;
                        let next = format!("app:v{image}");
                        soak.images
                            .entry(name.clone())
                            .or_default()
                            .push(next.clone());
                        targets.push((name.clone(), manifest(&name, kind_of(i), &next)));
                    }
                    let k = fault_rng.below(2) as usize;
                    let (applied, ()) = tokio::join!(
                        webhooks::apply_burst(cluster, soak.ns.name(), targets),
                        async {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            webhooks.kill(k).ok();
                        }
                    );
                    // Refused ones again, once the killed replica has left the Service.
                    tokio::time::sleep(webhooks::ENDPOINT_DELAY + Duration::from_millis(500)).await;
                    let mut again = Vec::new();
                    for a in &applied {
                        *burst_applies
                            .entry(if a.result.is_ok() {
                                "admitted"
                            } else {
                                "refused"
                            })
                            .or_default() += 1;
                        if a.took > Duration::from_secs(31) {
                            soak.watch.violate(
                                "webhook_kill",
                                format!(
                                    "t={}s kubectl apply of {} took {:?}",
                                    soak.started.elapsed().as_secs(),
                                    a.name,
                                    a.took
                                ),
                            );
                        }
                        if let Err(e) = &a.result {
                            if !e.contains("webhook") {
                                soak.watch.violate(
                                    "webhook_kill",
                                    format!(
                                        "t={}s {}: refused without naming the webhook: {e}",
                                        soak.started.elapsed().as_secs(),
                                        a.name
                                    ),
                                );
                            }
                            again.push((a.name.clone(), a.manifest.clone()));
                        }
                    }
                    for a in webhooks::apply_burst(cluster, soak.ns.name(), again).await {
                        match a.result {
                            Ok(()) => *burst_applies.entry("admitted_on_retry").or_default() += 1,
                            Err(e) => soak.watch.violate(
                                "webhook_kill",
                                format!(
                                    "t={}s {}: refused again with one replica left: {e}",
                                    soak.started.elapsed().as_secs(),
                                    a.name
                                ),
                            ),
                        }
                    }
                    webhooks.restart(k).await?;
                }
                _ => {
                    paused.store(true, Ordering::SeqCst);
                    let until = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < until {
                        soak.check().await.ok();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    paused.store(false, Ordering::SeqCst);
                }
            }
            *faults.entry(kind).or_default() += 1;
            timeline.push(json!([soak.started.elapsed().as_secs(), kind]));
            // Recovery: the controller acts on a new change of the probe (for a killed leader,
            // the standby does).
            let from = Instant::now();
            image += 1;
            let patch = json_patch(
                json!([{"op": "replace", "path": "/spec/template/spec/roles/0/template/spec/containers/0/image", "value": format!("app:v{image}")}]),
            )?;
            let deadline = from + Duration::from_secs(120);
            let mut patched = false;
            while Instant::now() < deadline {
                supervise(&mut replicas, down, &mut exits)?;
                if !patched {
                    patched = api
                        .patch("probe", &PatchParams::default(), &patch)
                        .await
                        .is_ok();
                }
                if patched
                    && let Ok(p) = api.get("probe").await
                    && p.status.as_ref().and_then(|s| s.observed_generation)
                        == p.metadata.generation
                {
                    recovery
                        .entry(kind)
                        .or_default()
                        .push(from.elapsed().as_secs_f64());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if Instant::now() >= deadline {
                soak.watch.violate(
                    "recovery",
                    format!("{kind}: the controller did not act on a change within 120 s"),
                );
            }
            if let Some(k) = down.take() {
                replicas[k].1.process.restart()?;
            }
            next_fault = Instant::now() + Duration::from_secs(25 + fault_rng.below(20));
        }
        supervise(&mut replicas, down, &mut exits)?;
        webhooks.ensure_running()?;
        soak.check().await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Stop: abort what still moves, recreate what was deleted, and let everything rest.
    for name in &stream {
        if !soak.present.contains(name) {
            let i = names.iter().position(|n| n == name).unwrap_or(0);
            let image = soak
                .images
                .get(name)
                .and_then(|v| v.last().cloned())
                .unwrap_or_else(|| "app:v1".into());
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && api.get_opt(name).await?.is_some() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let obj: StormService = serde_json::from_value(manifest(name, kind_of(i), &image))?;
            let _ = api.create(&PostParams::default(), &obj).await;
        }
    }
    let rest_deadline = Instant::now() + Duration::from_secs(180);
    let mut pending_names = Vec::new();
    while Instant::now() < rest_deadline {
        pending_names.clear();
        for obj in api.list(&ListParams::default()).await?.items {
            let at_rest = matches!(
                phase(&obj),
                Some(
                    RolloutPhase::Healthy
                        | RolloutPhase::Completed
                        | RolloutPhase::Aborted
                        | RolloutPhase::Degraded
                )
            ) && whole_stable(&soak.ns, &obj).await?;
            if !at_rest {
                pending_names.push((obj.name_any(), phase(&obj)));
                if matches!(
                    phase(&obj),
                    Some(RolloutPhase::Paused | RolloutPhase::Progressing)
                ) {
                    let body = json!({"metadata": {"annotations": {"stormservice.aibrix.ai/rollout-abort": "true"}}});
                    if api
                        .patch(
                            &obj.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&body),
                        )
                        .await
                        .is_ok()
                    {
                        *soak
                            .controls_sent
                            .entry((obj.name_any(), acted_reason("abort")))
                            .or_default() += 1;
                    }
                }
            }
        }
        supervise(&mut replicas, None, &mut exits)?;
        soak.check().await?;
        if pending_names.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for (name, p) in &pending_names {
        soak.watch.violate(
            "rest",
            format!("{name}: not at rest 180 s after the stream stopped (phase {p:?})"),
        );
    }
    // acts_once: no control annotation acted more often than it was set.
    let acted = controls_acted(&soak.ns).await?;
    let mut controls_acted_total = 0;
    for ((name, reason), n) in &acted {
        controls_acted_total += n;
        let sent = soak
            .controls_sent
            .iter()
            .find(|((s, r), _)| s == name && r == reason)
            .map_or(0, |(_, n)| *n);
        if *n > sent {
            soak.watch.violate(
                "acts_once",
                format!("{name}: {n} {reason} Events for {sent} control annotations set"),
            );
        }
    }
    supervise(&mut replicas, None, &mut exits)?;
    let violations: BTreeMap<&str, Value> = soak
        .watch
        .violations
        .iter()
        .map(|(k, (n, first))| (*k, json!({"count": n, "first": first})))
        .collect();
    let report = json!({
        "seed": seed,
        "services": services,
        "minutes": (soak.started.elapsed().as_secs_f64() / 60.0 * 10.0).round() / 10.0,
        "actions": actions,
        "controls_set": soak.controls_sent.values().sum::<u64>(),
        "controls_acted": controls_acted_total,
        "faults": faults,
        "controller_exits": exits,
        "webhook_kill_applies": burst_applies,
        "webhook_panics": webhooks.panics(),
        "fault_times": timeline,
        "violations": violations,
        "recovery": recovery.into_iter().map(|(k, v)| (k, percentiles(v))).collect::<BTreeMap<_, _>>(),
        "abort_recovery": percentiles(std::mem::take(&mut soak.watch.abort_recovery)),
        // Garbage collection (kube-controller-manager) after a deletion: until the last RoleSet
        // and Pod of it were gone; `pending` were not gone when the soak ended.
        "deletion_gc": {
            "seconds": percentiles(std::mem::take(&mut soak.watch.deletion_gc)),
            "pending": soak.watch.deleted.len(),
        },
    });
    let dir = storm_test_support::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if soak.watch.violations.is_empty() {
        soak.ns.cleanup().await?;
    } else {
        eprintln!("leader log tail:\n{}", replicas[0].1.process.log_tail(40));
    }
    anyhow::ensure!(soak.watch.violations.is_empty(), "invariants violated");
    anyhow::ensure!(webhooks.panics() == 0, "a webhook replica panicked");
    Ok(())
}

/// Maps keyed by StormService name that forget one on deletion.
trait Forget {
    fn forget(&mut self, name: &str);
}

impl Forget for BTreeMap<String, i64> {
    fn forget(&mut self, name: &str) {
        self.remove(name);
    }
}

impl Forget for BTreeSet<String> {
    fn forget(&mut self, name: &str) {
        self.remove(name);
    }
}

/// Whether the StormService has exactly `replicas` Ready RoleSets of its stable revision and no other.
async fn whole_stable(ns: &TestNamespace, obj: &StormService) -> Result<bool> {
    let Some(stable) = obj.status.as_ref().and_then(|s| s.current_revision.clone()) else {
        return Ok(false);
    };
    let rolesets: Vec<(String, bool)> = ns
        .api::<RoleSet>()
        .list(&ListParams::default().labels(&format!("storm-service-name={}", obj.name_any())))
        .await?
        .items
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .map(revision_and_ready)
        .collect();
    let replicas = usize::try_from(obj.spec.replicas.unwrap_or(1)).unwrap_or(1);
    let ready_stable = rolesets
        .iter()
        .filter(|(rev, ready)| *rev == stable && *ready)
        .count();
    Ok(ready_stable == replicas && rolesets.len() == replicas)
}

/// A RoleSet's revision, and whether its Ready condition is True.
fn revision_and_ready(r: &RoleSet) -> (String, bool) {
    let ready = r.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    });
    (
        r.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
        ready,
    )
}
