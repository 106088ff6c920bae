//! What the webhook's watch caches keep of each object: only what the rules read. The caches
//! hold every Service, Ingress and Namespace of the cluster (and every routing object when those
//! CRDs are installed), so what is not read is not kept: no managedFields (cut by the reflector),
//! no labels but a Namespace's, no annotations but the owner's opt-in
//! [`ANNOTATION_MANAGED_BY`], no status, and of each spec only the fields a rule looks at (the
//! backend names of a route, a Service's selector and port numbers, a RolloutPolicy whole).

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    Ingress, IngressBackend, IngressServiceBackend, IngressSpec,
};
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde_json::Value;
use storm_shared::keys::ANNOTATION_MANAGED_BY;
use storm_shared::{AnalysisTemplate, RolloutPolicy};

/// Keeps only the owner's opt-in annotation; drops labels (no rule reads them).
fn metadata<K: Resource>(o: &mut K) {
    let opt_in = o.annotations().get(ANNOTATION_MANAGED_BY).cloned();
    let meta = o.meta_mut();
    meta.annotations = opt_in.map(|v| [(ANNOTATION_MANAGED_BY.to_string(), v)].into());
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

/// The selector and the port numbers.
pub fn service(s: &mut Service) {
    metadata(s);
    s.status = None;
    s.spec = s.spec.take().map(|spec| ServiceSpec {
        selector: spec.selector,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    port: p.port,
                    ..Default::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
}

/// The backend Service names of the default backend and of every path.
pub fn ingress(i: &mut Ingress) {
    metadata(i);
    i.status = None;
    let service = |b: IngressBackend| IngressBackend {
        service: b.service.map(|s| IngressServiceBackend {
            name: s.name,
            port: None,
        }),
        resource: None,
    };
    i.spec = i.spec.take().map(|spec| IngressSpec {
        default_backend: spec.default_backend.map(service),
        rules: spec.rules.map(|rules| {
            rules
                .into_iter()
                .map(|mut rule| {
                    if let Some(http) = rule.http.as_mut() {
                        for path in &mut http.paths {
                            path.backend = service(std::mem::take(&mut path.backend));
                        }
                    }
                    rule
                })
                .collect()
        }),
        ..IngressSpec::default()
    });
}

/// Labels only (RolloutPolicy namespaceSelectors).
pub fn namespace(n: &mut Namespace) {
    n.meta_mut().annotations = None;
    n.spec = None;
    n.status = None;
}

/// Existence only.
pub fn analysis_template(t: &mut AnalysisTemplate) {
    metadata(t);
    t.spec = Default::default();
}

/// Everything: policies are evaluated whole.
pub fn rollout_policy(p: &mut RolloutPolicy) {
    metadata(p);
}

/// Keeps only the values at `pointers` (each `/a/b/*/c`, `*` walking a list) of `data`.
fn keep(data: &mut Value, pointers: &[&[&str]]) {
    fn pick(from: &Value, path: &[&str]) -> Option<Value> {
        let Some((first, rest)) = path.split_first() else {
            return Some(from.clone());
        };
        if *first == "*" {
            let items = from.as_array()?;
            return Some(Value::Array(
                items
                    .iter()
                    .map(|item| pick(item, rest).unwrap_or(Value::Null))
                    .collect(),
            ));
        }
        let inner = pick(from.get(*first)?, rest)?;
        Some(serde_json::json!({ *first: inner }))
    }
    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(existing) => merge(existing, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                for (x, y) in a.iter_mut().zip(b) {
                    merge(x, y);
                }
            }
            // A value one pointer lacks must not erase what another found.
            (_, Value::Null) => {}
            (slot, v) => *slot = v,
        }
    }
    let mut out = Value::Object(Default::default());
    for p in pointers {
        if let Some(v) = pick(data, p) {
            merge(&mut out, v);
        }
    }
    *data = out;
}

/// HTTP route destination hosts.
pub fn virtual_service(o: &mut DynamicObject) {
    metadata(o);
    keep(
        &mut o.data,
        &[&["spec", "http", "*", "route", "*", "destination", "host"]],
    );
}

/// Existence only.
pub fn destination_rule(o: &mut DynamicObject) {
    metadata(o);
    keep(&mut o.data, &[]);
}

/// Backend Service names.
pub fn traffic_split(o: &mut DynamicObject) {
    metadata(o);
    keep(&mut o.data, &[&["spec", "backends", "*", "service"]]);
}

/// backendRefs' name, group, kind and namespace.
pub fn http_route(o: &mut DynamicObject) {
    metadata(o);
    let refs = ["spec", "rules", "*", "backendRefs", "*"];
    let fields: Vec<Vec<&str>> = ["name", "group", "kind", "namespace"]
        .iter()
        .map(|f| refs.iter().copied().chain([*f]).collect())
        .collect();
    let fields: Vec<&[&str]> = fields.iter().map(Vec::as_slice).collect();
    keep(&mut o.data, &fields);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookups::{
        http_route_backends, ingress_backends, traffic_split_backends, virtual_service_backends,
    };
    use serde_json::json;

    fn dynamic(data: Value) -> DynamicObject {
        serde_json::from_value(data).unwrap()
    }

    #[test]
    fn objects_keep_what_the_rules_read_and_the_opt_in() {
        let meta = json!({"name": "x", "namespace": "ns", "labels": {"a": "b"},
            "annotations": {ANNOTATION_MANAGED_BY: "app", "kubectl.kubernetes.io/last-applied-configuration": "{}", "other": "y"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "1"}]});
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"selector": {"app": "a"}, "clusterIP": "10.0.0.1",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        service(&mut svc);
        assert_eq!(
            serde_json::to_value(&svc).unwrap(),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "x", "namespace": "ns", "annotations": {ANNOTATION_MANAGED_BY: "app"}},
                   "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}})
        );
        let mut ing: Ingress = serde_json::from_value(json!({
            "metadata": meta,
            "spec": {
                "ingressClassName": "nginx",
                "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                "tls": [{"hosts": ["a"], "secretName": "s"}],
                "rules": [{"host": "a", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "stable", "port": {"number": 80}}}}
                ]}}]
            }
        }))
        .unwrap();
        ingress(&mut ing);
        assert_eq!(ingress_backends(&ing), ["fallback", "stable"]);
        assert!(ing.spec.as_ref().unwrap().tls.is_none());
        assert_eq!(ing.annotations().len(), 1);
        let mut vs = dynamic(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
            "spec": {"hosts": ["h"], "http": [
                {"match": [{"uri": {"prefix": "/"}}], "route": [
                    {"destination": {"host": "stable", "subset": "s"}, "weight": 90},
                    {"destination": {"host": "canary"}, "weight": 10}]},
                {"route": [{"destination": {"host": "other"}}]}
            ]}
        }));
        virtual_service(&mut vs);
        assert_eq!(virtual_service_backends(&vs), ["stable", "canary", "other"]);
        assert_eq!(
            vs.data,
            json!({"spec": {"http": [
                {"route": [{"destination": {"host": "stable"}}, {"destination": {"host": "canary"}}]},
                {"route": [{"destination": {"host": "other"}}]}
            ]}})
        );
        let mut hr = dynamic(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta,
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"matches": [{}], "backendRefs": [
                {"name": "stable", "port": 80, "weight": 90},
                {"name": "canary", "kind": "Service", "group": "", "namespace": "ns", "weight": 10},
                {"name": "bucket", "kind": "Backend", "group": "example.io"}
            ]}, {"filters": []}]}
        }));
        http_route(&mut hr);
        assert_eq!(http_route_backends(&hr), ["stable", "canary"]);
        let mut ts = dynamic(json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit", "metadata": meta,
            "spec": {"service": "root", "backends": [{"service": "stable", "weight": 90}, {"service": "canary", "weight": 10}]}
        }));
        traffic_split(&mut ts);
        assert_eq!(traffic_split_backends(&ts), ["stable", "canary"]);
        assert_eq!(
            ts.metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(ANNOTATION_MANAGED_BY),
            Some(&"app".to_string())
        );
        let mut ns: Namespace = serde_json::from_value(json!({"metadata": meta})).unwrap();
        namespace(&mut ns);
        assert_eq!(ns.labels().get("a"), Some(&"b".to_string()));
    }
}
