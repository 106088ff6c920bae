//! `make bench-controller`: N StormServices (2 RoleSets of 2 Pods each) through a 3-step canary at
//! once on the local control plane, then aborts on a subset, measuring the controller.
//!
//! Writes `target/bench/controller.json`: services, seconds_to_all_completed, controller_peak_rss_mib,
//! controller_cpu_seconds, api_requests (the controller's own, from its metrics), and
//! abort_to_stable_ms_p50/p99 (abort annotation → all traffic and capacity back on stable).
//!
//! With ROUTER `gateway`, every StormService routes through its own Gateway API HTTPRoute (the
//! project's CRD): each step waits for the router's read-back, and an abort counts as back on
//! stable only once the HTTPRoute sends 100% to stable. The report is then
//! `target/bench/controller-gateway.json`.
//!
//! Usage: cargo run --release -p storm-e2e --example bench_controller -- [SERVICES] [ABORTS] [ROUTER]

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use storm_shared::keys::{LABEL_NAME, LABEL_REVISION};
use storm_shared::types::stormservice::RolloutPhase;
use storm_shared::{RoleSet, StormService};
use storm_test_support::bench::{add_nodes, metric_sum, percentile, proc_usage};
use storm_test_support::process::{Controller, release_binary};
use storm_test_support::{TestNamespace, wait_for};

const APPROVAL: &str = "stormservice.aibrix.ai/rollout-approval";
const ABORT: &str = "stormservice.aibrix.ai/rollout-abort";

fn service(name: &str, routed: bool) -> Value {
    let steps = json!([
        {"weight": 50, "pause": {"duration": "1s"}},
        {"weight": 50, "pause": {"untilApproval": true}},
        {"weight": 100}
    ]);
    let mut obj = storm_e2e::canary_storm_service(name, 2, 2, steps);
    if routed {
        obj["spec"]["rolloutStrategy"]["canary"]["trafficRouting"] =
            json!({"gatewayAPI": {"httpRoute": format!("{name}-route")}});
    }
    obj
}

/// The user's HTTPRoute of a routed StormService: all traffic on stable.
fn http_route(name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": format!("{name}-route")},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [{"backendRefs": [
                {"name": format!("{name}-stable"), "port": 80, "weight": 100},
                {"name": format!("{name}-canary"), "port": 80, "weight": 0}
            ]}]
        }
    })
}

/// Whether an HTTPRoute sends all its traffic to the stable Service.
fn route_on_stable(route: &DynamicObject) -> bool {
    let refs = route.data["spec"]["rules"][0]["backendRefs"].as_array();
    refs.is_some_and(|refs| {
        refs.iter().all(|r| {
            let stable = r["name"].as_str().is_some_and(|n| n.ends_with("-stable"));
            r["weight"].as_i64() == Some(if stable { 100 } else { 0 })
        })
    })
}

fn phase(obj: &StormService) -> Option<RolloutPhase> {
    obj.status.as_ref()?.rollout_status.as_ref()?.phase
}

fn waiting_for_approval(obj: &StormService) -> bool {
    storm_shared::status::waiting_for_approval(obj)
}

async fn set_image(api: &Api<StormService>, name: &str, image: &str) -> Result<()> {
    let patch: json_patch::Patch = serde_json::from_value(json!([{
        "op": "replace",
        "path": "/spec/template/spec/roles/0/template/spec/containers/0/image",
        "value": image
    }]))?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    Ok(())
}

