//! Blue-green rollouts: the new revision at full size behind `previewService`, `activeService`
//! switched at promotion, and switched back if anything fails before the rollout completes.
//!
//! The promotion is recorded in `blueGreenStatus.activeSelector`: once it names the new revision,
//! the active Service serves it. `currentRevision` moves only when the rollout completes (after
//! the post-promotion analysis), so until then a failure switches back to the old revision. The
//! old RoleSets stay for `scaleDownDelaySeconds` after the promotion (see `at_rest`).

use super::Machine;
use super::controls::{Controls, ignore};
use super::drain;
use super::gates::{self, Gate};
use super::lifecycle::{
    self, Steer, analysis_failed, deadline, failure, halt, hold_on_stable, paused_by_user,
    rollback, steer,
};
use super::settings::{AutoRollback, auto_rollback};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use std::time::Duration;
use storm_shared::keys::ANNOTATION_APPROVAL;
use storm_shared::status::{ConditionType as Cond, Reason};
use storm_shared::types::stormservice::{
    BlueGreenStatus, BlueGreenStrategy, RolloutPhase, ScaleDownReason,
};

pub(crate) fn run(m: &mut Machine, stable: &str, bg: &BlueGreenStrategy, controls: Controls) {
    let ar = auto_rollback(m.input.spec);
    // An abort or a retry that acts now puts the active Service back on the stable revision.
    let was = m.phase();
    let aborts = controls.abort && was != Some(RolloutPhase::Aborted);
    let retries = !controls.abort
        && controls.retry
        && matches!(was, Some(RolloutPhase::Aborted | RolloutPhase::Degraded));
    let steer = steer(m, stable, controls);
    if aborts || retries {
        unpromote(m, stable);
    }
    // Blue-green has no steps.
    m.rs.current_step_index = None;
    m.rs.current_step_hash = None;
    let status = m.rs.blue_green_status.get_or_insert_with(Default::default);
    status.preview_selector = Some(m.update.clone());
    if status.active_selector.is_none() {
        status.active_selector = Some(stable.to_string());
    }
    match steer {
        Steer::RolledBack => {
            // Both Services select the stable revision now.
            if let Some(b) = m.rs.blue_green_status.as_mut() {
                b.preview_selector = Some(stable.to_string());
            }
            hold_on_stable(m, stable);
        }
        Steer::Halted => hold_in_place(m, stable, bg),
        Steer::Run { approval } => {
            drain::forget(m, &m.update.clone());
            progress(m, stable, bg, &ar, approval)
        }
    }
}

/// Whether the active Service was switched to the new revision.
fn promoted(m: &Machine) -> bool {
    m.rs.blue_green_status
        .as_ref()
        .and_then(|b| b.active_selector.as_deref())
        == Some(m.update.as_str())
}

/// The active Service goes back to the stable revision.
fn unpromote(m: &mut Machine, stable: &str) {
    let status = m.rs.blue_green_status.get_or_insert_with(Default::default);
    status.active_selector = Some(stable.to_string());
    status.scale_down_delay_start_time = None;
    status.promoting = None;
}

/// Whether the promotion is decided (a smaller preview then grows to full size first).
fn promotion_decided(m: &Machine) -> bool {
    m.rs.blue_green_status
        .as_ref()
        .is_some_and(|b| b.promoting == Some(true))
}

/// The RoleSets of the preview before the promotion: `previewReplicaCount`, at most `replicas`.
fn preview_size(bg: &BlueGreenStrategy, replicas: i32) -> i32 {
    bg.preview_replica_count
        .map_or(replicas, |n| n.clamp(1.min(replicas), replicas))
}

/// Pins the active Service to `active` and the preview Service to the new revision.
fn pin(m: &mut Machine, bg: &BlueGreenStrategy, active: &str) {
    m.services
        .push((bg.active_service.clone(), active.to_string()));
    m.services
        .push((bg.preview_service.clone(), m.update.clone()));
}

