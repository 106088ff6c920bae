//! The state machine against a simulated world: RoleSets appear when the plan asks for them and
//! become Ready one decision later, unless the test says otherwise.

use super::plan::{ObservedPod, ObservedRoleSet};
use super::*;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use storm_shared::status::Reason;
use storm_shared::types::stormservice::{
    AnalysisPhase, RolloutPhase, StormServiceSpec, StormServiceStatus,
};

const APPROVAL: &str = "stormservice.aibrix.ai/rollout-approval";
const ABORT: &str = "stormservice.aibrix.ai/rollout-abort";
const RETRY: &str = "stormservice.aibrix.ai/rollout-retry";
const PAUSE: &str = "stormservice.aibrix.ai/rollout-pause";
const PROMOTE_FULL: &str = "stormservice.aibrix.ai/rollout-promote-full";
const RESUME: &str = "stormservice.aibrix.ai/rollout-resume";

pub(super) struct Sim {
    pub spec: StormServiceSpec,
    pub status: Option<StormServiceStatus>,
    pub annotations: BTreeMap<String, String>,
    pub rolesets: Vec<ObservedRoleSet>,
    pub now: Timestamp,
    /// Revisions whose Pods fail.
    pub failing: BTreeSet<String>,
    /// Revisions whose RoleSets never become ready.
    pub stuck: BTreeSet<String>,
    /// Whether the controller "crashes" before removing annotations.
    pub crash_before_annotation_removal: bool,
    pub notes: Vec<Note>,
    pub last: Option<Plan>,
    /// The traffic router's weight (None: no router). It follows the plan's weight each tick,
    /// unless frozen.
    pub router: Option<i32>,
    pub router_frozen: bool,
    /// The analysis runner: the verdict it reaches for a run of this name.
    pub verdicts: BTreeMap<String, AnalysisPhase>,
}

pub(super) fn spec(steps: serde_json::Value, replicas: i32, image: &str) -> StormServiceSpec {
    serde_json::from_value(serde_json::json!({
        "replicas": replicas,
        "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"roles": [{"name": "r", "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}]}},
        "rolloutStrategy": {"type": "Canary", "canary": {"steps": steps, "stableService": "s", "canaryService": "c"}}
    }))
    .expect("spec")
}

/// The canary strategy of a spec made by [`spec`].
pub(super) fn canary_of(
    spec: &mut StormServiceSpec,
) -> &mut storm_shared::types::stormservice::CanaryStrategy {
    spec.rollout_strategy
        .as_mut()
        .and_then(|r| r.canary.as_mut())
        .expect("a canary spec")
}

pub(super) fn seed_steps() -> serde_json::Value {
    serde_json::json!([
        {"weight": 10, "pause": {"duration": "5m"}},
        {"weight": 25, "pause": {"untilApproval": true}},
        {"weight": 50},
        {"weight": 100}
    ])
}

impl Sim {
    pub fn new(spec: StormServiceSpec) -> Self {
        Self {
            spec,
            status: None,
            annotations: BTreeMap::new(),
            rolesets: Vec::new(),
            now: Timestamp::from_second(1_700_000_000).expect("ts"),
            failing: BTreeSet::new(),
            stuck: BTreeSet::new(),
            crash_before_annotation_removal: false,
            notes: Vec::new(),
            last: None,
            router: None,
            router_frozen: false,
            verdicts: BTreeMap::new(),
        }
    }

    /// What a RoleSet of the current template holds of the capacity budget's resource.
    pub fn holds(&self) -> i64 {
        self.spec.capacity_budget().map_or(0, |budget| {
            storm_shared::capacity::roleset_use(self.spec.template.roles(), &budget.resource)
                .unwrap_or(0)
        })
    }

    pub fn observed(&self) -> Observed {
        let pods = self
            .rolesets
            .iter()
            .map(|r| ObservedPod {
                name: format!("{}-pod", r.name),
                revision: r.revision.clone(),
                ready: r.ready && !self.failing.contains(&r.revision),
                failed: self.failing.contains(&r.revision),
                restarts: 0,
                back_off: false,
                unready_since: None,
            })
            .collect();
        Observed {
            rolesets: self.rolesets.clone(),
            pods,
            router_weight: self.router,
            router_error: None,
            held_by_terminating: 0,
        }
    }

