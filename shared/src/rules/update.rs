//! Rules that compare an update with the stored object.

use super::routing::routers;
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::stormservice::{RolloutPhase, StormService};

/// Whether the stored object is in the middle of a rollout.
fn in_progress(obj: &StormService) -> Option<RolloutPhase> {
    let phase = obj.status.as_ref()?.rollout_status.as_ref()?.phase?;
    matches!(phase, RolloutPhase::Progressing | RolloutPhase::Paused).then_some(phase)
}

pub(super) fn check(new: &StormService, old: &StormService, report: &mut Report) {
    let Some(phase) = in_progress(old) else {
        return;
    };
    let path = FieldPath::new("spec").child("rolloutStrategy");
    let how = format!(
        "cannot be changed while a rollout is in progress (phase {phase}); abort it (stormservice.aibrix.ai/rollout-abort=true) or let it complete first"
    );
    let (Some(old_s), new_s) = (&old.spec.rollout_strategy, &new.spec.rollout_strategy) else {
        return;
    };
    let Some(new_s) = new_s else {
        report.error(FieldError::forbidden(path, how));
        return;
    };
    if old_s.type_ != new_s.type_ {
        report.error(FieldError::forbidden(path.child("type"), how));
        return;
    }
    let router_of = |s: &crate::types::stormservice::RolloutStrategy| {
        s.canary
            .as_ref()
            .and_then(|c| c.traffic_routing.clone())
            .map(|tr| (routers(&tr), tr))
    };
    let (old_r, new_r) = (router_of(old_s), router_of(new_s));
    let changed = match (&old_r, &new_r) {
        (None, None) => false,
        (Some((ok, otr)), Some((nk, ntr))) => ok != nk || otr != ntr,
        _ => true,
    };
    if changed {
        report.error(FieldError::forbidden(
            path.child("canary").child("trafficRouting"),
            how,
        ));
    }
}
