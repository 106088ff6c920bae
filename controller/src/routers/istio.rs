//! Istio: the named VirtualService's HTTP routes that send traffic to both the stable and the
//! canary get `100 − w` / `w`; with a DestinationRule, destinations are told apart by subset
//! (`stable`/`canary`) and the DestinationRule's subsets of those names pin the revision label.

use super::{
    CustomKind, Error, ObjectName, Side, Target, agreed, apply_json, get_json, read_entries,
    spec_field_apply, weigh_entries,
};
use serde_json::{Value, json};
use storm_shared::keys::LABEL_REVISION;
use storm_shared::types::stormservice::IstioRouting;

/// Name of the DestinationRule subset (and destination subset) of the stable revision.
pub const STABLE_SUBSET: &str = "stable";
/// Name of the DestinationRule subset (and destination subset) of the canary revision.
pub const CANARY_SUBSET: &str = "canary";

const VIRTUAL_SERVICE: CustomKind = CustomKind {
    group: "networking.istio.io",
    kind: "VirtualService",
    plural: "virtualservices",
};
const DESTINATION_RULE: CustomKind = CustomKind {
    group: "networking.istio.io",
    kind: "DestinationRule",
    plural: "destinationrules",
};
const VIRTUAL_SERVICE_FIELD: &str =
    "spec.rolloutStrategy.canary.trafficRouting.istio.virtualService";
const DESTINATION_RULE_FIELD: &str =
    "spec.rolloutStrategy.canary.trafficRouting.istio.destinationRule";

/// How a route's destinations are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// By host: the stable and canary Service names (`svc`, `svc.ns`, `svc.ns.svc.cluster.local`).
    Hosts,
    /// By subset `stable` / `canary` (when a DestinationRule is configured).
    Subsets,
}

impl Match {
    /// Subsets when the routing names a DestinationRule, hosts otherwise.
    pub fn of(routing: &IstioRouting) -> Self {
        if routing.destination_rule.is_some() {
            Match::Subsets
        } else {
            Match::Hosts
        }
    }
}

pub use storm_shared::routing_refs::istio_host_is as host_is;

fn side(entry: &Value, target: &Target<'_>, by: Match) -> Option<Side> {
    let destination = entry.get("destination")?;
    match by {
        Match::Subsets => match destination.get("subset")?.as_str()? {
            STABLE_SUBSET => Some(Side::Stable),
            CANARY_SUBSET => Some(Side::Canary),
            _ => None,
        },
        Match::Hosts => {
            let host = destination.get("host")?.as_str()?;
            if host_is(host, target.stable_service, target.namespace) {
                Some(Side::Stable)
            } else if host_is(host, target.canary_service, target.namespace) {
                Some(Side::Canary)
            } else {
                None
            }
        }
    }
}

fn no_route(object: &ObjectName, target: &Target<'_>, by: Match) -> Error {
    let (problem, fix) = match by {
        Match::Hosts => (
            format!(
                "no HTTP route has destinations for both {} and {}",
                target.stable_service, target.canary_service
            ),
            "add them to spec.http[].route".to_string(),
        ),
        Match::Subsets => (
            format!(
                "no HTTP route has destinations for both subsets {STABLE_SUBSET} and {CANARY_SUBSET}"
            ),
            format!(
                "add destinations with subset: {STABLE_SUBSET} and subset: {CANARY_SUBSET} to one of spec.http[].route"
            ),
        ),
    };
    Error::Unroutable {
        object: object.clone(),
        problem,
        fix,
    }
}

/// The server-side-apply body that gives every HTTP route with both a stable and a canary
/// destination the weights `100 − weight` / `weight`: `spec.http` copied whole from `vs` (the
/// list is atomic) with only those weights changed. `None` when `vs` already holds them.
pub fn virtual_service_apply(
    vs: &Value,
    object: &ObjectName,
    target: &Target<'_>,
    by: Match,
    weight: i32,
) -> Result<Option<Value>, Error> {
    let http = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .ok_or_else(|| no_route(object, target, by))?;
    let mut weighted = http.clone();
    let mut any = false;
    for route in &mut weighted {
        if let Some(destinations) = route.get_mut("route").and_then(Value::as_array_mut) {
            any |= weigh_entries(destinations, |d| side(d, target, by), weight);
        }
    }
    if !any {
        return Err(no_route(object, target, by));
    }
    Ok((weighted != *http).then(|| spec_field_apply(vs, "http", Value::Array(weighted))))
}

