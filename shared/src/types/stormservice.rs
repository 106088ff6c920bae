//! StormService: the AIBrix workload for LLM serving, plus this product's rollout strategies.
// Each printcolumn(...) repeats `type_ = ...`; clippy mistakes that for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use super::Condition;
use super::analysis::Metric;
use super::roleset::{DisruptionTolerance, RoleSetSpec, RoleStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest traffic weight, in percent.
pub const MAX_WEIGHT: i32 = 100;

/// StormService runs `replicas` RoleSets made from `template` and upgrades them with `rolloutStrategy`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "orchestration.aibrix.ai",
    version = "v1alpha1",
    kind = "StormService",
    namespaced,
    status = "StormServiceStatus",
    shortname = "storm",
    shortname = "ss",
    category = "aibrix",
    derive = "PartialEq",
    derive = "Default",
    doc = "StormService runs an LLM serving workload as `replicas` RoleSets and upgrades it with a canary or blue-green rollout.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.scalingTargetSelector"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.rolloutStatus.phase",
        description = "Rollout phase"
    ),
    printcolumn(
        name = "Step",
        type_ = "integer",
        json_path = ".status.rolloutStatus.currentStepIndex",
        description = "Current canary step"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.rolloutStatus.canaryStatus.currentWeight",
        description = "Traffic share of the canary, in percent"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready RoleSets"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired RoleSets",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StormServiceSpec {
    /// Number of RoleSets to run. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Deployment mode: `Replica` (each RoleSet is a replica) or `Pooled` (one RoleSet whose roles scale
    /// on their own). Inferred from `replicas` when empty (AIBrix; accepted and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StormServiceMode>,
    /// Label selector for the RoleSets of this StormService. It must match `template.metadata.labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Whether the service is stateful (AIBrix; accepted and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful: Option<bool>,
    /// Template of the RoleSets. A change to it starts a rollout; its hash names the revision.
    pub template: RoleSetTemplateSpec,
    /// How RoleSets are replaced when no `rolloutStrategy` is given (and the surge/unavailability
    /// budget a canary without traffic routing respects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<StormServiceUpdateStrategy>,
    /// Number of old revisions to keep for rollback. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub revision_history_limit: Option<i32>,
    /// Stops all reconciliation of this StormService while true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// How many RoleSets may be disrupted by eviction or preemption (AIBrix; accepted and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_tolerance: Option<DisruptionTolerance>,
    /// Progressive delivery: how a change to `template` is rolled out (canary or blue-green), with
    /// automatic rollback. Without it, `updateStrategy` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_strategy: Option<RolloutStrategy>,
}

/// Deployment mode of a StormService.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StormServiceMode {
    /// Each RoleSet is an independent replica of the service.
    Replica,
    /// One RoleSet whose roles scale independently.
    Pooled,
}

/// Template of a RoleSet: its metadata and spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSetTemplateSpec {
    /// Labels and annotations for the RoleSets. The labels must match `spec.selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Spec of the RoleSets: their roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<RoleSetSpec>,
}

impl StormServiceSpec {
    /// `rolloutStrategy.capacityBudget`, when set.
    pub fn capacity_budget(&self) -> Option<&CapacityBudget> {
        self.rollout_strategy
            .as_ref()
            .and_then(|s| s.capacity_budget.as_ref())
    }
}

impl CanaryStrategy {
    /// Whether stable shrinks with the canary's traffic: `dynamicStableScale` with a router
    /// (admission denies it without one).
    pub fn dynamic_stable_scale(&self) -> bool {
        self.traffic_routing.is_some() && self.dynamic_stable_scale == Some(true)
    }
}

impl RoleSetTemplateSpec {
    /// The roles of the template (none when it has no spec).
    pub fn roles(&self) -> &[super::roleset::RoleSpec] {
        self.spec
            .as_ref()
            .map(|s| s.roles.as_slice())
            .unwrap_or_default()
    }
}

/// Labels and annotations given to objects made from a template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels for the objects made from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations for the objects made from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// A name for the objects made from the template (AIBrix; accepted and kept: RoleSet names are
    /// generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A namespace for the objects made from the template (AIBrix; accepted and kept: RoleSets live in
    /// the StormService's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Finalizers for the objects made from the template (AIBrix; accepted and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<Vec<String>>,
}

