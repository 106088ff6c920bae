//! Traffic routers: set the canary's weight on nginx, Istio, SMI and Gateway API objects and read it back.
//!
//! Each router is a pure transformation (the current object as JSON in, the server-side-apply
//! body out, or `None` when the object already holds the weights) plus a thin async shell that
//! reads the object and applies the body. Writes use server-side apply with the field manager
//! [`FIELD_MANAGER`] and name only what the router owns: the weighted list (copied whole from
//! the current object, since these CRDs declare their lists atomic), or the whole generated
//! nginx canary Ingress. A write carries the `resourceVersion` it was computed from, so a
//! concurrent edit by someone else makes it fail with a conflict instead of being overwritten;
//! the next reconcile computes it again.

pub mod discovery;
pub mod gateway;
pub mod istio;
pub mod nginx;
pub mod smi;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Map, Value, json};
use std::fmt;
use storm_shared::types::stormservice::TrafficRouting;

/// Field manager of every router write (distinct from the controller's own manager, so a
/// router never takes over fields the controller applies elsewhere).
pub const FIELD_MANAGER: &str = "storm-rollouts-router";

/// Where the canary's traffic goes: the Services and revisions a router points at.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Namespace of the StormService and of every routing object.
    pub namespace: &'a str,
    /// The StormService, as owner of generated objects (the nginx canary Ingress).
    pub owner: OwnerReference,
    /// Service selecting the stable revision (`canary.stableService`).
    pub stable_service: &'a str,
    /// Service selecting the canary revision (`canary.canaryService`).
    pub canary_service: &'a str,
    /// Revision hash of the stable RoleSets (pinned by the Istio `stable` subset).
    pub stable_revision: &'a str,
    /// Revision hash of the canary RoleSets (pinned by the Istio `canary` subset).
    pub canary_revision: &'a str,
}