    /// The status after the analysis runner measured: running runs with a verdict get it.
    fn measured(&self) -> Option<StormServiceStatus> {
        let mut status = self.status.clone()?;
        if let Some(rs) = status.rollout_status.as_mut() {
            for run in &mut rs.analysis_runs {
                if run.phase == AnalysisPhase::Running
                    && let Some(v) = self.verdicts.get(&run.name)
                {
                    run.phase = *v;
                    run.message = Some(format!("simulated {v:?}"));
                }
            }
        }
        Some(status)
    }

    pub fn decide_once(&self) -> Plan {
        let observed = self.observed();
        let status = self.measured();
        let input = Input {
            name: "svc",
            generation: Some(1),
            spec: &self.spec,
            status: status.as_ref(),
            annotations: &self.annotations,
            observed: &observed,
            update: &revision::of_template(&self.spec.template),
            measured: &Measured::default(),
            now: self.now,
        };
        decide(&input)
    }

    /// One reconcile: decide, write status, remove annotations, then the world moves.
    pub fn tick(&mut self) -> Plan {
        let plan = self.decide_once();
        self.status = Some(plan.status.clone());
        if !self.crash_before_annotation_removal {
            for a in &plan.remove_annotations {
                self.annotations.remove(a);
            }
        }
        self.notes.extend(plan.notes.clone());
        if self.router.is_some() && !self.router_frozen {
            self.router = Some(plan.weight);
        }
        // RoleSets made in the previous tick become ready now; new ones are created unready.
        for r in &mut self.rolesets {
            if !self.stuck.contains(&r.revision) {
                r.ready = true;
            }
        }
        // RoleSets updated in place take the update revision (and are unready until their Pods are).
        if let Some(update) = plan.status.update_revision.clone() {
            for r in &mut self.rolesets {
                if plan.retemplate.contains(&r.name) {
                    r.revision = update.clone();
                    r.ready = false;
                }
            }
        }
        // The shell executes exactly the RoleSets the plan names.
        self.rolesets.retain(|r| !plan.delete.contains(&r.name));
        for (rev, n) in &plan.create {
            self.rolesets.push(ObservedRoleSet {
                role_status: Vec::new(),
                roles: revision::role_replicas(&self.spec.template),
                index: Some(*n),
                name: format!("svc-{rev}-{n}"),
                revision: rev.clone(),
                ready: false,
                holds: self.holds(),
            });
        }
        // Roles resized in place.
        for r in &mut self.rolesets {
            if let Some(changes) = plan.resize.get(&r.name) {
                r.roles.extend(changes.clone());
            }
        }
        self.last = Some(plan.clone());
        plan
    }

    pub fn advance(&mut self, secs: i64) {
        self.now += SignedDuration::from_secs(secs);
    }

    pub fn phase(&self) -> Option<RolloutPhase> {
        self.status.as_ref()?.rollout_status.as_ref()?.phase
    }

    pub fn step(&self) -> Option<i32> {
        self.status
            .as_ref()?
            .rollout_status
            .as_ref()?
            .current_step_index
    }

    pub fn paused_reason(&self) -> Option<String> {
        let rs = self.status.as_ref()?.rollout_status.as_ref()?;
        rs.conditions
            .iter()
            .find(|c| c.type_ == "Paused" && c.status == "True")
            .and_then(|c| c.reason.clone())
    }

