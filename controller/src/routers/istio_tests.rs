use super::*;
use crate::routers::test_target;

fn vs_object() -> ObjectName {
    ObjectName::new("VirtualService", "ns", "vs")
}

/// A VirtualService as the user (and another controller) wrote it: a header route to a third
/// service, the weighted route with a mirror and a retry policy, and a catch-all to stable.
fn vs(stable_host: &str, canary_host: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs", "namespace": "ns", "resourceVersion": "42",
                     "annotations": {"other-controller/owned": "yes"}},
        "spec": {
            "hosts": ["app.example.com"],
            "gateways": ["mesh"],
            "http": [
                {"name": "beta", "match": [{"headers": {"x-beta": {"exact": "1"}}}],
                 "route": [{"destination": {"host": "beta-svc"}}]},
                {"name": "primary",
                 "route": [
                     {"destination": {"host": stable_host, "port": {"number": 80}}, "weight": 100},
                     {"destination": {"host": canary_host, "port": {"number": 80}}, "weight": 0},
                     {"destination": {"host": "third-svc"}, "weight": 5}
                 ],
                 "mirror": {"host": "shadow-svc"},
                 "retries": {"attempts": 3}},
                {"name": "fallback", "route": [{"destination": {"host": stable_host}}]}
            ]
        }
    })
}

fn weights(body: &Value, route: usize) -> Vec<Value> {
    body["spec"]["http"][route]["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["weight"].clone())
        .collect()
}

#[test]
fn host_spellings_name_the_service_in_its_namespace() {
    for host in [
        "svc",
        "svc.ns",
        "svc.ns.svc",
        "svc.ns.svc.cluster.local",
        "svc.ns.svc.corp.internal",
    ] {
        assert!(host_is(host, "svc", "ns"), "{host}");
    }
    for host in [
        "svc2",
        "svc.other",
        "svc.ns.svc.",
        "svc.nsx",
        "svc.ns.cluster.local",
        "other.ns.svc.cluster.local",
        "sv",
    ] {
        assert!(!host_is(host, "svc", "ns"), "{host}");
    }
}

#[test]
fn weighted_route_gets_the_split_and_everything_else_is_kept() {
    let t = test_target();
    let current = vs("stable-svc", "canary-svc");
    let body = virtual_service_apply(&current, &vs_object(), &t, Match::Hosts, 10)
        .unwrap()
        .unwrap();
    // Only the atomic list we own, with the version it was computed from.
    assert_eq!(
        body["metadata"],
        json!({"name": "vs", "namespace": "ns", "resourceVersion": "42"})
    );
    assert_eq!(body["spec"].as_object().unwrap().len(), 1);
    assert_eq!(weights(&body, 1), [json!(90), json!(10), json!(5)]);
    // The rest of the list is byte-for-byte the user's.
    let mut expected = current["spec"]["http"].clone();
    expected[1]["route"][0]["weight"] = json!(90);
    expected[1]["route"][1]["weight"] = json!(10);
    assert_eq!(body["spec"]["http"], expected);
}

#[test]
fn every_host_spelling_is_matched() {
    let t = test_target();
    for (s, c) in [
        ("stable-svc.ns", "canary-svc"),
        ("stable-svc.ns.svc.cluster.local", "canary-svc.ns.svc"),
    ] {
        let body = virtual_service_apply(&vs(s, c), &vs_object(), &t, Match::Hosts, 50)
            .unwrap()
            .unwrap();
        assert_eq!(
            weights(&body, 1),
            [json!(50), json!(50), json!(5)],
            "{s} {c}"
        );
    }
}

#[test]
fn weights_zero_and_hundred() {
    let t = test_target();
    let current = vs("stable-svc", "canary-svc");
    let full = virtual_service_apply(&current, &vs_object(), &t, Match::Hosts, 100)
        .unwrap()
        .unwrap();
    assert_eq!(weights(&full, 1), [json!(0), json!(100), json!(5)]);
    let mut back = current.clone();
    back["spec"]["http"] = full["spec"]["http"].clone();
    let zero = virtual_service_apply(&back, &vs_object(), &t, Match::Hosts, 0)
        .unwrap()
        .unwrap();
    assert_eq!(zero["spec"]["http"], current["spec"]["http"]);
}

#[test]
fn no_write_when_the_weights_are_already_there() {
    let t = test_target();
    // The fixture holds 100/0: weight 0 is a no-op.
    let current = vs("stable-svc", "canary-svc");
    assert_eq!(
        virtual_service_apply(&current, &vs_object(), &t, Match::Hosts, 0).unwrap(),
        None
    );
}

#[test]
fn missing_destinations_are_an_error_naming_the_field() {
    let t = test_target();
    let mut current = vs("stable-svc", "other-svc");
    let err = virtual_service_apply(&current, &vs_object(), &t, Match::Hosts, 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "VirtualService ns/vs: no HTTP route has destinations for both stable-svc and canary-svc; \
         add them to spec.http[].route"
    );
    assert!(virtual_service_weight(&current, &vs_object(), &t, Match::Hosts).is_err());
    current["spec"].as_object_mut().unwrap().remove("http");
    assert!(virtual_service_apply(&current, &vs_object(), &t, Match::Hosts, 10).is_err());
    // By host, subsets are not enough; by subset, hosts are not enough.
    let by_host = vs("stable-svc", "canary-svc");
    let err = virtual_service_apply(&by_host, &vs_object(), &t, Match::Subsets, 10).unwrap_err();
    assert!(err.to_string().contains("subset: stable"), "{err}");
}

#[test]
fn read_back_reports_the_canary_share() {
    let t = test_target();
    let current = vs("stable-svc", "canary-svc");
    assert_eq!(
        virtual_service_weight(&current, &vs_object(), &t, Match::Hosts).unwrap(),
        Some(0)
    );
    for w in [10, 50, 100] {
        let body = virtual_service_apply(&current, &vs_object(), &t, Match::Hosts, w)
            .unwrap()
            .unwrap();
        let mut applied = current.clone();
        applied["spec"]["http"] = body["spec"]["http"].clone();
        assert_eq!(
            virtual_service_weight(&applied, &vs_object(), &t, Match::Hosts).unwrap(),
            Some(w)
        );
    }
}

#[test]
fn read_back_is_none_when_routes_disagree_or_do_not_add_up() {
    let t = test_target();
    let mut current = vs("stable-svc", "canary-svc");
    current["spec"]["http"][1]["route"][0]["weight"] = json!(80);
    assert_eq!(
        virtual_service_weight(&current, &vs_object(), &t, Match::Hosts).unwrap(),
        None
    );
    // Two weighted routes: both are set, and they must agree when read.
    let mut two = vs("stable-svc", "canary-svc");
    let second = two["spec"]["http"][1].clone();
    two["spec"]["http"].as_array_mut().unwrap().push(second);
    let body = virtual_service_apply(&two, &vs_object(), &t, Match::Hosts, 25)
        .unwrap()
        .unwrap();
    assert_eq!(weights(&body, 1), weights(&body, 3));
    let mut applied = two.clone();
    applied["spec"]["http"] = body["spec"]["http"].clone();
    assert_eq!(
        virtual_service_weight(&applied, &vs_object(), &t, Match::Hosts).unwrap(),
        Some(25)
    );
    applied["spec"]["http"][3]["route"][0]["weight"] = json!(70);
    applied["spec"]["http"][3]["route"][1]["weight"] = json!(30);
    assert_eq!(
        virtual_service_weight(&applied, &vs_object(), &t, Match::Hosts).unwrap(),
        None
    );
}

fn vs_with_subsets() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "vs", "namespace": "ns", "resourceVersion": "3"},
        "spec": {"hosts": ["app"], "http": [{"route": [
            {"destination": {"host": "app", "subset": "stable"}, "weight": 100},
            {"destination": {"host": "app", "subset": "canary"}},
            {"destination": {"host": "app", "subset": "legacy"}, "weight": 1}
        ]}]}
    })
}