/// How RoleSets are replaced without a rollout strategy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormServiceUpdateStrategy {
    /// `RollingUpdate` (default) replaces RoleSets gradually; `InPlaceUpdate` updates them in place.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<UpdateStrategyType>,
    /// Most RoleSets that may be unavailable during an update (number or percentage, default 25%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Most RoleSets that may exist above `replicas` during an update (number or percentage, default 25%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
}

/// Update strategy type of a StormService.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UpdateStrategyType {
    /// Replace RoleSets gradually.
    RollingUpdate,
    /// Update RoleSets in place.
    InPlaceUpdate,
}

/// How a template change is rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// `Canary` (shift traffic in steps; needs `canary`) or `BlueGreen` (switch at once after a
    /// preview; needs `blueGreen`).
    #[serde(rename = "type")]
    pub type_: RolloutStrategyType,
    /// Canary settings; required when `type` is `Canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
    /// Blue-green settings; required when `type` is `BlueGreen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
    /// The most of an extended resource (such as `nvidia.com/gpu`) the rollout may hold above
    /// steady state, for both strategies: the controller plans every step, abort and rollback
    /// within it, and admission denies a rollout whose shape cannot fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_budget: Option<CapacityBudget>,
    /// When the rollout rolls itself back. Defaulted on admission to
    /// `{enabled: true, onFailure: {analysisFailure: true, healthCheckFailure: true}, onTimeout: 30m}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollback>,
}

/// A rollout's budget of an extended resource above steady state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityBudget {
    /// An extended resource the Pods request, counted in whole units, e.g. `nvidia.com/gpu`.
    pub resource: String,
    /// The most of it the rollout may hold above steady state (`replicas` RoleSets of the stable
    /// revision), summed over every Pod of every RoleSet of every revision.
    #[schemars(range(min = 0))]
    pub max_extra: i64,
}

/// What a StormService's RoleSets hold of the budget's resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityStatus {
    /// The budget's resource, e.g. `nvidia.com/gpu`.
    pub resource: String,
    /// What `replicas` RoleSets of the stable revision hold.
    pub steady_state: i64,
    /// What the RoleSets hold now (those being deleted not counted).
    pub in_use: i64,
    /// What the rollout may still add: steady state plus `maxExtra`, minus what is in use.
    pub left: i64,
    /// Per revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionCapacity>,
}

/// What one revision's RoleSets hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionCapacity {
    pub revision: String,
    /// Its RoleSets.
    pub role_sets: i32,
    /// What one of them holds.
    pub per_role_set: i64,
    /// What they hold together.
    pub in_use: i64,
}

/// Rollout strategy type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RolloutStrategyType {
    /// Shift traffic to the new revision in steps.
    #[default]
    Canary,
    /// Run the new revision beside the old one and switch all traffic at once.
    BlueGreen,
}

/// Canary rollout settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// The steps, in order. Each sets a weight or a replica count, and may pause and run analysis.
    /// After the last step the canary is promoted.
    #[serde(default)]
    pub steps: Vec<CanaryStep>,
    /// How traffic is split between stable and canary. Without it, the split is by RoleSet count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
    /// Service whose selector the controller pins to the stable revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_service: Option<String>,
    /// Service whose selector the controller pins to the canary revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_service: Option<String>,
    /// Most RoleSets above `replicas` during the canary (number or percentage). Overrides `updateStrategy.maxSurge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Most unavailable RoleSets during the canary (number or percentage). Overrides `updateStrategy.maxUnavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// With a traffic router: stable shrinks as the canary's share of the traffic grows, so the
    /// StormService holds about `replicas` plus `maxSurge` RoleSets through the rollout instead of
    /// stable at full size plus the canary. Traffic always moves before capacity goes: stable
    /// keeps the RoleSets its share of the traffic needs, and an abort grows stable back before
    /// traffic returns to it. Without a router stable already shrinks as the canary grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_stable_scale: Option<bool>,
    /// Deprecated place for `autoRollback` (as in the migration guide). Accepted: admission moves it to
    /// `spec.rolloutStrategy.autoRollback` and warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollback>,
    /// Seconds the old stable RoleSets stay after a promotion, so that requests still streaming
    /// from them finish and every router and proxy has let go of them. Defaults to 60 with a
    /// traffic router and 0 without (without one, stable shrinks a RoleSet at a time through the
    /// steps, and each Pod drains in its own termination grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i32>,
    /// Seconds the canary RoleSets stay after an abort or a rollback, once no traffic goes to
    /// them. Defaults to 30 with a traffic router and 0 without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub abort_scale_down_delay_seconds: Option<i32>,
}

