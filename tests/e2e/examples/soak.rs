//! `make soak`: N StormServices (canary without a router, canary of one RoleSet, blue-green) on the
//! local control plane, with the admission webhook registered, receive a seeded random stream of
//! user actions (image bumps, approvals, aborts, retries, pauses, resumes, role scales) while the
//! controller is killed (SIGKILL) and restarted now and then. An invariant checker watches the
//! whole time; at the end every StormService is aborted or completed and must come to rest.
//!
//! Invariants (a violation is recorded with the StormService and the time):
//! - capacity: never more RoleSets than `replicas` plus the surge budget (canary without a router:
//!   25% of replicas, at least 1) — blue-green may hold twice `replicas`;
//! - abort: within 60 s of `Aborted`, weight 0 and no RoleSet of the aborted revision left;
//! - rest: after the stream stops, every StormService reaches Healthy, Completed, Aborted or Degraded
//!   with exactly `replicas` Ready RoleSets of its stable revision within 180 s.
//!
//! Writes `target/bench/soak.json` (seed, services, seconds, actions by kind, controller restarts,
//! violations). Usage: cargo run -p storm-e2e --example soak -- [SERVICES] [SECONDS] [SEED]

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use storm_shared::keys::LABEL_REVISION;
use storm_shared::types::stormservice::RolloutPhase;
use storm_shared::{RoleSet, StormService};
use storm_test_support::TestNamespace;
use storm_test_support::process::Controller;

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
}

fn kind_of(i: usize) -> Kind {
    match i % 4 {
        0 | 1 => Kind::Canary,
        2 => Kind::Single,
        _ => Kind::BlueGreen,
    }
}

fn manifest(name: &str, kind: Kind) -> Value {
    let replicas = if kind == Kind::Single { 1 } else { 3 };
    let strategy = match kind {
        Kind::BlueGreen => json!({"type": "BlueGreen", "blueGreen": {
            "activeService": format!("{name}-stable"), "previewService": format!("{name}-canary"),
            "autoPromotionEnabled": false, "scaleDownDelaySeconds": 5}}),
        _ => json!({"type": "Canary", "canary": {
            "stableService": format!("{name}-stable"), "canaryService": format!("{name}-canary"),
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
                    "spec": {"containers": [{"name": "server", "image": "app:v1"}]}}}]}},
            "rolloutStrategy": strategy
        }
    })
}

fn phase(obj: &StormService) -> Option<RolloutPhase> {
    obj.status.as_ref()?.rollout_status.as_ref()?.phase
}

#[tokio::main]
async fn main() -> Result<()> {
    storm_test_support::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let services: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(300);
    let seed: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(20261130);
    let mut rng = Rng(seed | 1);
    let ns = TestNamespace::new("soak").await?;
    ns.cluster().install_crds()?;
    let mut controller = Controller::start(ns.cluster(), ns.name())?;
    let api = ns.api::<StormService>();
    let svcs: Api<Service> = ns.api();
    let names: Vec<String> = (0..services).map(|i| format!("s{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        for side in ["stable", "canary"] {
            let svc: Service =
                serde_json::from_value(json!({"metadata": {"name": format!("{name}-{side}")},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}))?;
            svcs.create(&PostParams::default(), &svc).await?;
        }
        let obj: StormService = serde_json::from_value(manifest(name, kind_of(i)))?;
        api.create(&PostParams::default(), &obj).await?;
    }
    let started = Instant::now();
    let mut actions: BTreeMap<&str, u64> = BTreeMap::new();
    let mut violations: Vec<String> = Vec::new();
    let mut restarts = 0u64;
    let mut aborted_at: BTreeMap<String, (Instant, String)> = BTreeMap::new();
    let mut next_kill = Instant::now() + Duration::from_secs(45);
    let mut image = 1u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        // One action.
        let i = rng.below(names.len() as u64) as usize;
        let name = &names[i];
        let action = match rng.below(10) {
            0..=2 => "image",
            3 | 4 => "approve",
            5 => "abort",
            6 => "retry",
            7 => "pause",
            8 => "resume",
            _ => "scale",
        };
        let result = match action {
            "image" => {
                image += 1;
                let patch = json!([{"op": "replace", "path": "/spec/template/spec/roles/0/template/spec/containers/0/image", "value": format!("app:v{image}")}]);
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(serde_json::from_value(patch)?),
                )
                .await
                .map(|_| ())
            }
            "scale" => {
                let patch = json!([{"op": "replace", "path": "/spec/template/spec/roles/0/replicas", "value": 1 + rng.below(2)}]);
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(serde_json::from_value(patch)?),
                )
                .await
                .map(|_| ())
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
                api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map(|_| ())
            }
        };
        // Admission refuses controls that cannot act; that is an answer, not a failure.
        if result.is_ok() {
            *actions.entry(action).or_default() += 1;
        } else {
            *actions.entry("refused").or_default() += 1;
        }
        // A crash now and then.
        if Instant::now() >= next_kill {
            controller.process.restart()?;
            restarts += 1;
            next_kill = Instant::now() + Duration::from_secs(30 + rng.below(30));
        }
        check(&ns, &api, &names, &mut aborted_at, &mut violations, started).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Stop: finish every rollout (approve everything, then abort what still moves) and let it rest.
    let rest_deadline = Instant::now() + Duration::from_secs(180);
    let mut settled = false;
    while Instant::now() < rest_deadline {
        let all = api.list(&ListParams::default()).await?.items;
        let mut pending = 0;
        for obj in &all {
            let at_rest = matches!(
                phase(obj),
                Some(
                    RolloutPhase::Healthy
                        | RolloutPhase::Completed
                        | RolloutPhase::Aborted
                        | RolloutPhase::Degraded
                )
            ) && whole_stable(&ns, obj).await?;
            if !at_rest {
                pending += 1;
                if matches!(
                    phase(obj),
                    Some(RolloutPhase::Paused | RolloutPhase::Progressing)
                ) {
                    let body = json!({"metadata": {"annotations": {"stormservice.aibrix.ai/rollout-abort": "true"}}});
                    let _ = api
                        .patch(
                            &obj.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&body),
                        )
                        .await;
                }
            }
        }
        check(&ns, &api, &names, &mut aborted_at, &mut violations, started).await?;
        if pending == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if !settled {
        for obj in api.list(&ListParams::default()).await?.items {
            if !whole_stable(&ns, &obj).await? {
                violations.push(format!(
                    "{}: not at rest 180 s after the stream stopped (phase {:?})",
                    obj.name_any(),
                    phase(&obj)
                ));
            }
        }
    }
    controller.process.ensure_running()?;
    let report = json!({
        "seed": seed, "services": services, "seconds": started.elapsed().as_secs(),
        "actions": actions, "controller_restarts": restarts,
        "violations": violations,
    });
    let dir = storm_test_support::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    ns.cleanup().await?;
    anyhow::ensure!(
        report["violations"].as_array().is_some_and(Vec::is_empty),
        "invariants violated"
    );
    Ok(())
}

