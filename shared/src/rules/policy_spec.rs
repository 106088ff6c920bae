//! Rules for RolloutPolicy objects themselves.

use super::check_wait;
use crate::errors::{FieldError, FieldPath, Report};
use crate::policy::analysis::HostPattern;
use crate::types::policy::RolloutPolicy;
use kube::core::Selector;

/// Validates a RolloutPolicy.
pub fn validate_rollout_policy(p: &RolloutPolicy) -> Report {
    let mut report = Report::default();
    let path = FieldPath::new("spec");
    let s = &p.spec;
    if let Some(sel) = &s.namespace_selector
        && let Err(e) = Selector::try_from(sel.clone())
    {
        report.error(FieldError::invalid(
            path.child("namespaceSelector"),
            serde_json::to_value(sel).unwrap_or_default(),
            format!("not a valid label selector: {e}"),
        ));
    }
    let min = s
        .min_on_timeout
        .as_ref()
        .and_then(|t| check_wait(t, || path.child("minOnTimeout"), &mut report));
    let max = s
        .max_on_timeout
        .as_ref()
        .and_then(|t| check_wait(t, || path.child("maxOnTimeout"), &mut report));
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        report.error(FieldError::invalid(
            path.child("minOnTimeout"),
            s.min_on_timeout.as_deref().unwrap_or_default(),
            "must not be longer than maxOnTimeout",
        ));
    }
    for (field, v, lo) in [
        ("maxFirstStepWeight", s.max_first_step_weight, 0),
        ("maxWeightIncrease", s.max_weight_increase, 1),
        (
            "requireAnalysisAboveWeight",
            s.require_analysis_above_weight,
            0,
        ),
    ] {
        if let Some(v) = v
            && !(lo..=100).contains(&v)
        {
            report.error(FieldError::invalid(
                path.child(field),
                v,
                format!("must be between {lo} and 100"),
            ));
        }
    }
    if s.allowed_strategies.as_ref().is_some_and(Vec::is_empty) {
        report.error(FieldError::invalid(
            path.child("allowedStrategies"),
            serde_json::json!([]),
            "an empty list allows no strategy; remove the field to allow all",
        ));
    }
    if s.allowed_routers.as_ref().is_some_and(Vec::is_empty) {
        report.error(FieldError::invalid(
            path.child("allowedRouters"),
            serde_json::json!([]),
            "an empty list allows no router, not even plain Services; remove the field to allow all",
        ));
    }
    if s.allowed_analysis_providers
        .as_ref()
        .is_some_and(Vec::is_empty)
    {
        report.error(FieldError::invalid(
            path.child("allowedAnalysisProviders"),
            serde_json::json!([]),
            "an empty list allows no analysis provider, so no AnalysisTemplate; remove the field to allow all",
        ));
    }
    if let Some(hosts) = &s.allowed_analysis_hosts {
        let hp = path.child("allowedAnalysisHosts");
        if hosts.is_empty() {
            report.error(FieldError::invalid(
                hp.clone(),
                serde_json::json!([]),
                "an empty list allows no host, so no metric; remove the field to allow any host the controller's egress policy allows",
            ));
        }
        for (i, h) in hosts.iter().enumerate() {
            if let Err(why) = HostPattern::parse(h) {
                report.error(FieldError::invalid(hp.index(i), h, why));
            }
        }
    }
    report
}
