//! Canary rollouts with traffic routers, end to end: the controller binary moves the weights of
//! the user's routing objects (installed from the projects' own CRDs) step by step, stable keeps
//! full size, and an abort puts all traffic back on stable before the canary goes. The user's own
//! fields in those objects survive.

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::io::Write;
use std::process::Stdio;
use storm_shared::types::stormservice::RolloutPhase;
use storm_test_support::wait_for;

mod common;
use common::*;

/// One router under test: the user's objects, and how to read the weights out of them.
struct Router {
    /// `trafficRouting` of the StormService.
    routing: Value,
    /// The user's objects, created with kubectl.
    objects: Vec<Value>,
    /// `kubectl get` resource and name of the object that carries the weights.
    resource: &'static str,
    name: &'static str,
    /// (stable, canary) weights as the object says.
    weights: fn(&Value) -> Result<(i64, i64)>,
    /// The object with the weights taken out: what must never change.
    user_fields: fn(Value) -> Value,
}

fn kubectl_create(env: &Env, obj: &Value) -> Result<()> {
    let mut child = env
        .ns
        .kubectl()
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(obj.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("kubectl create: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn kubectl_get(env: &Env, resource: &str, name: &str) -> Result<Value> {
    let out = env
        .ns
        .kubectl()
        .args(["get", resource, name, "-o", "json"])
        .output()?;
    ensure!(
        out.status.success(),
        "kubectl get {resource} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Metadata the API server rewrites on every write.
fn strip_server_fields(mut v: Value) -> Value {
    if let Some(m) = v["metadata"].as_object_mut() {
        for k in ["resourceVersion", "generation", "managedFields"] {
            m.remove(k);
        }
    }
    v
}

fn weight_pair(
    list: &[Value],
    name_of: impl Fn(&Value) -> Option<&str>,
    weight_of: impl Fn(&Value) -> i64,
) -> Result<(i64, i64)> {
    let find = |svc: &str| {
        list.iter()
            .find(|e| name_of(e) == Some(svc))
            .map(&weight_of)
            .with_context(|| format!("no entry for {svc} in {list:?}"))
    };
    Ok((find("app-stable")?, find("app-canary")?))
}

fn istio() -> Router {
    Router {
        routing: json!({"istio": {"virtualService": "app-vs"}}),
        objects: vec![json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "app-vs", "labels": {"team": "search"}},
            "spec": {
                "hosts": ["app.example.com"],
                "http": [
                    {"name": "docs", "match": [{"uri": {"prefix": "/docs"}}],
                     "route": [{"destination": {"host": "docs"}}]},
                    {"name": "primary", "retries": {"attempts": 3, "perTryTimeout": "2s"},
                     "route": [
                        {"destination": {"host": "app-stable", "port": {"number": 80}}, "weight": 100},
                        {"destination": {"host": "app-canary.NS.svc.cluster.local", "port": {"number": 80}}, "weight": 0}
                     ],
                     "mirror": {"host": "shadow"}}
                ]
            }
        })],
        resource: "virtualservices.networking.istio.io",
        name: "app-vs",
        weights: |vs| {
            let route = vs["spec"]["http"][1]["route"].as_array().context("route")?;
            weight_pair(
                route,
                |d| {
                    d["destination"]["host"]
                        .as_str()
                        .map(|h| h.split('.').next().unwrap_or(h))
                },
                |d| d["weight"].as_i64().unwrap_or(0),
            )
        },
        user_fields: |mut vs| {
            for d in vs["spec"]["http"][1]["route"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                d.as_object_mut().map(|o| o.remove("weight"));
            }
            strip_server_fields(vs)
        },
    }
}

fn smi() -> Router {
    Router {
        routing: json!({"smi": {"trafficSplit": "app-split", "rootService": "app"}}),
        objects: vec![json!({
            "apiVersion": "split.smi-spec.io/v1alpha2",
            "kind": "TrafficSplit",
            "metadata": {"name": "app-split", "annotations": {"owner": "payments"}},
            "spec": {
                "service": "app",
                "backends": [
                    {"service": "app-stable", "weight": 100},
                    {"service": "legacy", "weight": 0},
                    {"service": "app-canary", "weight": 0}
                ]
            }
        })],
        resource: "trafficsplits.split.smi-spec.io",
        name: "app-split",
        weights: |ts| {
            let b = ts["spec"]["backends"].as_array().context("backends")?;
            weight_pair(
                b,
                |e| e["service"].as_str(),
                |e| e["weight"].as_i64().unwrap_or(0),
            )
        },
        user_fields: |mut ts| {
            for b in ts["spec"]["backends"].as_array_mut().into_iter().flatten() {
                if b["service"] != "legacy" {
                    b.as_object_mut().map(|o| o.remove("weight"));
                }
            }
            strip_server_fields(ts)
        },
    }
}

fn gateway() -> Router {
    Router {
        routing: json!({"gatewayAPI": {"httpRoute": "app-route"}}),
        objects: vec![json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "app-route"},
            "spec": {
                "parentRefs": [{"name": "public-gateway"}],
                "hostnames": ["app.example.com"],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                     "backendRefs": [
                        {"name": "app-stable", "port": 80, "weight": 100},
                        {"name": "app-canary", "port": 80, "weight": 0}
                     ]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
                     "backendRefs": [{"name": "static", "port": 8080}]}
                ]
            }
        })],
        resource: "httproutes.gateway.networking.k8s.io",
        name: "app-route",
        weights: |r| {
            let b = r["spec"]["rules"][0]["backendRefs"]
                .as_array()
                .context("backendRefs")?;
            weight_pair(
                b,
                |e| e["name"].as_str(),
                |e| e["weight"].as_i64().unwrap_or(1),
            )
        },
        user_fields: |mut r| {
            for b in r["spec"]["rules"][0]["backendRefs"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                b.as_object_mut().map(|o| o.remove("weight"));
            }
            strip_server_fields(r)
        },
    }
}

