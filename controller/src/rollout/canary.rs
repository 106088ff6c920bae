//! Canary rollouts: weight and replica steps, pauses, approvals, analysis steps and promotion.
//!
//! One decision walks the steps from the current one: each step first gets its capacity, then its
//! traffic, then waits at its gates (pause, approval, analysis), then completes, and the next step
//! starts in the same decision when nothing holds it. What stops a rollout (abort, rollback, halt,
//! the deadline) is shared with blue-green in `lifecycle.rs`.

use super::Machine;
use super::controls::{Controls, ignore};
use super::drain;
use super::dynamic;
use super::gates::{self, Gate};
use super::lifecycle::{self, Steer};
use super::revision;
use super::settings::{AutoRollback, auto_rollback, budgets};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use std::collections::BTreeMap;
use storm_shared::keys::ANNOTATION_APPROVAL;
use storm_shared::status::{ConditionType as Cond, Reason, condition_reason};
use storm_shared::types::stormservice::{
    CanaryStep, CanaryStrategy, RolloutPhase, ScaleDownReason,
};
use storm_shared::units::parse_duration;

/// Where a step wants the canary: RoleSets and traffic weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub canary: i32,
    pub weight: i32,
}

/// The target of step `idx`: the last weight or replica count set at or before it. Past the last
/// step: everything on the canary.
pub fn target(steps: &[CanaryStep], idx: usize, replicas: i32, router: bool) -> Target {
    if idx >= steps.len() {
        return Target {
            canary: replicas,
            weight: 100,
        };
    }
    let mut t = Target {
        canary: 0,
        weight: 0,
    };
    for step in &steps[..=idx] {
        if let Some(w) = step.weight {
            let w = w.clamp(0, 100);
            let mut canary = (i64::from(replicas) * i64::from(w)).div_euclid(100);
            if (i64::from(replicas) * i64::from(w)) % 100 != 0 {
                canary += 1;
            }
            let canary = i32::try_from(canary).unwrap_or(replicas).min(replicas);
            // With a router, any weight above zero needs a canary to send it to.
            let canary = if router && w > 0 {
                canary.max(1)
            } else {
                canary
            };
            t = Target { canary, weight: w };
        } else if let Some(n) = step.replicas {
            let n = n.clamp(0, replicas);
            let weight = if router || replicas == 0 {
                t.weight
            } else {
                n * 100 / replicas
            };
            t = Target { canary: n, weight };
        }
    }
    t
}

pub(crate) fn run(m: &mut Machine, stable: &str, canary: &CanaryStrategy, controls: Controls) {
    let ar = auto_rollback(m.input.spec);
    match lifecycle::steer(m, stable, controls) {
        Steer::RolledBack => lifecycle::hold_on_stable(m, stable),
        Steer::Halted => lifecycle::hold_in_place(m, stable),
        Steer::Run { approval } => {
            drain::forget(m, &m.update.clone());
            progress(m, stable, canary, &ar, approval)
        }
    }
}

/// A running canary: failures first, then the steps from the current one, as far as they go.
fn progress(
    m: &mut Machine,
    stable: &str,
    canary: &CanaryStrategy,
    ar: &AutoRollback,
    approval: bool,
) {
    if let Some((why, detail)) = lifecycle::failure(m, ar) {
        lifecycle::fail(m, stable, ar.enabled, why, detail);
        return;
    }
    skip_steps_if_promoted_in_full(m, canary);
    let mut approval = Approval::new(m, approval);
    // One pass per step at most: steps that are already satisfied complete in the same decision.
    for _ in 0..=canary.steps.len() + 1 {
        let idx = current_step(m);
        restart_if_edited(m, &canary.steps, idx);
        let at = Position::of(m, stable, canary, idx);
        let stable_target = capacity(m, stable, canary, &at);
        let weight = traffic(m, canary, &at);
        if lifecycle::paused_by_user(m) {
            m.set_phase(
                RolloutPhase::Paused,
                format!("paused by the user at step {idx}"),
            );
            break;
        }
        let in_place = at.in_place(m, stable_target, weight);
        if at.promoting {
            promote(m, stable, ar, &at, in_place);
            break;
        }
        if !in_place.reached() {
            wait_for_step(m, stable, ar, &at, stable_target, weight, in_place);
            break;
        }
        if !pass_gates(m, stable, ar, &canary.steps[idx], &at, &mut approval) {
            break;
        }
        advance(m, idx);
    }
    approval.drop_unused(m);
}

