//! Revision names: the hash of the RoleSet template, and of a canary step.
//!
//! A revision is what a rollout moves between: everything in the template except how many Pods
//! each role has. `roles[].replicas` is scaling (AIBrix's autoscaler writes it): it changes the
//! Pods inside the existing RoleSets, never the revision, so it never starts a rollout.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use storm_shared::types::stormservice::{CanaryStep, RoleSetTemplateSpec};

fn short_hash(bytes: &[u8], len: usize) -> String {
    let digest = Sha256::digest(bytes);
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..len]
        .to_string()
}

/// The revision of a template: 10 hex characters of the SHA-256 of the template without its roles'
/// `replicas`. Stable across processes because serde_json writes struct fields in declaration
/// order and maps sorted.
pub fn of_template(template: &RoleSetTemplateSpec) -> String {
    let mut identity = template.clone();
    if let Some(spec) = identity.spec.as_mut() {
        for role in &mut spec.roles {
            role.replicas = None;
        }
    }
    let bytes = serde_json::to_vec(&identity).unwrap_or_default();
    short_hash(&bytes, 10)
}

/// The replicas each role of `template` asks for (1 when unset, as the RoleSet controller reads it).
pub fn role_replicas(template: &RoleSetTemplateSpec) -> BTreeMap<String, i32> {
    template
        .spec
        .iter()
        .flat_map(|s| &s.roles)
        .map(|r| (r.name.clone(), r.replicas.unwrap_or(1).max(0)))
        .collect()
}

/// The hash of a step's definition: an edited step restarts.
pub fn of_step(step: &CanaryStep) -> String {
    let bytes = serde_json::to_vec(step).unwrap_or_default();
    short_hash(&bytes, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_template_same_revision_and_changes_change_it() {
        let a: RoleSetTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "x", "b": "y"}},
            "spec": {"roles": [{"name": "r", "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}]}
        }))
        .expect("template");
        let mut b = a.clone();
        assert_eq!(of_template(&a), of_template(&b));
        assert_eq!(of_template(&a).len(), 10);
        std::sync::Arc::make_mut(&mut b.spec.as_mut().expect("spec").roles[0].template)
            .spec
            .as_mut()
            .expect("pod")
            .containers[0]
            .image = Some("i:2".into());
        assert_ne!(of_template(&a), of_template(&b));
    }

    #[test]
    fn role_replicas_are_scaling_not_a_revision() {
        let a: RoleSetTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"roles": [{"name": "prefill", "replicas": 1}, {"name": "decode"}]}
        }))
        .expect("template");
        let mut b = a.clone();
        b.spec.as_mut().expect("spec").roles[0].replicas = Some(4);
        assert_eq!(of_template(&a), of_template(&b));
        assert_eq!(
            role_replicas(&b),
            BTreeMap::from([("decode".into(), 1), ("prefill".into(), 4)])
        );
    }
}