fn nginx() -> Router {
    Router {
        routing: json!({"nginx": {"ingress": "app-ingress", "servicePort": 80}}),
        objects: vec![json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "app-ingress", "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}},
            "spec": {
                "ingressClassName": "nginx",
                "rules": [{"host": "app.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "app-stable", "port": {"number": 80}}}}
                ]}}]
            }
        })],
        // The weight lives on the generated canary Ingress; the user's Ingress is never written.
        resource: "ingresses.networking.k8s.io",
        name: "app-ingress-canary",
        weights: |ing| {
            let a = &ing["metadata"]["annotations"];
            ensure!(a["nginx.ingress.kubernetes.io/canary"] == "true", "{a}");
            let w: i64 = a["nginx.ingress.kubernetes.io/canary-weight"]
                .as_str()
                .context("canary-weight")?
                .parse()?;
            let backend = &ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
            ensure!(backend["name"] == "app-canary", "{backend}");
            Ok((100 - w, w))
        },
        user_fields: strip_server_fields,
    }
}

/// The StormService `app` with a two-step canary behind `routing`.
fn routed_service(routing: &Value) -> Value {
    let mut obj = storm_service(
        2,
        json!([
            {"weight": 20, "pause": {"untilApproval": true}},
            {"weight": 50, "pause": {"untilApproval": true}}
        ]),
        None,
    );
    obj["spec"]["rolloutStrategy"]["canary"]["trafficRouting"] = routing.clone();
    // Drain delays short enough for a test (the defaults with a router are 60 s and 30 s).
    obj["spec"]["rolloutStrategy"]["canary"]["scaleDownDelaySeconds"] = json!(DRAIN);
    obj["spec"]["rolloutStrategy"]["canary"]["abortScaleDownDelaySeconds"] = json!(DRAIN);
    obj
}

/// The drain delays of [`routed_service`], in seconds.
const DRAIN: i64 = 4;

async fn wait_weights(env: &Env, r: &Router, want: (i64, i64)) -> Result<Value> {
    wait_for(
        &format!("{} {} to hold weights {want:?}", r.resource, r.name),
        TIMEOUT,
        || async {
            let Ok(obj) = kubectl_get(env, r.resource, r.name) else {
                return Ok(None);
            };
            Ok(((r.weights)(&obj).ok() == Some(want)).then_some(obj))
        },
    )
    .await
    .with_context(|| format!("controller log:\n{}", env.controller.process.log_tail(40)))
}

/// A namespace with the third-party CRDs, the user's routing objects and a Healthy routed `app`.
async fn deployed(prefix: &str, r: &Router) -> Result<Env> {
    deployed_as(prefix, r, routed_service(&r.routing)).await
}