/// A routing object, named as in messages: `VirtualService ns/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    /// Kind of the object.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectName {
    /// The object `kind` `namespace/name`.
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Why a router could not set or read a weight. Messages name the object and the field and
/// say how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested weight is not a percentage.
    #[error("canary weight {0} is outside 0..=100; step weights are percentages")]
    WeightOutOfRange(i32),
    /// An object the user must provide does not exist.
    #[error("{object} does not exist; create it or correct {field} in the StormService")]
    Missing {
        /// The missing object.
        object: ObjectName,
        /// The StormService field that names it.
        field: &'static str,
    },
    /// The object exists but cannot carry the canary's weight as it is.
    #[error("{object}: {problem}; {fix}")]
    Unroutable {
        /// The object.
        object: ObjectName,
        /// What is wrong, naming the field.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// The API group of a routing CRD is not served.
    #[error(
        "API group {group} is not served by the API server; install the {kind} CRD or remove the router from trafficRouting"
    )]
    NotServed {
        /// The API group.
        group: &'static str,
        /// The kind the router needs.
        kind: &'static str,
    },
    /// Discovering the served API version failed.
    #[error("discovering the served version of {group}: {source}")]
    Discovery {
        /// The API group.
        group: &'static str,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Reading an object failed.
    #[error("reading {object}: {source}")]
    Read {
        /// The object.
        object: ObjectName,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Writing an object failed (a 409 means it changed since it was read: retried on the next
    /// reconcile).
    #[error("writing {object} (server-side apply as {FIELD_MANAGER}): {source}")]
    Write {
        /// The object.
        object: ObjectName,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// An object did not convert to or from JSON (a bug or an API server we do not understand).
    #[error("{object}: unexpected shape: {source}")]
    Shape {
        /// The object.
        object: ObjectName,
        /// The conversion error.
        #[source]
        source: serde_json::Error,
    },
}

/// Sets the canary's share (0..=100) on every router configured in `routing`.
pub async fn set_weight(
    client: &kube::Client,
    routing: &TrafficRouting,
    target: &Target<'_>,
    weight: i32,
) -> Result<(), Error> {
    check_weight(weight)?;
    if let Some(nginx) = &routing.nginx {
        nginx::set_weight(client, nginx, target, weight).await?;
    }
    if let Some(istio) = &routing.istio {
        istio::set_weight(client, istio, target, weight).await?;
    }
    if let Some(smi) = &routing.smi {
        smi::set_weight(client, smi, target, weight).await?;
    }
    if let Some(gateway) = &routing.gateway_api {
        gateway::set_weight(client, gateway, target, weight).await?;
    }
    Ok(())
}

/// The canary weight all configured routers report; Ok(None) when they disagree or an object they need does not exist yet.
///
/// Also `None` when `routing` configures no router: there is nothing to read back.
pub async fn read_weight(
    client: &kube::Client,
    routing: &TrafficRouting,
    target: &Target<'_>,
) -> Result<Option<i32>, Error> {
    let mut reports = Vec::new();
    if let Some(nginx) = &routing.nginx {
        reports.push(nginx::read_weight(client, nginx, target).await?);
    }
    if let Some(istio) = &routing.istio {
        reports.push(istio::read_weight(client, istio, target).await?);
    }
    if let Some(smi) = &routing.smi {
        reports.push(smi::read_weight(client, smi, target).await?);
    }
    if let Some(gateway) = &routing.gateway_api {
        reports.push(gateway::read_weight(client, gateway, target).await?);
    }
    Ok(agreed(&reports))
}

/// The one weight every report names; `None` when any report is `None`, when they disagree, or
/// when there are none.
pub fn agreed(reports: &[Option<i32>]) -> Option<i32> {
    let first = (*reports.first()?)?;
    reports.iter().all(|r| *r == Some(first)).then_some(first)
}

fn check_weight(weight: i32) -> Result<(), Error> {
    if (0..=100).contains(&weight) {
        Ok(())
    } else {
        Err(Error::WeightOutOfRange(weight))
    }
}

/// Which side of the split an entry of a weighted list sends traffic to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Stable,
    Canary,
}

/// Sets `weight` on the canary entries and `100 - weight` on the stable entries of one
/// weighted list (a route's destinations, a rule's backendRefs, a split's backends) when it has
/// both; other entries, and lists without both, are left as they are. Returns whether the list
/// has both a stable and a canary entry.
fn weigh_entries(
    entries: &mut [Value],
    side: impl Fn(&Value) -> Option<Side>,
    weight: i32,
) -> bool {
    let has = |s: Side| entries.iter().any(|e| side(e) == Some(s));
    if !(has(Side::Stable) && has(Side::Canary)) {
        return false;
    }
    for entry in entries.iter_mut() {
        let w = match side(entry) {
            Some(Side::Stable) => 100 - weight,
            Some(Side::Canary) => weight,
            None => continue,
        };
        if let Some(obj) = entry.as_object_mut() {
            obj.insert("weight".into(), json!(w));
        }
    }
    true
}

/// What one weighted list holds for the split: `Some(Some(w))` when every canary entry has `w`
/// and every stable entry `100 - w`; `Some(None)` when they don't add up; `None` when the list
/// lacks a stable or a canary entry. `missing` is the weight an entry without one counts as.
fn read_entries(
    entries: &[Value],
    side: impl Fn(&Value) -> Option<Side>,
    missing: i64,
) -> Option<Option<i32>> {
    let (mut stable, mut canary) = (Vec::new(), Vec::new());
    for entry in entries {
        let w = match entry.get("weight") {
            None | Some(Value::Null) => Some(missing),
            Some(v) => integral(v),
        };
        match side(entry) {
            Some(Side::Stable) => stable.push(w),
            Some(Side::Canary) => canary.push(w),
            None => {}
        }
    }
    let (s, c) = (*stable.first()?, *canary.first()?);
    let consistent = stable.iter().all(|w| *w == s) && canary.iter().all(|w| *w == c);
    Some(match (s, c) {
        (Some(s), Some(c)) if consistent && s + c == 100 && (0..=100).contains(&c) => {
            i32::try_from(c).ok()
        }
        _ => None,
    })
}

/// A JSON number with an integral value (`50` or `50.0`, as SMI weights are `type: number`).
fn integral(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| f as i64)
    })
}

/// The server-side-apply body for `current` that sets only `spec.<field>` to `value`, with the
/// `resourceVersion` it was computed from (optimistic concurrency: a concurrent change makes
/// the apply fail with 409 instead of being overwritten with our stale copy of the list).
fn spec_field_apply(current: &Value, field: &str, value: Value) -> Value {
    let mut metadata = Map::new();
    for key in ["name", "namespace", "resourceVersion"] {
        if let Some(v) = current.pointer(&format!("/metadata/{key}")) {
            metadata.insert(key.into(), v.clone());
        }
    }
    let mut spec = Map::new();
    spec.insert(field.into(), value);
    json!({
        "apiVersion": current.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": current.get("kind").cloned().unwrap_or(Value::Null),
        "metadata": metadata,
        "spec": spec,
    })
}

/// Whether every field of `want` is in `have` with the same value (objects may hold more keys;
/// lists must have the same length, element by element): `want` applied to `have` would
/// change nothing.
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        (Value::Number(_), Value::Number(_)) => integral(have)
            .zip(integral(want))
            .map_or(have == want, |(h, w)| h == w),
        _ => have == want,
    }
}

/// A custom resource kind the routers write.
#[derive(Debug, Clone, Copy)]
struct CustomKind {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
}