    pub fn progress_reason(&self) -> Option<String> {
        let rs = self.status.as_ref()?.rollout_status.as_ref()?;
        rs.conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.reason.clone())
    }

    pub fn degraded_reason(&self) -> Option<String> {
        let rs = self.status.as_ref()?.rollout_status.as_ref()?;
        rs.conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
            .and_then(|c| c.reason.clone())
    }

    /// The analysis runs in the status: (name, phase).
    pub fn runs(&self) -> Vec<(String, AnalysisPhase)> {
        self.status
            .as_ref()
            .and_then(|s| s.rollout_status.as_ref())
            .map(|rs| {
                rs.analysis_runs
                    .iter()
                    .map(|r| (r.name.clone(), r.phase))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The revision a Service was last pinned to.
    pub fn service(&self, svc: &str) -> Option<String> {
        self.last
            .as_ref()?
            .services
            .iter()
            .rev()
            .find(|(s, _)| s == svc)
            .map(|(_, r)| r.clone())
    }

    pub fn weight(&self) -> i32 {
        self.status
            .as_ref()
            .and_then(|s| s.rollout_status.as_ref())
            .and_then(|r| r.canary_status.as_ref())
            .map_or(0, |c| c.current_weight)
    }

    pub fn count(&self, rev: &str) -> usize {
        self.rolesets.iter().filter(|r| r.revision == rev).count()
    }

    pub fn settle(&mut self, ticks: usize) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    pub fn annotate(&mut self, key: &str) {
        self.annotations.insert(key.into(), "true".into());
    }

    pub fn set_image(&mut self, image: &str) {
        let role = &mut self.spec.template.spec.as_mut().expect("spec").roles[0];
        std::sync::Arc::make_mut(&mut role.template)
            .spec
            .as_mut()
            .expect("pod")
            .containers[0]
            .image = Some(image.into());
    }

    pub fn revision(&self) -> String {
        revision::of_template(&self.spec.template)
    }

    pub fn stable(&self) -> Option<String> {
        self.status.as_ref()?.current_revision.clone()
    }
}

fn deployed(steps: serde_json::Value, replicas: i32) -> (Sim, String) {
    let mut sim = Sim::new(spec(steps, replicas, "app:v1"));
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Healthy));
    let v1 = sim.revision();
    assert_eq!(sim.stable(), Some(v1.clone()));
    assert_eq!(sim.count(&v1), usize::try_from(replicas).expect("replicas"));
    (sim, v1)
}

#[test]
fn first_deployment_becomes_healthy() {
    let (sim, v1) = deployed(seed_steps(), 4);
    let plan = sim.last.as_ref().expect("plan");
    assert_eq!(plan.scale.get(&v1), Some(&4));
    assert!(plan.services.contains(&("s".into(), v1.clone())));
}

#[test]
fn seed_canary_completes_after_one_approval() {
    let (mut sim, v1) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Paused));
    assert_eq!(sim.paused_reason().as_deref(), Some("PauseDuration"));
    assert_eq!(sim.step(), Some(0));
    assert_eq!(sim.weight(), 10);
    assert_eq!((sim.count(&v2), sim.count(&v1)), (1, 3));
    let requeue = sim
        .last
        .as_ref()
        .map(|p| p.requeue_after)
        .expect("requeue at the pause end");
    assert!(
        requeue <= std::time::Duration::from_secs(300)
            && requeue > std::time::Duration::from_secs(290),
        "{requeue:?}"
    );
    sim.advance(299);
    sim.settle(2);
    assert_eq!(sim.step(), Some(0), "the pause is not over yet");
    sim.advance(2);
    sim.settle(3);
    assert_eq!(sim.step(), Some(1));
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    assert_eq!(sim.weight(), 25);
    sim.annotate(APPROVAL);
    sim.settle(8);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!(sim.stable(), Some(v2.clone()));
    assert_eq!((sim.count(&v2), sim.count(&v1)), (4, 0));
    assert_eq!(sim.weight(), 100);
    assert!(sim.annotations.is_empty());
    let plan = sim.last.as_ref().expect("plan");
    assert!(
        plan.services.contains(&("s".into(), v2.clone()))
            && plan.services.contains(&("c".into(), v2))
    );
}

#[test]
fn approval_when_nothing_waits_is_dropped_not_remembered() {
    let (mut sim, _) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    sim.settle(3);
    assert_eq!(sim.paused_reason().as_deref(), Some("PauseDuration"));
    sim.annotate(APPROVAL);
    sim.tick();
    assert!(sim.annotations.is_empty(), "the annotation is removed");
    assert!(
        sim.notes
            .iter()
            .any(|n| n.warning && n.reason == Reason::ControlIgnored)
    );
    sim.advance(301);
    sim.settle(3);
    assert_eq!(
        sim.paused_reason().as_deref(),
        Some("WaitingForApproval"),
        "the early approval did not count"
    );
}

