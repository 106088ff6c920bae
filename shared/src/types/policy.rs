//! RolloutPolicy: rules cluster admins enforce on every StormService in selected namespaces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// RolloutPolicy sets cluster-wide rules for StormService rollouts in the namespaces it selects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "orchestration.aibrix.ai",
    version = "v1alpha1",
    kind = "RolloutPolicy",
    category = "aibrix",
    derive = "PartialEq",
    derive = "Default",
    doc = "RolloutPolicy sets cluster-wide rules for StormService rollouts in the namespaces it selects; `Enforce` denies violations, `Warn` reports them.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicySpec {
    /// Namespaces the policy applies to, by label. Empty or absent selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// `Enforce` (default) denies violating StormServices; `Warn` admits them with warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PolicyMode>,
    /// Largest weight the first canary step may set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_first_step_weight: Option<i32>,
    /// Largest weight increase from one canary step to the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_weight_increase: Option<i32>,
    /// Weight above which an analysis must have run at this or an earlier step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub require_analysis_above_weight: Option<i32>,
    /// Require a manual approval (canary `pause.untilApproval`, or blue-green without auto-promotion)
    /// before full promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_approval_before_promotion: Option<bool>,
    /// Require every StormService to declare a `rolloutStrategy` (no plain rolling updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_rollout_strategy: Option<bool>,
    /// Require `autoRollback.enabled: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_auto_rollback: Option<bool>,
    /// Shortest `autoRollback.onTimeout` allowed (Go-style duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_on_timeout: Option<String>,
    /// Longest `autoRollback.onTimeout` allowed (Go-style duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_on_timeout: Option<String>,
    /// Rollout strategies allowed. Absent allows all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_strategies: Option<Vec<crate::types::stormservice::RolloutStrategyType>>,
    /// Traffic routers allowed (`service` means no router, routing by Services only). Absent allows all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routers: Option<Vec<RouterKind>>,
    /// Analysis providers the selected namespaces' AnalysisTemplates and error-rate metrics may use.
    /// Absent allows all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_analysis_providers: Option<Vec<AnalysisProviderKind>>,
    /// Hosts analysis metrics may query (Prometheus `address`, web `url`, Datadog `address`):
    /// exact host names, `*.domain` patterns or IP addresses. Absent allows any host the
    /// controller's egress policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_analysis_hosts: Option<Vec<String>>,
    /// Deny StormServices whose referenced Services, Ingresses, mesh objects or AnalysisTemplates don't exist
    /// or don't fit (otherwise those are warnings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_referenced_objects: Option<bool>,
}

/// An analysis provider.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum AnalysisProviderKind {
    /// Prometheus instant queries.
    #[serde(rename = "prometheus")]
    Prometheus,
    /// HTTP requests with a JSON reply.
    #[serde(rename = "web")]
    Web,
    /// Datadog metrics queries.
    #[serde(rename = "datadog")]
    Datadog,
}

/// What a policy does with a violation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PolicyMode {
    /// Deny the StormService.
    #[default]
    Enforce,
    /// Admit it with a warning.
    Warn,
}

/// A kind of traffic router.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum RouterKind {
    /// No router: the split is by RoleSet count, Services pinned by revision.
    #[serde(rename = "service")]
    Service,
    /// nginx ingress.
    #[serde(rename = "nginx")]
    Nginx,
    /// Istio VirtualService.
    #[serde(rename = "istio")]
    Istio,
    /// SMI TrafficSplit.
    #[serde(rename = "smi")]
    Smi,
    /// Gateway API HTTPRoute.
    #[serde(rename = "gatewayAPI")]
    GatewayApi,
}

impl RouterKind {
    /// The name as written in `trafficRouting` and in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterKind::Service => "service",
            RouterKind::Nginx => "nginx",
            RouterKind::Istio => "istio",
            RouterKind::Smi => "smi",
            RouterKind::GatewayApi => "gatewayAPI",
        }
    }
}
