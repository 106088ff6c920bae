//! Rollout settings with their defaults applied (the webhook defaults them too; the controller must
//! not depend on it).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::SignedDuration;
use storm_shared::types::stormservice::{self as types, CanaryStrategy, StormServiceSpec};
use storm_shared::units::{int_or_string_percent, parse_duration, scaled_value};

/// Automatic rollback, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoRollback {
    pub enabled: bool,
    pub health_check: bool,
    /// A failed analysis rolls back (true) or stops the rollout in place (false).
    pub analysis_failure: bool,
    pub error_threshold: Option<f64>,
    /// The error rate is measured by the `errorRate` metric (run `error-rate`); without it the
    /// share of failing canary Pods is used.
    pub error_rate_metric: bool,
    /// Time between error-rate measurements (the metric's `interval`, default 30s).
    pub error_rate_interval: SignedDuration,
    pub timeout: SignedDuration,
    pub grace: SignedDuration,
}

/// A duration setting; absent, unparsable or zero takes the default.
fn duration(text: Option<&str>, default_secs: i64) -> SignedDuration {
    text.and_then(|t| parse_duration(t).ok())
        .and_then(|d| SignedDuration::try_from(d).ok())
        .filter(|d| d.is_positive())
        .unwrap_or(SignedDuration::from_secs(default_secs))
}

/// The autoRollback block as written (canonical place first, the legacy one under `canary:`
/// second).
pub fn auto_rollback_block(spec: &StormServiceSpec) -> Option<&types::AutoRollback> {
    let strategy = spec.rollout_strategy.as_ref();
    strategy.and_then(|s| s.auto_rollback.as_ref()).or_else(|| {
        strategy
            .and_then(|s| s.canary.as_ref())
            .and_then(|c| c.auto_rollback.as_ref())
    })
}

/// The autoRollback block in force, with its defaults.
pub fn auto_rollback(spec: &StormServiceSpec) -> AutoRollback {
    let ar = auto_rollback_block(spec);
    let of = ar.and_then(|a| a.on_failure.as_ref());
    AutoRollback {
        enabled: ar.and_then(|a| a.enabled).unwrap_or(true),
        health_check: of.and_then(|f| f.health_check_failure).unwrap_or(true),
        analysis_failure: of.and_then(|f| f.analysis_failure).unwrap_or(true),
        error_threshold: of
            .and_then(|f| f.error_threshold.as_ref())
            .and_then(|t| int_or_string_percent(t).ok()),
        error_rate_metric: of
            .is_some_and(|f| f.error_rate.is_some() && f.error_threshold.is_some()),
        error_rate_interval: duration(
            of.and_then(|f| f.error_rate.as_ref())
                .and_then(|m| m.interval.as_deref()),
            30,
        ),
        timeout: duration(ar.and_then(|a| a.on_timeout.as_deref()), 30 * 60),
        grace: grace(
            spec,
            of.and_then(|f| f.health_check_grace_period.as_deref()),
        ),
    }
}

/// The health-check grace period: as written, else 5m or the Pods' startup window if that is
/// longer (a Pod loading a large model inside its startupProbe's window is not failing).
fn grace(spec: &StormServiceSpec, written: Option<&str>) -> SignedDuration {
    if written.is_some() {
        return duration(written, 5 * 60);
    }
    let window = storm_shared::startup::startup_window(spec).map_or(0, |w| w.seconds);
    SignedDuration::from_secs(window.max(5 * 60))
}

/// (max surge, max unavailable) in RoleSets for a rollout of `replicas`; at least one of them is
/// positive so a rollout can always move.
pub fn budgets(
    spec: &StormServiceSpec,
    canary: Option<&CanaryStrategy>,
    replicas: i32,
) -> (i32, i32) {
    let us = spec.update_strategy.as_ref();
    let quarter = IntOrString::String("25%".into());
    let surge = canary
        .and_then(|c| c.max_surge.as_ref())
        .or(us.and_then(|u| u.max_surge.as_ref()))
        .unwrap_or(&quarter);
    let unavailable = canary
        .and_then(|c| c.max_unavailable.as_ref())
        .or(us.and_then(|u| u.max_unavailable.as_ref()))
        .unwrap_or(&quarter);
    let surge = scaled_value(surge, replicas, true).unwrap_or(1).max(0);
    let unavailable = scaled_value(unavailable, replicas, false)
        .unwrap_or(0)
        .clamp(0, replicas);
    if surge == 0 && unavailable == 0 {
        (1, 0)
    } else {
        (surge, unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(probe: serde_json::Value, on_failure: serde_json::Value) -> StormServiceSpec {
        serde_json::from_value(json!({
            "template": {"spec": {"roles": [{"name": "r", "template": {"spec": {"containers": [
                {"name": "vllm", "image": "v", "startupProbe": probe}]}}}]}},
            "rolloutStrategy": {"type": "Canary", "canary": {"steps": [{"weight": 50}]},
                "autoRollback": {"onFailure": on_failure}}
        }))
        .expect("spec")
    }

    #[test]
    fn the_grace_period_defaults_to_the_startup_window_when_longer() {
        let slow = json!({"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 30, "failureThreshold": 60});
        assert_eq!(
            auto_rollback(&spec(slow.clone(), json!({}))).grace,
            SignedDuration::from_secs(30 * 60),
            "a model that may load for 30 minutes"
        );
        let quick = json!({"tcpSocket": {"port": 8000}});
        assert_eq!(
            auto_rollback(&spec(quick, json!({}))).grace,
            SignedDuration::from_mins(5),
            "never below the 5m default"
        );
        assert_eq!(
            auto_rollback(&spec(slow, json!({"healthCheckGracePeriod": "2m"}))).grace,
            SignedDuration::from_mins(2),
            "what is written wins (the webhook warns about it)"
        );
    }
}