/// As [`deployed`], with `app` as `service` says.
async fn deployed_as(prefix: &str, r: &Router, service: Value) -> Result<Env> {
    let env = setup(prefix).await?;
    env.ns.cluster().install_thirdparty_crds()?;
    for obj in &r.objects {
        let text = obj.to_string().replace("NS", env.ns.name());
        kubectl_create(&env, &serde_json::from_str(&text)?)?;
    }
    create(&env, service).await?;
    wait_phase(&env, RolloutPhase::Healthy, None).await?;
    Ok(env)
}

/// `app` with 4 RoleSets behind `routing`, `dynamicStableScale`, `maxSurge: 1`, approval steps at
/// 25% and 50%, and short drain delays.
fn dynamic_service(routing: &Value) -> Value {
    let mut obj = storm_service(
        4,
        json!([
            {"weight": 25, "pause": {"untilApproval": true}},
            {"weight": 50, "pause": {"untilApproval": true}}
        ]),
        None,
    );
    let canary = &mut obj["spec"]["rolloutStrategy"]["canary"];
    canary["trafficRouting"] = routing.clone();
    canary["dynamicStableScale"] = json!(true);
    canary["maxSurge"] = json!(1);
    canary["scaleDownDelaySeconds"] = json!(DRAIN);
    canary["abortScaleDownDelaySeconds"] = json!(DRAIN);
    obj
}

async fn walk(prefix: &str, r: Router) -> Result<()> {
    let mut env = deployed(prefix, &r).await?;
    let v1 = stable_revision(&env).await?;
    let user_object = || kubectl_get(&env, r.resource, r.name);
    // The user's object as it was (the nginx canary Ingress does not exist yet: the user's
    // Ingress is compared instead).
    let users = if r.name == "app-ingress-canary" {
        ("ingresses.networking.k8s.io", "app-ingress")
    } else {
        (r.resource, r.name)
    };
    let before = (r.user_fields)(kubectl_get(&env, users.0, users.1)?);

    set_image(&env, "app:v2").await?;
    let (_, v2) = revisions(&env).await?;
    // Step 0: 20% on the canary, reached only once the router holds it.
    let obj = wait_phase(&env, RolloutPhase::Paused, Some(0)).await?;
    ensure!(progress(&obj).2 == 20, "{:?}", progress(&obj));
    let rs = obj
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.clone())
        .context("rs")?;
    ensure!(
        rs.router_weight == Some(20),
        "router read-back in status: {:?}",
        rs.router_weight
    );
    ensure!((r.weights)(&user_object()?)? == (80, 20));
    // With a router, stable keeps full size: ceil(2 × 20%) = 1 canary RoleSet beside 2 stable.
    wait_rolesets(&env, &v1, 2, &v2, 1).await?;

    annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
    wait_phase(&env, RolloutPhase::Paused, Some(1)).await?;
    ensure!((r.weights)(&user_object()?)? == (50, 50));
    wait_rolesets(&env, &v1, 2, &v2, 1).await?;

    annotate(&env, "stormservice.aibrix.ai/rollout-abort").await?;
    wait_phase(&env, RolloutPhase::Aborted, None).await?;
    wait_weights(&env, &r, (100, 0)).await?;
    // Traffic is off the canary; it drains for abortScaleDownDelaySeconds, then goes.
    wait_drained(&env, &v2, "Aborted", DRAIN).await?;
    wait_rolesets(&env, &v1, 2, &v2, 0).await?;
    // Everything the user wrote is still there, unchanged.
    let after = (r.user_fields)(kubectl_get(&env, users.0, users.1)?);
    ensure!(
        before == after,
        "the user's fields changed:\nbefore {before:#}\nafter {after:#}"
    );
    if r.name == "app-ingress-canary" {
        let canary = kubectl_get(&env, r.resource, r.name)?;
        let owner = &canary["metadata"]["ownerReferences"][0];
        ensure!(
            owner["kind"] == "StormService" && owner["name"] == "app",
            "{owner}"
        );
    }
    env.controller.process.ensure_running()?;
    env.ns.cleanup().await
}

#[tokio::test]
async fn istio_virtual_service_follows_the_steps_and_abort() -> Result<()> {
    walk("routed-istio", istio()).await
}

