//! Canary rollouts: weight and replica steps, pauses, approvals, promotion, abort and rollback.

use super::Machine;
use super::controls::{Controls, ignore};
use super::gates::{self, Gate};
use super::health;
use super::plan::{cond, condition_reason, condition_true, reason};
use super::revision;
use super::settings::{AutoRollback, auto_rollback, budgets};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use storm_shared::keys::{
    ANNOTATION_APPROVAL, ANNOTATION_PAUSE, ANNOTATION_RESUME, ANNOTATION_RETRY,
};
use storm_shared::types::stormservice::{CanaryStep, CanaryStrategy, RolloutPhase};
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

/// Whether the rollout is held by the pause annotation.
pub(crate) fn paused_by_user(m: &Machine) -> bool {
    condition_true(&m.rs, cond::PAUSED)
        .is_some_and(|c| c.reason.as_deref() == Some(reason::PAUSED_BY_USER))
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
            condition_reason(prev, cond::PROGRESSING),
            Some(reason::STEP_REACHED | reason::ANALYSIS_RUNNING)
        )
}

/// Whether the previous decision left the rollout waiting for approval at `idx`.
fn was_waiting_for_approval(m: &Machine, idx: usize) -> bool {
    let Some(prev) = m.input.status.and_then(|s| s.rollout_status.as_ref()) else {
        return false;
    };
    prev.phase == Some(RolloutPhase::Paused)
        && prev
            .current_step_index
            .and_then(|i| usize::try_from(i).ok())
            == Some(idx)
        && condition_true(prev, cond::PAUSED).and_then(|c| c.reason.as_deref())
            == Some(reason::WAITING_FOR_APPROVAL)
}

pub(crate) fn run(m: &mut Machine, stable: &str, canary: &CanaryStrategy, controls: Controls) {
    let ar = auto_rollback(m.input.spec);
    match steer(m, stable, controls) {
        Steer::RolledBack => hold_on_stable(m, stable),
        Steer::Halted => hold_in_place(m, stable),
        Steer::Run { approval } => progress(m, stable, canary, &ar, approval),
    }
}

/// Where a rollout stands once the manual controls have acted.
pub(crate) enum Steer {
    /// Aborted or rolled back: everything stays on stable.
    RolledBack,
    /// Stopped in place after a failure (autoRollback disabled).
    Halted,
    /// Running; `approval` is an approval still to be used by a gate.
    Run { approval: bool },
}

/// The controls every strategy shares: an abort (the other controls that arrived with it are
/// dropped), else retry, pause and resume; then an approval that cannot act is dropped.
pub(crate) fn steer(m: &mut Machine, stable: &str, controls: Controls) -> Steer {
    let mut approval = controls.approval;
    if controls.abort {
        if m.phase() != Some(RolloutPhase::Aborted) {
            abort(m, stable);
        }
        for (set, key) in [
            (controls.retry, ANNOTATION_RETRY),
            (controls.pause, ANNOTATION_PAUSE),
            (controls.resume, ANNOTATION_RESUME),
            (controls.approval, ANNOTATION_APPROVAL),
        ] {
            if set {
                ignore(m, key, "the rollout was aborted at the same time");
            }
        }
        approval = false;
    } else {
        apply_controls(m, controls);
    }
    let rolled_back = matches!(m.phase(), Some(RolloutPhase::Aborted))
        || (m.phase() == Some(RolloutPhase::Degraded)
            && condition_reason(&m.rs, cond::PROGRESSING) != Some(reason::HALTED));
    if rolled_back {
        if approval {
            ignore(
                m,
                ANNOTATION_APPROVAL,
                "the rollout is not running (aborted or rolled back)",
            );
        }
        return Steer::RolledBack;
    }
    if m.phase() == Some(RolloutPhase::Degraded) {
        if approval {
            ignore(
                m,
                ANNOTATION_APPROVAL,
                "the rollout is stopped after a failure; resume, retry or abort it",
            );
        }
        return Steer::Halted;
    }
    Steer::Run { approval }
}