#[test]
fn an_approval_never_skips_two_gates_even_across_a_crash() {
    let steps = serde_json::json!([
        {"weight": 25, "pause": {"untilApproval": true}},
        {"weight": 50, "pause": {"untilApproval": true}}
    ]);
    let (mut sim, _) = deployed(steps, 4);
    sim.set_image("app:v2");
    sim.settle(3);
    assert_eq!(
        (sim.step(), sim.paused_reason().as_deref()),
        (Some(0), Some("WaitingForApproval"))
    );
    // The controller acts and writes status, then dies before removing the annotation, again and again.
    sim.crash_before_annotation_removal = true;
    sim.annotate(APPROVAL);
    sim.settle(6);
    assert_eq!(sim.step(), Some(1));
    assert_eq!(
        sim.paused_reason().as_deref(),
        Some("WaitingForApproval"),
        "the second gate still waits"
    );
    assert_eq!(
        sim.notes
            .iter()
            .filter(|n| n.reason == Reason::Approved)
            .count(),
        1
    );
    // Once it can remove the annotation, the acknowledgement goes too, and a new approval acts.
    sim.crash_before_annotation_removal = false;
    sim.tick();
    assert!(sim.annotations.is_empty());
    sim.tick();
    let rs = sim
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.as_ref())
        .expect("rs");
    assert!(rs.acknowledged_controls.is_empty());
    sim.annotate(APPROVAL);
    sim.settle(6);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
}

#[test]
fn abort_returns_everything_to_stable_and_retry_restarts() {
    let (mut sim, v1) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(3);
    sim.advance(301);
    sim.settle(3);
    sim.annotate(APPROVAL);
    sim.settle(2);
    assert_eq!(sim.weight(), 50, "at the 50% step");
    sim.annotate(ABORT);
    let plan = sim.tick();
    assert_eq!(sim.phase(), Some(RolloutPhase::Aborted));
    assert_eq!(plan.weight, 0, "traffic goes back at once");
    assert!(
        plan.services.iter().all(|(_, rev)| *rev == v1),
        "{:?}",
        plan.services
    );
    sim.settle(3);
    assert_eq!((sim.count(&v1), sim.count(&v2)), (4, 0));
    assert_eq!(
        sim.phase(),
        Some(RolloutPhase::Aborted),
        "stays aborted while the template differs"
    );
    sim.annotate(RETRY);
    sim.settle(3);
    assert_eq!(sim.step(), Some(0));
    assert_eq!(sim.paused_reason().as_deref(), Some("PauseDuration"));
}

#[test]
fn canary_is_scaled_down_only_when_stable_is_whole() {
    let (mut sim, v1) = deployed(
        serde_json::json!([{"weight": 50, "pause": {"untilApproval": true}}]),
        4,
    );
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(4);
    assert_eq!((sim.count(&v1), sim.count(&v2)), (2, 2));
    sim.annotate(ABORT);
    let plan = sim.tick();
    // Stable has 2 of 4 ready: the canary keeps its RoleSets this round.
    assert_eq!(plan.scale.get(&v1), Some(&4));
    assert_eq!(plan.scale.get(&v2), Some(&2));
    sim.settle(2);
    assert_eq!(sim.count(&v2), 0);
}

#[test]
fn failing_canary_pods_roll_back_automatically() {
    let (mut sim, v1) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.failing.insert(v2.clone());
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Degraded));
    let rs = sim
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.clone())
        .expect("rs");
    let degraded = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("condition");
    assert_eq!(degraded.reason.as_deref(), Some("HealthCheckFailed"));
    assert_eq!(
        sim.last.as_ref().and_then(|p| p.rollback),
        None,
        "reported once, when triggered"
    );
    assert!(
        sim.notes
            .iter()
            .any(|n| n.reason == Reason::HealthCheckFailed)
    );
    sim.settle(3);
    assert_eq!((sim.count(&v1), sim.count(&v2)), (4, 0));
    assert_eq!(sim.weight(), 0);
}