/// Whether the StormService has exactly `replicas` Ready RoleSets of its stable revision and no other.
async fn whole_stable(ns: &TestNamespace, obj: &StormService) -> Result<bool> {
    let Some(stable) = obj.status.as_ref().and_then(|s| s.current_revision.clone()) else {
        return Ok(false);
    };
    let rolesets = rolesets_of(ns, &obj.name_any()).await?;
    let replicas = usize::try_from(obj.spec.replicas.unwrap_or(1)).unwrap_or(1);
    let ready_stable = rolesets
        .iter()
        .filter(|(rev, ready)| *rev == stable && *ready)
        .count();
    Ok(ready_stable == replicas && rolesets.len() == replicas)
}

async fn rolesets_of(ns: &TestNamespace, name: &str) -> Result<Vec<(String, bool)>> {
    Ok(ns
        .api::<RoleSet>()
        .list(&ListParams::default().labels(&format!("storm-service-name={name}")))
        .await?
        .items
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .map(|r| {
            let ready = r.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            (
                r.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
                ready,
            )
        })
        .collect())
}

async fn check(
    ns: &TestNamespace,
    api: &Api<StormService>,
    names: &[String],
    aborted_at: &mut BTreeMap<String, (Instant, String)>,
    violations: &mut Vec<String>,
    started: Instant,
) -> Result<()> {
    let t = started.elapsed().as_secs();
    for (i, name) in names.iter().enumerate() {
        let obj = api.get(name).await.context("reading a StormService")?;
        let replicas = usize::try_from(obj.spec.replicas.unwrap_or(1)).unwrap_or(1);
        let rolesets = rolesets_of(ns, name).await?;
        // While a canary moves, the surge budget bounds it; an abort or rollback grows stable back
        // before the canary goes, so it may hold both for a while (at most twice `replicas`).
        let recovering = matches!(
            phase(&obj),
            Some(RolloutPhase::Aborted | RolloutPhase::Degraded)
        );
        let bound = match kind_of(i) {
            Kind::BlueGreen => 2 * replicas,
            _ if recovering => 2 * replicas,
            _ => replicas + replicas.div_ceil(4).max(1),
        };
        // Terminating RoleSets are left out; the bound counts what exists and serves.
        if rolesets.len() > bound {
            let mut by_rev: BTreeMap<&str, usize> = BTreeMap::new();
            for (r, _) in &rolesets {
                *by_rev.entry(r.as_str()).or_default() += 1;
            }
            let st = obj.status.as_ref();
            violations.push(format!(
                "t={t}s {name} ({:?}, stable {}, update {}): {} RoleSets, more than {bound}: {by_rev:?}",
                phase(&obj),
                st.and_then(|s| s.current_revision.clone()).unwrap_or_default(),
                st.and_then(|s| s.update_revision.clone()).unwrap_or_default(),
                rolesets.len()
            ));
        }
        let update = obj
            .status
            .as_ref()
            .and_then(|s| s.update_revision.clone())
            .unwrap_or_default();
        let stable = obj
            .status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .unwrap_or_default();
        if phase(&obj) == Some(RolloutPhase::Aborted) && update != stable {
            let (since, rev) = aborted_at
                .entry(name.clone())
                .or_insert((Instant::now(), update.clone()));
            if *rev == update && since.elapsed() > Duration::from_secs(60) {
                let weight = obj
                    .status
                    .as_ref()
                    .and_then(|s| s.rollout_status.as_ref())
                    .and_then(|r| r.canary_status.as_ref())
                    .map_or(0, |c| c.current_weight);
                let left = rolesets.iter().filter(|(r, _)| *r == update).count();
                if weight != 0 || left != 0 {
                    violations.push(format!("t={t}s {name}: aborted for 60 s, weight {weight}, {left} RoleSets of {update} left"));
                    aborted_at.remove(name);
                }
            }
        } else {
            aborted_at.remove(name);
        }
    }
    Ok(())
}
