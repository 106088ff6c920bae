//! `kubectl storm status NAME [-w] [--wait-for PHASE]`: where a rollout stands, step by step.

use crate::error::Error;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;
use storm_shared::keys::LABEL_REVISION;
use storm_shared::status::ConditionType;
use storm_shared::types::stormservice::{
    CanaryStep, RolloutPhase, RolloutStrategyType, ScaleDownReason,
};
use storm_shared::{RoleSet, StormService};

/// RoleSets of one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevisionCount {
    pub rolesets: usize,
    pub ready: usize,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub obj: Option<StormService>,
    pub revisions: BTreeMap<String, RevisionCount>,
    /// (age, type, reason, message), newest last.
    pub events: Vec<(String, String, String, String)>,
}

fn describe_step(s: &CanaryStep) -> String {
    let mut parts = Vec::new();
    if let Some(w) = s.weight {
        parts.push(format!("weight {w}"));
    }
    if let Some(r) = s.replicas {
        parts.push(format!("replicas {r}"));
    }
    if let Some(p) = &s.pause {
        if p.until_approval == Some(true) {
            parts.push("pause until approval".into());
        } else if let Some(d) = &p.duration {
            parts.push(format!("pause {d}"));
        }
    }
    if let Some(a) = &s.analysis {
        let names: Vec<&str> = a.templates.iter().map(|t| t.name.as_str()).collect();
        parts.push(format!("analysis {}", names.join(",")));
    }
    parts.join(", ")
}