#[test]
fn disabled_auto_rollback_stops_in_place() {
    let mut s = spec(seed_steps(), 4, "app:v1");
    s.rollout_strategy.as_mut().expect("rs").auto_rollback =
        Some(serde_json::from_value(serde_json::json!({"enabled": false})).expect("ar"));
    let mut sim = Sim::new(s);
    sim.settle(3);
    let v1 = sim.revision();
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.failing.insert(v2.clone());
    sim.settle(4);
    assert_eq!(sim.phase(), Some(RolloutPhase::Degraded));
    assert_eq!((sim.count(&v1), sim.count(&v2)), (3, 1), "nothing moves");
    sim.annotate(ABORT);
    sim.settle(4);
    assert_eq!(sim.phase(), Some(RolloutPhase::Aborted));
    assert_eq!((sim.count(&v1), sim.count(&v2)), (4, 0));
}

#[test]
fn error_threshold_counts_the_share_of_failing_pods() {
    let mut s = spec(
        serde_json::json!([{"weight": 50, "pause": {"untilApproval": true}}]),
        4,
        "app:v1",
    );
    s.rollout_strategy.as_mut().expect("rs").auto_rollback = Some(
        serde_json::from_value(serde_json::json!({"onFailure": {"healthCheckFailure": false, "errorThreshold": "40%"}}))
            .expect("ar"),
    );
    let mut sim = Sim::new(s);
    sim.settle(3);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.failing.insert(v2);
    sim.settle(3);
    let rs = sim
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.clone())
        .expect("rs");
    let degraded = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("condition");
    assert_eq!(degraded.reason.as_deref(), Some("ErrorThresholdExceeded"));
}

#[test]
fn stuck_step_hits_the_progress_deadline_excluding_paused_time() {
    let mut s = spec(seed_steps(), 4, "app:v1");
    s.rollout_strategy.as_mut().expect("rs").auto_rollback =
        Some(serde_json::from_value(serde_json::json!({"onTimeout": "10m"})).expect("ar"));
    let mut sim = Sim::new(s);
    sim.settle(3);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.stuck.insert(v2);
    sim.settle(2);
    sim.advance(300);
    sim.tick();
    sim.annotate(PAUSE);
    sim.tick();
    assert_eq!(sim.paused_reason().as_deref(), Some("PausedByUser"));
    sim.advance(3600);
    sim.tick();
    assert_eq!(
        sim.phase(),
        Some(RolloutPhase::Paused),
        "paused time does not count"
    );
    sim.annotate(RESUME);
    sim.tick();
    sim.advance(240);
    sim.tick();
    assert_eq!(
        sim.phase(),
        Some(RolloutPhase::Progressing),
        "9 minutes of progress time so far"
    );
    sim.advance(120);
    sim.tick();
    assert_eq!(sim.phase(), Some(RolloutPhase::Degraded));
    let rs = sim
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.clone())
        .expect("rs");
    let degraded = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("condition");
    assert_eq!(degraded.reason.as_deref(), Some("ProgressDeadlineExceeded"));
}

#[test]
fn reverting_the_template_is_a_rollback_to_healthy() {
    let (mut sim, v1) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    sim.settle(3);
    sim.set_image("app:v1");
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Healthy));
    assert_eq!(sim.count(&v1), 4);
    assert_eq!(sim.rolesets.len(), 4);
}

#[test]
fn an_edited_step_starts_over() {
    let (mut sim, _) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    sim.settle(2);
    sim.advance(200);
    sim.tick();
    // 200 s into a 5 m pause, the user makes it 4 m: the pause restarts from now.
    let steps = &mut canary_of(&mut sim.spec).steps;
    steps[0].pause.as_mut().expect("pause").duration = Some("4m".into());
    sim.tick();
    sim.advance(200);
    sim.tick();
    assert_eq!(sim.step(), Some(0));
    sim.advance(41);
    sim.settle(2);
    assert_eq!(sim.step(), Some(1));
}

