//! Canary with a traffic router: stable keeps full size, a step is reached only when the router
//! reports its weight, promotion moves traffic before capacity, abort moves traffic before capacity.

use super::*;
use k8s_openapi::jiff::SignedDuration;
use storm_shared::types::stormservice::{ScaleDown, ScaleDownReason};

fn routed(replicas: i32) -> (Sim, String) {
    let mut s = spec(seed_steps(), replicas, "app:v1");
    canary_of(&mut s).traffic_routing = Some(
        serde_json::from_value(serde_json::json!({"istio": {"virtualService": "vs"}})).expect("tr"),
    );
    let mut sim = Sim::new(s);
    sim.router = Some(0);
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Healthy));
    let v1 = sim.revision();
    (sim, v1)
}

#[test]
fn a_step_waits_for_the_router_to_report_its_weight() {
    let (mut sim, v1) = routed(4);
    sim.router_frozen = true;
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!(sim.count(&v1), 4, "stable keeps full size");
    assert_eq!(sim.count(&v2), 1, "ceil(4 × 10%) = 1 canary RoleSet");
    assert_eq!(sim.last.as_ref().expect("plan").weight, 10);
    assert_eq!(sim.phase(), Some(RolloutPhase::Progressing));
    assert_eq!(
        sim.progress_reason().as_deref(),
        Some("WaitingForTrafficRouter")
    );
    assert!(
        sim.status
            .as_ref()
            .expect("status")
            .rollout_status
            .as_ref()
            .expect("rs")
            .pause_start_time
            .is_none(),
        "the pause does not start before the weight is in place"
    );
    sim.router_frozen = false;
    sim.settle(2);
    assert_eq!(sim.paused_reason().as_deref(), Some("PauseDuration"));
    let rs = sim
        .status
        .as_ref()
        .expect("s")
        .rollout_status
        .clone()
        .expect("rs");
    assert_eq!(rs.router_weight, Some(10));
}

#[test]
fn promotion_moves_traffic_before_stable_goes() {
    let (mut sim, v1) = routed(2);
    canary_of(&mut sim.spec).steps =
        serde_json::from_value(serde_json::json!([{"weight": 50}])).expect("steps");
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(3);
    assert_eq!(sim.router, Some(50));
    // The router stops at 50 while the promotion wants 100: stable must stay whole.
    sim.router_frozen = true;
    sim.settle(6);
    assert_eq!(
        sim.last.as_ref().expect("plan").weight,
        100,
        "promotion asks for 100"
    );
    assert_eq!(sim.count(&v2), 2, "canary at full size first");
    assert_eq!(
        sim.count(&v1),
        2,
        "stable stays until the router reports 100"
    );
    assert_eq!(sim.phase(), Some(RolloutPhase::Progressing));
    sim.router_frozen = false;
    sim.settle(4);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!(sim.stable(), Some(v2.clone()));
    // All traffic is on the new revision; the old one drains for scaleDownDelaySeconds (60 by
    // default with a router), its due time in the status.
    assert_eq!(sim.count(&v1), 2, "the old stable drains");
    let drains = scale_downs(&sim);
    assert_eq!(drains.len(), 1);
    assert_eq!(
        (drains[0].revision.as_str(), drains[0].reason),
        (v1.as_str(), ScaleDownReason::Promoted)
    );
    let left = drains[0].due_time.0.duration_since(sim.now);
    assert!(left > SignedDuration::ZERO && left <= SignedDuration::from_secs(60));
    let plan = sim.last.as_ref().expect("plan");
    assert!(
        plan.services.iter().all(|(_, rev)| *rev == v2),
        "no Service on it"
    );
    sim.advance(59);
    sim.settle(2);
    assert_eq!(sim.count(&v1), 2, "still draining");
    sim.advance(2);
    sim.settle(2);
    assert_eq!(sim.count(&v1), 0, "gone once due");
    assert!(scale_downs(&sim).is_empty());
}

fn scale_downs(sim: &Sim) -> Vec<ScaleDown> {
    sim.status
        .as_ref()
        .and_then(|s| s.rollout_status.as_ref())
        .map(|r| r.scale_downs.clone())
        .unwrap_or_default()
}

#[test]
fn an_explicit_delay_overrides_the_default_and_zero_removes_stable_before_completion() {
    let (mut sim, v1) = routed(2);
    canary_of(&mut sim.spec).steps =
        serde_json::from_value(serde_json::json!([{"weight": 50}])).expect("steps");
    canary_of(&mut sim.spec).scale_down_delay_seconds = Some(0);
    sim.set_image("app:v2");
    sim.settle(8);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!(sim.count(&v1), 0);
    assert!(scale_downs(&sim).is_empty());
}

#[test]
fn abort_takes_traffic_before_capacity() {
    let (mut sim, v1) = routed(4);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(3);
    assert_eq!(sim.router, Some(10));
    sim.router_frozen = true;
    sim.annotate(ABORT);
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Aborted));
    assert_eq!(
        sim.last.as_ref().expect("plan").weight,
        0,
        "the router is told 0 at once"
    );
    assert_eq!(
        sim.count(&v2),
        1,
        "the canary keeps serving while the router still sends it traffic"
    );
    sim.router_frozen = false;
    sim.settle(2);
    assert_eq!(sim.router, Some(0));
    // No traffic on it any more: it drains for abortScaleDownDelaySeconds (30 by default).
    assert_eq!(sim.count(&v2), 1, "the canary drains");
    let drains = scale_downs(&sim);
    assert_eq!(
        (drains[0].revision.as_str(), drains[0].reason),
        (v2.as_str(), ScaleDownReason::Aborted)
    );
    sim.advance(31);
    sim.settle(2);
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(sim.count(&v1), 4);
    assert!(scale_downs(&sim).is_empty());
}

