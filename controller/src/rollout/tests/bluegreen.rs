//! Blue-green: preview at full size, promotion by approval or automatically, the scale-down delay,
//! and switching back on failure.

use super::*;
use storm_shared::status::Reason;

fn bg_spec(bg: serde_json::Value, replicas: i32) -> StormServiceSpec {
    serde_json::from_value(serde_json::json!({
        "replicas": replicas,
        "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"roles": [{"name": "r", "template": {"spec": {"containers": [{"name": "c", "image": "app:v1"}]}}}]}},
        "rolloutStrategy": {"type": "BlueGreen", "blueGreen": bg}
    }))
    .expect("spec")
}

fn deployed_bg(bg: serde_json::Value) -> (Sim, String) {
    let mut sim = Sim::new(bg_spec(bg, 2));
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Healthy));
    let v1 = sim.revision();
    (sim, v1)
}

fn bg_status(sim: &Sim) -> storm_shared::types::stormservice::BlueGreenStatus {
    sim.status
        .as_ref()
        .and_then(|s| s.rollout_status.as_ref())
        .and_then(|r| r.blue_green_status.clone())
        .expect("blueGreenStatus")
}

#[test]
fn manual_promotion_waits_for_approval_then_keeps_the_old_revision_for_the_delay() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview",
        "autoPromotionEnabled": false, "scaleDownDelaySeconds": 60
    }));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!(sim.count(&v2), 2, "preview at full size");
    assert_eq!(sim.count(&v1), 2, "active untouched");
    assert_eq!(sim.phase(), Some(RolloutPhase::Paused));
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    assert_eq!(sim.service("active"), Some(v1.clone()));
    assert_eq!(sim.service("preview"), Some(v2.clone()));
    let st = bg_status(&sim);
    assert_eq!(st.active_selector, Some(v1.clone()));
    assert_eq!(st.preview_selector, Some(v2.clone()));
    assert!(st.preview_expose_time.is_some());
    assert_eq!(sim.step(), None, "blue-green has no steps");

    sim.annotate(APPROVAL);
    sim.tick();
    assert_eq!(
        sim.service("active"),
        Some(v2.clone()),
        "promotion switches the active Service"
    );
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!(sim.stable(), Some(v2.clone()));
    assert!(bg_status(&sim).scale_down_delay_start_time.is_some());
    sim.settle(3);
    assert_eq!(
        sim.count(&v1),
        2,
        "old RoleSets kept during scaleDownDelaySeconds"
    );
    let requeue = sim.last.as_ref().expect("plan").requeue_after;
    assert!(requeue <= std::time::Duration::from_secs(60));
    sim.advance(61);
    sim.settle(2);
    assert_eq!(sim.count(&v1), 0, "removed after the delay");
    assert_eq!(sim.count(&v2), 2);
}

#[test]
fn automatic_promotion_switches_as_soon_as_the_preview_is_ready() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview", "autoPromotionEnabled": true
    }));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.tick();
    assert_eq!(
        sim.service("active"),
        Some(v1.clone()),
        "not before the preview is ready"
    );
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!(sim.service("active"), Some(v2.clone()));
    assert!(sim.notes.iter().all(|n| n.reason != Reason::Approved));
    sim.advance(31);
    sim.settle(2);
    assert_eq!(sim.count(&v1), 0, "default delay 30s");
}

#[test]
fn a_failed_post_promotion_analysis_switches_back() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview", "autoPromotionEnabled": true,
        "postPromotionAnalysis": {"templates": [{"name": "smoke"}]}
    }));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!(sim.service("active"), Some(v2.clone()), "promoted");
    assert_eq!(sim.phase(), Some(RolloutPhase::Progressing));
    assert_eq!(sim.progress_reason().as_deref(), Some("AnalysisRunning"));
    assert_eq!(
        sim.stable(),
        Some(v1.clone()),
        "not complete before the post-promotion analysis"
    );
    assert_eq!(sim.count(&v1), 2);
    sim.verdicts
        .insert("post-promotion".into(), AnalysisPhase::Failed);
    let plan = sim.tick();
    assert_eq!(plan.rollback, Some(Reason::AnalysisFailed));
    assert_eq!(sim.service("active"), Some(v1.clone()), "switched back");
    assert_eq!(bg_status(&sim).active_selector, Some(v1.clone()));
    assert_eq!(sim.phase(), Some(RolloutPhase::Degraded));
    sim.settle(2);
    assert_eq!(sim.count(&v2), 2, "drains for abortScaleDownDelaySeconds");
    sim.advance(31);
    sim.settle(2);
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(sim.count(&v1), 2);
}

#[test]
fn failing_preview_pods_roll_back_before_promotion() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview", "autoPromotionEnabled": false
    }));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.failing.insert(v2.clone());
    sim.settle(3);
    assert_eq!(sim.degraded_reason().as_deref(), Some("HealthCheckFailed"));
    assert_eq!(sim.service("active"), Some(v1.clone()));
    sim.settle(2);
    assert!(sim.count(&v2) > 0, "drains for abortScaleDownDelaySeconds");
    sim.advance(31);
    sim.settle(2);
    assert_eq!(sim.count(&v2), 0);
}

#[test]
fn pre_promotion_analysis_gates_the_approval() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview", "autoPromotionEnabled": false,
        "prePromotionAnalysis": {"templates": [{"name": "smoke"}]}
    }));
    sim.set_image("app:v2");
    sim.settle(4);
    assert_eq!(sim.progress_reason().as_deref(), Some("AnalysisRunning"));
    sim.verdicts
        .insert("pre-promotion".into(), AnalysisPhase::Successful);
    sim.settle(2);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    assert_eq!(sim.service("active"), Some(v1));
}

