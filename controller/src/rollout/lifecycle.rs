//! What every strategy shares: the manual controls (abort, retry, pause, resume, approval), the
//! failures that roll a rollout back or halt it, the progress deadline, waiting at a gate, and
//! completion.
//!
//! `canary.rs` and `bluegreen.rs` decide where capacity and traffic go while a rollout runs; the
//! moments when it stops running are decided here, the same way for both.

use super::Machine;
use super::controls::{Controls, ignore};
use super::drain;
use super::gates::{self, Gate};
use super::health;
use super::settings::AutoRollback;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use storm_shared::keys::{
    ANNOTATION_APPROVAL, ANNOTATION_PAUSE, ANNOTATION_PROMOTE_FULL, ANNOTATION_RESUME,
    ANNOTATION_RETRY,
};
use storm_shared::status::{
    ConditionType as Cond, Reason, condition, condition_true, is_true_because,
};
use storm_shared::types::stormservice::{RolloutPhase, ScaleDownReason};

/// Whether the rollout is held by the pause annotation.
pub(crate) fn paused_by_user(m: &Machine) -> bool {
    m.rs.paused_by_user()
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
            (controls.promote_full, ANNOTATION_PROMOTE_FULL),
        ] {
            if set {
                ignore(m, key, "the rollout was aborted at the same time");
            }
        }
        approval = false;
    } else {
        apply_controls(m, controls);
    }
    if m.rs.rolled_back() {
        if approval {
            ignore(
                m,
                ANNOTATION_APPROVAL,
                "the rollout is not running (aborted or rolled back)",
            );
        }
        return Steer::RolledBack;
    }
    if m.rs.halted() {
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
            m.cond(Cond::Progressing, true, Reason::Retried, &msg);
            m.cond(Cond::Degraded, false, Reason::NotDegraded, "no failure");
            m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
            m.note(false, Reason::Retried, msg);
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
                Cond::Paused,
                true,
                Reason::PausedByUser,
                "paused by the rollout-pause annotation",
            );
            m.rs.pause_start_time = Some(Time(m.now));
            m.note(
                false,
                Reason::PausedByUser,
                "rollout paused by the rollout-pause annotation",
            );
        }
    }
    if c.resume {
        if paused_by_user(m) {
            unpause(m, "resumed by the rollout-resume annotation");
            m.note(false, Reason::Resumed, "rollout resumed");
        } else if is_true_because(&m.rs.conditions, Cond::Paused, Reason::AnalysisInconclusive)
            && gates::accept_inconclusive(m)
        {
            m.cond(
                Cond::Paused,
                false,
                Reason::Resumed,
                "the inconclusive analysis was accepted by the rollout-resume annotation",
            );
            m.note(
                false,
                Reason::Resumed,
                "inconclusive analysis accepted; the rollout goes on",
            );
        } else if m.rs.halted() {
            // The failed analyses measure again.
            gates::forget_failures(m);
            m.rs.step_start_time = Some(Time(m.now));
            m.set_phase(RolloutPhase::Progressing, "resumed after a failure");
            m.cond(
                Cond::Progressing,
                true,
                Reason::Resumed,
                "resumed by the rollout-resume annotation after a failure",
            );
            m.cond(Cond::Degraded, false, Reason::NotDegraded, "no failure");
            m.note(false, Reason::Resumed, "rollout resumed after a failure");
        } else {
            ignore(m, ANNOTATION_RESUME, "the rollout is not paused");
        }
    }
    if c.promote_full {
        let phase = m.phase();
        if matches!(phase, Some(RolloutPhase::Aborted | RolloutPhase::Degraded))
            || m.rs.rolled_back()
            || m.rs.halted()
        {
            ignore(
                m,
                ANNOTATION_PROMOTE_FULL,
                "the rollout is not running (aborted, rolled back or stopped after a failure); retry or resume it first",
            );
        } else if m.rs.promote_full != Some(true) {
            m.rs.promote_full = Some(true);
            // A full promotion is a go: a pause the user set ends with it.
            if paused_by_user(m) {
                unpause(m, "resumed by the rollout-promote-full annotation");
            }
            m.note(
                false,
                Reason::PromotedFull,
                format!(
                    "full promotion of {}: the remaining steps, pauses, approvals and step analyses are skipped",
                    m.update
                ),
            );
        }
    }
}

