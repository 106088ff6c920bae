//! Analysis gates of canary steps and the error-rate metric, with a simulated runner.

use super::*;
use storm_shared::status::Reason;

fn analysed(extra: serde_json::Value) -> (Sim, String) {
    let steps = serde_json::json!([
        {"weight": 50, "analysis": {"templates": [{"name": "success-rate"}]}},
        {"weight": 100}
    ]);
    let mut s = spec(steps, 2, "app:v1");
    if !extra.is_null() {
        s.rollout_strategy.as_mut().expect("rs").auto_rollback =
            Some(serde_json::from_value(extra).expect("autoRollback"));
    }
    let mut sim = Sim::new(s);
    sim.settle(3);
    let v1 = sim.revision();
    (sim, v1)
}

#[test]
fn a_step_with_analysis_waits_for_its_verdict_and_then_completes() {
    let (mut sim, _) = analysed(serde_json::Value::Null);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!(sim.phase(), Some(RolloutPhase::Progressing));
    assert_eq!(sim.progress_reason().as_deref(), Some("AnalysisRunning"));
    assert_eq!(
        sim.runs(),
        vec![("step-0".to_string(), AnalysisPhase::Running)]
    );
    let run = &sim
        .status
        .as_ref()
        .expect("s")
        .rollout_status
        .as_ref()
        .expect("rs")
        .analysis_runs[0];
    assert_eq!(run.revision, v2);
    assert!(run.started_at.is_some());
    assert!(
        sim.notes
            .iter()
            .any(|n| n.reason == Reason::AnalysisStarted)
    );
    sim.verdicts
        .insert("step-0".into(), AnalysisPhase::Successful);
    sim.settle(4);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!(
        sim.runs(),
        vec![("step-0".to_string(), AnalysisPhase::Successful)],
        "the verdict stays visible"
    );
}

#[test]
fn a_failed_analysis_rolls_back_with_analysis_failed() {
    let (mut sim, v1) = analysed(serde_json::Value::Null);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    sim.verdicts.insert("step-0".into(), AnalysisPhase::Failed);
    let plan = sim.tick();
    assert_eq!(plan.rollback, Some(Reason::AnalysisFailed));
    assert_eq!(sim.phase(), Some(RolloutPhase::Degraded));
    assert_eq!(sim.degraded_reason().as_deref(), Some("AnalysisFailed"));
    sim.settle(3);
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(sim.count(&v1), 2);
    assert_eq!(sim.last.as_ref().expect("plan").weight, 0);
    assert!(
        sim.last
            .as_ref()
            .expect("plan")
            .services
            .iter()
            .all(|(_, r)| *r == v1)
    );
}

#[test]
fn an_analysis_error_counts_as_a_failure() {
    let (mut sim, _) = analysed(serde_json::Value::Null);
    sim.set_image("app:v2");
    sim.settle(4);
    sim.verdicts.insert("step-0".into(), AnalysisPhase::Error);
    sim.settle(2);
    assert_eq!(sim.degraded_reason().as_deref(), Some("AnalysisFailed"));
}

#[test]
fn without_analysis_failure_rollback_the_rollout_stops_in_place_and_resume_measures_again() {
    let (mut sim, v1) = analysed(serde_json::json!({"onFailure": {"analysisFailure": false}}));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    sim.verdicts.insert("step-0".into(), AnalysisPhase::Failed);
    let plan = sim.tick();
    assert_eq!(plan.rollback, None);
    assert_eq!(sim.phase(), Some(RolloutPhase::Degraded));
    assert_eq!(sim.progress_reason().as_deref(), Some("Halted"));
    sim.settle(2);
    assert_eq!(sim.count(&v2), 1, "nothing moves");
    assert_eq!(sim.count(&v1), 1);
    sim.verdicts.clear();
    sim.annotate(RESUME);
    sim.settle(2);
    assert_eq!(sim.phase(), Some(RolloutPhase::Progressing));
    assert_eq!(
        sim.runs(),
        vec![("step-0".to_string(), AnalysisPhase::Running)],
        "a fresh run"
    );
}