/// A full promotion (`promote --full`) skips the steps left: the rollout goes to its promotion,
/// which still brings the canary to full capacity before it takes all traffic. The analyses of the
/// skipped steps stop; a background analysis keeps guarding until completion.
fn skip_steps_if_promoted_in_full(m: &mut Machine, canary: &CanaryStrategy) {
    let idx = current_step(m);
    if m.rs.promote_full != Some(true) || idx >= canary.steps.len() {
        return;
    }
    for skipped in idx..canary.steps.len() {
        gates::restart(m, &gates::step(skipped));
    }
    let last = i32::try_from(canary.steps.len()).unwrap_or(i32::MAX);
    m.rs.current_step_index = Some(last);
    m.rs.current_step_hash = None;
    m.rs.pause_start_time = None;
    m.rs.approved_step = None;
    m.rs.step_start_time = Some(Time(m.now));
    let msg = format!(
        "promoted in full: steps {idx} to {} skipped",
        canary.steps.len() - 1
    );
    m.cond(Cond::Progressing, true, Reason::PromotedFull, &msg);
    m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
}

/// The current step's index (0 before the first decision of a rollout).
fn current_step(m: &Machine) -> usize {
    m.rs.current_step_index
        .and_then(|i| usize::try_from(i).ok())
        .unwrap_or(0)
}

/// A step edited mid-rollout starts over: its pause, approval and analysis begin again.
fn restart_if_edited(m: &mut Machine, steps: &[CanaryStep], idx: usize) {
    let Some(step) = steps.get(idx) else {
        m.rs.current_step_hash = None;
        return;
    };
    let hash = revision::of_step(step);
    if m.rs.current_step_hash.as_deref() == Some(hash.as_str()) {
        return;
    }
    if m.rs.current_step_hash.is_some() {
        // A given approval no longer counts.
        m.rs.pause_start_time = None;
        m.rs.approved_step = None;
        m.rs.step_start_time = Some(Time(m.now));
        gates::restart(m, &gates::step(idx));
        m.note(
            false,
            Reason::StepChanged,
            format!("step {idx} changed: it starts over"),
        );
    }
    m.rs.current_step_hash = Some(hash);
}

/// Where the rollout stands at one step: what the step wants and what exists.
struct Position {
    idx: usize,
    target: Target,
    /// Past the last step: the canary becomes the whole service.
    promoting: bool,
    router: bool,
    /// `dynamicStableScale` with a router: stable shrinks as the canary's traffic grows.
    dynamic: bool,
    replicas: i32,
    canary_existing: i32,
    canary_ready: i32,
    stable_existing: i32,
    stable_ready: i32,
    /// RoleSets of other revisions (a canary the template moved on from mid-rollout), by
    /// revision: (existing, ready).
    others: BTreeMap<String, (i32, i32)>,
}

impl Position {
    fn of(m: &Machine, stable: &str, canary: &CanaryStrategy, idx: usize) -> Self {
        let router = canary.traffic_routing.is_some();
        let obs = m.input.observed;
        Self {
            idx,
            target: target(&canary.steps, idx, m.replicas, router),
            promoting: idx >= canary.steps.len(),
            router,
            dynamic: canary.dynamic_stable_scale(),
            replicas: m.replicas,
            canary_existing: obs.existing(&m.update),
            canary_ready: obs.ready(&m.update),
            stable_existing: obs.existing(stable),
            stable_ready: obs.ready(stable),
            others: obs
                .revisions()
                .into_iter()
                .filter(|r| r != stable && *r != m.update)
                .map(|r| {
                    let counts = (obs.existing(&r), obs.ready(&r));
                    (r, counts)
                })
                .collect(),
        }
    }

    /// The position as `dynamicStableScale` reads it.
    fn dynamic_now(&self, m: &Machine, canary: &CanaryStrategy) -> dynamic::Now {
        let (surge, unavailable) = budgets(m.input.spec, Some(canary), self.replicas);
        dynamic::Now {
            replicas: self.replicas,
            target_weight: self.target.weight,
            target_canary: self.target.canary,
            canary_existing: self.canary_existing,
            canary_ready: self.canary_ready,
            stable_existing: self.stable_existing,
            stable_ready: self.stable_ready,
            others_existing: self.others.values().map(|(existing, _)| existing).sum(),
            reported: m.input.observed.router_weight,
            surge,
            unavailable,
        }
    }

