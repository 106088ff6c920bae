//! End-to-end suites live in `tests/`; what they and the benchmarks (`examples/`) share is here.

use serde_json::{Value, json};
use storm_shared::RoleSet;

/// Whether the RoleSet's `Ready` condition is `True`.
pub fn roleset_is_ready(r: &RoleSet) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// A StormService `name` with `replicas` RoleSets of one role `server` (`pods` Pods of `app:v1`,
/// all labelled `app: <name>`) and a canary with `steps` over the Services `<name>-stable` and
/// `<name>-canary`.
pub fn canary_storm_service(name: &str, replicas: i64, pods: i64, steps: Value) -> Value {
    json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "StormService",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"roles": [{"name": "server", "replicas": pods, "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "server", "image": "app:v1"}]}
                }}]}
            },
            "rolloutStrategy": {"type": "Canary", "canary": {
                "stableService": format!("{name}-stable"),
                "canaryService": format!("{name}-canary"),
                "steps": steps
            }}
        }
    })
}