#[test]
fn an_inconclusive_analysis_pauses_and_resume_accepts_it() {
    let (mut sim, _) = analysed(serde_json::Value::Null);
    sim.set_image("app:v2");
    sim.settle(4);
    sim.verdicts
        .insert("step-0".into(), AnalysisPhase::Inconclusive);
    sim.settle(2);
    assert_eq!(sim.phase(), Some(RolloutPhase::Paused));
    assert_eq!(sim.paused_reason().as_deref(), Some("AnalysisInconclusive"));
    sim.annotate(RESUME);
    sim.settle(4);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
}

#[test]
fn abort_stops_a_running_analysis() {
    let (mut sim, _) = analysed(serde_json::Value::Null);
    sim.set_image("app:v2");
    sim.settle(4);
    assert_eq!(sim.runs().len(), 1);
    sim.annotate(ABORT);
    sim.settle(1);
    assert!(
        sim.runs().is_empty(),
        "the runner measures only running runs; none is left"
    );
    sim.annotate(RETRY);
    sim.settle(5);
    assert_eq!(
        sim.runs(),
        vec![("step-0".to_string(), AnalysisPhase::Running)]
    );
}

#[test]
fn an_edited_step_restarts_its_analysis() {
    let (mut sim, _) = analysed(serde_json::Value::Null);
    sim.set_image("app:v2");
    sim.settle(4);
    sim.verdicts
        .insert("step-0".into(), AnalysisPhase::Inconclusive);
    sim.settle(1);
    sim.verdicts.clear();
    canary_of(&mut sim.spec).steps[0]
        .analysis
        .as_mut()
        .expect("a")
        .args =
        vec![serde_json::from_value(serde_json::json!({"name": "x", "value": "1"})).expect("arg")];
    sim.settle(2);
    assert_eq!(
        sim.runs(),
        vec![("step-0".to_string(), AnalysisPhase::Running)]
    );
}

#[test]
fn the_error_rate_metric_rolls_back_with_error_threshold_exceeded() {
    let (mut sim, v1) = analysed(serde_json::json!({"onFailure": {
        "errorThreshold": "5%",
        "errorRate": {"name": "errors", "provider": {"prometheus": {"address": "http://p", "query": "q"}}}
    }}));
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(2);
    assert!(
        sim.runs()
            .contains(&("error-rate".to_string(), AnalysisPhase::Running)),
        "the error rate is measured while the canary lives: {:?}",
        sim.runs()
    );
    // A verdict below the threshold starts a new measurement; an inconclusive one too.
    sim.verdicts
        .insert("error-rate".into(), AnalysisPhase::Successful);
    sim.settle(2);
    assert_ne!(sim.phase(), Some(RolloutPhase::Degraded));
    sim.verdicts
        .insert("error-rate".into(), AnalysisPhase::Failed);
    sim.settle(2);
    assert_eq!(
        sim.degraded_reason().as_deref(),
        Some("ErrorThresholdExceeded")
    );
    sim.settle(2);
    assert_eq!(sim.count(&v2), 0);
    assert_eq!(sim.count(&v1), 2);
}

#[test]
fn an_error_rate_that_cannot_be_measured_is_an_analysis_failure_not_a_threshold() {
    let (mut sim, _) = analysed(serde_json::json!({"onFailure": {
        "errorThreshold": "5%",
        "errorRate": {"name": "errors", "provider": {"prometheus": {"address": "http://p", "query": "q"}}}
    }}));
    sim.set_image("app:v2");
    sim.settle(2);
    sim.verdicts
        .insert("error-rate".into(), AnalysisPhase::Error);
    sim.settle(2);
    assert_eq!(sim.degraded_reason().as_deref(), Some("AnalysisFailed"));
}

#[test]
fn an_analysis_removed_from_the_spec_mid_rollout_stops_measuring() {
    let (mut sim, _) = analysed(serde_json::json!({"onFailure": {
        "errorThreshold": "5%",
        "errorRate": {"name": "errors", "provider": {"prometheus": {"address": "http://p", "query": "q"}}}
    }}));
    sim.set_image("app:v2");
    sim.settle(4);
    assert!(
        sim.runs()
            .contains(&("error-rate".to_string(), AnalysisPhase::Running))
    );
    sim.spec
        .rollout_strategy
        .as_mut()
        .expect("rs")
        .auto_rollback = None;
    sim.settle(1);
    assert!(
        !sim.runs().iter().any(|(n, _)| n == "error-rate"),
        "{:?}",
        sim.runs()
    );
}