    /// Whether the step's capacity and traffic are in place.
    fn in_place(&self, m: &Machine, stable_target: i32, weight: i32) -> InPlace {
        let t = self.target;
        let stable_wanted = if self.promoting { 0 } else { stable_target };
        // With a drain delay, a promotion completes with stable still there: it drains after.
        let drains = self.promoting
            && drain::delay(m, ScaleDownReason::Promoted) > k8s_openapi::jiff::SignedDuration::ZERO;
        InPlace {
            capacity: self.canary_ready >= t.canary
                && self.canary_existing == t.canary
                && (self.stable_existing == stable_wanted || drains),
            routed: !self.router || m.input.observed.router_weight == Some(weight),
        }
    }
}

/// Whether a step's capacity and traffic are where it wants them.
#[derive(Clone, Copy)]
struct InPlace {
    capacity: bool,
    routed: bool,
}

impl InPlace {
    fn reached(self) -> bool {
        self.capacity && self.routed
    }
}

/// Capacity: the RoleSets each revision should have at this step. Returns stable's target.
///
/// With a router, stable stays at full size until promotion, and goes only once the router reports
/// all traffic on the canary; with `dynamicStableScale` it shrinks as the canary's traffic grows
/// ([`dynamic`]). Without one, the canary grows within the surge budget and stable
/// shrinks as far as availability allows.
fn capacity(m: &mut Machine, stable: &str, canary: &CanaryStrategy, at: &Position) -> i32 {
    let replicas = at.replicas;
    let t = at.target;
    let (canary_now, stable_target) = if at.dynamic {
        let now = at.dynamic_now(m, canary);
        dynamic::capacity(&now, dynamic::weight(&now))
    } else if at.router {
        let stable_target = if at.promoting
            && at.canary_ready >= replicas
            && m.input.observed.router_weight == Some(100)
        {
            0
        } else {
            replicas
        };
        (t.canary, stable_target)
    } else {
        let (surge, unavailable) = budgets(m.input.spec, Some(canary), replicas);
        let min_available = replicas - unavailable;
        // A canary the template moved on from mid-rollout may carry the service: its ready
        // RoleSets go only as stable and the new canary make up for them (availability first),
        // its unready ones at once. Until they go they count against the surge budget.
        let mut others_needed = (min_available - at.stable_ready - at.canary_ready).max(0);
        let mut others_kept = 0;
        for (rev, (_, ready)) in &at.others {
            let keep = (*ready).min(others_needed);
            others_needed -= keep;
            others_kept += keep;
            m.scale.insert(rev.clone(), keep);
        }
        let canary_now = t.canary.min(
            at.canary_existing
                .max(replicas + surge - at.stable_existing - others_kept),
        );
        // A canary that shrinks (a retry after an abort restarts at a smaller step) keeps the
        // ready RoleSets that stable cannot make up for yet: availability first.
        let canary_floor = at.canary_ready.min(min_available - at.stable_ready).max(0);
        let canary_now = canary_now.max(canary_floor.min(at.canary_existing));
        // Only canary RoleSets that stay make up for stable: one this plan scales down (a retry
        // after an abort restarts at a smaller step) serves nobody once it is gone.
        let canary_ready_kept = at.canary_ready.min(canary_now);
        let stable_target = (replicas - t.canary)
            .max(min_available - canary_ready_kept - others_kept)
            .clamp(0, replicas);
        (canary_now, stable_target)
    };
    let update = m.update.clone();
    m.scale.insert(update.clone(), canary_now);
    m.scale.insert(stable.to_string(), stable_target);
    m.pin_services(stable, &update);
    stable_target
}

/// Traffic: the canary's weight at this step, for the routers and the status.
///
/// With a router the canary gets a step's traffic only once it has the step's capacity; until
/// then it keeps the previous step's share (or less, when the step lowers it). At promotion all
/// traffic moves once the canary is at full size, and once moved it stays (stable may be gone).
fn traffic(m: &mut Machine, canary: &CanaryStrategy, at: &Position) -> i32 {
    let t = at.target;
    let reported = m.input.observed.router_weight;
    let weight = if !at.router {
        t.weight
    } else if at.dynamic {
        dynamic::weight(&at.dynamic_now(m, canary))
    } else if at.promoting {
        if at.canary_ready >= at.replicas || reported == Some(100) {
            100
        } else {
            last_weight(&canary.steps)
        }
    } else if at.canary_ready >= t.canary && at.canary_existing == t.canary {
        t.weight
    } else {
        let previous = at.idx.checked_sub(1).map_or(0, |i| {
            target(&canary.steps, i, at.replicas, at.router).weight
        });
        t.weight.min(previous)
    };
    m.weight = weight;
    m.status_weight = Some(weight);
    weight
}

