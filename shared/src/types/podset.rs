//! PodSet: the Pods of one instance of a multi-node role (`podGroupSize > 1`), made by a RoleSet.
// Each printcolumn(...) repeats `type_ = ...`; clippy mistakes that for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use super::Condition;
use super::roleset::PodRecoveryPolicy;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// PodSet runs the `podGroupSize` Pods of one instance of a role (for example one tensor-parallel
/// engine spread over several nodes). A RoleSet owns one PodSet per replica of such a role; the PodSet
/// owns its Pods, named `<podset>-<podGroupIndex>`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "orchestration.aibrix.ai",
    version = "v1alpha1",
    kind = "PodSet",
    namespaced,
    status = "PodSetStatus",
    category = "aibrix",
    derive = "PartialEq",
    derive = "Default",
    doc = "PodSet runs the Pods of one instance of a multi-node role: `podGroupSize` Pods made from one template, scheduled and recovered together.",
    printcolumn(
        name = "ReadyPods",
        type_ = "integer",
        json_path = ".status.readyPods",
        description = "Ready Pods of the group"
    ),
    printcolumn(
        name = "TotalPods",
        type_ = "integer",
        json_path = ".status.totalPods",
        description = "Pods of the group that exist"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running or Ready"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PodSetSpec {
    /// Number of Pods in the group (2–100); each gets its index in the group, `0` to `podGroupSize - 1`.
    #[schemars(range(min = 2, max = 100))]
    pub pod_group_size: i32,
    /// Template of the group's Pods (the role's Pod template).
    pub template: PodTemplateSpec,
    /// Whether the group's Pods keep stable identities (the role's `stateful`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful: Option<bool>,
    /// Gang-scheduling settings for the group (the role's `schedulingStrategy`): a PodGroup named after
    /// the PodSet is made from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::preserved_object")]
    pub scheduling_strategy: Option<serde_json::Map<String, serde_json::Value>>,
    /// How failed Pods are recreated: `ReplaceUnhealthy` (the default when absent) replaces only the
    /// failed Pods, `Recreate` the whole group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_policy: Option<PodRecoveryPolicy>,
}

/// Observed state of a PodSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSetStatus {
    /// Ready Pods of the group.
    #[serde(default)]
    pub ready_pods: i32,
    /// Pods of the group that exist.
    #[serde(default)]
    pub total_pods: i32,
    /// `Pending`, `Running`, `Ready` or `Failed` ([`PodSetPhase`]); kept as text so that a phase written by
    /// another controller still reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Conditions of the group, such as `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Phase of a PodSet, as written in `status.phase` (AIBrix's vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodSetPhase {
    /// The group is being created: not every Pod exists yet.
    Pending,
    /// At least one Pod of the group runs, not all are Ready.
    Running,
    /// Every Pod of the group is Ready.
    Ready,
    /// The group failed (defined by AIBrix, not written by its controller at the pinned commit).
    Failed,
}
