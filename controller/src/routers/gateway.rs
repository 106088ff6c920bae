//! Gateway API: the named HTTPRoute's rules that send traffic to both the stable and the canary
//! Service get backendRef weights `100 − w` / `w`.

use super::{
    CustomKind, Error, ObjectName, Side, Target, agreed, apply_json, get_json, read_entries,
    spec_field_apply, weigh_entries,
};
use serde_json::Value;
use storm_shared::types::stormservice::GatewayApiRouting;

const HTTP_ROUTE: CustomKind = CustomKind {
    group: "gateway.networking.k8s.io",
    kind: "HTTPRoute",
    plural: "httproutes",
};
const HTTP_ROUTE_FIELD: &str = "spec.rolloutStrategy.canary.trafficRouting.gatewayAPI.httpRoute";

pub use storm_shared::routing_refs::gateway_refers_to as refers_to;

fn side(backend_ref: &Value, target: &Target<'_>) -> Option<Side> {
    if refers_to(backend_ref, target.stable_service, target.namespace) {
        Some(Side::Stable)
    } else if refers_to(backend_ref, target.canary_service, target.namespace) {
        Some(Side::Canary)
    } else {
        None
    }
}

fn no_rule(object: &ObjectName, target: &Target<'_>) -> Error {
    Error::Unroutable {
        object: object.clone(),
        problem: format!(
            "no rule has backendRefs for both Services {} and {}",
            target.stable_service, target.canary_service
        ),
        fix: "add both to one of spec.rules[].backendRefs".into(),
    }
}

/// The server-side-apply body that gives every rule with both a stable and a canary backendRef
/// the weights `100 − weight` / `weight`: `spec.rules` copied whole from `route` (the list is
/// atomic) with only those weights changed. `None` when `route` already holds them.
pub fn http_route_apply(
    route: &Value,
    object: &ObjectName,
    target: &Target<'_>,
    weight: i32,
) -> Result<Option<Value>, Error> {
    let rules = route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .ok_or_else(|| no_rule(object, target))?;
    let mut weighted = rules.clone();
    let mut any = false;
    for rule in &mut weighted {
        if let Some(refs) = rule.get_mut("backendRefs").and_then(Value::as_array_mut) {
            any |= weigh_entries(refs, |r| side(r, target), weight);
        }
    }
    if !any {
        return Err(no_rule(object, target));
    }
    Ok((weighted != *rules).then(|| spec_field_apply(route, "rules", Value::Array(weighted))))
}

/// The canary weight `route` holds: `None` when its rules disagree or a rule's stable and
/// canary weights don't add up to 100.
pub fn http_route_weight(
    route: &Value,
    object: &ObjectName,
    target: &Target<'_>,
) -> Result<Option<i32>, Error> {
    let reports: Vec<Option<i32>> = route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|rule| rule.get("backendRefs").and_then(Value::as_array))
        // Gateway API: a backendRef's weight defaults to 1.
        .filter_map(|refs| read_entries(refs, |r| side(r, target), 1))
        .collect();
    if reports.is_empty() {
        return Err(no_rule(object, target));
    }
    Ok(agreed(&reports))
}

/// Sets the HTTPRoute's backendRef weights.
pub async fn set_weight(
    client: &kube::Client,
    routing: &GatewayApiRouting,
    target: &Target<'_>,
    weight: i32,
) -> Result<(), Error> {
    let resource = HTTP_ROUTE.resolve(client).await?;
    let object = HTTP_ROUTE.object(target.namespace, &routing.http_route);
    let route = get_json(client, &resource, &object)
        .await?
        .ok_or_else(|| Error::Missing {
            object: object.clone(),
            field: HTTP_ROUTE_FIELD,
        })?;
    if let Some(body) = http_route_apply(&route, &object, target, weight)? {
        apply_json(client, &resource, &object, &body).await?;
    }
    Ok(())
}