/// Renders the view as text.
pub fn render(view: &View) -> String {
    let Some(obj) = &view.obj else {
        return "StormService not found\n".into();
    };
    let mut out = String::new();
    let status = obj.status.clone().unwrap_or_default();
    let rs = status.rollout_status.clone().unwrap_or_default();
    let _ = writeln!(out, "Name:       {}", obj.name_any());
    let _ = writeln!(out, "Namespace:  {}", obj.namespace().unwrap_or_default());
    let strategy = obj.spec.rollout_strategy.as_ref();
    let steps: &[CanaryStep] = strategy
        .and_then(|s| s.canary.as_ref())
        .map(|c| c.steps.as_slice())
        .unwrap_or_default();
    let strategy_text = match strategy.map(|s| s.type_) {
        Some(RolloutStrategyType::Canary) => {
            let router = strategy
                .and_then(|s| s.canary.as_ref())
                .and_then(|c| c.traffic_routing.as_ref())
                .map(|tr| {
                    storm_shared::rules::routing_routers(tr)
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "service".into());
            format!("Canary ({} steps, {router} routing)", steps.len())
        }
        Some(RolloutStrategyType::BlueGreen) => "BlueGreen".into(),
        None => "RollingUpdate".into(),
    };
    let _ = writeln!(out, "Strategy:   {strategy_text}");
    let phase = rs.phase.map_or("-", RolloutPhase::as_str);
    let _ = writeln!(
        out,
        "Phase:      {phase}{}",
        rs.message
            .as_ref()
            .map(|m| format!(" — {m}"))
            .unwrap_or_default()
    );
    let stable = status
        .current_revision
        .clone()
        .unwrap_or_else(|| "-".into());
    let update = status.update_revision.clone().unwrap_or_else(|| "-".into());
    if stable == update {
        let _ = writeln!(out, "Revision:   {stable}");
    } else {
        let _ = writeln!(out, "Revisions:  stable {stable}, canary {update}");
    }
    if let Some(c) = &rs.canary_status {
        let _ = writeln!(out, "Weight:     {}%", c.current_weight);
    }
    if let Some(w) = rs.router_weight {
        let _ = writeln!(out, "Router:     reports {w}% on the canary");
    }
    let blue_green = strategy.map(|s| s.type_) == Some(RolloutStrategyType::BlueGreen);
    if let Some(bg) = rs.blue_green_status.as_ref().filter(|_| blue_green) {
        let _ = writeln!(
            out,
            "Active:     {}   Preview: {}",
            bg.active_selector.as_deref().unwrap_or("-"),
            bg.preview_selector.as_deref().unwrap_or("-")
        );
    }
    for d in &rs.scale_downs {
        let why = match d.reason {
            ScaleDownReason::Promoted => "replaced by a promotion: scaleDownDelaySeconds",
            ScaleDownReason::Aborted => "left by an abort: abortScaleDownDelaySeconds",
        };
        let _ = writeln!(
            out,
            "Draining:   {} until {} ({why})",
            d.revision, d.due_time.0
        );
    }
    if let Some(c) = &rs.capacity {
        let per_revision: Vec<String> = c
            .revisions
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({} × {})",
                    r.revision, r.in_use, r.role_sets, r.per_role_set
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "Capacity:   {} {} in use of {} (steady state {}, {} left): {}",
            c.resource,
            c.in_use,
            c.in_use + c.left,
            c.steady_state,
            c.left,
            per_revision.join(", ")
        );
    }
    if !rs.analysis_runs.is_empty() {
        let _ = writeln!(out, "Analysis:");
        for run in &rs.analysis_runs {
            let _ = writeln!(
                out,
                "  {:<15} {:<12} {}{}",
                run.name,
                run.phase.as_str().to_string(),
                run.revision,
                run.message
                    .as_deref()
                    .map(|m| format!(" — {m}"))
                    .unwrap_or_default()
            );
            for m in &run.metrics {
                let last = m
                    .measurements
                    .last()
                    .and_then(|x| x.value.clone())
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "    {:<30} {:<12} {} measured: {} ok, {} failed, {} inconclusive, {} errors; last {last}",
                    m.name,
                    m.phase.as_str().to_string(),
                    m.count,
                    m.successful,
                    m.failed,
                    m.inconclusive,
                    m.error
                );
            }
        }
    }
    if !steps.is_empty() {
        let _ = writeln!(out, "Steps:");
        let current = rs
            .current_step_index
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(0);
        let in_rollout = stable != update || rs.phase == Some(RolloutPhase::Completed);
        for (i, s) in steps.iter().enumerate() {
            let mark = if !in_rollout {
                "[ ]"
            } else if rs.phase == Some(RolloutPhase::Completed) || i < current {
                "[x]"
            } else if i == current {
                match rs.phase {
                    Some(RolloutPhase::Aborted | RolloutPhase::Degraded) => "[!]",
                    Some(RolloutPhase::Paused) => "[=]",
                    _ => "[>]",
                }
            } else {
                "[ ]"
            };
            let _ = writeln!(out, "  {mark} {i}  {}", describe_step(s));
        }
        let promoted = if rs.phase == Some(RolloutPhase::Completed) {
            "[x]"
        } else if current >= steps.len() && in_rollout {
            "[>]"
        } else {
            "[ ]"
        };
        let _ = writeln!(out, "  {promoted} -  promote");
    }
    let _ = writeln!(
        out,
        "RoleSets:   {} desired, {} ready",
        obj.spec.replicas.unwrap_or(1),
        status.ready_replicas
    );
    for (rev, c) in &view.revisions {
        let role = if *rev == stable {
            "stable"
        } else if *rev == update {
            if blue_green { "preview" } else { "canary" }
        } else {
            "old"
        };
        let _ = writeln!(
            out,
            "  {rev}  {role:<6}  {} RoleSets, {} ready",
            c.rolesets, c.ready
        );
    }
    if !rs.conditions.is_empty() {
        let _ = writeln!(out, "Conditions:");
        for c in &rs.conditions {
            let _ = writeln!(
                out,
                "  {:<12} {:<5} {:<20} {}",
                c.type_,
                c.status,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            );
        }
    }
    if !view.events.is_empty() {
        let _ = writeln!(out, "Events:");
        for (age, type_, reason, message) in &view.events {
            let _ = writeln!(out, "  {age:>5}  {type_:<7}  {reason:<20} {message}");
        }
    }
    out
}

pub(crate) fn age(t: Option<Timestamp>) -> String {
    let Some(t) = t else { return "?".into() };
    let secs = Timestamp::now().duration_since(t).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Reads everything the view shows.
pub async fn load(client: &kube::Client, ns: &str, name: &str) -> Result<View, Error> {
    let api: Api<StormService> = Api::namespaced(client.clone(), ns);
    let obj = api
        .get_opt(name)
        .await
        .map_err(|source| Error::ReadStormService {
            name: name.into(),
            source,
        })?;
    let rolesets: Api<RoleSet> = Api::namespaced(client.clone(), ns);
    let mut revisions: BTreeMap<String, RevisionCount> = BTreeMap::new();
    let list = rolesets
        .list(&ListParams::default().labels(&format!("{}={name}", storm_shared::keys::LABEL_NAME)))
        .await
        .map_err(|source| Error::ListRoleSets { source })?;
    for r in list.items {
        let rev = r.labels().get(LABEL_REVISION).cloned().unwrap_or_default();
        let ready = r.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Ready.as_str() && c.status == "True")
        });
        let e = revisions.entry(rev).or_default();
        e.rolesets += 1;
        e.ready += usize::from(ready);
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut evs = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={name},involvedObject.kind=StormService"
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let when = |e: &Event| {
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(e.last_timestamp.as_ref().map(|t| t.0))
            .or(e.event_time.as_ref().map(|t| t.0))
    };
    evs.sort_by_key(|e| when(e));
    let events = evs
        .iter()
        .rev()
        .take(8)
        .rev()
        .map(|e| {
            (
                age(when(e)),
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            )
        })
        .collect();
    Ok(View {
        obj,
        revisions,
        events,
    })
}