#[test]
fn abort_and_retry() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview", "autoPromotionEnabled": false,
        "abortScaleDownDelaySeconds": 10
    }));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    sim.annotate(ABORT);
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Aborted));
    assert_eq!(sim.count(&v2), 2, "the preview drains for 10 s");
    assert_eq!(sim.service("preview"), Some(v1.clone()), "no Service on it");
    sim.advance(11);
    sim.settle(2);
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(sim.service("active"), Some(v1.clone()));
    sim.annotate(RETRY);
    sim.settle(4);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    assert_eq!(sim.count(&v2), 2);
    assert_eq!(sim.step(), None);
}

#[test]
fn a_long_approval_wait_is_not_a_deadline_when_the_preview_blips() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview", "autoPromotionEnabled": false
    }));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    sim.advance(7200);
    // One preview RoleSet turns unready for a moment.
    sim.rolesets
        .iter_mut()
        .find(|r| r.revision == v2)
        .expect("preview")
        .ready = false;
    sim.stuck.insert(v2.clone());
    sim.tick();
    assert_eq!(sim.degraded_reason(), None, "no ProgressDeadlineExceeded");
    assert_eq!(sim.service("active"), Some(v1));
    sim.stuck.clear();
    sim.settle(2);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
}

#[test]
fn after_an_abort_the_status_says_both_services_select_stable() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview", "autoPromotionEnabled": false
    }));
    sim.set_image("app:v2");
    sim.settle(4);
    sim.annotate(ABORT);
    sim.settle(2);
    let st = bg_status(&sim);
    assert_eq!(st.active_selector, Some(v1.clone()));
    assert_eq!(st.preview_selector, Some(v1.clone()));
    assert_eq!(sim.service("preview"), Some(v1));
}

#[test]
fn promote_full_skips_the_analyses_and_the_approval_once_the_preview_is_ready() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview",
        "autoPromotionEnabled": false,
        "prePromotionAnalysis": {"templates": [{"name": "never-decides"}]}
    }));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!(sim.count(&v2), 2, "preview at full size");
    assert_eq!(sim.service("active"), Some(v1.clone()));
    assert_ne!(
        sim.phase(),
        Some(RolloutPhase::Completed),
        "held by the analysis"
    );
    sim.annotate(PROMOTE_FULL);
    sim.settle(3);
    assert_eq!(sim.service("active"), Some(v2.clone()));
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!(sim.stable(), Some(v2));
}

#[test]
fn a_smaller_preview_grows_to_full_size_before_the_switch() {
    let mut sim = Sim::new(bg_spec(
        serde_json::json!({
            "activeService": "active", "previewService": "preview",
            "autoPromotionEnabled": false, "previewReplicaCount": 1, "scaleDownDelaySeconds": 0
        }),
        3,
    ));
    sim.settle(3);
    let v1 = sim.revision();
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!(
        sim.count(&v2),
        1,
        "the preview runs with previewReplicaCount"
    );
    assert_eq!(sim.count(&v1), 3);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    assert_eq!(sim.service("preview"), Some(v2.clone()));

    sim.annotate(APPROVAL);
    // The approval decides the promotion; the preview grows first, the active Service waits.
    sim.stuck.insert(v2.clone());
    sim.settle(3);
    assert_eq!(sim.count(&v2), 3, "grown to replicas");
    assert_eq!(
        sim.service("active"),
        Some(v1.clone()),
        "no switch before it is all ready"
    );
    assert_eq!(sim.progress_reason().as_deref(), Some("Promoting"));
    assert!(bg_status(&sim).promoting == Some(true));
    // It becomes ready: the switch follows without another approval.
    sim.stuck.clear();
    sim.settle(3);
    assert_eq!(sim.service("active"), Some(v2.clone()));
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!((sim.count(&v1), sim.count(&v2)), (0, 3));
}

#[test]
fn auto_promotion_seconds_promotes_after_the_preview_was_ready_that_long() {
    let (mut sim, v1) = deployed_bg(serde_json::json!({
        "activeService": "active", "previewService": "preview",
        "autoPromotionEnabled": false, "autoPromotionSeconds": 120
    }));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    let plan = sim.last.as_ref().expect("plan");
    assert!(
        plan.requeue_after <= std::time::Duration::from_secs(120),
        "looks again when the time is up: {:?}",
        plan.requeue_after
    );
    sim.advance(100);
    sim.settle(2);
    assert_eq!(sim.service("active"), Some(v1.clone()), "not yet");
    sim.advance(21);
    sim.settle(2);
    assert_eq!(
        sim.service("active"),
        Some(v2.clone()),
        "promoted on its own"
    );
    assert!(
        sim.notes
            .iter()
            .any(|n| n.message.contains("autoPromotionSeconds")),
        "the Event says why"
    );
}

#[test]
fn an_abort_while_the_preview_grows_switches_nothing_and_a_retry_starts_small_again() {
    let mut sim = Sim::new(bg_spec(
        serde_json::json!({
            "activeService": "active", "previewService": "preview",
            "autoPromotionEnabled": false, "previewReplicaCount": 1,
            "abortScaleDownDelaySeconds": 0
        }),
        2,
    ));
    sim.settle(3);
    let v1 = sim.revision();
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    sim.stuck.insert(v2.clone());
    sim.annotate(APPROVAL);
    sim.settle(2);
    assert!(bg_status(&sim).promoting == Some(true));
    sim.annotate(ABORT);
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Aborted));
    assert_eq!(sim.service("active"), Some(v1.clone()));
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(bg_status(&sim).promoting, None);
    sim.stuck.clear();
    sim.annotate(RETRY);
    sim.settle(4);
    assert_eq!(sim.count(&v2), 1, "small again, waiting for a new approval");
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
}
