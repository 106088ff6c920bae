//! Whether a traffic router's object names a Service: one answer for admission (the webhook and
//! `kubectl storm lint` warn when a router has no route to a Service) and for the controller (which
//! refuses to set weights it cannot find). Two copies would drift, and the webhook would admit what
//! the controller then refuses.

use serde_json::Value;

/// Whether an Istio destination `host` names `service` in `namespace`: the short name (the
/// VirtualService's own namespace), `svc.ns`, `svc.ns.svc` or `svc.ns.svc.<cluster domain>`.
/// A host of another namespace does not.
pub fn istio_host_is(host: &str, service: &str, namespace: &str) -> bool {
    let Some(rest) = host.strip_prefix(service) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest
        .strip_prefix('.')
        .and_then(|r| r.strip_prefix(namespace))
    else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix(".svc")
            .is_some_and(|r| r.is_empty() || (r.starts_with('.') && r.len() > 1))
}

/// The core Service a Gateway API backendRef points at in `namespace` (the route's): group `""`
/// and kind `Service` are the defaults, and a ref to another namespace is not one of ours.
pub fn gateway_ref_service<'a>(backend_ref: &'a Value, namespace: &str) -> Option<&'a str> {
    let field = |k: &str| backend_ref.get(k).and_then(Value::as_str);
    let core = field("group").is_none_or(str::is_empty)
        && field("kind").is_none_or(|k| k == "Service")
        && field("namespace").is_none_or(|n| n == namespace);
    core.then(|| field("name")).flatten()
}

/// Whether a backendRef points at the core Service `service` in `namespace`.
pub fn gateway_refers_to(backend_ref: &Value, service: &str, namespace: &str) -> bool {
    gateway_ref_service(backend_ref, namespace) == Some(service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn istio_hosts_name_a_service_of_the_namespace_only() {
        for host in ["svc", "svc.ns", "svc.ns.svc", "svc.ns.svc.cluster.local"] {
            assert!(istio_host_is(host, "svc", "ns"), "{host}");
        }
        for host in [
            "svc.other",
            "svc.other.svc.cluster.local",
            "svc2",
            "svc.ns.svc.",
            "svcx.ns",
        ] {
            assert!(!istio_host_is(host, "svc", "ns"), "{host}");
        }
    }

    #[test]
    fn gateway_refs_are_core_services_of_the_route_namespace() {
        assert!(gateway_refers_to(&json!({"name": "s"}), "s", "ns"));
        assert!(gateway_refers_to(
            &json!({"name": "s", "group": "", "kind": "Service", "namespace": "ns"}),
            "s",
            "ns"
        ));
        assert!(!gateway_refers_to(
            &json!({"name": "s", "namespace": "other"}),
            "s",
            "ns"
        ));
        assert!(!gateway_refers_to(
            &json!({"name": "s", "group": "other.io", "kind": "Thing"}),
            "s",
            "ns"
        ));
    }
}
