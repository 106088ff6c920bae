//! The Mutating- and ValidatingWebhookConfiguration, rendered for a Service (in a cluster) or a URL
//! (the local control plane). One definition: `manifests/webhook/webhook-configurations.yaml` is
//! checked against it by a unit test.

use base64::Engine;
use serde_json::{Value, json};

/// Name of both configuration objects.
pub const CONFIGURATION_NAME: &str = "storm-webhook";
/// Name of the mutating webhook (shown by kubectl when it fails).
pub const MUTATING_WEBHOOK: &str = "mutate.storm.orchestration.aibrix.ai";
/// Name of the validating webhook (shown by kubectl in denials).
pub const VALIDATING_WEBHOOK: &str = "validate.storm.orchestration.aibrix.ai";
/// The webhook's own namespace, never sent to it.
pub const SYSTEM_NAMESPACE: &str = "storm-system";
/// Seconds the API server waits for an answer.
pub const TIMEOUT_SECONDS: i64 = 5;

/// How the API server reaches the webhook.
#[derive(Debug, Clone)]
pub enum Target {
    /// An in-cluster Service on port 443.
    Service {
        /// Namespace of the Service.
        namespace: String,
        /// Name of the Service.
        name: String,
    },
    /// A URL base such as `https://127.0.0.1:8443` (paths are appended).
    Url(String),
}

fn client_config(target: &Target, path: &str, ca_pem: Option<&str>) -> Value {
    let mut cc = match target {
        Target::Service { namespace, name } => json!({
            "service": {"namespace": namespace, "name": name, "path": path, "port": 443}
        }),
        Target::Url(base) => json!({"url": format!("{}{path}", base.trim_end_matches('/'))}),
    };
    if let Some(ca) = ca_pem {
        cc["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(ca));
    }
    cc
}

fn namespace_selector() -> Value {
    json!({"matchExpressions": [{
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": [SYSTEM_NAMESPACE],
    }]})
}

/// Both configurations, as a `v1` `List` that `kubectl apply -f -` accepts.
pub fn render(target: &Target, ca_pem: Option<&str>) -> Value {
    let mutating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION_NAME, "labels": {"app.kubernetes.io/name": "storm-webhook"}},
        "webhooks": [{
            "name": MUTATING_WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            // Defaulting is what moves autoRollback out of canary; without it schema pruning
            // would drop the block, so an unreachable webhook must not admit silently.
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": TIMEOUT_SECONDS,
            "namespaceSelector": namespace_selector(),
            "clientConfig": client_config(target, "/mutate", ca_pem),
            "rules": [{
                "apiGroups": ["orchestration.aibrix.ai"],
                "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["stormservices"],
                "scope": "Namespaced",
            }],
        }],
    });
    let validating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION_NAME, "labels": {"app.kubernetes.io/name": "storm-webhook"}},
        "webhooks": [{
            "name": VALIDATING_WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": TIMEOUT_SECONDS,
            "namespaceSelector": namespace_selector(),
            "clientConfig": client_config(target, "/validate", ca_pem),
            "rules": [{
                "apiGroups": ["orchestration.aibrix.ai"],
                "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["stormservices", "analysistemplates", "rolloutpolicies"],
                "scope": "*",
            }],
        }],
    });
    json!({"apiVersion": "v1", "kind": "List", "items": [mutating, validating]})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed Service-mode manifests say what `render` says (less the clientConfig).
    #[test]
    fn committed_manifests_match_the_rendered_configurations() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/webhook/webhook-configurations.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let rendered = render(
            &Target::Service {
                namespace: SYSTEM_NAMESPACE.into(),
                name: "storm-webhook".into(),
            },
            None,
        );
        let items = rendered["items"].as_array().unwrap();
        assert_eq!(docs.len(), items.len());
        for (doc, want) in docs.iter().zip(items) {
            assert_eq!(doc["kind"], want["kind"]);
            assert_eq!(doc["metadata"]["name"], want["metadata"]["name"]);
            assert_eq!(doc["webhooks"], want["webhooks"], "{}", want["kind"]);
        }
    }

    #[test]
    fn url_mode_points_at_the_paths_with_the_ca() {
        let list = render(&Target::Url("https://127.0.0.1:8443/".into()), Some("PEM"));
        let m = &list["items"][0]["webhooks"][0]["clientConfig"];
        assert_eq!(m["url"], "https://127.0.0.1:8443/mutate");
        assert_eq!(m["caBundle"], "UEVN");
        let v = &list["items"][1]["webhooks"][0]["clientConfig"];
        assert_eq!(v["url"], "https://127.0.0.1:8443/validate");
    }
}