/// One canary step. Set `weight` or `replicas` (or neither, for a step that only pauses or analyses).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Share of traffic (percent, 0–100) for the canary at this step. Weights may not decrease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<i32>,
    /// Number of canary RoleSets at this step, at most `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Wait at this step: for `duration`, or `untilApproval` (exactly one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// Analysis that must succeed before the step completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisRef>,
}

/// A wait in a canary step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// How long to wait, Go-style (`30s`, `5m`, `1h30m`) or whole seconds; at most 168h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Wait until the `stormservice.aibrix.ai/rollout-approval=true` annotation is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_approval: Option<bool>,
}

/// Analysis to run: AnalysisTemplates by name, with arguments.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRef {
    /// AnalysisTemplates to run; all must succeed.
    #[serde(default)]
    pub templates: Vec<AnalysisTemplateRef>,
    /// Values for the templates' `args`, substituted as `{{args.NAME}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
}

/// A reference to an AnalysisTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateRef {
    /// Name of the AnalysisTemplate.
    pub name: String,
    /// Namespace of the AnalysisTemplate: unset or the StormService's own (templates are read only there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A named argument for analysis templates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisArg {
    /// Argument name, as used in `{{args.NAME}}`.
    pub name: String,
    /// Argument value.
    pub value: String,
}

/// How traffic is split between the stable and canary revisions. Name exactly one router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// nginx ingress: a generated `<ingress>-canary` Ingress with canary-weight annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx: Option<NginxRouting>,
    /// Istio: weights on a VirtualService's HTTP route destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouting>,
    /// SMI: weights on a TrafficSplit's backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smi: Option<SmiRouting>,
    /// Gateway API: weights on an HTTPRoute's backendRefs.
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouting>,
}

/// nginx ingress routing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NginxRouting {
    /// Name of the user's Ingress that routes to the stable Service.
    pub ingress: String,
    /// Port of the canary Service that the generated canary Ingress routes to (1–65535).
    #[schemars(range(min = 1, max = 65535))]
    pub service_port: i32,
}

/// Istio routing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouting {
    /// Name of the VirtualService whose HTTP routes send traffic to the stable and canary hosts.
    pub virtual_service: String,
    /// Name of a DestinationRule that gets `stable` and `canary` subsets by revision label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<String>,
}

/// SMI routing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmiRouting {
    /// Name of the TrafficSplit whose backends are the stable and canary Services.
    pub traffic_split: String,
    /// Root Service of the TrafficSplit, when it is created by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_service: Option<String>,
}

/// Gateway API routing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// Name of the HTTPRoute whose backendRefs are the stable and canary Services.
    pub http_route: String,
}

/// Blue-green rollout settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// Service that serves production traffic; switched to the new revision on promotion.
    pub active_service: String,
    /// Service that points at the new revision before promotion.
    pub preview_service: String,
    /// Promote as soon as the preview is ready (and pre-promotion analysis passed). Defaults to false:
    /// wait for the approval annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    /// Promote automatically this many seconds after the preview is ready (and its pre-promotion
    /// analysis passed), unless it was approved before. For `autoPromotionEnabled: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub auto_promotion_seconds: Option<i32>,
    /// RoleSets the preview runs with until the promotion (1 to `replicas`): on promotion it
    /// grows to `replicas`, and the active Service switches once they are all ready. Defaults to
    /// `replicas` (a full-size preview).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub preview_replica_count: Option<i32>,
    /// Seconds to keep the old revision after promotion, for a quick switch back. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i32>,
    /// Seconds the new revision's RoleSets stay after an abort or a rollback, once the active
    /// Service is back on stable. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Analysis that must succeed before promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisRef>,
    /// Analysis run after promotion; failure switches traffic back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<AnalysisRef>,
}

