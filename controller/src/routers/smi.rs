//! SMI: the named TrafficSplit's backends for the stable and canary Services get `100 − w` /
//! `w`. The API version is the one the installed CRD prefers (OSM and Linkerd serve
//! `v1alpha2`, the SMI SDK `v1alpha4`; `backends` is the same in all of them).

use super::{
    CustomKind, Error, ObjectName, Side, Target, apply_json, contains, get_json, read_entries,
    spec_field_apply, weigh_entries,
};
use serde_json::Value;
use storm_shared::types::stormservice::SmiRouting;

const TRAFFIC_SPLIT: CustomKind = CustomKind {
    group: "split.smi-spec.io",
    kind: "TrafficSplit",
    plural: "trafficsplits",
};
const TRAFFIC_SPLIT_FIELD: &str = "spec.rolloutStrategy.canary.trafficRouting.smi.trafficSplit";

fn side(backend: &Value, target: &Target<'_>) -> Option<Side> {
    match backend.get("service")?.as_str()? {
        s if s == target.stable_service => Some(Side::Stable),
        s if s == target.canary_service => Some(Side::Canary),
        _ => None,
    }
}

fn no_backends(object: &ObjectName, target: &Target<'_>) -> Error {
    Error::Unroutable {
        object: object.clone(),
        problem: format!(
            "spec.backends lacks the Service {} or {}",
            target.stable_service, target.canary_service
        ),
        fix: "add a backend for each to spec.backends".into(),
    }
}

/// The server-side-apply body that gives the stable and canary backends the weights
/// `100 − weight` / `weight`: `spec.backends` copied whole from `split` (atomic list), every
/// other backend kept. `None` when `split` already holds them.
pub fn traffic_split_apply(
    split: &Value,
    object: &ObjectName,
    target: &Target<'_>,
    weight: i32,
) -> Result<Option<Value>, Error> {
    let backends = split
        .pointer("/spec/backends")
        .and_then(Value::as_array)
        .ok_or_else(|| no_backends(object, target))?;
    let mut weighted = backends.clone();
    if !weigh_entries(&mut weighted, |b| side(b, target), weight) {
        return Err(no_backends(object, target));
    }
    // Compared as numbers: a weight the user wrote as 25.0 already is 25.
    if contains(
        &Value::Array(backends.clone()),
        &Value::Array(weighted.clone()),
    ) {
        return Ok(None);
    }
    Ok(Some(spec_field_apply(
        split,
        "backends",
        Value::Array(weighted),
    )))
}

/// The canary weight `split` holds: `None` when the stable and canary weights don't add up to 100.
pub fn traffic_split_weight(
    split: &Value,
    object: &ObjectName,
    target: &Target<'_>,
) -> Result<Option<i32>, Error> {
    let backends = split
        .pointer("/spec/backends")
        .and_then(Value::as_array)
        .ok_or_else(|| no_backends(object, target))?;
    read_entries(backends, |b| side(b, target), 0).ok_or_else(|| no_backends(object, target))
}

/// Sets the TrafficSplit's backend weights.
pub async fn set_weight(
    client: &kube::Client,
    routing: &SmiRouting,
    target: &Target<'_>,
    weight: i32,
) -> Result<(), Error> {
    let resource = TRAFFIC_SPLIT.resolve(client).await?;
    let object = TRAFFIC_SPLIT.object(target.namespace, &routing.traffic_split);
    let split = get_json(client, &resource, &object)
        .await?
        .ok_or_else(|| Error::Missing {
            object: object.clone(),
            field: TRAFFIC_SPLIT_FIELD,
        })?;
    if let Some(body) = traffic_split_apply(&split, &object, target, weight)? {
        apply_json(client, &resource, &object, &body).await?;
    }
    Ok(())
}

/// The weight the TrafficSplit holds; `None` while it does not exist.
pub async fn read_weight(
    client: &kube::Client,
    routing: &SmiRouting,
    target: &Target<'_>,
) -> Result<Option<i32>, Error> {
    let resource = TRAFFIC_SPLIT.resolve(client).await?;
    let object = TRAFFIC_SPLIT.object(target.namespace, &routing.traffic_split);
    match get_json(client, &resource, &object).await? {
        Some(split) => traffic_split_weight(&split, &object, target),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routers::test_target;
    use serde_json::json;

    fn object() -> ObjectName {
        ObjectName::new("TrafficSplit", "ns", "split")
    }

    fn split(stable: Value, canary: Value) -> Value {
        json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {"name": "split", "namespace": "ns", "resourceVersion": "11",
                         "labels": {"team": "a"}},
            "spec": {"service": "app", "backends": [
                {"service": "stable-svc", "weight": stable},
                {"service": "legacy-svc", "weight": 2},
                {"service": "canary-svc", "weight": canary}
            ]}
        })
    }

    #[test]
    fn stable_and_canary_backends_get_the_weights_and_others_are_kept() {
        let t = test_target();
        let current = split(json!(100), json!(0));
        let body = traffic_split_apply(&current, &object(), &t, 10)
            .unwrap()
            .unwrap();
        assert_eq!(
            body,
            json!({
                "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
                "metadata": {"name": "split", "namespace": "ns", "resourceVersion": "11"},
                "spec": {"backends": [
                    {"service": "stable-svc", "weight": 90},
                    {"service": "legacy-svc", "weight": 2},
                    {"service": "canary-svc", "weight": 10}
                ]}
            })
        );
    }

    #[test]
    fn weights_zero_and_hundred_and_read_back() {
        let t = test_target();
        let current = split(json!(60), json!(40));
        assert_eq!(
            traffic_split_weight(&current, &object(), &t).unwrap(),
            Some(40)
        );
        for w in [0, 100] {
            let body = traffic_split_apply(&current, &object(), &t, w)
                .unwrap()
                .unwrap();
            assert_eq!(body["spec"]["backends"][0]["weight"], json!(100 - w));
            assert_eq!(body["spec"]["backends"][2]["weight"], json!(w));
            let mut applied = current.clone();
            applied["spec"]["backends"] = body["spec"]["backends"].clone();
            assert_eq!(
                traffic_split_weight(&applied, &object(), &t).unwrap(),
                Some(w)
            );
        }
    }

    #[test]
    fn numbers_written_as_floats_count_as_their_integer() {
        let t = test_target();
        let current = split(json!(75.0), json!(25.0));
        assert_eq!(
            traffic_split_weight(&current, &object(), &t).unwrap(),
            Some(25)
        );
        assert_eq!(
            traffic_split_apply(&current, &object(), &t, 25).unwrap(),
            None
        );
        let odd = split(json!(75.5), json!(24.5));
        assert_eq!(traffic_split_weight(&odd, &object(), &t).unwrap(), None);
    }

    #[test]
    fn a_split_without_the_canary_backend_is_an_error() {
        let t = test_target();
        let mut current = split(json!(100), json!(0));
        current["spec"]["backends"]
            .as_array_mut()
            .unwrap()
            .remove(2);
        let err = traffic_split_apply(&current, &object(), &t, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TrafficSplit ns/split: spec.backends lacks the Service stable-svc or canary-svc; \
             add a backend for each to spec.backends"
        );
        assert!(traffic_split_weight(&current, &object(), &t).is_err());
    }
}