/// Stopped after a failure with autoRollback disabled: nothing moves, the active Service included.
fn hold_in_place(m: &mut Machine, stable: &str, bg: &BlueGreenStrategy) {
    let obs = m.input.observed;
    for rev in obs.revisions() {
        m.scale.insert(rev.clone(), obs.existing(&rev));
    }
    m.scale.entry(stable.to_string()).or_insert(0);
    let active = if promoted(m) {
        m.update.clone()
    } else {
        stable.to_string()
    };
    pin(m, bg, &active);
}

/// Whether the last decision left the rollout waiting for approval of the promotion.
fn was_waiting_for_approval(m: &Machine) -> bool {
    let Some(prev) = m.input.status.and_then(|s| s.rollout_status.as_ref()) else {
        return false;
    };
    prev.waiting_for_approval()
}

fn progress(
    m: &mut Machine,
    stable: &str,
    bg: &BlueGreenStrategy,
    ar: &AutoRollback,
    approval: bool,
) {
    let obs = m.input.observed;
    let replicas = m.replicas;
    let update = m.update.clone();
    let mut approval_left = approval;

    if let Some((why, detail)) = failure(m, ar) {
        fail(m, stable, bg, ar.enabled, why, detail);
        return;
    }

    // The old revision at full size, serving until the promotion; the preview at
    // `previewReplicaCount` until the promotion is decided, then at full size before the switch.
    let is_promoted = promoted(m);
    let growing = is_promoted || promotion_decided(m);
    let preview_target = if growing {
        replicas
    } else {
        preview_size(bg, replicas)
    };
    m.scale.insert(stable.to_string(), replicas);
    m.scale.insert(update.clone(), preview_target);
    let active = if is_promoted {
        update.clone()
    } else {
        stable.to_string()
    };
    pin(m, bg, &active);

    if paused_by_user(m) {
        m.set_phase(RolloutPhase::Paused, "paused by the user");
        if approval_left {
            ignore(m, ANNOTATION_APPROVAL, "the rollout is paused by the user");
        }
        return;
    }
    let ready = obs.ready(&update);
    let preview_ready = ready >= preview_target && obs.existing(&update) == preview_target;
    if !preview_ready {
        let (reason, msg, why_ignored) = if growing && !is_promoted {
            // Promotion decided: the preview grows to full size; the switch waits for all of it.
            (
                Reason::Promoting,
                format!(
                    "promoting revision {update}: the preview grows to {replicas} RoleSets before Service {} switches ({ready} ready)",
                    bg.active_service
                ),
                "the promotion is already under way",
            )
        } else {
            let was_ready =
                m.rs.blue_green_status
                    .as_ref()
                    .is_some_and(|b| b.preview_expose_time.is_some())
                    && m.rs.progressing_reason() != Some(Reason::PreviewProgressing);
            if was_ready {
                // Ready before and lost again: the deadline counts from now (an approval wait is
                // not "no progress").
                m.rs.step_start_time = Some(Time(m.now));
            }
            (
                Reason::PreviewProgressing,
                format!("preview revision {update}: {ready} of {preview_target} RoleSets ready"),
                "the preview is not ready yet",
            )
        };
        m.set_phase(RolloutPhase::Progressing, msg.clone());
        m.cond(Cond::Progressing, true, reason, &msg);
        m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
        if approval_left {
            ignore(m, ANNOTATION_APPROVAL, why_ignored);
        }
        deadline(m, stable, ar);
        if m.phase() == Some(RolloutPhase::Degraded) {
            fail_cleanup(m, stable, bg);
        }
        return;
    }
    let now = m.now;
    if !is_promoted {
        m.cond(
            Cond::Progressing,
            true,
            Reason::PreviewReady,
            &format!("preview revision {update} is ready with {preview_target} RoleSets"),
        );
    }
    let status = m.rs.blue_green_status.get_or_insert_with(Default::default);
    if status.preview_expose_time.is_none() {
        status.preview_expose_time = Some(Time(now));
        m.note(
            false,
            Reason::PreviewReady,
            format!(
                "preview revision {update} is ready behind Service {}",
                bg.preview_service
            ),
        );
    }

    // A full promotion (`promote --full`) skips the analyses and the approval; the preview was
    // still brought to full readiness above.
    let full = m.rs.promote_full == Some(true);
    if !is_promoted {
        // Decided already (the preview now grows): the analysis passed at the preview's size.
        if bg.pre_promotion_analysis.is_some()
            && !full
            && !growing
            && !gate_passed(m, gates::PRE_PROMOTION, stable, bg, ar, &mut approval_left)
        {
            return;
        }
        if bg.auto_promotion_enabled != Some(true) && !full && !growing {
            // `autoPromotionSeconds`: promote on our own that long after the preview was ready.
            let auto_at = bg.auto_promotion_seconds.and_then(|s| {
                let exposed =
                    m.rs.blue_green_status
                        .as_ref()?
                        .preview_expose_time
                        .clone()?;
                exposed
                    .0
                    .checked_add(SignedDuration::from_secs(i64::from(s.max(0))))
                    .ok()
            });
            if approval_left && was_waiting_for_approval(m) {
                approval_left = false;
                m.cond(Cond::Paused, false, Reason::Approved, "promotion approved");
                m.note(false, Reason::Approved, "promotion approved");
            } else if auto_at.is_some_and(|at| at <= now) {
                let msg = format!(
                    "promoting automatically: the preview has been ready for {} s (autoPromotionSeconds)",
                    bg.auto_promotion_seconds.unwrap_or(0)
                );
                m.cond(Cond::Paused, false, Reason::NotPaused, &msg);
                m.note(false, Reason::Promoting, msg);
            } else {
                let by_then = auto_at
                    .map(|at| format!(", or it promotes automatically at {at}"))
                    .unwrap_or_default();
                let msg = format!(
                    "preview revision {update} is ready: waiting for approval to promote (annotate {ANNOTATION_APPROVAL}=true){by_then}"
                );
                m.set_phase(RolloutPhase::Paused, msg.clone());
                m.cond(Cond::Paused, true, Reason::WaitingForApproval, &msg);
                if let Some(at) = auto_at {
                    m.requeue_in(Duration::try_from(at.duration_since(now)).unwrap_or_default());
                }
                return;
            }
        }
        // The promotion is decided. A smaller preview grows to full size first; the switch
        // follows once it is all ready (a later decision).
        if preview_target < replicas {
            let status = m.rs.blue_green_status.get_or_insert_with(Default::default);
            status.promoting = Some(true);
            m.scale.insert(update.clone(), replicas);
            let msg = format!(
                "promoting revision {update}: the preview grows from {preview_target} to {replicas} RoleSets before Service {} switches",
                bg.active_service
            );
            m.set_phase(RolloutPhase::Progressing, msg.clone());
            m.cond(Cond::Progressing, true, Reason::Promoting, &msg);
            m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
            m.note(false, Reason::Promoting, msg);
            // The deadline counts from the decision: growing is progress.
            m.rs.step_start_time = Some(Time(now));
            return;
        }
        // Promote: the active Service switches now, in this decision.
        let status = m.rs.blue_green_status.get_or_insert_with(Default::default);
        status.active_selector = Some(update.clone());
        status.scale_down_delay_start_time = Some(Time(now));
        m.services.clear();
        pin(m, bg, &update);
        let msg = format!(
            "promoted revision {update}: Service {} now selects it",
            bg.active_service
        );
        m.cond(Cond::Progressing, true, Reason::Promoted, &msg);
        m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
        m.note(false, Reason::Promoted, msg);
    }
    if approval_left {
        ignore(m, ANNOTATION_APPROVAL, "nothing was waiting for approval");
        approval_left = false;
    }
    if bg.post_promotion_analysis.is_some()
        && !full
        && !gate_passed(m, gates::POST_PROMOTION, stable, bg, ar, &mut approval_left)
    {
        return;
    }
    complete(m, bg);
}