async fn annotate(api: &Api<StormService>, name: &str, key: &str) -> Result<()> {
    let body = json!({"metadata": {"annotations": {key: "true"}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

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
    let router = args.next().unwrap_or_else(|| "none".into());
    ensure!(
        matches!(router.as_str(), "none" | "gateway"),
        "ROUTER must be none or gateway, not {router:?}"
    );
    let routed = router == "gateway";
    let ns = TestNamespace::new("bench-controller").await?;
    let cluster = ns.cluster();
    cluster.install_crds()?;
    let route_resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ));
    let routes_api: Api<DynamicObject> =
        Api::namespaced_with(ns.client(), ns.name(), &route_resource);
    if routed {
        cluster.install_thirdparty_crds()?;
    }
    // STORM_CONTROLLER_BIN: a prebuilt controller instead of this tree's (to compare two builds
    // on one control plane, alternating).
    let program = match std::env::var_os("STORM_CONTROLLER_BIN") {
        Some(path) => std::path::PathBuf::from(path),
        None => release_binary("storm-controller", "storm-controller")?,
    };
    // The controller's log filter: warnings unless STORM_BENCH_LOG says otherwise (its log is kept
    // with STORM_KEEP_LOGS).
    let log = std::env::var("STORM_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let mut controller = Controller::start_program(cluster, ns.name(), program, &log)?;
    let pid = controller.process.pid().context("controller pid")?;
    // Each service runs 4 Pods, and up to 6 during its canary.
    let bench_nodes = add_nodes(&ns.client(), "storm-bench-node", n * 6).await?;
    let api: Api<StormService> = ns.api();
    let services: Api<Service> = ns.api();
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i:04}")).collect();
    eprintln!("bench: creating {n} StormServices in {}", ns.name());
    for name in &names {
        for suffix in ["stable", "canary"] {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-{suffix}")},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}
            }))?;
            services.create(&PostParams::default(), &svc).await?;
        }
        if routed {
            routes_api
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(http_route(name))?,
                )
                .await?;
        }
        api.create(
            &PostParams::default(),
            &serde_json::from_value(service(name, routed))?,
        )
        .await?;
    }
    let all_in = |want: RolloutPhase| {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await?;
            let done = list.items.iter().filter(|o| phase(o) == Some(want)).count();
            Ok::<_, anyhow::Error>((done, list.items))
        }
    };
    wait_for(
        "every StormService Healthy",
        Duration::from_secs(600),
        || async {
            let (done, _) = all_in(RolloutPhase::Healthy).await?;
            Ok((done == n).then_some(()))
        },
    )
    .await?;
    eprintln!("bench: all healthy; rolling out");
    let started = Instant::now();
    for name in &names {
        set_image(&api, name, "app:v2").await?;
    }
    let mut approved: BTreeSet<String> = BTreeSet::new();
    loop {
        let list = api.list(&ListParams::default()).await?;
        let completed = list
            .items
            .iter()
            .filter(|o| phase(o) == Some(RolloutPhase::Completed))
            .count();
        for obj in &list.items {
            if waiting_for_approval(obj) && approved.insert(obj.name_any()) {
                annotate(&api, &obj.name_any(), APPROVAL).await?;
            }
        }
        if completed == n {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(900),
            "rollouts did not complete: {completed} of {n}"
        );
        controller.process.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds_to_all_completed = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: all {n} completed in {seconds_to_all_completed:.1}s; measuring aborts on {aborts}"
    );

    // Abort latency: roll out v3 on a subset, abort each once it waits for approval.
    let subset: Vec<String> = names.iter().take(aborts).cloned().collect();
    for name in &subset {
        set_image(&api, name, "app:v3").await?;
    }
    wait_for(
        "the abort subset waiting for approval",
        Duration::from_secs(300),
        || async {
            let mut ready = 0;
            for name in &subset {
                if waiting_for_approval(&api.get(name).await?) {
                    ready += 1;
                }
            }
            Ok((ready == subset.len()).then_some(()))
        },
    )
    .await?;
    // Watches, not repeated lists: the observer must not load the API server it measures.
    let (svc_store, svc_writer) = reflector::store::<Service>();
    tokio::spawn(
        watcher(services.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(svc_writer)
            .for_each(|_| async {}),
    );
    let (rs_store, rs_writer) = reflector::store::<RoleSet>();
    tokio::spawn(
        watcher(ns.api::<RoleSet>(), watcher::Config::default())
            .default_backoff()
            .reflect(rs_writer)
            .for_each(|_| async {}),
    );
    let route_writer = reflector::store::Writer::<DynamicObject>::new(route_resource.clone());
    let route_store = route_writer.as_reader();
    if routed {
        tokio::spawn(
            watcher(routes_api.clone(), watcher::Config::default())
                .default_backoff()
                .reflect(route_writer)
                .for_each(|_| async {}),
        );
        route_store.wait_until_ready().await?;
    }
    svc_store.wait_until_ready().await?;
    rs_store.wait_until_ready().await?;
    let mut stables = BTreeMap::new();
    for name in &subset {
        let stable = api
            .get(name)
            .await?
            .status
            .and_then(|s| s.current_revision)
            .context("stable")?;
        stables.insert(name.clone(), stable);
    }
    // The aborts are sent at once, each timed from when its request leaves, and watched while they
    // are sent: an observer that starts after the last one would charge the earlier ones for the
    // time the later ones took to send.
    let t0 = Instant::now();
    let sending = tokio::spawn({
        let api = api.clone();
        let subset = subset.clone();
        async move {
            // Each send's round trip: the API server's admission (the webhook among it).
            let sends = subset.iter().map(|name| async {
                annotate(&api, name, ABORT).await?;
                anyhow::Ok(t0.elapsed().as_secs_f64() * 1000.0)
            });
            futures::future::try_join_all(sends).await
        }
    });
    let mut pending: BTreeMap<String, (Instant, String)> = stables
        .into_iter()
        .map(|(name, stable)| (name, (t0, stable)))
        .collect();
    let mut latencies = Vec::new();
    let mut traffic: BTreeMap<String, f64> = BTreeMap::new();
    while !pending.is_empty() {
        let svcs = svc_store.state();
        let sets = rs_store.state();
        let routes = route_store.state();
        let mut done = Vec::new();
        for (name, (t0, stable)) in &pending {
            let selects_stable = |s: &str| {
                svcs.iter().any(|x| {
                    x.name_any() == format!("{name}-{s}")
                        && x.spec
                            .as_ref()
                            .and_then(|sp| sp.selector.as_ref())
                            .and_then(|m| m.get(LABEL_REVISION))
                            == Some(stable)
                })
            };
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
            let route_back = !routed
                || routes
                    .iter()
                    .any(|r| r.name_any() == format!("{name}-route") && route_on_stable(r));
            let routed = selects_stable("stable") && selects_stable("canary") && route_back;
            if routed && !traffic.contains_key(name) {
                traffic.insert(name.clone(), t0.elapsed().as_secs_f64() * 1000.0);
            }
            if routed && on_stable && ready == 2 {
                latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
                done.push(name.clone());
            }
        }
        for d in done {
            pending.remove(&d);
        }
        ensure!(latencies.len() + pending.len() == subset.len());
        if pending
            .values()
            .any(|(t0, _)| t0.elapsed() > Duration::from_secs(120))
        {
            anyhow::bail!(
                "aborts did not land within 120s: {:?}",
                pending.keys().collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut admitted = sending.await??;
    admitted.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    let mut traffic: Vec<f64> = traffic.into_values().collect();
    traffic.sort_by(f64::total_cmp);
    let (rss, cpu) = proc_usage(pid)?;
    let (_, metrics) = controller.http_get("/metrics")?;
    let api_requests = metric_sum(&metrics, "storm_kube_requests_total");
    let report = json!({
        "services": n,
        "router": router,
        "rolesets_per_service": 2,
        "pods_per_roleset": 2,
        "steps": 3,
        "seconds_to_all_completed": (seconds_to_all_completed * 10.0).round() / 10.0,
        "controller_peak_rss_mib": (rss * 10.0).round() / 10.0,
        "controller_cpu_seconds": (cpu * 100.0).round() / 100.0,
        "api_requests": api_requests,
        "aborts": subset.len(),
        "abort_admitted_ms_p50": percentile(&admitted, 0.5).round(),
        "abort_admitted_ms_p99": percentile(&admitted, 0.99).round(),
        "abort_to_traffic_on_stable_ms_p50": percentile(&traffic, 0.5).round(),
        "abort_to_traffic_on_stable_ms_p99": percentile(&traffic, 0.99).round(),
        "abort_to_stable_ms_p50": percentile(&latencies, 0.5).round(),
        "abort_to_stable_ms_p99": percentile(&latencies, 0.99).round(),
        "note": "abort_to_stable: from the moment the aborts are sent (all at once, concurrently, while an observer already watches) until both Services select stable (and, with a router, its HTTPRoute sends 100% to stable) and stable has all its RoleSets Ready again (new RoleSets, Pods scheduled, kwok marks them Ready) with no canary RoleSet left; abort_to_traffic_on_stable: until both Services select stable; abort_admitted: until the API server answered the annotation patch (admission, webhook included). Observed through watches, checked every 5 ms; the control plane, kwok and the bench share the machine's 2 cores with the controller"
    });
    let dir = storm_test_support::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let file = if routed {
        "controller-gateway.json"
    } else {
        "controller.json"
    };
    std::fs::write(
        dir.join(file),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(controller);
    ns.cleanup().await?;
    let nodes: Api<Node> = Api::all(cluster.client().await?);
    for n in bench_nodes {
        nodes.delete(&n, &Default::default()).await?;
    }
    Ok(())
}