#[tokio::test]
async fn smi_traffic_split_follows_the_steps_and_abort() -> Result<()> {
    walk("routed-smi", smi()).await
}

#[tokio::test]
async fn gateway_api_http_route_follows_the_steps_and_abort() -> Result<()> {
    walk("routed-gateway", gateway()).await
}

#[tokio::test]
async fn nginx_canary_ingress_follows_the_steps_and_abort() -> Result<()> {
    walk("routed-nginx", nginx()).await
}

/// Through to the end: promotion moves all traffic to the canary before stable goes, and at rest
/// the weight returns to 0 with the stable Service on the new revision.
#[tokio::test]
async fn a_routed_canary_completes() -> Result<()> {
    let r = istio();
    let env = deployed("routed-complete", &r).await?;
    set_image(&env, "app:v2").await?;
    let (v1, v2) = revisions(&env).await?;
    for step in [0, 1] {
        wait_phase(&env, RolloutPhase::Paused, Some(step)).await?;
        annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
    }
    wait_phase(&env, RolloutPhase::Completed, None).await?;
    // All traffic is on v2 once completed; the old stable drains for scaleDownDelaySeconds.
    wait_service(&env, "app-stable", &v2).await?;
    wait_drained(&env, &v1, "Promoted", DRAIN).await?;
    wait_rolesets(&env, &v1, 0, &v2, 2).await?;
    wait_weights(&env, &r, (100, 0)).await?;
    env.ns.cleanup().await
}

/// Deleting a StormService mid-canary: the user's routing objects are not ours to delete, so
/// before the StormService goes (its finalizer), their weights go back to stable; without that
/// they kept sending the step's share to a canary whose Pods garbage collection removes. A
/// TrafficSplit is one of them (Istio's and Gateway API's go the same way through the same
/// router code); the nginx canary Ingress is ours and is garbage collected.
#[tokio::test]
async fn deleting_a_routed_canary_mid_rollout_puts_traffic_back_on_stable() -> Result<()> {
    let r = smi();
    let env = deployed("routed-delete", &r).await?;
    set_image(&env, "app:v2").await?;
    wait_phase(&env, RolloutPhase::Paused, Some(0)).await?;
    wait_weights(&env, &r, (80, 20)).await?;
    let finalizers = env.api.get("app").await?.metadata.finalizers;
    env.api
        .delete("app", &kube::api::DeleteParams::default())
        .await?;
    wait_weights(&env, &r, (100, 0)).await?;
    wait_for("the StormService gone", TIMEOUT, || async {
        Ok(env.api.get_opt("app").await?.is_none().then_some(()))
    })
    .await?;
    let events = env.ns.cluster().kubectl_run([
        "-n",
        env.ns.name(),
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "reason=TrafficRoutersReverted",
        "-o",
        "jsonpath={.items[*].note}",
    ])?;
    ensure!(
        events.contains("all traffic back on stable revision"),
        "the revert is recorded: {events:?}"
    );
    ensure!(
        finalizers
            .unwrap_or_default()
            .contains(&"stormservice.aibrix.ai/traffic".to_string()),
        "a routed StormService carries the traffic finalizer"
    );
    env.ns.cleanup().await
}

/// What a sampler saw through a rollout: the most RoleSets at once before the abort, and every
/// moment stable had fewer ready RoleSets than its share of the traffic needs.
#[derive(Debug, Default)]
struct Samples {
    count: usize,
    most_rolesets: usize,
    /// The read that saw the most, with the router's weights read between.
    most_seen: String,
    short: Vec<String>,
}