/// Prints the status once, or on every change with `watch`; with `wait_for`, returns when the phase
/// is reached, or fails when the rollout fails first ([`Error::RolloutFailed`]) or `timeout` passes
/// ([`Error::WaitTimedOut`]).
pub async fn run(
    client: &kube::Client,
    ns: &str,
    name: &str,
    watch: bool,
    wait_for: Option<RolloutPhase>,
    timeout: Duration,
) -> Result<(), Error> {
    let view = load(client, ns, name).await?;
    if view.obj.is_none() {
        return Err(Error::StormServiceNotFound {
            name: name.into(),
            namespace: ns.into(),
        });
    }
    print!("{}", render(&view));
    if let Some(outcome) = judge(&view, wait_for) {
        return outcome;
    }
    if !watch && wait_for.is_none() {
        return Ok(());
    }
    let api: Api<StormService> = Api::namespaced(client.clone(), ns);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut last = render(&view);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.try_next()).await;
        match next {
            Err(source) => return Err(Error::WaitTimedOut { source }),
            Ok(Err(source)) => {
                return Err(Error::WatchStormService {
                    name: name.into(),
                    source,
                });
            }
            Ok(Ok(None)) => return Err(Error::WatchEnded),
            Ok(Ok(Some(_))) => {}
        }
        let view = load(client, ns, name).await?;
        let text = render(&view);
        let outcome = judge(&view, wait_for);
        // Watching prints every change; waiting alone prints where it ended.
        if (watch || outcome.is_some()) && text != last {
            println!("---- {}", Timestamp::now().strftime("%H:%M:%S"));
            print!("{text}");
            last = text;
        }
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