#[test]
fn replaying_an_observation_changes_nothing() {
    let (mut sim, _) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    for _ in 0..6 {
        sim.tick();
        let first = sim.decide_once();
        let mut again = Sim::new(sim.spec.clone());
        again.status = Some(first.status.clone());
        again.rolesets = sim.rolesets.clone();
        again.now = sim.now;
        again.annotations = sim.annotations.clone();
        let second = again.decide_once();
        assert_eq!(first.status, second.status);
        assert_eq!(first.scale, second.scale);
        assert_eq!(first.services, second.services);
        assert!(second.notes.is_empty(), "{:?}", second.notes);
        sim.advance(120);
    }
}

#[test]
fn plain_rolling_update_respects_budgets() {
    let mut s = spec(serde_json::json!([]), 4, "app:v1");
    s.rollout_strategy = None;
    s.update_strategy = Some(
        serde_json::from_value(serde_json::json!({"maxSurge": 1, "maxUnavailable": 0}))
            .expect("us"),
    );
    let mut sim = Sim::new(s);
    sim.settle(3);
    let v1 = sim.revision();
    sim.set_image("app:v2");
    let v2 = sim.revision();
    for _ in 0..20 {
        sim.tick();
        let ready = sim.rolesets.iter().filter(|r| r.ready).count();
        assert!(sim.rolesets.len() <= 5, "surge of 1");
        assert!(
            ready >= 4 || sim.count(&v2) < 2,
            "never below 4 ready once moving: {:?}",
            sim.rolesets
        );
    }
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!((sim.count(&v1), sim.count(&v2)), (0, 4));
}

mod properties;

#[test]
fn waiting_out_a_pause_does_not_rewrite_the_status() {
    let (mut sim, _) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    sim.settle(3);
    assert_eq!(sim.paused_reason().as_deref(), Some("PauseDuration"));
    let before = sim.decide_once().status;
    sim.advance(60);
    let after = sim.decide_once().status;
    assert_eq!(
        before, after,
        "a countdown in the status would rewrite it on every reconcile"
    );
}

#[test]
fn an_abort_is_counted_with_the_rollbacks() {
    let (mut sim, _) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    sim.settle(2);
    sim.annotate(ABORT);
    let plan = sim.tick();
    assert_eq!(plan.rollback, Some(Reason::Aborted));
}

#[test]
fn an_approval_gate_is_shown_before_the_analysis_of_the_same_step() {
    // The seed's step 1: a pause until approval and an analysis together.
    let steps = serde_json::json!([
        {"weight": 25, "pause": {"untilApproval": true}, "analysis": {"templates": [{"name": "success-rate-check"}]}}
    ]);
    let (mut sim, _) = deployed(steps, 4);
    sim.set_image("app:v2");
    sim.settle(3);
    assert_eq!(sim.paused_reason().as_deref(), Some("WaitingForApproval"));
    assert_eq!(
        sim.runs(),
        vec![("step-0".to_string(), AnalysisPhase::Running)],
        "the analysis runs alongside the pause"
    );
    sim.annotate(APPROVAL);
    sim.settle(2);
    assert_eq!(
        sim.notes
            .iter()
            .filter(|n| n.reason == Reason::Approved)
            .count(),
        1
    );
    assert_eq!(sim.phase(), Some(RolloutPhase::Progressing));
    assert_eq!(
        sim.progress_reason().as_deref(),
        Some("AnalysisRunning"),
        "then the analysis is what it waits for"
    );
    assert_eq!(sim.step(), Some(0));
    sim.verdicts
        .insert("step-0".into(), AnalysisPhase::Successful);
    sim.settle(8);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
}

mod analysis;
mod bluegreen;
mod routers;

/// Sets role `r`'s replicas in the template, as AIBrix's autoscaler does.
fn scale_role(sim: &mut Sim, replicas: i32) {
    sim.spec.template.spec.as_mut().expect("spec").roles[0].replicas = Some(replicas);
}