pub(crate) fn apply_controls(m: &mut Machine, c: Controls) {
    let phase = m.phase();
    if c.retry {
        if matches!(phase, Some(RolloutPhase::Aborted | RolloutPhase::Degraded)) {
            m.rs.current_step_index = Some(0);
            m.rs.current_step_hash = None;
            m.rs.pause_start_time = None;
            m.rs.approved_step = None;
            m.rs.step_start_time = Some(Time(m.now));
            m.rs.analysis_runs.clear();
            let msg = format!("retrying the rollout of {} from step 0", m.update);
            m.set_phase(RolloutPhase::Progressing, msg.clone());
            m.cond(cond::PROGRESSING, true, reason::RETRIED, &msg);
            m.cond(cond::DEGRADED, false, reason::NOT_DEGRADED, "no failure");
            m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
            m.note(false, reason::RETRIED, msg);
        } else {
            ignore(
                m,
                ANNOTATION_RETRY,
                "retry only acts on an Aborted or Degraded rollout",
            );
        }
    }
    let phase = m.phase();
    if c.pause {
        if matches!(phase, Some(RolloutPhase::Aborted | RolloutPhase::Degraded)) {
            ignore(m, ANNOTATION_PAUSE, "the rollout is not running");
        } else if !paused_by_user(m) {
            m.cond(
                cond::PAUSED,
                true,
                reason::PAUSED_BY_USER,
                "paused by the rollout-pause annotation",
            );
            m.rs.pause_start_time = Some(Time(m.now));
            m.note(
                false,
                reason::PAUSED_BY_USER,
                "rollout paused by the rollout-pause annotation",
            );
        }
    }
    if c.resume {
        if paused_by_user(m) {
            // Paused time does not count against the progress deadline.
            let paused_at =
                condition_true(&m.rs, cond::PAUSED).and_then(|c| c.last_transition_time.clone());
            let paused_for = m.since(&paused_at);
            if let Some(start) = &m.rs.step_start_time {
                m.rs.step_start_time = Some(Time(start.0 + paused_for));
            }
            m.rs.pause_start_time = None;
            m.cond(
                cond::PAUSED,
                false,
                reason::RESUMED,
                "resumed by the rollout-resume annotation",
            );
            m.note(false, reason::RESUMED, "rollout resumed");
        } else if condition_true(&m.rs, cond::PAUSED)
            .is_some_and(|c| c.reason.as_deref() == Some(reason::ANALYSIS_INCONCLUSIVE))
            && gates::accept_inconclusive(m)
        {
            m.cond(
                cond::PAUSED,
                false,
                reason::RESUMED,
                "the inconclusive analysis was accepted by the rollout-resume annotation",
            );
            m.note(
                false,
                reason::RESUMED,
                "inconclusive analysis accepted; the rollout goes on",
            );
        } else if phase == Some(RolloutPhase::Degraded)
            && condition_reason(&m.rs, cond::PROGRESSING) == Some(reason::HALTED)
        {
            // The failed analyses measure again.
            gates::forget_failures(m);
            m.rs.step_start_time = Some(Time(m.now));
            m.set_phase(RolloutPhase::Progressing, "resumed after a failure");
            m.cond(
                cond::PROGRESSING,
                true,
                reason::RESUMED,
                "resumed by the rollout-resume annotation after a failure",
            );
            m.cond(cond::DEGRADED, false, reason::NOT_DEGRADED, "no failure");
            m.note(false, reason::RESUMED, "rollout resumed after a failure");
        } else {
            ignore(m, ANNOTATION_RESUME, "the rollout is not paused");
        }
    }
}

/// Abort: all traffic back on stable at once, the canary scaled down once stable is whole.
pub(crate) fn abort(m: &mut Machine, stable: &str) {
    let step = m.rs.current_step_index.unwrap_or(0);
    let msg =
        format!("aborted at step {step}: traffic and capacity go back to stable revision {stable}");
    m.set_phase(RolloutPhase::Aborted, msg.clone());
    m.cond(cond::PROGRESSING, false, reason::ABORTED, &msg);
    m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
    m.rs.pause_start_time = None;
    m.rs.approved_step = None;
    gates::stop_all(m);
    // Counted with the automatic rollbacks, by reason.
    m.rollback = Some(reason::ABORTED.to_string());
    m.note(false, reason::ABORTED, msg);
}

pub(crate) fn rollback(m: &mut Machine, stable: &str, why: &str, detail: String) {
    let msg = format!("{detail}; rolled back to stable revision {stable}");
    m.set_phase(RolloutPhase::Degraded, msg.clone());
    m.cond(cond::DEGRADED, true, why, &detail);
    m.cond(cond::PROGRESSING, false, reason::ROLLED_BACK, &msg);
    m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
    m.rs.pause_start_time = None;
    m.rs.approved_step = None;
    gates::stop_all(m);
    m.rollback = Some(why.to_string());
    m.note(true, why, msg);
}

