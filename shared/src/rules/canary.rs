//! Rules for canary steps and the canary's services.

use super::{check_analysis_ref, check_budget, check_wait, names, routing};
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::stormservice::{CanaryStrategy, MAX_WEIGHT};

pub(super) fn check(
    canary: &CanaryStrategy,
    replicas: i32,
    path: &dyn Fn() -> FieldPath,
    report: &mut Report,
) {
    let steps_path = || path().child("steps");
    if canary.steps.is_empty() {
        report.error(FieldError::required(
            steps_path(),
            "a canary needs at least one step, e.g. `- weight: 10` followed by a pause",
        ));
    }
    // The last weight seen, with the index of its step, to keep weights from going down.
    let mut previous: Option<(usize, i32)> = None;
    for (i, step) in canary.steps.iter().enumerate() {
        // Paths are made only for a problem: most steps are fine.
        let sp = || steps_path().index(i);
        if step.weight.is_none()
            && step.replicas.is_none()
            && step.pause.is_none()
            && step.analysis.is_none()
        {
            report.error(FieldError::required(
                sp(),
                "a step needs at least one of weight, replicas, pause or analysis",
            ));
        }
        if step.weight.is_some() && step.replicas.is_some() {
            report.error(FieldError::forbidden(
                sp().child("replicas"),
                "set either weight or replicas in a step, not both",
            ));
        }
        if let Some(w) = step.weight {
            if !(0..=MAX_WEIGHT).contains(&w) {
                report.error(FieldError::invalid(
                    sp().child("weight"),
                    w,
                    "must be between 0 and 100",
                ));
            } else {
                if let Some((pi, pw)) = previous
                    && w < pw
                {
                    report.error(FieldError::invalid(
                        sp().child("weight"),
                        w,
                        format!("must not be less than the weight of steps[{pi}] ({pw}); weights only go up, use abort to go back"),
                    ));
                }
                previous = Some((i, w));
            }
        }
        if let Some(r) = step.replicas {
            if r < 0 {
                report.error(FieldError::invalid(
                    sp().child("replicas"),
                    r,
                    "must be greater than or equal to 0",
                ));
            } else if r > replicas {
                report.error(FieldError::invalid(
                    sp().child("replicas"),
                    r,
                    format!("must not exceed spec.replicas ({replicas})"),
                ));
            }
        }
        if let Some(pause) = &step.pause {
            let pp = || sp().child("pause");
            let approval = pause.until_approval.unwrap_or(false);
            match (&pause.duration, approval) {
                (Some(_), true) => report.error(FieldError::forbidden(
                    pp(),
                    "set either duration or untilApproval: true, not both",
                )),
                (None, false) => report.error(FieldError::required(
                    pp(),
                    "a pause needs a duration (e.g. 5m) or untilApproval: true",
                )),
                _ => {}
            }
            if let Some(d) = &pause.duration {
                check_wait(d, || pp().child("duration"), report);
            }
        }
        if let Some(analysis) = &step.analysis {
            check_analysis_ref(analysis, &|| sp().child("analysis"), report);
        }
    }
    check_services(canary, path, report);
    if canary.dynamic_stable_scale == Some(true) && canary.traffic_routing.is_none() {
        report.error(FieldError::invalid(
            path().child("dynamicStableScale"),
            true,
            "needs trafficRouting: without a router the split is by RoleSet count, so stable \
             already shrinks as the canary grows; remove dynamicStableScale or set trafficRouting",
        ));
    }
    if let Some(tr) = &canary.traffic_routing {
        routing::check(tr, &|| path().child("trafficRouting"), report);
    } else {
        warn_coarse_split(canary, replicas, &steps_path, report);
    }
    if let Some(v) = &canary.max_surge {
        check_budget(v, || path().child("maxSurge"), report);
    }
    if let Some(v) = &canary.max_unavailable {
        check_budget(v, || path().child("maxUnavailable"), report);
    }
    super::bluegreen::check_delay(
        canary.scale_down_delay_seconds,
        || path().child("scaleDownDelaySeconds"),
        report,
    );
    super::bluegreen::check_delay(
        canary.abort_scale_down_delay_seconds,
        || path().child("abortScaleDownDelaySeconds"),
        report,
    );
}

fn check_services(canary: &CanaryStrategy, path: &dyn Fn() -> FieldPath, report: &mut Report) {
    for (field, value) in [
        ("stableService", &canary.stable_service),
        ("canaryService", &canary.canary_service),
    ] {
        if let Some(name) = value
            && let Some(why) = names::dns1035_label(name)
        {
            report.error(FieldError::invalid(path().child(field), name, why));
        }
    }
    if canary.traffic_routing.is_some() {
        for (field, value) in [
            ("stableService", &canary.stable_service),
            ("canaryService", &canary.canary_service),
        ] {
            if value.is_none() {
                report.error(FieldError::required(
                    path().child(field),
                    "traffic routing needs both stableService and canaryService",
                ));
            }
        }
    }
    if let (Some(s), Some(c)) = (&canary.stable_service, &canary.canary_service)
        && s == c
        && !s.is_empty()
    {
        report.error(FieldError::invalid(
            path().child("canaryService"),
            c,
            "must differ from stableService: each Service selects one revision",
        ));
    }
}

/// Without a router the split is by RoleSet count, which is coarse for small services: say so.
fn warn_coarse_split(
    canary: &CanaryStrategy,
    replicas: i32,
    steps_path: &dyn Fn() -> FieldPath,
    report: &mut Report,
) {
    if replicas <= 0 {
        return;
    }
    for (i, step) in canary.steps.iter().enumerate() {
        let Some(w) = step.weight else { continue };
        if !(1..MAX_WEIGHT).contains(&w) {
            continue;
        }
        let canary_sets = (i64::from(replicas) * i64::from(w) + 99) / 100;
        let actual = canary_sets * 100 / i64::from(replicas);
        if actual != i64::from(w) {
            report.warn(
                steps_path().index(i).child("weight"),
                format!(
                    "without trafficRouting the split is by RoleSets: weight {w} with {replicas} replica(s) gives the canary {canary_sets} RoleSet(s), about {actual}% of capacity"
                ),
            );
        }
    }
}