#[test]
fn scaling_a_role_resizes_the_rolesets_in_place_and_is_never_a_revision() {
    let mut sim = Sim::new(spec(seed_steps(), 3, "app:v1"));
    sim.settle(3);
    let v1 = sim.revision();
    assert_eq!(sim.count(&v1), 3);
    scale_role(&mut sim, 4);
    assert_eq!(sim.revision(), v1, "replicas are not part of the revision");
    let plan = sim.tick();
    assert_eq!(
        plan.scale,
        BTreeMap::from([(v1.clone(), 3)]),
        "no new RoleSet"
    );
    assert_eq!(
        plan.resize.len(),
        3,
        "every RoleSet resized: {:?}",
        plan.resize
    );
    assert!(
        plan.resize
            .values()
            .all(|c| *c == BTreeMap::from([("r".to_string(), 4)]))
    );
    let rs = plan.status.rollout_status.as_ref().expect("rs");
    assert_eq!(rs.phase, Some(RolloutPhase::Healthy), "no rollout started");
    // Resized: nothing more to do.
    assert!(sim.tick().resize.is_empty());
}

#[test]
fn a_role_scales_while_spec_paused_and_during_a_rollout() {
    let mut sim = Sim::new(spec(seed_steps(), 2, "app:v1"));
    sim.settle(3);
    let v1 = sim.revision();
    sim.spec.paused = Some(true);
    scale_role(&mut sim, 2);
    let plan = sim.tick();
    assert_eq!(
        plan.resize.len(),
        2,
        "spec.paused freezes rollouts, not scaling"
    );
    sim.spec.paused = None;
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(2);
    assert!(sim.count(&v2) >= 1, "the canary runs");
    scale_role(&mut sim, 5);
    assert_eq!(sim.revision(), v2);
    let plan = sim.tick();
    // Both revisions' RoleSets are resized: scaling is not part of either.
    let revisions: BTreeSet<&str> = plan
        .resize
        .keys()
        .filter_map(|n| n.strip_prefix("svc-"))
        .filter_map(|n| n.rsplit_once('-').map(|(r, _)| r))
        .collect();
    assert!(
        revisions.contains(v1.as_str()) && revisions.contains(v2.as_str()),
        "{revisions:?}"
    );
}

#[test]
fn in_place_update_keeps_every_roleset_and_completes_when_they_run_the_new_template() {
    let mut s = spec(seed_steps(), 3, "app:v1");
    s.rollout_strategy = None;
    s.update_strategy = Some(
        serde_json::from_value(serde_json::json!({"type": "InPlaceUpdate"})).expect("strategy"),
    );
    let mut sim = Sim::new(s);
    sim.settle(3);
    let v1 = sim.revision();
    let names: BTreeSet<String> = sim.rolesets.iter().map(|r| r.name.clone()).collect();
    sim.set_image("app:v2");
    let v2 = sim.revision();
    let plan = sim.tick();
    // maxUnavailable 25% of 3 rounds down to 0, and one RoleSet at a time may update.
    assert_eq!(
        plan.retemplate,
        ["svc-".to_string() + &v1 + "-2"],
        "highest slot first"
    );
    assert_eq!(
        plan.scale,
        BTreeMap::from([(v1.clone(), 2), (v2.clone(), 1)])
    );
    assert_eq!((sim.count(&v2), sim.count(&v1)), (1, 2));
    let rs = plan.status.rollout_status.as_ref().expect("rs");
    assert_eq!(rs.phase, Some(RolloutPhase::Progressing));
    // The next one only once the first is updated and Ready.
    let mut seen = 0;
    while sim.count(&v1) > 0 && seen < 10 {
        let plan = sim.tick();
        let updating = sim
            .rolesets
            .iter()
            .filter(|r| r.revision == v2 && !r.ready)
            .count();
        assert!(
            updating <= 1,
            "{updating} RoleSets updating at once: {plan:?}"
        );
        seen += 1;
    }
    assert_eq!(sim.count(&v2), 3);
    let now: BTreeSet<String> = sim.rolesets.iter().map(|r| r.name.clone()).collect();
    assert_eq!(now, names, "no RoleSet created or deleted");
    sim.settle(2);
    let rs = sim
        .last
        .as_ref()
        .and_then(|p| p.status.rollout_status.clone())
        .expect("rs");
    assert_eq!(rs.phase, Some(RolloutPhase::Completed));
    assert_eq!(sim.stable(), Some(v2));
    assert!(sim.last.as_ref().expect("plan").retemplate.is_empty());
}

