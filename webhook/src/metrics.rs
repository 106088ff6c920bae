//! Prometheus metrics: requests by endpoint, kind, operation and result; latency by the same
//! (less the result). Labels are closed enums, so a hostile request can't grow the series count.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

/// The kind of object a review was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KindLabel {
    /// orchestration.aibrix.ai StormService.
    StormService,
    /// orchestration.aibrix.ai AnalysisTemplate.
    AnalysisTemplate,
    /// orchestration.aibrix.ai RolloutPolicy.
    RolloutPolicy,
    /// Anything else (a misconfigured webhook rule).
    Other,
    /// The body was not a review.
    None,
}

/// The admission operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationLabel {
    /// CREATE.
    Create,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// CONNECT.
    Connect,
    /// Anything else, or no review at all.
    Other,
}

impl OperationLabel {
    /// The label for an AdmissionRequest `operation`.
    pub fn from_operation(op: &str) -> Self {
        match op {
            "CREATE" => Self::Create,
            "UPDATE" => Self::Update,
            "DELETE" => Self::Delete,
            "CONNECT" => Self::Connect,
            _ => Self::Other,
        }
    }
}

/// What the webhook answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultLabel {
    /// Allowed without changes.
    Allowed,
    /// Allowed with a defaulting patch.
    Patched,
    /// Denied (`allowed: false`).
    Denied,
    /// The body was not a review this server answers (HTTP 400).
    BadRequest,
}

/// Which endpoint served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointLabel {
    /// `/mutate`.
    Mutate,
    /// `/validate`.
    Validate,
    /// `/noop` (benchmark ceiling).
    Noop,
}

/// What one review came to, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Kind of the object.
    pub kind: KindLabel,
    /// Operation.
    pub operation: OperationLabel,
    /// Answer.
    pub result: ResultLabel,
    /// Namespace of the object (empty when cluster-scoped or unknown).
    pub namespace: String,
    /// Name of the object (empty with generateName or when unknown).
    pub name: String,
    /// The denial or refusal message, if any.
    pub denial: Option<String>,
}

impl Outcome {
    /// An outcome with no review behind it.
    pub fn bare(result: ResultLabel) -> Self {
        Self {
            kind: KindLabel::None,
            operation: OperationLabel::Other,
            result,
            namespace: String::new(),
            name: String::new(),
            denial: None,
        }
    }
}

/// Label values as Kubernetes spells them.
macro_rules! label_values {
    ($t:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $t {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_values!(KindLabel {
    StormService => "StormService",
    AnalysisTemplate => "AnalysisTemplate",
    RolloutPolicy => "RolloutPolicy",
    Other => "other",
    None => "none",
});
label_values!(OperationLabel {
    Create => "CREATE",
    Update => "UPDATE",
    Delete => "DELETE",
    Connect => "CONNECT",
    Other => "other",
});
label_values!(ResultLabel {
    Allowed => "allowed",
    Patched => "patched",
    Denied => "denied",
    BadRequest => "bad_request",
});
label_values!(EndpointLabel {
    Mutate => "mutate",
    Validate => "validate",
    Noop => "noop",
});
label_values!(ReloadResult {
    Success => "success",
    Failure => "failure",
});

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    endpoint: EndpointLabel,
    kind: KindLabel,
    operation: OperationLabel,
    result: ResultLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LatencyLabels {
    endpoint: EndpointLabel,
    kind: KindLabel,
    operation: OperationLabel,
}

fn latency_histogram() -> Histogram {
    // 50µs .. ~1.6s: admission answers are sub-millisecond; the API server gives up at 5s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 16,
    ))
}

/// The webhook's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    cert_reloads: Family<ReloadLabels, Counter>,
    ready: Gauge<i64, AtomicI64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// Whether a certificate reload took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// The new pair is served.
    Success,
    /// The new pair was refused; the old one is still served.
    Failure,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("storm_webhook");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Admission requests by endpoint, kind, operation and result",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer an admission request, body read to response encoded",
            latency.clone(),
        );
        let cert_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads after the files changed",
            cert_reloads.clone(),
        );
        let ready = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "ready",
            "1 when every watch cache has synced",
            ready.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            cert_reloads,
            ready,
        }
    }

    /// Counts one request and its latency.
    pub fn observe(&self, endpoint: EndpointLabel, outcome: &Outcome, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                kind: outcome.kind,
                operation: outcome.operation,
                result: outcome.result,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                endpoint,
                kind: outcome.kind,
                operation: outcome.operation,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a certificate reload.
    pub fn cert_reload(&self, result: ReloadResult) {
        self.cert_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// Records readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_labels() {
        let m = Metrics::new();
        let o = Outcome {
            kind: KindLabel::StormService,
            operation: OperationLabel::Create,
            result: ResultLabel::Denied,
            namespace: "ns".into(),
            name: "x".into(),
            denial: None,
        };
        m.observe(EndpointLabel::Validate, &o, Duration::from_micros(300));
        m.observe(EndpointLabel::Validate, &o, Duration::from_micros(300));
        let text = m.encode();
        assert!(
            text.contains(r#"storm_webhook_requests_total{endpoint="validate",kind="StormService",operation="CREATE",result="denied"} 2"#),
            "{text}"
        );
        assert!(text.contains("storm_webhook_request_duration_seconds_bucket"));
    }
}