pub(crate) fn halt(m: &mut Machine, why: &str, detail: String) {
    let msg = format!(
        "{detail}; autoRollback is disabled, so the rollout stops in place: abort, retry or resume it"
    );
    m.set_phase(RolloutPhase::Degraded, msg.clone());
    m.cond(cond::DEGRADED, true, why, &detail);
    m.cond(cond::PROGRESSING, false, reason::HALTED, &msg);
    gates::stop_all(m);
    m.note(true, why, msg);
}

/// Everything on stable: Services first, then capacity; the canary goes once stable is whole.
pub(crate) fn hold_on_stable(m: &mut Machine, stable: &str) {
    let obs = m.input.observed;
    let router = m.has_router();
    // A router sends traffic to stable at once, unless stable has nothing ready to serve it (a
    // promotion had already removed it): then the canary keeps the traffic until stable is back.
    let weight = if router && obs.ready(stable) == 0 {
        obs.router_weight
            .or_else(|| m.rs.canary_status.as_ref().map(|c| c.current_weight))
            .unwrap_or(0)
    } else {
        0
    };
    // With a router, the canary keeps its capacity until the router reports all traffic on stable
    // (or, when the router reports nothing at all, for a grace period after the abort).
    let traffic_off = !router
        || obs.router_weight == Some(0)
        || (obs.router_weight.is_none() && router_silent_too_long(m));
    let stable_whole = obs.ready(stable) >= m.replicas && traffic_off;
    m.scale.insert(stable.to_string(), m.replicas);
    let canary_now = if stable_whole {
        0
    } else {
        obs.existing(&m.update)
    };
    m.scale.insert(m.update.clone(), canary_now);
    m.pin_services(stable, stable);
    m.weight = weight;
    m.status_weight = Some(weight);
}

/// How long an aborted or rolled-back canary keeps its capacity while the routers report no
/// weight at all (their objects are missing or unreadable, so no traffic can be confirmed).
const ROUTER_SILENCE_GRACE: SignedDuration = SignedDuration::from_secs(60);

/// Whether the routers have reported nothing for longer than the grace since the rollout stopped.
fn router_silent_too_long(m: &mut Machine) -> bool {
    let stopped =
        m.rs.conditions
            .iter()
            .find(|c| c.type_ == cond::PROGRESSING)
            .and_then(|c| c.last_transition_time.clone());
    let left = ROUTER_SILENCE_GRACE - m.since(&stopped);
    if left <= SignedDuration::ZERO {
        return true;
    }
    m.requeue_in(std::time::Duration::try_from(left).unwrap_or_default());
    false
}

/// Stopped after a failure with autoRollback disabled: nothing moves.
pub(crate) fn hold_in_place(m: &mut Machine, stable: &str) {
    let obs = m.input.observed;
    for rev in obs.revisions() {
        m.scale.insert(rev.clone(), obs.existing(&rev));
    }
    m.scale.entry(stable.to_string()).or_insert(0);
    let update = m.update.clone();
    m.pin_services(stable, &update);
    m.weight = m.rs.canary_status.as_ref().map_or(0, |c| c.current_weight);
}

