//! Drain delays: RoleSets kept for a while after a promotion (the old stable) or an abort (the
//! revision that was being rolled out), so that requests still streaming from them finish and
//! every router and proxy has let go of them before their Pods stop.
//!
//! Each kept revision is an entry of `status.rolloutStatus.scaleDowns` with its due time, so a
//! restarted controller keeps the same times. An entry ends when its revision has no RoleSets
//! left, becomes the stable one again, or a new rollout starts.

use super::Machine;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use storm_shared::defaults::{
    DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS, DEFAULT_CANARY_SCALE_DOWN_DELAY_SECONDS,
    DEFAULT_SCALE_DOWN_DELAY_SECONDS,
};
use storm_shared::types::stormservice::{ScaleDown, ScaleDownReason};

/// How long a revision is kept for `reason`, as the strategy says (or its default).
pub(crate) fn delay(m: &Machine, reason: ScaleDownReason) -> SignedDuration {
    let seconds = if let Some(bg) = m.blue_green() {
        match reason {
            ScaleDownReason::Promoted => bg
                .scale_down_delay_seconds
                .map_or(DEFAULT_SCALE_DOWN_DELAY_SECONDS, i64::from),
            ScaleDownReason::Aborted => bg
                .abort_scale_down_delay_seconds
                .map_or(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS, i64::from),
        }
    } else if let Some(canary) = m.canary() {
        // Without a router, Services move by selector as RoleSets do, and each Pod drains in its
        // own termination grace period: no delay unless one is asked for.
        let routed = canary.traffic_routing.is_some();
        let (set, default) = match reason {
            ScaleDownReason::Promoted => (
                canary.scale_down_delay_seconds,
                DEFAULT_CANARY_SCALE_DOWN_DELAY_SECONDS,
            ),
            ScaleDownReason::Aborted => (
                canary.abort_scale_down_delay_seconds,
                DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS,
            ),
        };
        set.map_or(if routed { default } else { 0 }, i64::from)
    } else {
        0
    };
    SignedDuration::from_secs(seconds.max(0))
}

/// Keeps `revision`'s RoleSets for the drain delay of `reason`, from now (unless it is kept
/// already, or has no RoleSets, or the delay is 0).
pub(crate) fn schedule(m: &mut Machine, revision: &str, reason: ScaleDownReason) {
    schedule_from(m, revision, reason, m.now);
}

/// As [`schedule`], the delay counted from `start` (a blue-green promotion's switch, which may
/// come before the rollout completes).
pub(crate) fn schedule_from(
    m: &mut Machine,
    revision: &str,
    reason: ScaleDownReason,
    start: k8s_openapi::jiff::Timestamp,
) {
    let delay = delay(m, reason);
    if delay <= SignedDuration::ZERO
        || m.input.observed.existing(revision) == 0
        || m.rs.scale_downs.iter().any(|s| s.revision == revision)
    {
        return;
    }
    let due = start.checked_add(delay).unwrap_or(start);
    m.rs.scale_downs.push(ScaleDown {
        revision: revision.to_string(),
        reason,
        due_time: Time(due),
    });
}

/// Keeps the RoleSets of every revision still inside its drain delay, except `serving` (the
/// revision the rollout wants at full size), and looks again when the next delay ends. Entries
/// whose revision is gone, or is `serving`, end.
pub(crate) fn keep_due(m: &mut Machine, serving: &str) {
    let obs = m.input.observed;
    m.rs.scale_downs
        .retain(|s| s.revision != serving && obs.existing(&s.revision) > 0);
    let mut next: Option<SignedDuration> = None;
    for s in &m.rs.scale_downs {
        let left = m.now.duration_until(s.due_time.0);
        if left > SignedDuration::ZERO {
            m.scale
                .insert(s.revision.clone(), obs.existing(&s.revision));
            next = Some(next.map_or(left, |n| n.min(left)));
        }
    }
    if let Some(left) = next {
        m.requeue_in(std::time::Duration::try_from(left).unwrap_or_default());
    }
}

/// A rollout (re)starts or goes on: drains of `update` end, it is wanted again.
pub(crate) fn forget(m: &mut Machine, update: &str) {
    m.rs.scale_downs.retain(|s| s.revision != update);
}
