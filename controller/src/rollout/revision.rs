//! Revision names: the hash of the RoleSet template, and of a canary step.

use sha2::{Digest, Sha256};
use storm_shared::types::stormservice::{CanaryStep, RoleSetTemplateSpec};

fn short_hash(bytes: &[u8], len: usize) -> String {
    let digest = Sha256::digest(bytes);
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..len]
        .to_string()
}

/// The revision of a template: 10 hex characters of its SHA-256. Stable across processes because
/// serde_json writes struct fields in declaration order and maps sorted.
pub fn of_template(template: &RoleSetTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    short_hash(&bytes, 10)
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
        b.spec.as_mut().expect("spec").roles[0]
            .template
            .spec
            .as_mut()
            .expect("pod")
            .containers[0]
            .image = Some("i:2".into());
        assert_ne!(of_template(&a), of_template(&b));
    }
}