/// Samples RoleSets and the router's weights until `stop`: RoleSets, then weights, then RoleSets
/// again, so that a RoleSet going (or becoming ready) between the reads is not misread; stable's
/// ready count is the larger of the two reads.
async fn sample(
    env: &Env,
    r: &Router,
    stable: &str,
    replicas: usize,
    aborted: &std::sync::atomic::AtomicBool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Samples> {
    let mut s = Samples::default();
    while !*stop.borrow() {
        let aborting = aborted.load(std::sync::atomic::Ordering::SeqCst);
        let first = ready_rolesets(env).await?;
        let weights = kubectl_get(env, r.resource, r.name).and_then(|o| (r.weights)(&o));
        let second = ready_rolesets(env).await?;
        if let Ok((on_stable, _)) = &weights {
            let ready = |m: &std::collections::BTreeMap<String, (usize, usize)>| {
                m.get(stable).map_or(0, |e| e.0)
            };
            let stable_ready = ready(&first).max(ready(&second));
            let on_stable = usize::try_from(*on_stable).unwrap_or(100);
            if stable_ready * 100 < replicas * on_stable {
                s.short.push(format!(
                    "{on_stable}% on stable with {stable_ready} of {replicas} RoleSets ready: {first:?} / {second:?}"
                ));
            }
            s.count += 1;
        }
        // An abort grows stable back to full size at once, beside the canary: reads that may
        // have come after it (the abort was sent before they ended) don't count.
        let aborting = aborting || aborted.load(std::sync::atomic::Ordering::SeqCst);
        if !aborting {
            for m in [&first, &second] {
                let total = m.values().map(|e| e.1).sum();
                if total > s.most_rolesets {
                    s.most_rolesets = total;
                    s.most_seen =
                        format!("{m:?} (ready, existing) by revision; weights {weights:?}");
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(s)
}

/// `dynamicStableScale`: stable shrinks as the canary's traffic grows, so 4 RoleSets never become
/// more than 5 (replicas plus maxSurge 1) until the abort, where a routed canary without it holds
/// stable's 4 plus the canary; traffic moves before capacity, and an abort grows stable back
/// before traffic returns to it. A sampler reads RoleSets and the HTTPRoute throughout.
#[tokio::test]
async fn dynamic_stable_scale_shrinks_stable_as_traffic_moves() -> Result<()> {
    let r = gateway();
    let mut env = deployed_as("routed-dynamic", &r, dynamic_service(&r.routing)).await?;
    let v1 = stable_revision(&env).await?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let aborted = std::sync::atomic::AtomicBool::new(false);
    let sampling = sample(&env, &r, &v1, 4, &aborted, stopped);
    let steps = async {
        set_image(&env, "app:v2").await?;
        let (_, v2) = revisions(&env).await?;
        // 25%: one canary RoleSet, stable down to the three that carry 75%.
        wait_phase(&env, RolloutPhase::Paused, Some(0)).await?;
        wait_weights(&env, &r, (75, 25)).await?;
        wait_rolesets(&env, &v1, 3, &v2, 1).await?;
        annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
        // 50%: two and two.
        wait_phase(&env, RolloutPhase::Paused, Some(1)).await?;
        wait_weights(&env, &r, (50, 50)).await?;
        wait_rolesets(&env, &v1, 2, &v2, 2).await?;
        // Abort: stable grows back to four, the traffic follows its ready RoleSets, and the
        // canary goes once it has none, after its drain delay.
        aborted.store(true, std::sync::atomic::Ordering::SeqCst);
        annotate(&env, "stormservice.aibrix.ai/rollout-abort").await?;
        wait_phase(&env, RolloutPhase::Aborted, None).await?;
        wait_weights(&env, &r, (100, 0)).await?;
        wait_drained(&env, &v2, "Aborted", DRAIN).await?;
        wait_rolesets(&env, &v1, 4, &v2, 0).await?;
        anyhow::Ok(())
    };
    // The sampler stops however the steps end.
    let walk = async {
        let walked = steps.await;
        let _ = stop.send(true);
        walked
    };
    let (samples, walked) = tokio::join!(sampling, walk);
    walked?;
    let samples = samples?;
    eprintln!(
        "dynamicStableScale: {} samples, at most {} RoleSets before the abort, {} short",
        samples.count,
        samples.most_rolesets,
        samples.short.len()
    );
    ensure!(samples.count > 10, "the sampler saw the route: {samples:?}");
    ensure!(
        samples.short.is_empty(),
        "stable had fewer ready RoleSets than its traffic needs: {:#?}",
        samples.short
    );
    ensure!(
        samples.most_rolesets <= 5,
        "at most replicas + maxSurge RoleSets at once before the abort, saw {}: {}",
        samples.most_rolesets,
        samples.most_seen
    );
    env.controller.process.ensure_running()?;
    env.ns.cleanup().await
}

/// GPUs requested by the Pods of `app` (those terminating too: they hold their GPUs until they are
/// gone), and whether any Pod was left unscheduled.
async fn gpus_held(env: &Env) -> Result<i64> {
    let pods = env
        .ns
        .api::<k8s_openapi::api::core::v1::Pod>()
        .list(&kube::api::ListParams::default().labels("app=app"))
        .await?;
    let mut total = 0;
    for p in &pods.items {
        for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
            let limit = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("nvidia.com/gpu"))
                .map_or(Ok(0), |q| q.0.parse::<i64>())?;
            total += limit;
        }
    }
    Ok(total)
}

/// A capacity budget of 2 GPUs on 4 RoleSets of one 2-GPU Pod (8 at rest), with
/// dynamicStableScale: a canary walked to completion, then another aborted mid-way, never hold
/// more than 10 GPUs; the Pods are scheduled on kwok nodes that advertise `nvidia.com/gpu`, and a
/// sampler adds up their requests throughout. The status reports the use per revision.
#[tokio::test]
async fn a_gpu_budget_holds_through_a_rollout_and_an_abort() -> Result<()> {
    let r = gateway();
    let mut obj = dynamic_service(&r.routing);
    obj["spec"]["template"]["spec"]["roles"][0]["template"]["spec"]["containers"][0]["resources"] =
        json!({"limits": {"nvidia.com/gpu": "2"}});
    obj["spec"]["rolloutStrategy"]["capacityBudget"] =
        json!({"resource": "nvidia.com/gpu", "maxExtra": 2});
    let mut env = deployed_as("routed-budget", &r, obj).await?;
    ensure!(gpus_held(&env).await? == 8, "4 RoleSets × 2 GPUs at rest");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampling = async {
        let mut stopped = stopped;
        let (mut most, mut samples) = (0, 0);
        while !*stopped.borrow_and_update() {
            most = most.max(gpus_held(&env).await?);
            samples += 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::Ok((most, samples))
    };
    let steps = async {
        // A rollout to the end.
        set_image(&env, "app:v2").await?;
        let (v1, v2) = revisions(&env).await?;
        wait_phase(&env, RolloutPhase::Paused, Some(0)).await?;
        wait_rolesets(&env, &v1, 3, &v2, 1).await?;
        let obj = env.api.get("app").await?;
        let capacity = obj
            .status
            .and_then(|s| s.rollout_status)
            .and_then(|r| r.capacity)
            .context("status.rolloutStatus.capacity")?;
        ensure!(
            capacity.resource == "nvidia.com/gpu" && capacity.steady_state == 8,
            "{capacity:?}"
        );
        annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
        wait_phase(&env, RolloutPhase::Paused, Some(1)).await?;
        annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
        wait_phase(&env, RolloutPhase::Completed, None).await?;
        wait_rolesets(&env, &v1, 0, &v2, 4).await?;
        // Another, aborted at 50%: stable grows back only as the canary makes room.
        set_image(&env, "app:v3").await?;
        let (v2, v3) = revisions(&env).await?;
        wait_phase(&env, RolloutPhase::Paused, Some(0)).await?;
        annotate(&env, "stormservice.aibrix.ai/rollout-approval").await?;
        wait_phase(&env, RolloutPhase::Paused, Some(1)).await?;
        wait_rolesets(&env, &v2, 2, &v3, 2).await?;
        annotate(&env, "stormservice.aibrix.ai/rollout-abort").await?;
        wait_phase(&env, RolloutPhase::Aborted, None).await?;
        wait_weights(&env, &r, (100, 0)).await?;
        wait_rolesets(&env, &v2, 4, &v3, 0).await?;
        wait_for("the aborted revision's Pods gone", TIMEOUT, || async {
            Ok((gpus_held(&env).await? == 8).then_some(()))
        })
        .await?;
        anyhow::Ok(())
    };
    let walk = async {
        let walked = steps.await;
        let _ = stop.send(true);
        walked
    };
    let (sampled, walked) = tokio::join!(sampling, walk);
    walked?;
    let (most, samples) = sampled?;
    eprintln!("capacityBudget: {samples} samples, at most {most} GPUs requested");
    ensure!(samples > 20, "the sampler ran: {samples}");
    ensure!(most <= 10, "at most 8 + 2 GPUs at once, saw {most}");
    ensure!(
        most == 10,
        "the budget was used (a canary RoleSet beside stable): {most}"
    );
    env.controller.process.ensure_running()?;
    env.ns.cleanup().await
}
