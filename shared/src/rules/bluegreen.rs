//! Rules for blue-green rollouts.

use super::{check_analysis_ref, names};
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::stormservice::BlueGreenStrategy;

/// Longest drain delay (`scaleDownDelaySeconds`, `abortScaleDownDelaySeconds`): one day. Longer
/// keeps a full second copy of an LLM fleet for no reason.
const MAX_SCALE_DOWN_DELAY: i32 = 24 * 3600;

/// A drain delay between 0 and [`MAX_SCALE_DOWN_DELAY`] (both strategies).
pub(super) fn check_delay(
    value: Option<i32>,
    path: impl FnOnce() -> FieldPath,
    report: &mut Report,
) {
    if let Some(d) = value
        && !(0..=MAX_SCALE_DOWN_DELAY).contains(&d)
    {
        report.error(FieldError::invalid(
            path(),
            d,
            "must be between 0 and 86400 (one day)",
        ));
    }
}

pub(super) fn check(bg: &BlueGreenStrategy, replicas: i32, path: &FieldPath, report: &mut Report) {
    for (field, value) in [
        ("activeService", &bg.active_service),
        ("previewService", &bg.preview_service),
    ] {
        if value.is_empty() {
            report.error(FieldError::required(
                path.child(field),
                "the name of a Service in this namespace",
            ));
        } else if let Some(why) = names::dns1035_label(value) {
            report.error(FieldError::invalid(path.child(field), value, why));
        }
    }
    if !bg.active_service.is_empty() && bg.active_service == bg.preview_service {
        report.error(FieldError::invalid(
            path.child("previewService"),
            &bg.preview_service,
            "must differ from activeService: the preview must not receive production traffic",
        ));
    }
    check_delay(
        bg.scale_down_delay_seconds,
        || path.child("scaleDownDelaySeconds"),
        report,
    );
    check_delay(
        bg.abort_scale_down_delay_seconds,
        || path.child("abortScaleDownDelaySeconds"),
        report,
    );
    if let Some(n) = bg.preview_replica_count
        && !(1..=replicas.max(1)).contains(&n)
    {
        report.error(FieldError::invalid(
            path.child("previewReplicaCount"),
            n,
            format!(
                "must be between 1 and spec.replicas ({replicas}): the preview runs with that many RoleSets until the promotion grows it to {replicas}"
            ),
        ));
    }
    check_delay(
        bg.auto_promotion_seconds,
        || path.child("autoPromotionSeconds"),
        report,
    );
    if bg.auto_promotion_enabled == Some(true) && bg.auto_promotion_seconds.is_some() {
        report.warn(
            path.child("autoPromotionSeconds"),
            "has no effect with autoPromotionEnabled: true, which promotes as soon as the preview is ready; set autoPromotionEnabled: false to promote after the delay",
        );
    }
    if let Some(a) = &bg.pre_promotion_analysis {
        check_analysis_ref(a, &|| path.child("prePromotionAnalysis"), report);
    }
    if let Some(a) = &bg.post_promotion_analysis {
        check_analysis_ref(a, &|| path.child("postPromotionAnalysis"), report);
    }
}
