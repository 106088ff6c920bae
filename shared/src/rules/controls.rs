//! Rules for the manual control annotations.

use crate::errors::{FieldError, FieldPath, Report};
use crate::keys::{
    ANNOTATION_ABORT, ANNOTATION_APPROVAL, ANNOTATION_PAUSE, ANNOTATION_PROMOTE_FULL,
    ANNOTATION_RESUME, ANNOTATION_RETRY, CONTROL_ANNOTATIONS, CONTROL_VALUE,
};
use crate::types::stormservice::{RolloutPhase, StormService};

/// Prefix shared by the control annotations; a key with it that is not a control is a typo.
const CONTROL_PREFIX: &str = "stormservice.aibrix.ai/rollout-";

pub(super) fn check(obj: &StormService, report: &mut Report) {
    let Some(annotations) = &obj.metadata.annotations else {
        return;
    };
    let path = FieldPath::new("metadata").child("annotations");
    let set = |key: &str| annotations.contains_key(key);
    for (key, value) in annotations {
        if CONTROL_ANNOTATIONS.contains(&key.as_str()) {
            if value != CONTROL_VALUE {
                report.error(FieldError::invalid(
                    path.key(key),
                    value,
                    "a control annotation must be \"true\"; remove it to cancel the request",
                ));
            }
        } else if key.starts_with(CONTROL_PREFIX) {
            report.error(FieldError::not_supported(
                path.key(key),
                key,
                &CONTROL_ANNOTATIONS,
            ));
        }
    }
    if set(ANNOTATION_ABORT) {
        for other in [
            ANNOTATION_RESUME,
            ANNOTATION_APPROVAL,
            ANNOTATION_PROMOTE_FULL,
        ] {
            if set(other) {
                report.error(FieldError::forbidden(
                    path.key(other),
                    format!("must not be set together with {ANNOTATION_ABORT}: abort wins and the two contradict each other"),
                ));
            }
        }
    }
    if set(ANNOTATION_PAUSE) && set(ANNOTATION_RESUME) {
        report.error(FieldError::forbidden(
            path.key(ANNOTATION_RESUME),
            format!("must not be set together with {ANNOTATION_PAUSE}"),
        ));
    }
    if set(ANNOTATION_APPROVAL)
        && !set(ANNOTATION_ABORT)
        && !crate::status::waiting_for_approval(obj)
    {
        report.warn(
            path.key(ANNOTATION_APPROVAL),
            "nothing is waiting for approval; the controller will drop this annotation without acting",
        );
    }
    if set(ANNOTATION_RETRY) {
        let phase = obj
            .status
            .as_ref()
            .and_then(|s| s.rollout_status.as_ref())
            .and_then(|r| r.phase);
        if !matches!(phase, Some(RolloutPhase::Aborted | RolloutPhase::Degraded)) {
            report.warn(
                path.key(ANNOTATION_RETRY),
                "retry only acts on a rollout that is Aborted or Degraded; the controller will drop it otherwise",
            );
        }
    }
}
