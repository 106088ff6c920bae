//! RoleSet: one replica of a StormService, running one or more roles, each a set of Pods.
// Each printcolumn(...) repeats `type_ = ...`; clippy mistakes that for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use super::Condition;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// RoleSet runs the roles of one StormService replica. It is owned by its StormService and owns its Pods.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "orchestration.aibrix.ai",
    version = "v1alpha1",
    kind = "RoleSet",
    namespaced,
    status = "RoleSetStatus",
    category = "aibrix",
    derive = "PartialEq",
    derive = "Default",
    doc = "RoleSet runs the roles of one StormService replica: for each role, a set of Pods made from the role's template.",
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready Pods over all roles"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Desired Pods over all roles"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RoleSetSpec {
    /// The roles of this RoleSet (for example `prefill` and `decode`), each with its own Pod template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleSpec>,
    /// Order in which roles' Pods are updated when their templates change: `Sequential` (the
    /// default: one role at a time by `upgradeOrder`), `Parallel` (all at once); `Interleave` is
    /// taken as `Parallel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<RoleSetUpdateStrategyType>,
    /// Gang-scheduling settings for the RoleSet's Pods (AIBrix; accepted and kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::preserved_object")]
    pub scheduling_strategy: Option<serde_json::Map<String, serde_json::Value>>,
    /// Places Pods of the RoleSet in one topology domain, as AIBrix does: a pod affinity on `key`
    /// for the Pods of `scope` (new and replaced Pods; a Pod's affinity cannot change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_policy: Option<TopologyPolicy>,
}

/// What a topology key must look like: a label key, optionally prefixed by a DNS subdomain (AIBrix's
/// CRD pattern).
pub const TOPOLOGY_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";

/// Placement of a RoleSet's Pods in one topology domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologyPolicy {
    /// The node label whose value defines a domain, for example `kubernetes.io/hostname` or
    /// `topology.kubernetes.io/zone` (the pod affinity's `topologyKey`).
    #[schemars(length(min = 1, max = 317), pattern(TOPOLOGY_KEY_PATTERN))]
    pub key: String,
    /// `Preferred` (the default when absent) or `Required` pod affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TopologyMode>,
    /// Which Pods share the domain: those of the whole `StormService`, of one `RoleSet`, or of one `Role`.
    pub scope: TopologyScope,
}

/// How strictly a topology policy places Pods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TopologyMode {
    /// A preferred pod affinity: the scheduler tries, and places the Pods elsewhere when it can't.
    #[default]
    Preferred,
    /// A required pod affinity: Pods stay pending until they fit in the domain.
    Required,
}

/// Which Pods a topology policy keeps together.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TopologyScope {
    /// Every Pod of the StormService.
    StormService,
    /// The Pods of one RoleSet.
    #[default]
    RoleSet,
    /// The Pods of one role of a RoleSet.
    Role,
}

/// How the roles of a RoleSet are updated relative to each other.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RoleSetUpdateStrategyType {
    /// All roles at once.
    Parallel,
    /// One role after another.
    Sequential,
    /// Roles in turns, following each role's rolling step.
    Interleave,
}

/// One role of a RoleSet: a named set of identical Pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Name of the role, unique within the RoleSet (a DNS-1123 label, for example `prefill`).
    #[serde(default)]
    pub name: String,
    /// Number of Pods of this role (pod groups when `podGroupSize` is set). Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Order in which this role is updated under a `Sequential` RoleSet; lower first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub upgrade_order: Option<i32>,
    /// Number of Pods forming one instance of the role, for multi-node inference (AIBrix; accepted and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub pod_group_size: Option<i32>,
    /// How Pods of this role are replaced on update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<RoleUpdateStrategy>,
    /// Whether the role's Pods keep stable identities: a `hostname` (their name, for per-Pod DNS),
    /// `ROLE_REPLICA_INDEX` and the `role-replica-index` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful: Option<bool>,
    // Shared, not copied: the controller's caches keep one template for every RoleSet (and the
    // StormService) of a revision (`cache::share_templates`).
    /// Template of the role's Pods.
    #[serde(default, deserialize_with = "super::lean::pod_template")]
    pub template: Arc<PodTemplateSpec>,
    /// How many of the role's Pods may be disrupted by eviction or preemption (AIBrix; accepted and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_tolerance: Option<DisruptionTolerance>,
    /// How failed Pods are recreated: `ReplaceUnhealthy` or `Recreate` (AIBrix; accepted and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_recovery_policy: Option<PodRecoveryPolicy>,
    /// Gang-scheduling settings for this role (AIBrix; accepted and kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::preserved_object")]
    pub scheduling_strategy: Option<serde_json::Map<String, serde_json::Value>>,
    /// Topology placement of the role's Pods (AIBrix; accepted and kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::preserved_object")]
    pub topology_policy: Option<serde_json::Map<String, serde_json::Value>>,
}

impl RoleSpec {
    /// The containers of the role's Pod template (none when it has no spec).
    pub fn containers(&self) -> &[k8s_openapi::api::core::v1::Container] {
        self.template
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
    }
}

/// How Pods of a role are replaced on update.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleUpdateStrategy {
    /// `Recreate` (the default) replaces outdated Pods; `InPlaceIfPossible` patches a Pod's
    /// container images in place when nothing else of its template changed, else replaces it.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Most Pods of the role that may be unavailable during an update (number or percentage of the
    /// role's replicas, rounded down; default 1, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Most Pods of the role above the desired count during an update (accepted and kept; Pods
    /// keep their names, so they are replaced by deleting and creating again, surge 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
}

/// Disruption budget of a role or StormService.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionTolerance {
    /// Most members that may be unavailable through voluntary disruption (number or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// How failed Pods of a role are recreated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PodRecoveryPolicy {
    /// Replace only the unhealthy Pods.
    ReplaceUnhealthy,
    /// Recreate the role's whole pod group.
    Recreate,
}

/// Observed state of a RoleSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSetStatus {
    /// Desired Pods summed over all roles.
    #[serde(default)]
    pub replicas: i32,
    /// Ready Pods summed over all roles.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods per role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleStatus>,
    /// Conditions such as `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec these numbers describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Pod counts of one role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    /// Name of the role.
    #[serde(default)]
    pub name: String,
    /// Pods of the role that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Pods of the role that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods of the role that exist but are not Ready.
    #[serde(default)]
    pub not_ready_replicas: i32,
    /// Pods of the role made from the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Pods of the role made from the current template and Ready.
    #[serde(default)]
    pub updated_ready_replicas: i32,
}