/// A failure that triggers rollback: (reason, detail).
pub(crate) fn failure(m: &mut Machine, ar: &AutoRollback) -> Option<(&'static str, String)> {
    if ar.error_rate_metric && m.input.observed.existing(&m.update) > 0 {
        match gates::gate(m, gates::ERROR_RATE) {
            Gate::Failed(detail) if gates::errored(m, gates::ERROR_RATE) => {
                return Some((
                    reason::ANALYSIS_FAILED,
                    format!("the canary's error rate could not be measured: {detail}"),
                ));
            }
            Gate::Failed(detail) => {
                let threshold = ar.error_threshold.unwrap_or_default();
                return Some((
                    reason::ERROR_THRESHOLD_EXCEEDED,
                    format!("canary error rate over the {threshold}% threshold: {detail}"),
                ));
            }
            // No data is not an error rate, and a run that ended below the threshold is followed by
            // the next one: measure again, one interval after the last measurement.
            Gate::Inconclusive(_) | Gate::Passed => {
                let last = gates::last_measured(m, gates::ERROR_RATE);
                let wait = ar.error_rate_interval - m.since(&last);
                if last.is_none() || wait <= SignedDuration::ZERO {
                    gates::restart(m, gates::ERROR_RATE);
                } else {
                    m.requeue_in(std::time::Duration::try_from(wait).unwrap_or_default());
                }
            }
            Gate::Running(_) => {}
        }
    }
    let h = health::of_revision(m.input.observed.pods.iter(), &m.update, ar.grace, m.now);
    if let Some(threshold) = ar.error_threshold
        && !ar.error_rate_metric
        && h.total > 0
        && h.failing_percent() > threshold
    {
        return Some((
            reason::ERROR_THRESHOLD_EXCEEDED,
            format!(
                "{:.1}% of canary Pods failing, over the {threshold}% threshold ({})",
                h.failing_percent(),
                h.summary()
            ),
        ));
    }
    if ar.health_check && !h.failing.is_empty() {
        return Some((reason::HEALTH_CHECK_FAILED, h.summary()));
    }
    None
}