/// Ends a pause the user set; paused time does not count against the progress deadline.
fn unpause(m: &mut Machine, message: &str) {
    let paused_at =
        condition_true(&m.rs.conditions, Cond::Paused).and_then(|c| c.last_transition_time.clone());
    let paused_for = m.since(&paused_at);
    if let Some(start) = &m.rs.step_start_time {
        m.rs.step_start_time = Some(Time(start.0 + paused_for));
    }
    m.rs.pause_start_time = None;
    m.cond(Cond::Paused, false, Reason::Resumed, message);
}

/// Abort: all traffic back on stable at once, the canary scaled down once stable is whole.
pub(crate) fn abort(m: &mut Machine, stable: &str) {
    let step = m.rs.current_step_index.unwrap_or(0);
    let msg =
        format!("aborted at step {step}: traffic and capacity go back to stable revision {stable}");
    m.set_phase(RolloutPhase::Aborted, msg.clone());
    m.cond(Cond::Progressing, false, Reason::Aborted, &msg);
    m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
    m.rs.pause_start_time = None;
    m.rs.approved_step = None;
    gates::stop_all(m);
    // Counted with the automatic rollbacks, by reason.
    m.rollback = Some(Reason::Aborted);
    m.note(false, Reason::Aborted, msg);
}

pub(crate) fn rollback(m: &mut Machine, stable: &str, why: Reason, detail: String) {
    let msg = format!("{detail}; rolled back to stable revision {stable}");
    m.set_phase(RolloutPhase::Degraded, msg.clone());
    m.cond(Cond::Degraded, true, why, &detail);
    m.cond(Cond::Progressing, false, Reason::RolledBack, &msg);
    m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
    m.rs.pause_start_time = None;
    m.rs.approved_step = None;
    gates::stop_all(m);
    m.rollback = Some(why);
    m.note(true, why, msg);
}

pub(crate) fn halt(m: &mut Machine, why: Reason, detail: String) {
    let msg = format!(
        "{detail}; autoRollback is disabled, so the rollout stops in place: abort, retry or resume it"
    );
    m.set_phase(RolloutPhase::Degraded, msg.clone());
    m.cond(Cond::Degraded, true, why, &detail);
    m.cond(Cond::Progressing, false, Reason::Halted, &msg);
    gates::stop_all(m);
    m.note(true, why, msg);
}