/// Whether waiting is over: `None` while it goes on, `Some(Ok(()))` when the phase is reached,
/// `Some(Err(_))` when the rollout failed first.
fn judge(view: &View, wait_for: Option<RolloutPhase>) -> Option<Result<(), Error>> {
    let want = wait_for?;
    let obj = view.obj.as_ref()?;
    let status = obj.status.as_ref();
    // A status written for an older spec says nothing about this one.
    if status.and_then(|s| s.observed_generation) != obj.metadata.generation {
        return None;
    }
    let rs = status.and_then(|s| s.rollout_status.as_ref())?;
    let phase = rs.phase?;
    if phase == want {
        return Some(Ok(()));
    }
    if matches!(phase, RolloutPhase::Degraded | RolloutPhase::Aborted) {
        return Some(Err(Error::RolloutFailed {
            phase,
            message: rs.message.clone().unwrap_or_default(),
        }));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(status: serde_json::Value) -> View {
        let obj: StormService = serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
            "metadata": {"name": "my-app", "namespace": "ns", "generation": 2},
            "spec": {"replicas": 4, "template": {}, "rolloutStrategy": {"type": "Canary", "canary": {"steps": [
                {"weight": 10, "pause": {"duration": "5m"}},
                {"weight": 25, "pause": {"untilApproval": true}, "analysis": {"templates": [{"name": "success-rate"}]}},
                {"weight": 50}
            ], "trafficRouting": {"nginx": {"ingress": "i", "servicePort": 80}}}}},
            "status": status
        }))
        .expect("object");
        View {
            obj: Some(obj),
            revisions: BTreeMap::from([
                (
                    "aaa".to_string(),
                    RevisionCount {
                        rolesets: 4,
                        ready: 4,
                    },
                ),
                (
                    "bbb".to_string(),
                    RevisionCount {
                        rolesets: 1,
                        ready: 1,
                    },
                ),
            ]),
            events: vec![(
                "3s".into(),
                "Normal".into(),
                "StepComplete".into(),
                "Step 0 completed successfully".into(),
            )],
        }
    }

    #[test]
    fn marks_steps_done_current_and_pending() {
        let v = view(
            json!({"observedGeneration": 2, "currentRevision": "aaa", "updateRevision": "bbb", "readyReplicas": 5,
            "rolloutStatus": {"phase": "Paused", "currentStepIndex": 1, "message": "step 1: waiting for approval",
                              "canaryStatus": {"currentWeight": 25}}}),
        );
        let text = render(&v);
        assert!(
            text.contains("Strategy:   Canary (3 steps, nginx routing)"),
            "{text}"
        );
        assert!(
            text.contains("Phase:      Paused — step 1: waiting for approval"),
            "{text}"
        );
        assert!(text.contains("[x] 0  weight 10, pause 5m"), "{text}");
        assert!(
            text.contains("[=] 1  weight 25, pause until approval, analysis success-rate"),
            "{text}"
        );
        assert!(text.contains("[ ] 2  weight 50"), "{text}");
        assert!(text.contains("Weight:     25%"), "{text}");
        assert!(text.contains("aaa  stable  4 RoleSets, 4 ready"), "{text}");
        assert!(text.contains("bbb  canary  1 RoleSets, 1 ready"), "{text}");
        assert!(text.contains("StepComplete"), "{text}");
    }

    #[test]
    fn shows_router_read_back_and_analysis_runs() {
        let v = view(
            json!({"observedGeneration": 2, "currentRevision": "aaa", "updateRevision": "bbb",
            "rolloutStatus": {"phase": "Progressing", "currentStepIndex": 1, "routerWeight": 25,
                "canaryStatus": {"currentWeight": 25},
                "scaleDowns": [{"revision": "zzz", "reason": "Promoted", "dueTime": "2026-11-26T09:31:00Z"}],
                "capacity": {"resource": "nvidia.com/gpu", "steadyState": 8, "inUse": 10, "left": 0,
                    "revisions": [{"revision": "aaa", "roleSets": 3, "perRoleSet": 2, "inUse": 6},
                                  {"revision": "bbb", "roleSets": 2, "perRoleSet": 2, "inUse": 4}]},
                "analysisRuns": [{"name": "step-1", "revision": "bbb", "phase": "Running",
                    "message": "next measurement at 2026-11-26T09:30:00Z",
                    "metrics": [{"name": "success-rate/errors", "phase": "Running", "count": 2,
                        "successful": 2, "measurements": [{"phase": "Successful", "value": "0.4"}]}]}]}}),
        );
        let text = render(&v);
        assert!(
            text.contains("Router:     reports 25% on the canary"),
            "{text}"
        );
        assert!(
            text.contains("Draining:   zzz until 2026-11-26T09:31:00Z (replaced by a promotion: scaleDownDelaySeconds)"),
            "{text}"
        );
        assert!(
            text.contains("Capacity:   nvidia.com/gpu 10 in use of 10 (steady state 8, 0 left): aaa 6 (3 × 2), bbb 4 (2 × 2)"),
            "{text}"
        );
        assert!(
            text.contains(
                "step-1          Running      bbb — next measurement at 2026-11-26T09:30:00Z"
            ),
            "{text}"
        );
        assert!(
            text.contains("success-rate/errors            Running      2 measured: 2 ok, 0 failed, 0 inconclusive, 0 errors; last 0.4"),
            "{text}"
        );
    }

    #[test]
    fn waiting_ends_on_the_phase_or_a_failure_of_the_current_generation() {
        // What judge says, as the text users read.
        let said = |v: &View| {
            judge(v, Some(RolloutPhase::Completed)).map(|r| r.map_err(|e| e.to_string()))
        };
        let done = view(json!({"observedGeneration": 2, "rolloutStatus": {"phase": "Completed"}}));
        assert_eq!(said(&done), Some(Ok(())));
        let stale = view(json!({"observedGeneration": 1, "rolloutStatus": {"phase": "Completed"}}));
        assert_eq!(said(&stale), None);
        let failed = view(
            json!({"observedGeneration": 2, "rolloutStatus": {"phase": "Degraded", "message": "x"}}),
        );
        assert_eq!(
            said(&failed),
            Some(Err("rollout failed: phase Degraded: x".into()))
        );
        let running =
            view(json!({"observedGeneration": 2, "rolloutStatus": {"phase": "Progressing"}}));
        assert_eq!(said(&running), None);
    }
}