fn progress(
    m: &mut Machine,
    stable: &str,
    canary: &CanaryStrategy,
    ar: &AutoRollback,
    approval: bool,
) {
    let steps = &canary.steps;
    let router = canary.traffic_routing.is_some();
    let replicas = m.replicas;
    let update = m.update.clone();
    let obs = m.input.observed;
    let (surge, unavailable) = budgets(m.input.spec, Some(canary), replicas);
    let min_available = replicas - unavailable;
    let mut approval_left = approval;
    let approvable =
        m.rs.current_step_index
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| was_waiting_for_approval(m, *i));

    if let Some((why, detail)) = failure(m, ar) {
        if ar.enabled {
            rollback(m, stable, why, detail);
            hold_on_stable(m, stable);
        } else {
            halt(m, why, detail);
            hold_in_place(m, stable);
        }
        return;
    }

    // One pass per step at most: steps that are already satisfied complete in the same decision.
    for _ in 0..=steps.len() + 1 {
        let idx =
            m.rs.current_step_index
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(0);
        if let Some(step) = steps.get(idx) {
            let hash = revision::of_step(step);
            if m.rs.current_step_hash.as_deref() != Some(hash.as_str()) {
                if m.rs.current_step_hash.is_some() {
                    // The step was edited: it starts over (a given approval no longer counts).
                    m.rs.pause_start_time = None;
                    m.rs.approved_step = None;
                    m.rs.step_start_time = Some(Time(m.now));
                    gates::restart(m, &gates::step(idx));
                    m.note(
                        false,
                        "StepChanged",
                        format!("step {idx} changed: it starts over"),
                    );
                }
                m.rs.current_step_hash = Some(hash);
            }
        } else {
            m.rs.current_step_hash = None;
        }
        let t = target(steps, idx, replicas, router);
        let canary_existing = obs.existing(&update);
        let canary_ready = obs.ready(&update);
        let stable_existing = obs.existing(stable);
        let promoting = idx >= steps.len();
        let (canary_now, stable_target) = if router {
            // Promotion: the canary reaches full size, the router moves all traffic to it, and
            // only once the router reports that does stable go.
            let stable_target =
                if promoting && canary_ready >= replicas && obs.router_weight == Some(100) {
                    0
                } else {
                    replicas
                };
            (t.canary, stable_target)
        } else {
            let canary_now = t
                .canary
                .min(canary_existing.max(replicas + surge - stable_existing));
            let stable_target = (replicas - t.canary)
                .max(min_available - canary_ready)
                .clamp(0, replicas);
            (canary_now, stable_target)
        };
        m.scale.insert(update.clone(), canary_now);
        m.scale.insert(stable.to_string(), stable_target);
        m.pin_services(stable, &update);
        let step_capacity = canary_ready >= t.canary && canary_existing == t.canary;
        let traffic = if !router {
            t.weight
        } else if promoting {
            // All traffic moves once the canary is at full size; once moved it stays (stable may
            // already be gone).
            if canary_ready >= replicas || obs.router_weight == Some(100) {
                100
            } else {
                last_weight(steps)
            }
        } else if step_capacity {
            t.weight
        } else {
            // The canary gets the step's traffic only once it has the step's capacity; until
            // then it keeps the previous step's share (or less, when the step lowers it).
            let previous = idx
                .checked_sub(1)
                .map_or(0, |i| target(steps, i, replicas, router).weight);
            t.weight.min(previous)
        };
        m.weight = traffic;
        m.status_weight = Some(traffic);

        let capacity = canary_ready >= t.canary
            && canary_existing == t.canary
            && stable_existing == if promoting { 0 } else { stable_target };
        let routed = !router || obs.router_weight == Some(traffic);
        let reached = capacity && routed;
        if paused_by_user(m) {
            m.set_phase(
                RolloutPhase::Paused,
                format!("paused by the user at step {idx}"),
            );
            break;
        }
        if promoting {
            if reached {
                complete(m);
            } else {
                let msg = format!(
                    "promoting revision {update}: {canary_ready} of {replicas} RoleSets ready"
                );
                m.set_phase(RolloutPhase::Progressing, msg.clone());
                m.cond(cond::PROGRESSING, true, reason::PROMOTING, &msg);
                m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
                deadline(m, stable, ar);
            }
            break;
        }
        if !reached {
            if was_reached(m, idx) {
                // The step was reached and is lost again: the deadline counts from now, not from
                // when the step began (its pause or approval wait is not "no progress").
                m.rs.step_start_time = Some(Time(m.now));
            }
            let (why, msg) = if capacity {
                (
                    reason::WAITING_FOR_ROUTER,
                    format!(
                        "step {idx}: waiting for the traffic router to report weight {traffic} (it reports {})",
                        obs.router_weight
                            .map_or_else(|| "nothing yet".to_string(), |w| w.to_string())
                    ),
                )
            } else {
                (
                    reason::STEP_PROGRESSING,
                    format!(
                        "step {idx}: waiting for the canary ({canary_ready} of {} RoleSets ready, stable at {stable_existing} of {stable_target})",
                        t.canary
                    ),
                )
            };
            m.set_phase(RolloutPhase::Progressing, msg.clone());
            m.cond(cond::PROGRESSING, true, why, &msg);
            m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
            deadline(m, stable, ar);
            break;
        }
        // Reached: the step's pause and analysis run together.
        let step = &steps[idx];
        m.cond(
            cond::PROGRESSING,
            true,
            reason::STEP_REACHED,
            &format!(
                "step {idx} reached: canary at weight {} with {} RoleSets ready",
                t.weight, t.canary
            ),
        );
        let idx_i32 = i32::try_from(idx).unwrap_or(i32::MAX);
        let mut waiting: Option<(&str, String)> = None;
        if let Some(pause) = &step.pause {
            if pause.until_approval == Some(true) {
                if m.rs.approved_step != Some(idx_i32) {
                    if approval_left && approvable == Some(idx) {
                        approval_left = false;
                        m.rs.approved_step = Some(idx_i32);
                        m.cond(
                            cond::PAUSED,
                            false,
                            reason::APPROVED,
                            &format!("step {idx} approved"),
                        );
                        m.note(false, reason::APPROVED, format!("step {idx} approved"));
                    } else {
                        waiting = Some((
                            reason::WAITING_FOR_APPROVAL,
                            format!(
                                "step {idx}: waiting for approval (annotate {ANNOTATION_APPROVAL}=true)"
                            ),
                        ));
                    }
                }
            } else if let Some(d) = pause
                .duration
                .as_deref()
                .and_then(|d| parse_duration(d).ok())
            {
                let start = m.rs.pause_start_time.get_or_insert(Time(m.now)).0;
                let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
                let elapsed = m.now.duration_since(start);
                if elapsed < d {
                    let left = d - elapsed;
                    m.requeue_in(std::time::Duration::try_from(left).unwrap_or_default());
                    if waiting.is_none() {
                        // The end time, not a countdown: the message stays the same on every
                        // reconcile, so the status is written once per pause.
                        let until = (start + d).strftime("%Y-%m-%dT%H:%M:%SZ");
                        let text = pause.duration.as_deref().unwrap_or("");
                        waiting = Some((
                            reason::PAUSE_DURATION,
                            format!("step {idx}: pausing {text}, until {until}"),
                        ));
                    }
                }
            }
        }
        // The analysis runs alongside the pause. An approval that is still due is shown first:
        // it is the gate a person can act on; then an inconclusive analysis, then a running one.
        if step.analysis.is_some() {
            match gates::gate(m, &gates::step(idx)) {
                Gate::Passed => {}
                Gate::Failed(detail) => {
                    analysis_failed(m, stable, ar, detail);
                    break;
                }
                Gate::Inconclusive(msg) => {
                    if waiting
                        .as_ref()
                        .is_none_or(|(w, _)| *w != reason::WAITING_FOR_APPROVAL)
                    {
                        waiting =
                            Some((reason::ANALYSIS_INCONCLUSIVE, format!("step {idx}: {msg}")));
                    }
                }
                Gate::Running(msg) => {
                    if waiting.is_none() {
                        waiting = Some((reason::ANALYSIS_RUNNING, format!("step {idx}: {msg}")));
                    }
                }
            }
        }
        if let Some((why, msg)) = waiting {
            if why == reason::ANALYSIS_RUNNING {
                // Measuring is progress, not a pause.
                m.set_phase(RolloutPhase::Progressing, msg.clone());
                m.cond(cond::PROGRESSING, true, why, &msg);
                m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
            } else {
                m.set_phase(RolloutPhase::Paused, msg.clone());
                m.cond(cond::PAUSED, true, why, &msg);
            }
            break;
        }
        // The step is complete.
        let msg = format!("Step {idx} completed successfully");
        m.rs.current_step_index = Some(idx_i32 + 1);
        m.rs.current_step_hash = None;
        m.rs.pause_start_time = None;
        m.rs.approved_step = None;
        m.rs.step_start_time = Some(Time(m.now));
        m.cond(cond::PROGRESSING, true, reason::STEP_COMPLETE, &msg);
        m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
        m.note(false, reason::STEP_COMPLETE, msg);
    }
    if approval_left {
        ignore(m, ANNOTATION_APPROVAL, "nothing was waiting for approval");
    }
}

