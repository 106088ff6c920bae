//! Prometheus metrics of the controller: reconcile latency and errors, the phase, step and weight of
//! every rollout, why a rollout is degraded, rollbacks and analysis measurements. Served as
//! OpenMetrics text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use storm_shared::status::{ConditionType, Reason, condition_true};
use storm_shared::types::stormservice::{RolloutPhase, RolloutStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    name: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DegradedLabels {
    namespace: String,
    name: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MeasurementLabels {
    provider: &'static str,
    phase: &'static str,
}

fn reconcile_histogram() -> Histogram {
    // 1 ms .. ~16 s: a reconcile is a few API calls; anything slower than that is worth seeing as +Inf.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The controller's metrics registry. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    reconcile_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    rollout_phase: Family<PhaseLabels, Gauge>,
    rollout_step: Family<RolloutLabels, Gauge>,
    rollout_weight: Family<RolloutLabels, Gauge>,
    rollout_degraded: Family<DegradedLabels, Gauge>,
    /// The reason each degraded StormService's series carries, so the series goes when it changes.
    degraded_reasons: Mutex<HashMap<(String, String), &'static str>>,
    rollbacks: Family<ReasonLabels, Counter>,
    kube_requests: Family<VerbLabels, Counter>,
    analysis_measurements: Family<MeasurementLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered (and no series until something is observed).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconcile_duration =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                reconcile_histogram as fn() -> Histogram,
            );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let rollout_phase = Family::<PhaseLabels, Gauge>::default();
        let rollout_step = Family::<RolloutLabels, Gauge>::default();
        let rollout_weight = Family::<RolloutLabels, Gauge>::default();
        let rollbacks = Family::<ReasonLabels, Counter>::default();
        // Names are given without the `_total`/`_seconds` suffixes the encoder adds itself.
        registry.register_with_unit(
            "storm_reconcile_duration",
            "Time spent in one reconcile, by resource kind",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "storm_reconcile_errors",
            "Reconciles that failed, by resource kind and error",
            reconcile_errors.clone(),
        );
        registry.register(
            "storm_rollout_phase",
            "1 for the current rollout phase of a StormService, 0 for the others",
            rollout_phase.clone(),
        );
        registry.register(
            "storm_rollout_step",
            "Current canary step index of a StormService",
            rollout_step.clone(),
        );
        registry.register(
            "storm_rollout_weight",
            "Current canary traffic weight of a StormService, in percent",
            rollout_weight.clone(),
        );
        let rollout_degraded = Family::<DegradedLabels, Gauge>::default();
        registry.register(
            "storm_rollout_degraded",
            "1 while the rollout of a StormService is Degraded, labelled with the trigger \
             (AnalysisFailed, HealthCheckFailed, ErrorThresholdExceeded, ProgressDeadlineExceeded)",
            rollout_degraded.clone(),
        );
        registry.register(
            "storm_rollbacks",
            "Rollbacks (automatic and manual aborts), by reason",
            rollbacks.clone(),
        );
        let kube_requests = Family::<VerbLabels, Counter>::default();
        registry.register(
            "storm_kube_requests",
            "Requests the controller sent to the Kubernetes API server, by verb (watch counted apart)",
            kube_requests.clone(),
        );
        let analysis_measurements = Family::<MeasurementLabels, Counter>::default();
        registry.register(
            "storm_analysis_measurements",
            "Analysis measurements taken, by provider and outcome (Successful, Failed, Inconclusive, Error)",
            analysis_measurements.clone(),
        );
        Self {
            registry,
            kube_requests,
            analysis_measurements,
            reconcile_duration,
            reconcile_errors,
            rollout_phase,
            rollout_step,
            rollout_weight,
            rollout_degraded,
            degraded_reasons: Mutex::new(HashMap::new()),
            rollbacks,
        }
    }

    /// Counts one request to the API server: its HTTP method, or `WATCH` for watch requests.
    pub fn kube_request(&self, method: &http::Method, query: Option<&str>) {
        let verb =
            if query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) {
                "WATCH"
            } else {
                match *method {
                    http::Method::GET => "GET",
                    http::Method::POST => "POST",
                    http::Method::PUT => "PUT",
                    http::Method::PATCH => "PATCH",
                    http::Method::DELETE => "DELETE",
                    _ => "OTHER",
                }
            };
        self.kube_requests.get_or_create(&VerbLabels { verb }).inc();
    }

    /// Records one reconcile of `kind` (`RoleSet`, `StormService`) that took `seconds`; `error` is a
    /// short, bounded label (an error variant name such as `CreatePod`), never a free-form message.
    pub fn observe_reconcile(&self, kind: &'static str, seconds: f64, error: Option<&str>) {
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(seconds);
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    kind,
                    error: error.to_string(),
                })
                .inc();
        }
    }

    /// Publishes what a recorded rollout status says: phase, step and weight
    /// ([`Metrics::set_rollout`]) and the Degraded trigger ([`Metrics::set_degraded`]). Called once
    /// the status is stored, so the series never run ahead of, nor lag behind, what
    /// `kubectl get` shows for longer than the status write takes.
    pub fn publish_rollout(&self, namespace: &str, name: &str, status: Option<&RolloutStatus>) {
        self.set_rollout(
            namespace,
            name,
            status
                .and_then(|r| r.phase)
                .unwrap_or(RolloutPhase::Healthy),
            i64::from(status.and_then(|r| r.current_step_index).unwrap_or(0)),
            i64::from(
                status
                    .and_then(|r| r.canary_status.as_ref())
                    .map_or(0, |c| c.current_weight),
            ),
        );
        self.set_degraded(namespace, name, status.and_then(degraded_reason));
    }

    /// Publishes the rollout state of one StormService. Every phase has a series (1 for the
    /// current, 0 for the others), so queries like `storm_rollout_phase{phase="Degraded"} == 1`
    /// work without `absent()`.
    pub fn set_rollout(
        &self,
        namespace: &str,
        name: &str,
        phase: RolloutPhase,
        step: i64,
        weight: i64,
    ) {
        for known in RolloutPhase::ALL {
            let labels = PhaseLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                phase: known.as_str(),
            };
            self.rollout_phase
                .get_or_create(&labels)
                .set(i64::from(known == phase));
        }
        let labels = RolloutLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.rollout_step.get_or_create(&labels).set(step);
        self.rollout_weight.get_or_create(&labels).set(weight);
    }

    /// Removes every series of a StormService that no longer exists, so deleted services don't linger.
    pub fn forget_rollout(&self, namespace: &str, name: &str) {
        for known in RolloutPhase::ALL {
            self.rollout_phase.remove(&PhaseLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                phase: known.as_str(),
            });
        }
        let labels = RolloutLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.rollout_step.remove(&labels);
        self.rollout_weight.remove(&labels);
        self.set_degraded(namespace, name, None);
    }

    /// Publishes why the rollout of a StormService is Degraded (`Some(trigger)`: one series at 1,
    /// labelled with it) or that it is not (`None`: no series), so an alert can name the
    /// StormService and the trigger. [`degraded_reason`] reads the trigger from a status.
    pub fn set_degraded(&self, namespace: &str, name: &str, reason: Option<Reason>) {
        let reason = reason.map(Reason::as_str);
        let key = (namespace.to_string(), name.to_string());
        let labels = |reason| DegradedLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
            reason,
        };
        // The map only says which series to remove: a poisoned lock still holds a usable map.
        let mut current = self
            .degraded_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = match reason {
            Some(r) => current.insert(key, r),
            None => current.remove(&key),
        };
        if let Some(previous) = previous.filter(|p| Some(*p) != reason) {
            self.rollout_degraded.remove(&labels(previous));
        }
        if let Some(reason) = reason {
            self.rollout_degraded.get_or_create(&labels(reason)).set(1);
        }
    }

    /// Counts one rollback; `reason` is one of the bounded reasons (`AnalysisFailed`, `Aborted`, ...).
    pub fn rollback(&self, reason: &str) {
        self.rollbacks
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one analysis measurement; `provider` is `prometheus`, `web` or `datadog`, `phase` the
    /// measurement's phase (`Successful`, `Failed`, `Inconclusive`, `Error`).
    pub fn analysis_measurement(&self, provider: &'static str, phase: &'static str) {
        self.analysis_measurements
            .get_or_create(&MeasurementLabels { provider, phase })
            .inc();
    }

    /// All metrics in the OpenMetrics text format (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only come from a broken metric
        // implementation, and then a partial page beats a panic in the scrape handler.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The trigger a rollout is Degraded for: the reason of its True `Degraded` condition while the
/// phase is `Degraded` (rolled back, or halted with autoRollback disabled).
pub fn degraded_reason(status: &RolloutStatus) -> Option<Reason> {
    if status.phase != Some(RolloutPhase::Degraded) {
        return None;
    }
    condition_true(&status.conditions, ConditionType::Degraded)
        .and_then(|c| c.reason.as_deref())
        .and_then(Reason::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn kube_requests_are_counted_by_verb_with_watches_apart() {
        let m = Metrics::new();
        m.kube_request(&http::Method::GET, Some("labelSelector=a"));
        m.kube_request(&http::Method::GET, Some("watch=true&resourceVersion=1"));
        m.kube_request(&http::Method::PATCH, None);
        m.kube_request(&http::Method::PATCH, None);
        let text = m.encode();
        assert_eq!(
            line(&text, "storm_kube_requests_total{verb=\"GET\"}"),
            Some("storm_kube_requests_total{verb=\"GET\"} 1")
        );
        assert_eq!(
            line(&text, "storm_kube_requests_total{verb=\"WATCH\"}"),
            Some("storm_kube_requests_total{verb=\"WATCH\"} 1")
        );
        assert_eq!(
            line(&text, "storm_kube_requests_total{verb=\"PATCH\"}"),
            Some("storm_kube_requests_total{verb=\"PATCH\"} 2")
        );
    }

    #[test]
    fn reconcile_duration_and_errors_are_labelled_by_kind() {
        let m = Metrics::new();
        m.observe_reconcile("RoleSet", 0.003, None);
        m.observe_reconcile("RoleSet", 0.5, Some("CreatePod"));
        m.observe_reconcile("StormService", 0.01, None);
        let text = m.encode();
        assert_eq!(
            line(
                &text,
                "storm_reconcile_duration_seconds_count{kind=\"RoleSet\"}"
            ),
            Some("storm_reconcile_duration_seconds_count{kind=\"RoleSet\"} 2")
        );
        assert!(text.contains("storm_reconcile_duration_seconds_count{kind=\"StormService\"} 1"));
        assert!(
            text.contains("storm_reconcile_errors_total{kind=\"RoleSet\",error=\"CreatePod\"} 1")
        );
        assert!(!text.contains("storm_reconcile_errors_total{kind=\"StormService\""));
        assert!(text.contains("# TYPE storm_reconcile_duration_seconds histogram"));
        assert!(text.contains("# UNIT storm_reconcile_duration_seconds seconds"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn set_rollout_marks_exactly_the_current_phase() {
        let m = Metrics::new();
        m.set_rollout("ns", "llm", RolloutPhase::Progressing, 2, 40);
        let text = m.encode();
        for phase in RolloutPhase::ALL.map(RolloutPhase::as_str) {
            let want = i32::from(phase == "Progressing");
            let series = format!(
                "storm_rollout_phase{{namespace=\"ns\",name=\"llm\",phase=\"{phase}\"}} {want}"
            );
            assert!(text.contains(&series), "missing {series} in\n{text}");
        }
        assert!(text.contains("storm_rollout_step{namespace=\"ns\",name=\"llm\"} 2"));
        assert!(text.contains("storm_rollout_weight{namespace=\"ns\",name=\"llm\"} 40"));

        // A transition moves the 1 and overwrites step and weight.
        m.set_rollout("ns", "llm", RolloutPhase::Completed, 3, 100);
        let text = m.encode();
        assert!(text.contains("phase=\"Progressing\"} 0"));
        assert!(text.contains("phase=\"Completed\"} 1"));
        assert!(text.contains("storm_rollout_weight{namespace=\"ns\",name=\"llm\"} 100"));
    }

    #[test]
    fn forget_rollout_removes_only_that_service() {
        let m = Metrics::new();
        m.set_rollout("ns", "gone", RolloutPhase::Healthy, 0, 0);
        m.set_rollout("ns", "kept", RolloutPhase::Paused, 1, 20);
        m.forget_rollout("ns", "gone");
        let text = m.encode();
        assert!(!text.contains("name=\"gone\""), "{text}");
        assert!(text.contains("storm_rollout_step{namespace=\"ns\",name=\"kept\"} 1"));
        assert!(text.contains("name=\"kept\",phase=\"Paused\"} 1"));
    }

    #[test]
    fn degraded_rollouts_carry_their_trigger_until_they_recover() {
        let m = Metrics::new();
        m.set_degraded("ns", "llm", Some(Reason::AnalysisFailed));
        m.set_degraded("ns", "other", None);
        let text = m.encode();
        assert!(
            text.contains(
                "storm_rollout_degraded{namespace=\"ns\",name=\"llm\",reason=\"AnalysisFailed\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("name=\"other\""), "{text}");

        // A new trigger replaces the old series instead of adding one.
        m.set_degraded("ns", "llm", Some(Reason::ProgressDeadlineExceeded));
        let text = m.encode();
        assert!(!text.contains("reason=\"AnalysisFailed\""), "{text}");
        assert!(
            text.contains("reason=\"ProgressDeadlineExceeded\"} 1"),
            "{text}"
        );

        // Recovered (or deleted): no series left.
        m.set_degraded("ns", "llm", None);
        assert_eq!(m.encode(), "# EOF\n");
        m.set_degraded("ns", "llm", Some(Reason::HealthCheckFailed));
        m.forget_rollout("ns", "llm");
        assert_eq!(m.encode(), "# EOF\n");
    }

    #[test]
    fn the_degraded_reason_is_the_degraded_conditions_while_the_phase_is_degraded() {
        let condition = |type_: &str, status: &str, reason: &str| storm_shared::types::Condition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            ..Default::default()
        };
        let mut rs = RolloutStatus {
            phase: Some(RolloutPhase::Degraded),
            conditions: vec![
                condition("Progressing", "False", "RolledBack"),
                condition("Degraded", "True", "ProgressDeadlineExceeded"),
            ],
            ..Default::default()
        };
        assert_eq!(degraded_reason(&rs), Some(Reason::ProgressDeadlineExceeded));
        // Retried: the phase moved on before the condition was rewritten.
        rs.phase = Some(RolloutPhase::Progressing);
        assert_eq!(degraded_reason(&rs), None);
        rs.phase = Some(RolloutPhase::Degraded);
        rs.conditions[1] = condition("Degraded", "False", "NotDegraded");
        assert_eq!(degraded_reason(&rs), None);
    }

    #[test]
    fn a_recorded_status_publishes_its_phase_and_trigger_together() {
        let m = Metrics::new();
        let rs = RolloutStatus {
            phase: Some(RolloutPhase::Degraded),
            current_step_index: Some(1),
            conditions: vec![storm_shared::types::Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: Some("AnalysisFailed".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        m.publish_rollout("ns", "llm", Some(&rs));
        let text = m.encode();
        for series in [
            "storm_rollout_phase{namespace=\"ns\",name=\"llm\",phase=\"Degraded\"} 1",
            "storm_rollout_step{namespace=\"ns\",name=\"llm\"} 1",
            "storm_rollout_degraded{namespace=\"ns\",name=\"llm\",reason=\"AnalysisFailed\"} 1",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
        // No rollout status yet: Healthy, and no trigger.
        m.publish_rollout("ns", "llm", None);
        let text = m.encode();
        assert!(text.contains("phase=\"Healthy\"} 1"), "{text}");
        assert!(!text.contains("storm_rollout_degraded{"), "{text}");
    }

    #[test]
    fn rollbacks_count_by_reason() {
        let m = Metrics::new();
        m.rollback("AnalysisFailed");
        m.rollback("AnalysisFailed");
        m.rollback("Aborted");
        let text = m.encode();
        assert!(text.contains("storm_rollbacks_total{reason=\"AnalysisFailed\"} 2"));
        assert!(text.contains("storm_rollbacks_total{reason=\"Aborted\"} 1"));
    }

    #[test]
    fn analysis_measurements_count_by_provider_and_phase() {
        let m = Metrics::new();
        m.analysis_measurement("prometheus", "Successful");
        m.analysis_measurement("prometheus", "Successful");
        m.analysis_measurement("web", "Error");
        let text = m.encode();
        assert!(text.contains(
            "storm_analysis_measurements_total{provider=\"prometheus\",phase=\"Successful\"} 2"
        ));
        assert!(
            text.contains("storm_analysis_measurements_total{provider=\"web\",phase=\"Error\"} 1")
        );
    }

    #[test]
    fn an_unused_registry_encodes_an_empty_page() {
        // Families without series print nothing, not even their TYPE line.
        assert_eq!(Metrics::default().encode(), "# EOF\n");
    }
}
