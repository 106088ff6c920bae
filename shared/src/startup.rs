//! How long a StormService's Pods may take to start: the window their startup probes allow.
//!
//! An LLM server loads its model before it answers: minutes for a large one. Kubernetes expresses
//! that with a `startupProbe`: the kubelet restarts the container only after
//! `initialDelaySeconds + periodSeconds × failureThreshold` without a success. A new Pod inside that
//! window is loading, not failing, so automatic rollback must not count it as unhealthy before the
//! window (and its first readiness check) has passed.

use crate::types::stormservice::StormServiceSpec;
use k8s_openapi::api::core::v1::Probe;

/// Kubernetes' defaults for a probe's timing.
const DEFAULT_PERIOD: i64 = 10;
const DEFAULT_FAILURE_THRESHOLD: i64 = 3;
const DEFAULT_SUCCESS_THRESHOLD: i64 = 1;

/// The longest startup window among a StormService's containers, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupWindow {
    /// Seconds from the container's start until its startup probe gives up, plus its readiness
    /// probe's first chance to pass.
    pub seconds: i64,
    /// The role and container it belongs to.
    pub role: String,
    pub container: String,
}

fn positive(v: Option<i32>, default: i64) -> i64 {
    v.map(i64::from).filter(|v| *v > 0).unwrap_or(default)
}

/// `initialDelaySeconds + periodSeconds × threshold` of a probe.
fn probe_window(p: &Probe, threshold: Option<i32>, default_threshold: i64) -> i64 {
    let delay = p.initial_delay_seconds.map(i64::from).unwrap_or(0).max(0);
    delay + positive(p.period_seconds, DEFAULT_PERIOD) * positive(threshold, default_threshold)
}

/// The longest startup window of any container (init containers excluded: they finish before the
/// others start) of any role, for containers with a `startupProbe`; `None` when none has one.
pub fn startup_window(spec: &StormServiceSpec) -> Option<StartupWindow> {
    let mut longest: Option<StartupWindow> = None;
    for role in spec.template.roles() {
        let containers = role.containers();
        for c in containers {
            let Some(startup) = &c.startup_probe else {
                continue;
            };
            let mut seconds = probe_window(
                startup,
                startup.failure_threshold,
                DEFAULT_FAILURE_THRESHOLD,
            );
            if let Some(ready) = &c.readiness_probe {
                seconds += probe_window(ready, ready.success_threshold, DEFAULT_SUCCESS_THRESHOLD);
            }
            if longest.as_ref().is_none_or(|l| seconds > l.seconds) {
                longest = Some(StartupWindow {
                    seconds,
                    role: role.name.clone(),
                    container: c.name.clone(),
                });
            }
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(containers: serde_json::Value) -> StormServiceSpec {
        serde_json::from_value(json!({"template": {"spec": {"roles": [
            {"name": "prefill", "template": {"spec": {"containers": [{"name": "small", "image": "x"}]}}},
            {"name": "decode", "template": {"spec": {"containers": containers}}}
        ]}}}))
        .expect("spec")
    }

    #[test]
    fn the_longest_startup_probe_plus_the_first_readiness_check() {
        let s = spec(json!([
            {"name": "vllm", "image": "v",
             "startupProbe": {"httpGet": {"path": "/health", "port": 8000}, "initialDelaySeconds": 60, "periodSeconds": 30, "failureThreshold": 40},
             "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5}},
            {"name": "sidecar", "image": "s", "startupProbe": {"exec": {"command": ["true"]}}}
        ]));
        assert_eq!(
            startup_window(&s),
            Some(StartupWindow {
                seconds: 60 + 30 * 40 + 5,
                role: "decode".into(),
                container: "vllm".into()
            })
        );
    }

    #[test]
    fn kubernetes_defaults_apply_and_no_probe_means_no_window() {
        let s =
            spec(json!([{"name": "c", "image": "x", "startupProbe": {"tcpSocket": {"port": 1}}}]));
        assert_eq!(startup_window(&s).map(|w| w.seconds), Some(30));
        assert_eq!(
            startup_window(&spec(json!([{"name": "c", "image": "x"}]))),
            None
        );
    }
}