impl CustomKind {
    /// The resource at the version the API server prefers for its group (the CRD's newest
    /// served version), so the routers work with whichever versions the installed CRD serves.
    /// Discovery answers are cached ([`discovery`]).
    async fn resolve(&self, client: &kube::Client) -> Result<ApiResource, Error> {
        match discovery::preferred_version(client, self.group).await {
            Ok(discovery::Preferred::Version(version)) => Ok(self.at(&version)),
            Ok(discovery::Preferred::NotServed) => Err(Error::NotServed {
                group: self.group,
                kind: self.kind,
            }),
            Err(source) => Err(Error::Discovery {
                group: self.group,
                source: Box::new(source),
            }),
        }
    }

    /// The resource at `version` (another kind of the same group, once one was resolved).
    fn at(&self, version: &str) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, version, self.kind),
            self.plural,
        )
    }

    fn object(&self, namespace: &str, name: &str) -> ObjectName {
        ObjectName::new(self.kind, namespace, name)
    }
}

/// The object as JSON, `None` when it does not exist.
async fn get_json(
    client: &kube::Client,
    resource: &ApiResource,
    object: &ObjectName,
) -> Result<Option<Value>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &object.namespace, resource);
    let found = api
        .get_opt(&object.name)
        .await
        .map_err(|source| Error::Read {
            object: object.clone(),
            source: Box::new(source),
        })?;
    found
        .map(serde_json::to_value)
        .transpose()
        .map_err(|source| Error::Shape {
            object: object.clone(),
            source,
        })
}

/// Server-side applies `body` to the object as [`FIELD_MANAGER`], forcing ownership of the
/// fields in the body (they are the router's by configuration).
async fn apply_json(
    client: &kube::Client,
    resource: &ApiResource,
    object: &ObjectName,
    body: &Value,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &object.namespace, resource);
    api.patch(
        &object.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|source| Error::Write {
        object: object.clone(),
        source: Box::new(source),
    })?;
    tracing::info!(object = %object, "traffic router applied weights");
    Ok(())
}

/// The target every router test uses: Services `stable-svc`/`canary-svc` in `ns`, revisions
/// `aaaa1111`/`bbbb2222`, owned by StormService `app`.
#[cfg(test)]
fn test_target() -> Target<'static> {
    Target {
        namespace: "ns",
        owner: OwnerReference {
            api_version: "orchestration.aibrix.ai/v1alpha1".into(),
            kind: "StormService".into(),
            name: "app".into(),
            uid: "0000-1111".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
        stable_service: "stable-svc",
        canary_service: "canary-svc",
        stable_revision: "aaaa1111",
        canary_revision: "bbbb2222",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_agree_only_when_all_name_the_same_weight() {
        assert_eq!(agreed(&[]), None);
        assert_eq!(agreed(&[Some(10)]), Some(10));
        assert_eq!(agreed(&[Some(10), Some(10)]), Some(10));
        assert_eq!(agreed(&[Some(10), Some(20)]), None);
        assert_eq!(agreed(&[Some(10), None]), None);
        assert_eq!(agreed(&[None, Some(10)]), None);
    }

    #[test]
    fn weights_outside_percentages_are_refused() {
        assert!(check_weight(0).is_ok());
        assert!(check_weight(100).is_ok());
        let err = check_weight(101).unwrap_err();
        assert!(err.to_string().contains("101"), "{err}");
        assert!(check_weight(-1).is_err());
    }

    #[test]
    fn contains_ignores_extra_keys_but_not_extra_list_items() {
        let have = json!({"a": 1, "b": [{"x": 1, "y": 2}], "c": "z"});
        assert!(contains(&have, &json!({"a": 1, "b": [{"x": 1}]})));
        assert!(contains(&have, &json!({"a": 1.0})));
        assert!(!contains(&have, &json!({"a": 2})));
        assert!(!contains(&have, &json!({"b": []})));
        assert!(!contains(&have, &json!({"d": 1})));
    }

    #[test]
    fn apply_body_names_only_the_object_and_the_owned_field() {
        let current = json!({
            "apiVersion": "v", "kind": "K",
            "metadata": {"name": "n", "namespace": "ns", "resourceVersion": "7", "labels": {"a": "b"},
                          "managedFields": []},
            "spec": {"list": [1], "other": true},
            "status": {}
        });
        assert_eq!(
            spec_field_apply(&current, "list", json!([2])),
            json!({
                "apiVersion": "v", "kind": "K",
                "metadata": {"name": "n", "namespace": "ns", "resourceVersion": "7"},
                "spec": {"list": [2]}
            })
        );
    }

    #[test]
    fn object_names_read_as_kind_namespace_name() {
        let o = ObjectName::new("VirtualService", "ns", "vs");
        assert_eq!(o.to_string(), "VirtualService ns/vs");
        let err = Error::Unroutable {
            object: o,
            problem: "no HTTP route has destinations for both a and b".into(),
            fix: "add them to spec.http[].route".into(),
        };
        assert_eq!(
            err.to_string(),
            "VirtualService ns/vs: no HTTP route has destinations for both a and b; add them to spec.http[].route"
        );
    }
}
