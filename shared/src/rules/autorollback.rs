//! Rules for automatic rollback.

use super::check_wait;
use super::egress_rules::AnalysisBounds;
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::stormservice::{AutoRollback, RolloutStrategy};

pub(super) fn check(
    ar: &AutoRollback,
    path: &dyn Fn() -> FieldPath,
    bounds: &AnalysisBounds,
    report: &mut Report,
) {
    if let Some(t) = &ar.on_timeout {
        check_wait(t, || path().child("onTimeout"), report);
    }
    let Some(of) = &ar.on_failure else { return };
    // Paths are made only for a problem.
    let fp = || path().child("onFailure");
    if let Some(th) = &of.error_threshold {
        let p = || fp().child("errorThreshold");
        match crate::units::int_or_string_percent(th) {
            Ok(v) if v > 0.0 && v <= 100.0 => {}
            Ok(v) => report.error(FieldError::invalid(
                p(),
                th,
                format!("must be a percentage in (0, 100], got {v}"),
            )),
            Err(e) => report.error(FieldError::invalid(p(), th, e.to_string())),
        }
    }
    if let Some(g) = &of.health_check_grace_period {
        check_wait(g, || fp().child("healthCheckGracePeriod"), report);
    }
    if let Some(metric) = &of.error_rate {
        super::analysis::check_error_rate_metric(
            metric,
            &fp().child("errorRate"),
            of.error_threshold.is_some(),
            bounds,
            report,
        );
        if of.error_threshold.is_none() {
            report.warn(
                fp().child("errorRate"),
                "errorRate has no effect without errorThreshold; set errorThreshold (e.g. \"5%\")",
            );
        }
    }
}

/// The seed's migration guide puts `autoRollback` under `canary:`. Admission moves it (see
/// `defaults`); here we only catch the case it cannot fix: two different blocks.
pub(super) fn check_placement(
    strategy: &RolloutStrategy,
    path: &FieldPath,
    bounds: &AnalysisBounds,
    report: &mut Report,
) {
    let Some(legacy) = strategy
        .canary
        .as_ref()
        .and_then(|c| c.auto_rollback.as_ref())
    else {
        return;
    };
    let legacy_path = path.child("canary").child("autoRollback");
    match &strategy.auto_rollback {
        Some(canonical) if canonical != legacy => report.error(FieldError::forbidden(
            legacy_path,
            "autoRollback is set both here and at spec.rolloutStrategy.autoRollback with different values; keep only spec.rolloutStrategy.autoRollback",
        )),
        Some(_) => report.warn(legacy_path, "duplicate of spec.rolloutStrategy.autoRollback; remove it"),
        None => {
            report.warn(
                legacy_path.clone(),
                "autoRollback belongs at spec.rolloutStrategy.autoRollback; admission moves it there",
            );
            check(legacy, &|| legacy_path.clone(), bounds, report);
        }
    }
}

/// An explicit `healthCheckGracePeriod` shorter than the Pods' startup window would count a Pod
/// that is still loading its model as failing, and roll the rollout back: a warning with the
/// numbers (the controller's default already covers the window).
pub(super) fn check_grace_against_startup(
    spec: &crate::types::stormservice::StormServiceSpec,
    ar: &AutoRollback,
    path: &dyn Fn() -> FieldPath,
    report: &mut Report,
) {
    let Some(text) = ar
        .on_failure
        .as_ref()
        .and_then(|f| f.health_check_grace_period.as_deref())
    else {
        return;
    };
    let (Ok(grace), Some(window)) = (
        crate::units::parse_duration(text),
        crate::startup::startup_window(spec),
    ) else {
        return;
    };
    let needed = std::time::Duration::from_secs(u64::try_from(window.seconds).unwrap_or(0));
    if grace < needed {
        report.warn(
            path().child("onFailure").child("healthCheckGracePeriod"),
            format!(
                "{text} is shorter than the startup window of role {} container {} ({}: its startupProbe's initialDelaySeconds + periodSeconds x failureThreshold, plus its first readiness check): a Pod still loading its model would count as failing and roll the rollout back; set at least {} or leave it out (it then defaults to the startup window)",
                window.role,
                window.container,
                crate::units::format_duration(needed),
                crate::units::format_duration(needed),
            ),
        );
    }
}