/// Applies the verdict of the analysis `gate`: true when it passed and the rollout goes on.
/// Otherwise the rollout fails (the analysis failed) or waits at the gate, and this round is done.
fn gate_passed(
    m: &mut Machine,
    gate: &str,
    stable: &str,
    bg: &BlueGreenStrategy,
    ar: &AutoRollback,
    approval_left: &mut bool,
) -> bool {
    match gates::gate(m, gate) {
        Gate::Passed => true,
        Gate::Failed(detail) => {
            analysis_failed(m, stable, ar, detail);
            fail_cleanup(m, stable, bg);
            false
        }
        Gate::Inconclusive(msg) => {
            wait(m, Reason::AnalysisInconclusive, msg, approval_left);
            false
        }
        Gate::Running(msg) => {
            wait(m, Reason::AnalysisRunning, msg, approval_left);
            false
        }
    }
}

/// Waits at a gate; an approval that arrived meanwhile is dropped (an analysis decides here).
fn wait(m: &mut Machine, why: Reason, msg: String, approval_left: &mut bool) {
    lifecycle::wait_at(m, why, msg);
    if *approval_left {
        *approval_left = false;
        ignore(
            m,
            ANNOTATION_APPROVAL,
            "an analysis is deciding, not a person",
        );
    }
}