#[test]
fn a_retry_during_the_abort_drain_ends_it() {
    let (mut sim, _) = routed(4);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(3);
    sim.annotate(ABORT);
    sim.settle(3);
    assert_eq!(scale_downs(&sim).len(), 1);
    assert_eq!(sim.count(&v2), 1);
    sim.annotate(RETRY);
    sim.settle(3);
    assert!(scale_downs(&sim).is_empty(), "the revision is wanted again");
    assert_eq!(sim.step(), Some(0));
    sim.advance(31);
    sim.settle(2);
    assert_eq!(sim.count(&v2), 1, "kept by the rollout, not the drain");
}

#[test]
fn the_canary_gets_a_steps_traffic_only_once_it_has_the_steps_capacity() {
    let (mut sim, _) = routed(4);
    sim.set_image("app:v2");
    let plan = sim.tick();
    assert_eq!(
        plan.weight, 0,
        "no canary RoleSet is ready yet: no traffic for it"
    );
    sim.settle(3);
    assert_eq!(sim.router, Some(10));
    // Step 1 wants 25% (still 1 RoleSet of 4): capacity is there, the weight moves at once.
    sim.advance(301);
    let plan = sim.tick();
    assert_eq!(plan.weight, 25);
}

#[test]
fn a_lost_router_reading_after_a_long_pause_is_not_a_deadline() {
    let (mut sim, _) = routed(4);
    sim.set_image("app:v2");
    sim.settle(5);
    assert_eq!(sim.paused_reason().as_deref(), Some("PauseDuration"));
    // Step 1 waits for approval for an hour (the deadline is 30m).
    sim.advance(301);
    sim.settle(3);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    sim.advance(3600);
    // One reconcile cannot read the router.
    sim.router_frozen = true;
    sim.router = None;
    sim.tick();
    assert_eq!(sim.phase(), Some(RolloutPhase::Progressing));
    assert_eq!(sim.degraded_reason(), None, "no ProgressDeadlineExceeded");
    sim.router = Some(25);
    sim.router_frozen = false;
    sim.settle(2);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
}

#[test]
fn after_promotion_removed_stable_traffic_never_goes_back_to_it() {
    let (mut sim, v1) = routed(2);
    // Without a drain, stable goes before the promotion completes.
    let c = canary_of(&mut sim.spec);
    c.scale_down_delay_seconds = Some(0);
    c.abort_scale_down_delay_seconds = Some(0);
    canary_of(&mut sim.spec).steps =
        serde_json::from_value(serde_json::json!([{"weight": 50}])).expect("steps");
    sim.set_image("app:v2");
    let v2 = sim.revision();
    // Up to the point where the router reports 100 and stable is scaled away.
    for _ in 0..10 {
        sim.tick();
        if sim.count(&v1) == 0 {
            break;
        }
    }
    assert_eq!(sim.count(&v1), 0);
    assert_ne!(
        sim.phase(),
        Some(RolloutPhase::Completed),
        "caught before completion"
    );
    // A canary RoleSet turns unready, and the user aborts: stable has nothing ready yet.
    sim.stuck.insert(v2.clone());
    for r in &mut sim.rolesets {
        r.ready = false;
    }
    sim.annotate(ABORT);
    let plan = sim.tick();
    assert_eq!(
        plan.weight, 100,
        "traffic stays on the canary until stable can take it"
    );
    sim.stuck.clear();
    sim.settle(4);
    assert_eq!(sim.router, Some(0));
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(sim.count(&v1), 2);
}

#[test]
fn an_abort_with_a_silent_router_releases_the_canary_after_a_grace() {
    let (mut sim, v1) = routed(4);
    canary_of(&mut sim.spec).abort_scale_down_delay_seconds = Some(0);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(3);
    // The routing object is gone: the router reports nothing.
    sim.router_frozen = true;
    sim.router = None;
    sim.annotate(ABORT);
    sim.settle(3);
    assert_eq!(
        sim.count(&v2),
        1,
        "kept while traffic cannot be confirmed off it"
    );
    sim.advance(61);
    sim.settle(2);
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(sim.count(&v1), 4);
}

#[test]
fn spec_paused_keeps_the_routers_weight() {
    let (mut sim, _) = routed(4);
    sim.set_image("app:v2");
    sim.settle(3);
    assert_eq!(sim.router, Some(10));
    sim.spec.paused = Some(true);
    let plan = sim.tick();
    assert_eq!(plan.weight, 10);
}

#[test]
fn a_reverted_template_keeps_the_canary_until_the_router_reports_zero() {
    let (mut sim, v1) = routed(4);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(5);
    assert_eq!(sim.router, Some(10));
    sim.router_frozen = true;
    sim.set_image("app:v1");
    sim.settle(2);
    assert_eq!(sim.phase(), Some(RolloutPhase::Healthy));
    assert_eq!(sim.last.as_ref().expect("plan").weight, 0);
    assert_eq!(
        sim.count(&v2),
        1,
        "kept while the router still sends it 10%"
    );
    sim.router_frozen = false;
    sim.settle(2);
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(sim.count(&v1), 4);
}