/// The canary weight `vs` holds: `None` when its routes disagree or a route's stable and
/// canary weights don't add up to 100.
pub fn virtual_service_weight(
    vs: &Value,
    object: &ObjectName,
    target: &Target<'_>,
    by: Match,
) -> Result<Option<i32>, Error> {
    let reports: Vec<Option<i32>> = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|route| route.get("route").and_then(Value::as_array))
        // Istio: a destination without a weight gets none of the traffic when it has siblings.
        .filter_map(|destinations| read_entries(destinations, |d| side(d, target, by), 0))
        .collect();
    if reports.is_empty() {
        return Err(no_route(object, target, by));
    }
    Ok(agreed(&reports))
}

/// The server-side-apply body that makes the DestinationRule's subsets `stable` and `canary`
/// select the stable and canary revisions (label [`LABEL_REVISION`]): `spec.subsets` copied
/// whole (atomic list), those two added or their revision label set, every other subset and
/// field kept. `None` when `dr` already pins both.
pub fn destination_rule_apply(dr: &Value, target: &Target<'_>) -> Option<Value> {
    let subsets = dr
        .pointer("/spec/subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut pinned = subsets.clone();
    pin(&mut pinned, STABLE_SUBSET, target.stable_revision);
    pin(&mut pinned, CANARY_SUBSET, target.canary_revision);
    (pinned != subsets).then(|| spec_field_apply(dr, "subsets", Value::Array(pinned)))
}

fn pin(subsets: &mut Vec<Value>, name: &str, revision: &str) {
    let existing = subsets
        .iter_mut()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
        .and_then(Value::as_object_mut);
    match existing {
        Some(subset) => {
            let labels = subset.entry("labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            if let Some(labels) = labels.as_object_mut() {
                labels.insert(LABEL_REVISION.into(), json!(revision));
            }
        }
        None => subsets.push(json!({"name": name, "labels": {LABEL_REVISION: revision}})),
    }
}

/// Whether the DestinationRule's `stable` and `canary` subsets select the target's revisions.
pub fn destination_rule_pins(dr: &Value, target: &Target<'_>) -> bool {
    let revision_of = |name: &str| {
        dr.pointer("/spec/subsets")
            .and_then(Value::as_array)?
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name))?
            .get("labels")?
            .get(LABEL_REVISION)?
            .as_str()
    };
    revision_of(STABLE_SUBSET) == Some(target.stable_revision)
        && revision_of(CANARY_SUBSET) == Some(target.canary_revision)
}

/// Pins the DestinationRule's subsets (when configured), then sets the VirtualService's weights.
pub async fn set_weight(
    client: &kube::Client,
    routing: &IstioRouting,
    target: &Target<'_>,
    weight: i32,
) -> Result<(), Error> {
    // One discovery for both kinds: they share the group, so its preferred version.
    let resource = VIRTUAL_SERVICE.resolve(client).await?;
    if let Some(name) = &routing.destination_rule {
        let dr_resource = DESTINATION_RULE.at(&resource.version);
        let object = DESTINATION_RULE.object(target.namespace, name);
        let dr = get_json(client, &dr_resource, &object)
            .await?
            .ok_or_else(|| Error::Missing {
                object: object.clone(),
                field: DESTINATION_RULE_FIELD,
            })?;
        if let Some(body) = destination_rule_apply(&dr, target) {
            apply_json(client, &dr_resource, &object, &body).await?;
        }
    }
    let object = VIRTUAL_SERVICE.object(target.namespace, &routing.virtual_service);
    let vs = get_json(client, &resource, &object)
        .await?
        .ok_or_else(|| Error::Missing {
            object: object.clone(),
            field: VIRTUAL_SERVICE_FIELD,
        })?;
    if let Some(body) = virtual_service_apply(&vs, &object, target, Match::of(routing), weight)? {
        apply_json(client, &resource, &object, &body).await?;
    }
    Ok(())
}

/// The weight the VirtualService holds; `None` while an object is missing or the
/// DestinationRule's subsets don't select the target's revisions yet.
pub async fn read_weight(
    client: &kube::Client,
    routing: &IstioRouting,
    target: &Target<'_>,
) -> Result<Option<i32>, Error> {
    let resource = VIRTUAL_SERVICE.resolve(client).await?;
    if let Some(name) = &routing.destination_rule {
        let dr_resource = DESTINATION_RULE.at(&resource.version);
        let object = DESTINATION_RULE.object(target.namespace, name);
        match get_json(client, &dr_resource, &object).await? {
            Some(dr) if destination_rule_pins(&dr, target) => {}
            _ => return Ok(None),
        }
    }
    let object = VIRTUAL_SERVICE.object(target.namespace, &routing.virtual_service);
    match get_json(client, &resource, &object).await? {
        Some(vs) => virtual_service_weight(&vs, &object, target, Match::of(routing)),
        None => Ok(None),
    }
}

#[cfg(test)]
#[path = "istio_tests.rs"]
mod tests;