/// A gate's analysis failed: roll back, or stop in place when analysis failures do not roll back.
pub(crate) fn analysis_failed(m: &mut Machine, stable: &str, ar: &AutoRollback, detail: String) {
    if ar.enabled && ar.analysis_failure {
        rollback(m, stable, reason::ANALYSIS_FAILED, detail);
        hold_on_stable(m, stable);
    } else {
        halt(m, reason::ANALYSIS_FAILED, detail);
        hold_in_place(m, stable);
    }
}

fn last_weight(steps: &[CanaryStep]) -> i32 {
    steps.iter().rev().find_map(|s| s.weight).unwrap_or(0)
}

/// The progress deadline: a step that is not reached within `onTimeout` (paused time excluded).
pub(crate) fn deadline(m: &mut Machine, stable: &str, ar: &AutoRollback) {
    let started = m.rs.step_start_time.clone().unwrap_or(Time(m.now));
    let waited = m.now.duration_since(started.0);
    if waited <= ar.timeout {
        m.requeue_in(std::time::Duration::try_from(ar.timeout - waited).unwrap_or_default());
        return;
    }
    let what = if m.blue_green().is_some() {
        "the preview".to_string()
    } else {
        format!("step {}", m.rs.current_step_index.unwrap_or(0))
    };
    let detail = format!(
        "{what} made no progress for {}s (onTimeout {}s)",
        waited.as_secs(),
        ar.timeout.as_secs()
    );
    if ar.enabled {
        rollback(m, stable, reason::PROGRESS_DEADLINE_EXCEEDED, detail);
        hold_on_stable(m, stable);
    } else {
        halt(m, reason::PROGRESS_DEADLINE_EXCEEDED, detail);
    }
}

fn complete(m: &mut Machine) {
    let update = m.update.clone();
    m.stable = Some(update.clone());
    let msg = format!("rollout to revision {update} completed");
    m.set_phase(RolloutPhase::Completed, msg.clone());
    m.cond(cond::PROGRESSING, false, reason::COMPLETED, &msg);
    m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
    m.rs.pause_start_time = None;
    m.rs.approved_step = None;
    m.rs.step_start_time = None;
    gates::stop_all(m);
    m.scale.clear();
    m.scale.insert(update.clone(), m.replicas);
    m.services.clear();
    m.pin_services(&update, &update);
    m.weight = 100;
    m.status_weight = Some(100);
    m.note(false, reason::COMPLETED, msg);
}