/// When a rollout rolls itself back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoRollback {
    /// Roll back automatically. With false, a failing rollout stops in place (phase `Degraded`)
    /// until aborted, retried or resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Which failures trigger a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<RollbackTriggers>,
    /// Roll back when a step makes no progress for this long (Go-style duration). Paused time does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
}

/// Failures that trigger a rollback.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackTriggers {
    /// Roll back when an analysis fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_failure: Option<bool>,
    /// Roll back when a canary Pod fails, crash-loops or stays unready past its grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_failure: Option<bool>,
    /// Roll back when the canary's error rate exceeds this percentage (`"5%"`), in (0, 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_threshold: Option<IntOrString>,
    /// How long a canary Pod may stay unready (or not yet ready after creation) before it counts as
    /// failing its health check (Go-style duration). Defaults to 5m, or to the Pods' startup window
    /// when that is longer: the longest startupProbe's initialDelaySeconds + periodSeconds x
    /// failureThreshold, plus its readiness probe's first check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_grace_period: Option<String>,
    /// The metric that measures the canary's error rate in percent, for `errorThreshold`. Without it,
    /// the error rate is the share of canary Pods failing health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<Box<Metric>>,
}

/// Observed state of a StormService.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormServiceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RoleSets of this StormService.
    #[serde(default)]
    pub replicas: i32,
    /// Ready RoleSets.
    #[serde(default)]
    pub ready_replicas: i32,
    /// RoleSets that are not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_replicas: Option<i32>,
    /// RoleSets of `currentRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// RoleSets of `updateRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// Ready RoleSets of `updateRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_ready_replicas: Option<i32>,
    /// The stable revision (hash of the template that last completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision of the current `spec.template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Hash collisions seen while naming revisions (AIBrix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// Label selector of the RoleSets, in string form, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_target_selector: Option<String>,
    /// Conditions of the StormService (`Ready`, `Progressing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pod counts per role, summed over the RoleSets and sorted by role name (as AIBrix writes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_statuses: Vec<RoleStatus>,
    /// Progress of the current or last rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_status: Option<RolloutStatus>,
}

/// Progress of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Healthy`, `Progressing`, `Paused`, `Completed`, `Degraded` or `Aborted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// Index of the canary step being worked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    /// Hash of the current step's definition; an edited step restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_hash: Option<String>,
    /// When the current pause began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_start_time: Option<Time>,
    /// Rollout conditions with reasons, for example `Progressing`/`StepComplete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Canary progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_status: Option<CanaryStatus>,
    /// Blue-green progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green_status: Option<BlueGreenStatus>,
    /// A sentence for humans about where the rollout stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When work on the current step began, shifted by time spent paused: the progress deadline
    /// (`autoRollback.onTimeout`) counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_start_time: Option<Time>,
    /// The canary step whose manual approval has been given while its analysis still runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_step: Option<i32>,
    /// A full promotion was asked for (`kubectl storm promote --full`): the rest of this rollout
    /// skips its steps, pauses, approvals and step (or pre/post-promotion) analyses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_full: Option<bool>,
    /// Control annotations that have taken effect but may not be removed yet. The controller never
    /// acts twice on an annotation listed here, even across a crash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_controls: Vec<String>,
    /// The analyses of the revision being rolled out (canary steps, blue-green pre/post-promotion,
    /// the error-rate metric), with their latest measurements. Bounded: the newest runs only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis_runs: Vec<AnalysisRunStatus>,
    /// RoleSets kept after a promotion or an abort while requests to them drain: which revision,
    /// why, and when it is scaled down. Kept in the status, so a restarted controller keeps the
    /// times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scale_downs: Vec<ScaleDown>,
    /// With `rolloutStrategy.capacityBudget`: what the RoleSets hold of its resource, per
    /// revision, and what is left of the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityStatus>,
    /// The traffic weight of the canary as the traffic routers last reported it (absent without a
    /// router, or when the routers disagree or could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_weight: Option<i32>,
}