#[test]
fn a_retry_after_an_abort_keeps_the_canary_stable_cannot_replace_yet() {
    // Found by the availability property: an abort grows stable back (new RoleSets, unready), a
    // retry restarts at step 0 (one canary RoleSet), and the plan used to drop two ready canary
    // RoleSets at once, leaving 3 of 5 ready where maxUnavailable allows 1.
    let mut sim = Sim::new(spec(seed_steps(), 5, "app:v1"));
    sim.settle(3);
    sim.set_image("app:v2");
    // The property's shrunk case: each control, then one decision.
    sim.tick();
    sim.tick();
    sim.tick();
    sim.advance(300);
    sim.tick();
    sim.annotate(RETRY);
    sim.tick();
    sim.tick();
    sim.annotate(APPROVAL);
    sim.tick();
    sim.annotate(ABORT);
    sim.tick();
    sim.annotate(RETRY);
    let before: Vec<(String, bool)> = sim
        .rolesets
        .iter()
        .map(|r| (r.name.clone(), r.ready))
        .collect();
    let plan = sim.tick();
    let ready_before = before.iter().filter(|(_, ok)| *ok).count();
    let kept_ready = before
        .iter()
        .filter(|(n, ok)| *ok && !plan.delete.contains(n))
        .count();
    assert_eq!(ready_before, 5, "the scenario: {before:?}");
    assert!(
        kept_ready >= 4,
        "{kept_ready} of {ready_before} ready RoleSets kept; deleted {:?}",
        plan.delete
    );
}

#[test]
fn promote_full_skips_the_steps_left_capacity_still_before_traffic() {
    let (mut sim, v1) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    let v2 = sim.revision();
    sim.settle(3);
    assert_eq!(sim.paused_reason().as_deref(), Some("PauseDuration"));
    assert_eq!(sim.weight(), 10);
    sim.annotate(PROMOTE_FULL);
    sim.tick();
    assert!(sim.annotations.is_empty(), "acted on once, then removed");
    assert_eq!(
        sim.service("s"),
        Some(v1.clone()),
        "the stable Service stays on stable until the canary has all its capacity"
    );
    assert!(
        sim.notes.iter().any(|n| n.reason == Reason::PromotedFull),
        "{:?}",
        sim.notes
    );
    // No pause, approval or analysis stops it now.
    sim.settle(8);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
    assert_eq!(sim.stable(), Some(v2.clone()));
    assert_eq!((sim.count(&v2), sim.count(&v1)), (4, 0));
    assert_eq!(sim.weight(), 100);
    // The next rollout has its steps again.
    sim.set_image("app:v3");
    sim.settle(3);
    assert_eq!(sim.step(), Some(0));
    assert_eq!(sim.paused_reason().as_deref(), Some("PauseDuration"));
}

#[test]
fn promote_full_is_refused_on_an_aborted_rollout_and_ends_a_user_pause() {
    let (mut sim, v1) = deployed(seed_steps(), 4);
    sim.set_image("app:v2");
    sim.settle(3);
    sim.annotate(ABORT);
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Aborted));
    sim.annotate(PROMOTE_FULL);
    sim.settle(3);
    assert_eq!(sim.phase(), Some(RolloutPhase::Aborted), "not promoted");
    assert_eq!(sim.stable(), Some(v1));
    assert!(
        sim.notes
            .iter()
            .any(|n| n.warning && n.reason == Reason::ControlIgnored)
    );
    sim.annotate(RETRY);
    sim.settle(3);
    sim.annotate(PAUSE);
    sim.settle(2);
    assert_eq!(sim.paused_reason().as_deref(), Some("PausedByUser"));
    sim.annotate(PROMOTE_FULL);
    sim.settle(8);
    assert_eq!(sim.phase(), Some(RolloutPhase::Completed));
}