/// Past the last step: complete once the canary is the whole service, else wait for it.
fn promote(m: &mut Machine, stable: &str, ar: &AutoRollback, at: &Position, in_place: InPlace) {
    if in_place.reached() {
        complete(m);
        return;
    }
    let msg = format!(
        "promoting revision {}: {} of {} RoleSets ready",
        m.update, at.canary_ready, at.replicas
    );
    m.set_phase(RolloutPhase::Progressing, msg.clone());
    m.cond(Cond::Progressing, true, Reason::Promoting, &msg);
    m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
    lifecycle::deadline(m, stable, ar);
}

/// The step's capacity or traffic is not in place yet: say which, and watch the deadline.
fn wait_for_step(
    m: &mut Machine,
    stable: &str,
    ar: &AutoRollback,
    at: &Position,
    stable_target: i32,
    weight: i32,
    in_place: InPlace,
) {
    let idx = at.idx;
    if was_reached(m, idx) {
        // The step was reached and is lost again: the deadline counts from now, not from when
        // the step began (its pause or approval wait is not "no progress").
        m.rs.step_start_time = Some(Time(m.now));
    }
    let (why, msg) = if in_place.capacity {
        (
            Reason::WaitingForRouter,
            format!(
                "step {idx}: waiting for the traffic router to report weight {weight} (it reports {})",
                m.input
                    .observed
                    .router_weight
                    .map_or_else(|| "nothing yet".to_string(), |w| w.to_string())
            ),
        )
    } else {
        (
            Reason::StepProgressing,
            format!(
                "step {idx}: waiting for the canary ({} of {} RoleSets ready, stable at {} of {stable_target})",
                at.canary_ready, at.target.canary, at.stable_existing
            ),
        )
    };
    m.set_phase(RolloutPhase::Progressing, msg.clone());
    m.cond(Cond::Progressing, true, why, &msg);
    m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
    lifecycle::deadline(m, stable, ar);
}

/// An approval that arrived with this decision, usable once, by the step that was waiting for it.
struct Approval {
    left: bool,
    /// The step the previous decision left waiting for approval.
    approvable: Option<usize>,
}

impl Approval {
    fn new(m: &Machine, arrived: bool) -> Self {
        let approvable =
            m.rs.current_step_index
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| was_waiting_for_approval(m, *i));
        Self {
            left: arrived,
            approvable,
        }
    }

    /// Uses the approval for step `idx`, if it can approve it.
    fn take(&mut self, idx: usize) -> bool {
        let usable = self.left && self.approvable == Some(idx);
        if usable {
            self.left = false;
        }
        usable
    }

    /// An approval nothing used is dropped with a Warning event.
    fn drop_unused(self, m: &mut Machine) {
        if self.left {
            ignore(m, ANNOTATION_APPROVAL, "nothing was waiting for approval");
        }
    }
}

/// The reached step's gates: its pause (a duration or an approval) and its analysis run together.
/// True when every gate is passed; otherwise the rollout waits (or failed) and the walk stops.
fn pass_gates(
    m: &mut Machine,
    stable: &str,
    ar: &AutoRollback,
    step: &CanaryStep,
    at: &Position,
    approval: &mut Approval,
) -> bool {
    let idx = at.idx;
    m.cond(
        Cond::Progressing,
        true,
        Reason::StepReached,
        &format!(
            "step {idx} reached: canary at weight {} with {} RoleSets ready",
            at.target.weight, at.target.canary
        ),
    );
    let mut waiting = pause_gate(m, step, idx, approval);
    // An approval that is still due is shown first: it is the gate a person can act on; then an
    // inconclusive analysis, then a running one.
    if step.analysis.is_some() {
        match gates::gate(m, &gates::step(idx)) {
            Gate::Passed => {}
            Gate::Failed(detail) => {
                lifecycle::analysis_failed(m, stable, ar, detail);
                return false;
            }
            Gate::Inconclusive(msg) => {
                if waiting
                    .as_ref()
                    .is_none_or(|(w, _)| *w != Reason::WaitingForApproval)
                {
                    waiting = Some((Reason::AnalysisInconclusive, format!("step {idx}: {msg}")));
                }
            }
            Gate::Running(msg) => {
                if waiting.is_none() {
                    waiting = Some((Reason::AnalysisRunning, format!("step {idx}: {msg}")));
                }
            }
        }
    }
    match waiting {
        Some((why, msg)) => {
            lifecycle::wait_at(m, why, msg);
            false
        }
        None => true,
    }
}