/// Everything on stable: Services first, then capacity; the canary goes once stable is whole.
pub(crate) fn hold_on_stable(m: &mut Machine, stable: &str) {
    let obs = m.input.observed;
    let router = m.has_router();
    // A router sends traffic to stable at once, unless stable has nothing ready to serve it (a
    // promotion had already removed it): then the canary keeps the traffic until stable is back.
    let dynamic = m.dynamic_stable_scale();
    let weight = if dynamic {
        // Stable may have been shrunk to its share: it takes the traffic back as its RoleSets
        // are ready again.
        let current = obs
            .router_weight
            .or_else(|| m.rs.canary_status.as_ref().map(|c| c.current_weight))
            .unwrap_or(0);
        super::dynamic::abort_weight(current, obs.ready(stable), m.replicas)
    } else if router && obs.ready(stable) == 0 {
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
    let budgeted = m.input.spec.capacity_budget().is_some();
    let canary_now = if stable_whole {
        // No traffic left on it: it drains for `abortScaleDownDelaySeconds`, then goes.
        let update = m.update.clone();
        drain::schedule(m, &update, ScaleDownReason::Aborted);
        0
    } else if dynamic {
        // Stable grows back as the canary's traffic leaves it: the canary keeps what its traffic
        // needs, so that within a capacity budget the room it frees lets stable grow.
        let on_canary = obs.router_weight.unwrap_or(weight).max(weight);
        super::dynamic::canary_needed(m.replicas, on_canary).min(obs.existing(&m.update))
    } else if budgeted && !router {
        // Within a capacity budget stable can only grow as the canary shrinks: the canary keeps
        // only the ready RoleSets availability needs (`keep_availability`).
        0
    } else {
        obs.existing(&m.update)
    };
    m.scale.insert(m.update.clone(), canary_now);
    drain::keep_due(m, stable);
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
        condition(&m.rs.conditions, Cond::Progressing).and_then(|c| c.last_transition_time.clone());
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
pub(crate) fn failure(m: &mut Machine, ar: &AutoRollback) -> Option<(Reason, String)> {
    if ar.error_rate_metric && m.input.observed.existing(&m.update) > 0 {
        match gates::gate(m, gates::ERROR_RATE) {
            Gate::Failed(detail) if gates::errored(m, gates::ERROR_RATE) => {
                return Some((
                    Reason::AnalysisFailed,
                    format!("the canary's error rate could not be measured: {detail}"),
                ));
            }
            Gate::Failed(detail) => {
                let threshold = ar.error_threshold.unwrap_or_default();
                return Some((
                    Reason::ErrorThresholdExceeded,
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
            Reason::ErrorThresholdExceeded,
            format!(
                "{:.1}% of canary Pods failing, over the {threshold}% threshold ({})",
                h.failing_percent(),
                h.summary()
            ),
        ));
    }
    if ar.health_check && !h.failing.is_empty() {
        return Some((Reason::HealthCheckFailed, h.summary()));
    }
    None
}

/// A failure: roll back (everything on stable) when `roll_back`, else stop in place.
pub(crate) fn fail(m: &mut Machine, stable: &str, roll_back: bool, why: Reason, detail: String) {
    if roll_back {
        rollback(m, stable, why, detail);
        hold_on_stable(m, stable);
    } else {
        halt(m, why, detail);
        hold_in_place(m, stable);
    }
}

/// A gate's analysis failed: roll back, or stop in place when analysis failures do not roll back.
pub(crate) fn analysis_failed(m: &mut Machine, stable: &str, ar: &AutoRollback, detail: String) {
    fail(
        m,
        stable,
        ar.enabled && ar.analysis_failure,
        Reason::AnalysisFailed,
        detail,
    );
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
        rollback(m, stable, Reason::ProgressDeadlineExceeded, detail);
        hold_on_stable(m, stable);
    } else {
        halt(m, Reason::ProgressDeadlineExceeded, detail);
    }
}

/// The rollout completed: the new revision is stable at full size and every gate stops. The
/// strategy then points its Services (and routers) at it.
pub(crate) fn complete(m: &mut Machine) {
    let update = m.update.clone();
    m.stable = Some(update.clone());
    let msg = format!("rollout to revision {update} completed");
    m.set_phase(RolloutPhase::Completed, msg.clone());
    m.cond(Cond::Progressing, false, Reason::Completed, &msg);
    m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
    m.rs.pause_start_time = None;
    m.rs.approved_step = None;
    m.rs.step_start_time = None;
    gates::stop_all(m);
    m.scale.clear();
    m.scale.insert(update.clone(), m.replicas);
    m.services.clear();
    m.note(false, Reason::Completed, msg);
}

/// Waits at a gate (a pause, an approval, an analysis): measuring is progress; anything else is a
/// pause that a duration, a person or an analysis ends.
pub(crate) fn wait_at(m: &mut Machine, why: Reason, msg: String) {
    if why == Reason::AnalysisRunning {
        m.set_phase(RolloutPhase::Progressing, msg.clone());
        m.cond(Cond::Progressing, true, why, &msg);
        m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
    } else {
        m.set_phase(RolloutPhase::Paused, msg.clone());
        m.cond(Cond::Paused, true, why, &msg);
    }
}
