use super::*;
use crate::routers::test_target;
use serde_json::{Value, json};

fn routing() -> NginxRouting {
    NginxRouting {
        ingress: "web".into(),
        service_port: 8080,
    }
}

/// The user's Ingress: a stable path, a path to another Service, a host whose only path goes
/// elsewhere, TLS, a class, nginx and foreign annotations.
fn user_ingress() -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "8",
            "labels": {"team": "a"},
            "annotations": {
                "nginx.ingress.kubernetes.io/rewrite-target": "/",
                "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";",
                "nginx.ingress.kubernetes.io/affinity": "cookie",
                "nginx.ingress.kubernetes.io/session-cookie-name": "route",
                "nginx.ingress.kubernetes.io/canary-by-header": "x-user",
                "kubernetes.io/ingress.class": "nginx",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "other.io/owned": "yes"
            }},
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["app.example.com"], "secretName": "tls"}],
            "rules": [
                {"host": "app.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "stable-svc", "port": {"number": 80}}}},
                    {"path": "/static", "pathType": "Prefix",
                     "backend": {"service": {"name": "static-svc", "port": {"name": "http"}}}}
                ]}},
                {"host": "admin.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "admin-svc", "port": {"number": 80}}}}
                ]}}
            ]
        }
    }))
    .unwrap()
}

fn json_of(ingress: &Ingress) -> Value {
    serde_json::to_value(ingress).unwrap()
}

#[test]
fn the_canary_copies_stable_paths_to_the_canary_service() {
    let t = test_target();
    let canary = canary_ingress(&user_ingress(), &routing(), &t, 10).unwrap();
    assert_eq!(
        json_of(&canary),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {
                "name": "web-canary", "namespace": "ns",
                "labels": {"stormservice.aibrix.ai/name": "app", "app.kubernetes.io/managed-by": "storm-rollouts"},
                // Only what ingress-nginx reads from a canary Ingress: not the rewrite, the
                // snippet or the user's own canary settings.
                "annotations": {
                    "kubernetes.io/ingress.class": "nginx",
                    "nginx.ingress.kubernetes.io/affinity": "cookie",
                    "nginx.ingress.kubernetes.io/session-cookie-name": "route",
                    "nginx.ingress.kubernetes.io/canary": "true",
                    "nginx.ingress.kubernetes.io/canary-weight": "10"
                },
                "ownerReferences": [{
                    "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
                    "name": "app", "uid": "0000-1111", "controller": true, "blockOwnerDeletion": true
                }]
            },
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": ["app.example.com"], "secretName": "tls"}],
                "rules": [{"host": "app.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "canary-svc", "port": {"number": 8080}}}}
                ]}}]
            }
        })
    );
    assert_eq!(canary_weight(&canary), Some(10));
}

#[test]
fn weights_zero_and_hundred_read_back() {
    let t = test_target();
    for w in [0, 100] {
        let canary = canary_ingress(&user_ingress(), &routing(), &t, w).unwrap();
        assert_eq!(canary_weight(&canary), Some(w));
    }
}

#[test]
fn a_stable_default_backend_is_copied_too() {
    let t = test_target();
    let mut user = user_ingress();
    let spec = user.spec.as_mut().unwrap();
    spec.rules = None;
    spec.default_backend =
        serde_json::from_value(json!({"service": {"name": "stable-svc", "port": {"number": 80}}}))
            .unwrap();
    let canary = canary_ingress(&user, &routing(), &t, 20).unwrap();
    let spec = json_of(&canary)["spec"].clone();
    assert_eq!(
        spec["defaultBackend"],
        json!({"service": {"name": "canary-svc", "port": {"number": 8080}}})
    );
    assert!(spec.get("rules").is_none());
}

#[test]
fn an_ingress_without_the_stable_service_is_an_error() {
    let t = test_target();
    let mut user = user_ingress();
    user.spec
        .as_mut()
        .unwrap()
        .rules
        .as_mut()
        .unwrap()
        .remove(0);
    let err = canary_ingress(&user, &routing(), &t, 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Ingress ns/web: no backend routes to the stable Service stable-svc; \
         point spec.rules[].http.paths[].backend.service.name (or spec.defaultBackend) at it"
    );
}

#[test]
fn no_write_when_the_canary_is_as_wanted() {
    let t = test_target();
    let desired = canary_ingress(&user_ingress(), &routing(), &t, 30).unwrap();
    // As the API server returns it: defaults, status and metadata of its own.
    let mut current = json_of(&desired);
    current["metadata"]["uid"] = json!("u");
    current["metadata"]["resourceVersion"] = json!("12");
    current["metadata"]["managedFields"] = json!([{"manager": FIELD_MANAGER}]);
    current["status"] = json!({"loadBalancer": {}});
    let current: Ingress = serde_json::from_value(current).unwrap();
    assert!(!needs_apply(&current, &desired));
    let other = canary_ingress(&user_ingress(), &routing(), &t, 40).unwrap();
    assert!(needs_apply(&current, &other));
    // The user's Ingress gained a stable path: the canary must follow.
    let mut user = user_ingress();
    let paths = &mut user.spec.as_mut().unwrap().rules.as_mut().unwrap()[0]
        .http
        .as_mut()
        .unwrap()
        .paths;
    let mut api = paths[0].clone();
    api.path = Some("/api".into());
    paths.push(api);
    let grown = canary_ingress(&user, &routing(), &t, 30).unwrap();
    assert!(needs_apply(&current, &grown));
}

#[test]
fn weight_is_read_only_from_a_marked_canary() {
    let t = test_target();
    let mut canary = canary_ingress(&user_ingress(), &routing(), &t, 30).unwrap();
    assert!(generated_for(&canary, &t));
    let annotations = canary.metadata.annotations.as_mut().unwrap();
    annotations.insert(ANNOTATION_CANARY_WEIGHT.into(), "101".into());
    assert_eq!(canary_weight(&canary), None);
    let annotations = canary.metadata.annotations.as_mut().unwrap();
    annotations.insert(ANNOTATION_CANARY_WEIGHT.into(), "7".into());
    annotations.insert(ANNOTATION_CANARY.into(), "false".into());
    assert_eq!(canary_weight(&canary), None);
    canary.metadata.owner_references = None;
    assert!(!generated_for(&canary, &t));
}