/// A revision whose RoleSets are kept for a drain delay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDown {
    /// The revision kept.
    pub revision: String,
    /// `Promoted` (it was stable until a promotion: `scaleDownDelaySeconds`) or `Aborted` (it was
    /// being rolled out: `abortScaleDownDelaySeconds`).
    pub reason: ScaleDownReason,
    /// When its RoleSets are scaled down.
    pub due_time: Time,
}

/// Why a revision is kept for a drain delay.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScaleDownReason {
    /// Replaced by a promotion.
    Promoted,
    /// Left by an abort or a rollback.
    Aborted,
}

/// One analysis: the metrics of its templates, measured for one revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunStatus {
    /// What it gates: `step-N` (canary step N), `pre-promotion`, `post-promotion` or `error-rate`.
    pub name: String,
    /// The revision it measures.
    pub revision: String,
    /// `Running`, `Successful`, `Failed`, `Inconclusive` or `Error`.
    pub phase: AnalysisPhase,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Why it ended as it did, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One entry per metric, named `<template>/<metric>` (or `errorRate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricStatus>,
}

/// The progress of one metric of an analysis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// `<template>/<metric>`, or `errorRate`.
    pub name: String,
    /// `Running` until decided, then `Successful`, `Failed`, `Inconclusive` or `Error`.
    pub phase: AnalysisPhase,
    /// Measurements taken.
    #[serde(default)]
    pub count: i32,
    /// Measurements that met the success condition.
    #[serde(default)]
    pub successful: i32,
    /// Measurements that met the failure condition (or missed the success condition).
    #[serde(default)]
    pub failed: i32,
    /// Measurements that were neither (including empty results).
    #[serde(default)]
    pub inconclusive: i32,
    /// Measurements whose query failed.
    #[serde(default)]
    pub error: i32,
    /// Query errors in a row, reset by any measurement that returns a value.
    #[serde(default)]
    pub consecutive_error: i32,
    /// The latest measurements, newest last (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
    /// A sentence about the latest outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One measurement of a metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// `Successful`, `Failed`, `Inconclusive` or `Error`.
    pub phase: AnalysisPhase,
    /// The value the provider returned, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The error, for `Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of an analysis, a metric or a measurement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AnalysisPhase {
    /// Still measuring.
    #[default]
    Running,
    /// Every metric succeeded.
    Successful,
    /// A metric failed.
    Failed,
    /// A metric was inconclusive: a person decides (resume to accept, abort to reject).
    Inconclusive,
    /// Queries kept failing (`consecutiveErrorLimit`), or the analysis could not run (a missing
    /// template, an unreadable Secret).
    Error,
}

/// Rollout phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// At rest: never rolled out, or rolled back by applying the old template.
    Healthy,
    /// Moving through the steps.
    Progressing,
    /// Paused manually, for a duration, or waiting for approval (the reason says which).
    Paused,
    /// The last rollout completed.
    Completed,
    /// Rolled back automatically, or stopped by a failure with autoRollback disabled.
    Degraded,
    /// Aborted by the user.
    Aborted,
}

/// Canary progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Traffic share of the canary, in percent.
    #[serde(default)]
    pub current_weight: i32,
    /// Name of the stable RoleSet group, `<service>-<revision>`.
    #[serde(default, rename = "stableRS", skip_serializing_if = "Option::is_none")]
    pub stable_rs: Option<String>,
    /// Name of the canary RoleSet group, `<service>-<revision>`.
    #[serde(default, rename = "canaryRS", skip_serializing_if = "Option::is_none")]
    pub canary_rs: Option<String>,
}

/// Blue-green progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    /// Revision the active Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_selector: Option<String>,
    /// Revision the preview Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_selector: Option<String>,
    /// When the old revision's scale-down delay began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_start_time: Option<Time>,
    /// When the preview was first exposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_expose_time: Option<Time>,
    /// The promotion is decided (approved, automatic or full): a preview smaller than `replicas`
    /// (`previewReplicaCount`) grows to full size before the active Service switches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoting: Option<bool>,
}
