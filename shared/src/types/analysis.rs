//! AnalysisTemplate: metrics that decide whether a rollout may go on.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AnalysisTemplate defines metrics whose results decide whether a rollout step succeeds.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "orchestration.aibrix.ai",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    namespaced,
    category = "aibrix",
    derive = "PartialEq",
    derive = "Default",
    doc = "AnalysisTemplate defines metrics, queried from Prometheus, a web endpoint or Datadog, whose results decide whether a rollout step succeeds.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    /// Arguments the metrics use as `{{args.NAME}}`; values come from the StormService's analysis `args`
    /// or from `value` here as a default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<TemplateArg>,
    /// The metrics; every one must succeed.
    #[serde(default)]
    pub metrics: Vec<Metric>,
}

/// An argument declared by a template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateArg {
    /// Name, as used in `{{args.NAME}}`.
    pub name: String,
    /// Default value, used when the StormService gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One metric: a provider query measured `count` times every `interval`, judged by CEL conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// Name of the metric, unique within the template.
    pub name: String,
    /// Where the value comes from: exactly one of `prometheus`, `web`, `datadog`.
    pub provider: MetricProvider,
    /// CEL expression over `result` that marks a measurement successful, for example `result < 0.05`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// CEL expression over `result` that marks a measurement failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Time between measurements (Go-style duration). Required when `count` is above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Wait before the first measurement (Go-style duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    /// Number of measurements. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<i32>,
    /// Failed measurements tolerated before the metric fails; -1 tolerates any number. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub failure_limit: Option<i32>,
    /// Inconclusive measurements tolerated before the metric is inconclusive. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub inconclusive_limit: Option<i32>,
    /// Consecutive query errors tolerated before the metric fails. Defaults to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub consecutive_error_limit: Option<i32>,
}

/// Where a metric's value comes from. Set exactly one provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricProvider {
    /// Prometheus instant query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// HTTP request whose JSON body holds the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
    /// Datadog metrics query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<DatadogMetric>,
}

/// A Prometheus instant query.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusMetric {
    /// Base URL of the Prometheus server, for example `http://prometheus.monitoring:9090`.
    pub address: String,
    /// PromQL query; may use `{{args.NAME}}`.
    pub query: String,
    /// Query timeout (Go-style duration). Defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// An HTTP request whose JSON response holds the value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebMetric {
    /// URL to call; may use `{{args.NAME}}`.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<WebMethod>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<WebHeader>,
    /// Request body, for `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// JSONPath to the value in the response body, for example `{$.data.errorRate}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    /// Request timeout (Go-style duration). Defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// HTTP method of a web metric.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WebMethod {
    /// HTTP GET.
    #[serde(rename = "GET")]
    Get,
    /// HTTP POST.
    #[serde(rename = "POST")]
    Post,
}

/// An HTTP header: a literal `value`, or `valueFrom` a key of a Secret in the StormService's namespace.
/// `Host`, hop-by-hop headers and cloud metadata headers are refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebHeader {
    /// Header name.
    pub key: String,
    /// Header value. Set this or `valueFrom`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// Where the value comes from instead of `value`: a Secret key, read when the metric is measured
    /// and never written to status, Events or logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<HeaderValueSource>,
}

/// The source of a header value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValueSource {
    /// A key of a Secret in the StormService's namespace.
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the namespace of the object that uses it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key in the Secret's data.
    pub key: String,
}

/// A Datadog metrics query.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatadogMetric {
    /// Metrics query; may use `{{args.NAME}}`.
    pub query: String,
    /// Time window the query covers, ending now (Go-style duration). Defaults to 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Datadog API site: one of Datadog's https sites (`https://api.datadoghq.com`, the default,
    /// `https://api.datadoghq.eu`, `https://api.us3.datadoghq.com`, ...). Any other address must come
    /// from the key `address` of the Secret, so only who may write the keys chooses where they go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Secret (in the StormService's namespace) holding the keys `api-key` and `app-key`, and
    /// optionally `address`, which overrides `address` here.
    pub secret_ref: SecretRef,
}

/// A Secret in the namespace of the object that uses it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    pub name: String,
}