/// The step's pause: what it still waits for (an approval, or the rest of a duration).
fn pause_gate(
    m: &mut Machine,
    step: &CanaryStep,
    idx: usize,
    approval: &mut Approval,
) -> Option<(Reason, String)> {
    let pause = step.pause.as_ref()?;
    let idx_i32 = i32::try_from(idx).unwrap_or(i32::MAX);
    if pause.until_approval == Some(true) {
        if m.rs.approved_step == Some(idx_i32) {
            return None;
        }
        if approval.take(idx) {
            m.rs.approved_step = Some(idx_i32);
            m.cond(
                Cond::Paused,
                false,
                Reason::Approved,
                &format!("step {idx} approved"),
            );
            m.note(false, Reason::Approved, format!("step {idx} approved"));
            return None;
        }
        return Some((
            Reason::WaitingForApproval,
            format!("step {idx}: waiting for approval (annotate {ANNOTATION_APPROVAL}=true)"),
        ));
    }
    let d = pause
        .duration
        .as_deref()
        .and_then(|d| parse_duration(d).ok())?;
    let start = m.rs.pause_start_time.get_or_insert(Time(m.now)).0;
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    let elapsed = m.now.duration_since(start);
    if elapsed >= d {
        return None;
    }
    m.requeue_in(std::time::Duration::try_from(d - elapsed).unwrap_or_default());
    // The end time, not a countdown: the message stays the same on every reconcile, so the status
    // is written once per pause.
    let until = (start + d).strftime("%Y-%m-%dT%H:%M:%SZ");
    let text = pause.duration.as_deref().unwrap_or("");
    Some((
        Reason::PauseDuration,
        format!("step {idx}: pausing {text}, until {until}"),
    ))
}

/// Step `idx` is complete: the next one starts.
fn advance(m: &mut Machine, idx: usize) {
    let idx_i32 = i32::try_from(idx).unwrap_or(i32::MAX);
    let msg = format!("Step {idx} completed successfully");
    m.rs.current_step_index = Some(idx_i32 + 1);
    m.rs.current_step_hash = None;
    m.rs.pause_start_time = None;
    m.rs.approved_step = None;
    m.rs.step_start_time = Some(Time(m.now));
    m.cond(Cond::Progressing, true, Reason::StepComplete, &msg);
    m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
    m.note(false, Reason::StepComplete, msg);
}

/// The rollout completed: Services and routers on the new revision with all traffic.
fn complete(m: &mut Machine) {
    lifecycle::complete(m);
    let update = m.update.clone();
    for rev in m.input.observed.revisions() {
        if rev != update {
            drain::schedule(m, &rev, ScaleDownReason::Promoted);
        }
    }
    drain::keep_due(m, &update);
    m.pin_services(&update, &update);
    m.weight = 100;
    m.status_weight = Some(100);
}

/// Whether the previous decision had step `idx` reached (its pause, approval or analysis running).
fn was_reached(m: &Machine, idx: usize) -> bool {
    let Some(prev) = m.input.status.and_then(|s| s.rollout_status.as_ref()) else {
        return false;
    };
    prev.current_step_index
        .and_then(|i| usize::try_from(i).ok())
        == Some(idx)
        && matches!(
            condition_reason(&prev.conditions, Cond::Progressing),
            Some(Reason::StepReached | Reason::AnalysisRunning)
        )
}

/// Whether the previous decision left the rollout waiting for approval at `idx`.
fn was_waiting_for_approval(m: &Machine, idx: usize) -> bool {
    let Some(prev) = m.input.status.and_then(|s| s.rollout_status.as_ref()) else {
        return false;
    };
    prev.waiting_for_approval()
        && prev
            .current_step_index
            .and_then(|i| usize::try_from(i).ok())
            == Some(idx)
}

fn last_weight(steps: &[CanaryStep]) -> i32 {
    steps.iter().rev().find_map(|s| s.weight).unwrap_or(0)
}