#[test]
fn subsets_tell_destinations_apart_with_a_destination_rule() {
    let t = test_target();
    let current = vs_with_subsets();
    // A missing weight counts as 0 next to siblings.
    assert_eq!(
        virtual_service_weight(&current, &vs_object(), &t, Match::Subsets).unwrap(),
        Some(0)
    );
    let body = virtual_service_apply(&current, &vs_object(), &t, Match::Subsets, 30)
        .unwrap()
        .unwrap();
    assert_eq!(weights(&body, 0), [json!(70), json!(30), json!(1)]);
    assert!(virtual_service_apply(&current, &vs_object(), &t, Match::Hosts, 30).is_err());
}

fn dr(subsets: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "dr", "namespace": "ns", "resourceVersion": "9"},
        "spec": {"host": "app", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}, "subsets": subsets}
    })
}

#[test]
fn destination_rule_gets_stable_and_canary_subsets_and_keeps_the_others() {
    let t = test_target();
    let current = dr(json!([{"name": "legacy", "labels": {"version": "v0"}}]));
    let body = destination_rule_apply(&current, &t).unwrap();
    assert_eq!(
        body["spec"],
        json!({"subsets": [
            {"name": "legacy", "labels": {"version": "v0"}},
            {"name": "stable", "labels": {LABEL_REVISION: "aaaa1111"}},
            {"name": "canary", "labels": {LABEL_REVISION: "bbbb2222"}}
        ]})
    );
    assert_eq!(body["metadata"]["resourceVersion"], "9");
    assert!(!destination_rule_pins(&current, &t));
    let mut applied = current.clone();
    applied["spec"]["subsets"] = body["spec"]["subsets"].clone();
    assert!(destination_rule_pins(&applied, &t));
    assert_eq!(destination_rule_apply(&applied, &t), None);
}

#[test]
fn existing_subsets_are_repinned_keeping_their_other_fields() {
    let t = test_target();
    let current = dr(json!([
        {"name": "canary", "labels": {"app": "x", LABEL_REVISION: "old"},
         "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
        {"name": "stable", "labels": {LABEL_REVISION: "aaaa1111"}}
    ]));
    let body = destination_rule_apply(&current, &t).unwrap();
    assert_eq!(
        body["spec"]["subsets"],
        json!([
            {"name": "canary", "labels": {"app": "x", LABEL_REVISION: "bbbb2222"},
             "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
            {"name": "stable", "labels": {LABEL_REVISION: "aaaa1111"}}
        ])
    );
    // No subsets at all yet.
    let mut bare = dr(json!([]));
    bare["spec"].as_object_mut().unwrap().remove("subsets");
    let body = destination_rule_apply(&bare, &t).unwrap();
    assert_eq!(body["spec"]["subsets"].as_array().unwrap().len(), 2);
}
