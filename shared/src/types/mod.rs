//! The custom resources: StormService, RoleSet, PodSet, AnalysisTemplate and RolloutPolicy.

pub mod analysis;
pub mod lean;
pub mod podset;
pub mod policy;
pub mod roleset;
pub mod stormservice;

use schemars::{Schema, SchemaGenerator, json_schema};

/// API group of every resource here.
pub const GROUP: &str = "orchestration.aibrix.ai";
/// API version of every resource here.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every resource here.
pub const API_VERSION: &str = "orchestration.aibrix.ai/v1alpha1";

/// Schema of a free-form object whose fields the API server keeps as given (fields this product
/// accepts for AIBrix compatibility but does not act on).
pub(crate) fn preserved_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A Kubernetes-style condition: `type`, `status`, `reason`, `message` and when it last changed.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, for example `Progressing`, `Paused`, `Degraded`, `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word saying why the condition is what it is, for example `StepComplete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence for humans with the details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the condition was last written, in microseconds (AIBrix writes it; accepted and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_micro_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}