/// A failure: roll back (switch the active Service back, preview scaled down) or stop in place.
fn fail(
    m: &mut Machine,
    stable: &str,
    bg: &BlueGreenStrategy,
    enabled: bool,
    why: Reason,
    detail: String,
) {
    if enabled {
        rollback(m, stable, why, detail);
    } else {
        halt(m, why, detail);
    }
    fail_cleanup(m, stable, bg);
}

/// After `rollback`/`halt`/`analysis_failed` decided: put Services and capacity where they belong.
fn fail_cleanup(m: &mut Machine, stable: &str, bg: &BlueGreenStrategy) {
    m.scale.clear();
    m.services.clear();
    if m.rs.progressing_reason() == Some(Reason::Halted) {
        hold_in_place(m, stable, bg);
    } else {
        unpromote(m, stable);
        hold_on_stable(m, stable);
    }
}

/// The rollout completed: both Services on the new revision; the old RoleSets stay for the
/// scale-down delay (`at_rest` keeps them until it ends).
fn complete(m: &mut Machine, bg: &BlueGreenStrategy) {
    lifecycle::complete(m);
    let update = m.update.clone();
    let status =
        m.rs.blue_green_status
            .get_or_insert_with(BlueGreenStatus::default);
    status.active_selector = Some(update.clone());
    m.services.push((bg.active_service.clone(), update.clone()));
    m.services
        .push((bg.preview_service.clone(), update.clone()));
    // The delay counts from the switch (`scaleDownDelayStartTime`), not from completion.
    let switched =
        m.rs.blue_green_status
            .as_ref()
            .and_then(|b| b.scale_down_delay_start_time.as_ref())
            .map_or(m.now, |t| t.0);
    for rev in m.input.observed.revisions() {
        if rev != update {
            drain::schedule_from(m, &rev, ScaleDownReason::Promoted, switched);
        }
    }
    keep_old_for_scale_down_delay(m, &update);
    drain::keep_due(m, &update);
}

/// The revisions other than `stable` keep their RoleSets until `scaleDownDelaySeconds` after the
/// promotion, for a quick switch back. The same as the `Promoted` entries of `scaleDowns`
/// (`drain.rs`) since they exist; this also serves statuses written before them.
pub(super) fn keep_old_for_scale_down_delay(m: &mut Machine, stable: &str) {
    let Some(bg) = m.blue_green() else {
        return;
    };
    let Some(start) =
        m.rs.blue_green_status
            .as_ref()
            .and_then(|b| b.scale_down_delay_start_time.clone())
    else {
        return;
    };
    let delay = SignedDuration::from_secs(
        bg.scale_down_delay_seconds
            .map_or(
                storm_shared::defaults::DEFAULT_SCALE_DOWN_DELAY_SECONDS,
                i64::from,
            )
            .max(0),
    );
    let left = delay - m.now.duration_since(start.0);
    if left <= SignedDuration::ZERO {
        return;
    }
    let obs = m.input.observed;
    for rev in obs.revisions().into_iter().filter(|r| r != stable) {
        m.scale.insert(rev.clone(), obs.existing(&rev));
    }
    m.requeue_in(Duration::try_from(left).unwrap_or_default());
}