/// The weight the HTTPRoute holds; `None` while it does not exist.
pub async fn read_weight(
    client: &kube::Client,
    routing: &GatewayApiRouting,
    target: &Target<'_>,
) -> Result<Option<i32>, Error> {
    let resource = HTTP_ROUTE.resolve(client).await?;
    let object = HTTP_ROUTE.object(target.namespace, &routing.http_route);
    match get_json(client, &resource, &object).await? {
        Some(route) => http_route_weight(&route, &object, target),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routers::test_target;
    use serde_json::json;

    fn object() -> ObjectName {
        ObjectName::new("HTTPRoute", "ns", "route")
    }

    fn route() -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "route", "namespace": "ns", "resourceVersion": "5"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "hostnames": ["app.example.com"],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                     "backendRefs": [{"name": "admin-svc", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                     "filters": [{"type": "RequestHeaderModifier",
                                  "requestHeaderModifier": {"add": [{"name": "x", "value": "y"}]}}],
                     "backendRefs": [
                         {"group": "", "kind": "Service", "name": "stable-svc", "port": 80, "weight": 1},
                         {"name": "canary-svc", "namespace": "ns", "port": 80},
                         {"name": "canary-svc", "namespace": "elsewhere", "port": 80, "weight": 7},
                         {"group": "other.io", "kind": "Thing", "name": "stable-svc", "weight": 3}
                     ]}
                ]
            }
        })
    }

    fn weights(body: &Value) -> Vec<Value> {
        body["spec"]["rules"][1]["backendRefs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["weight"].clone())
            .collect()
    }

    #[test]
    fn backend_refs_name_core_services_in_the_route_namespace() {
        assert!(refers_to(&json!({"name": "s"}), "s", "ns"));
        assert!(refers_to(
            &json!({"name": "s", "group": "", "kind": "Service", "namespace": "ns"}),
            "s",
            "ns"
        ));
        assert!(!refers_to(
            &json!({"name": "s", "namespace": "x"}),
            "s",
            "ns"
        ));
        assert!(!refers_to(
            &json!({"name": "s", "kind": "Other"}),
            "s",
            "ns"
        ));
        assert!(!refers_to(
            &json!({"name": "s", "group": "g.io"}),
            "s",
            "ns"
        ));
        assert!(!refers_to(&json!({"name": "t"}), "s", "ns"));
    }

    #[test]
    fn the_weighted_rule_gets_the_split_and_the_rest_is_kept() {
        let t = test_target();
        let current = route();
        let body = http_route_apply(&current, &object(), &t, 10)
            .unwrap()
            .unwrap();
        assert_eq!(
            body["metadata"],
            json!({"name": "route", "namespace": "ns", "resourceVersion": "5"})
        );
        assert_eq!(body["spec"].as_object().unwrap().len(), 1);
        assert_eq!(weights(&body), [json!(90), json!(10), json!(7), json!(3)]);
        let mut expected = current["spec"]["rules"].clone();
        expected[1]["backendRefs"][0]["weight"] = json!(90);
        expected[1]["backendRefs"][1]["weight"] = json!(10);
        assert_eq!(body["spec"]["rules"], expected);
    }

    #[test]
    fn read_back_uses_the_default_weight_of_one() {
        let t = test_target();
        let current = route();
        // 1 and (default) 1: not a split that adds up to 100.
        assert_eq!(http_route_weight(&current, &object(), &t).unwrap(), None);
        for w in [0, 10, 50, 100] {
            let body = http_route_apply(&current, &object(), &t, w)
                .unwrap()
                .unwrap();
            let mut applied = current.clone();
            applied["spec"]["rules"] = body["spec"]["rules"].clone();
            assert_eq!(http_route_weight(&applied, &object(), &t).unwrap(), Some(w));
            assert_eq!(http_route_apply(&applied, &object(), &t, w).unwrap(), None);
        }
    }

    #[test]
    fn weights_zero_and_hundred() {
        let t = test_target();
        let zero = http_route_apply(&route(), &object(), &t, 0)
            .unwrap()
            .unwrap();
        assert_eq!(weights(&zero), [json!(100), json!(0), json!(7), json!(3)]);
        let full = http_route_apply(&route(), &object(), &t, 100)
            .unwrap()
            .unwrap();
        assert_eq!(weights(&full), [json!(0), json!(100), json!(7), json!(3)]);
    }

    #[test]
    fn a_route_without_both_services_is_an_error() {
        let t = test_target();
        let mut current = route();
        current["spec"]["rules"][1]["backendRefs"]
            .as_array_mut()
            .unwrap()
            .remove(1);
        let err = http_route_apply(&current, &object(), &t, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTPRoute ns/route: no rule has backendRefs for both Services stable-svc and canary-svc; \
             add both to one of spec.rules[].backendRefs"
        );
        assert!(http_route_weight(&current, &object(), &t).is_err());
    }
}
