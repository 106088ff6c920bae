//! What a RoleSet holds of an extended resource (`nvidia.com/gpu`), for the rollout's capacity
//! budget (`spec.rolloutStrategy.capacityBudget`).
//!
//! A Pod holds, of a resource, the larger of what its containers request together and what its
//! largest init container requests (as the scheduler counts it). Extended resources are whole
//! numbers, and a container that sets only a limit requests that limit. A RoleSet holds, for each
//! role, `replicas` (default 1) times `podGroupSize` (default 1) Pods of the role's template.

use crate::types::roleset::RoleSpec;
use k8s_openapi::api::core::v1::{Container, PodSpec};

/// A quantity of the budget's resource that is not a whole number: extended resources are
/// counted in whole units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "spec.template.spec.roles[{role}].template.spec.{field}[{container}].resources: {resource} is {value:?}, not a whole number (extended resources are counted in whole units)"
)]
pub struct NotWhole {
    pub role: usize,
    pub field: &'static str,
    pub container: usize,
    pub resource: String,
    pub value: String,
}

/// What one container requests of `resource` (its limit when it sets no request).
fn container_use(
    c: &Container,
    resource: &str,
    at: impl Fn(usize, &str) -> NotWhole,
    index: usize,
) -> Result<i64, NotWhole> {
    let Some(res) = c.resources.as_ref() else {
        return Ok(0);
    };
    let q = res
        .requests
        .as_ref()
        .and_then(|r| r.get(resource))
        .or_else(|| res.limits.as_ref().and_then(|l| l.get(resource)));
    match q {
        None => Ok(0),
        Some(q) => {
            q.0.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| at(index, &q.0))
        }
    }
}

/// What one Pod of `spec` holds of `resource`.
pub fn pod_use(spec: &PodSpec, resource: &str, role: usize) -> Result<i64, NotWhole> {
    let at = |field: &'static str| {
        move |container: usize, value: &str| NotWhole {
            role,
            field,
            container,
            resource: resource.to_string(),
            value: value.to_string(),
        }
    };
    let mut sum = 0i64;
    for (i, c) in spec.containers.iter().enumerate() {
        sum = sum.saturating_add(container_use(c, resource, at("containers"), i)?);
    }
    let mut init = 0i64;
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        init = init.max(container_use(c, resource, at("initContainers"), i)?);
    }
    Ok(sum.max(init))
}

/// What one RoleSet of `roles` holds of `resource`: every role, every Pod-group member.
pub fn roleset_use(roles: &[RoleSpec], resource: &str) -> Result<i64, NotWhole> {
    let mut total = 0i64;
    for (i, role) in roles.iter().enumerate() {
        let pods = i64::from(role.replicas.unwrap_or(1).max(0))
            * i64::from(role.pod_group_size.unwrap_or(1).max(1));
        let per_pod = match role.template.spec.as_ref() {
            Some(spec) => pod_use(spec, resource, i)?,
            None => 0,
        };
        total = total.saturating_add(pods.saturating_mul(per_pod));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roles(v: serde_json::Value) -> Vec<RoleSpec> {
        serde_json::from_value(v).expect("roles")
    }

    #[test]
    fn a_roleset_holds_every_pod_of_every_role() {
        let r = roles(json!([
            {"name": "prefill", "replicas": 2, "template": {"spec": {"containers": [
                {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "1"}}},
                {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}
            ]}}},
            {"name": "decode", "replicas": 1, "podGroupSize": 2, "template": {"spec": {
                "initContainers": [{"name": "warm", "resources": {"limits": {"nvidia.com/gpu": "4"}}}],
                "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]
            }}},
            {"name": "router", "template": {"spec": {"containers": [{"name": "r"}]}}}
        ]));
        // prefill: 2 Pods × (1 + 1); decode: 1 group × 2 members × max(2, init 4); router: 0.
        assert_eq!(roleset_use(&r, "nvidia.com/gpu"), Ok(4 + 8));
        assert_eq!(roleset_use(&r, "amd.com/gpu"), Ok(0));
    }

    #[test]
    fn a_fraction_names_its_container() {
        let r = roles(json!([
            {"name": "a", "template": {"spec": {"containers": [
                {"name": "x"},
                {"name": "y", "resources": {"limits": {"nvidia.com/gpu": "500m"}}}
            ]}}}
        ]));
        let e = roleset_use(&r, "nvidia.com/gpu").expect_err("not whole");
        assert_eq!(e.container, 1);
        assert!(
            e.to_string()
                .starts_with("spec.template.spec.roles[0].template.spec.containers[1].resources: nvidia.com/gpu is \"500m\""),
            "{e}"
        );
    }
}
