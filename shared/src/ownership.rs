//! Which objects of other owners a StormService makes the controller write, and who may name them.
//!
//! The controller patches the Services and traffic router objects a StormService names: it pins
//! Service selectors to revisions, sets weights on VirtualServices, TrafficSplits and HTTPRoutes,
//! re-pins a DestinationRule's subsets, and generates an nginx canary Ingress from the named
//! Ingress. Without a check, anyone who may write a StormService could have the controller rewrite
//! objects they may not touch themselves (a confused deputy). Admission therefore asks, for every
//! such object a create or update newly names, whether the requesting user may `patch` it, unless
//! the object's owner opted in with [`crate::keys::ANNOTATION_MANAGED_BY`].
//!
//! This module is the pure half: which objects, under which field, and the messages. The webhook
//! asks the API server (SubjectAccessReview) and reads the opt-in from its watch caches.

use crate::errors::{FieldError, FieldPath};
use crate::types::stormservice::StormService;

/// A kind of object a StormService can make the controller write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficKind {
    /// A core Service (selector pinned to a revision).
    Service,
    /// A networking.k8s.io Ingress (copied into the generated `<ingress>-canary`).
    Ingress,
    /// An Istio VirtualService (route weights).
    VirtualService,
    /// An Istio DestinationRule (`stable`/`canary` subsets).
    DestinationRule,
    /// An SMI TrafficSplit (backend weights).
    TrafficSplit,
    /// A Gateway API HTTPRoute (backendRef weights).
    HttpRoute,
}

impl TrafficKind {
    /// The kind as users write it.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::Ingress => "Ingress",
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::TrafficSplit => "TrafficSplit",
            Self::HttpRoute => "HTTPRoute",
        }
    }

    /// The API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Self::Service => "",
            Self::Ingress => "networking.k8s.io",
            Self::VirtualService | Self::DestinationRule => "networking.istio.io",
            Self::TrafficSplit => "split.smi-spec.io",
            Self::HttpRoute => "gateway.networking.k8s.io",
        }
    }

    /// The resource (plural), as RBAC names it.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Service => "services",
            Self::Ingress => "ingresses",
            Self::VirtualService => "virtualservices",
            Self::DestinationRule => "destinationrules",
            Self::TrafficSplit => "trafficsplits",
            Self::HttpRoute => "httproutes",
        }
    }
}

/// The verb the requesting user must hold on a named traffic object: what the controller does to
/// it on their behalf (server-side apply and merge patches are both `patch`).
pub const VERB: &str = "patch";

/// One object a StormService names and the controller writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficObject {
    /// The field that names it, e.g. `spec.rolloutStrategy.canary.stableService`.
    pub path: FieldPath,
    /// Its kind.
    pub kind: TrafficKind,
    /// Its name (in the StormService's namespace: every reference is namespace-local).
    pub name: String,
}

/// Every object `obj` names that the controller writes, with the field that names it.
pub fn traffic_objects(obj: &StormService) -> Vec<TrafficObject> {
    let mut out = Vec::new();
    let Some(strategy) = &obj.spec.rollout_strategy else {
        return out;
    };
    let rs = FieldPath::new("spec").child("rolloutStrategy");
    let mut push = |path: FieldPath, kind: TrafficKind, name: &str| {
        if !name.is_empty() {
            out.push(TrafficObject {
                path,
                kind,
                name: name.to_string(),
            });
        }
    };
    if let Some(canary) = &strategy.canary {
        let cp = rs.child("canary");
        if let Some(s) = &canary.stable_service {
            push(cp.child("stableService"), TrafficKind::Service, s);
        }
        if let Some(s) = &canary.canary_service {
            push(cp.child("canaryService"), TrafficKind::Service, s);
        }
        if let Some(tr) = &canary.traffic_routing {
            let tp = cp.child("trafficRouting");
            if let Some(n) = &tr.nginx {
                push(
                    tp.child("nginx").child("ingress"),
                    TrafficKind::Ingress,
                    &n.ingress,
                );
            }
            if let Some(i) = &tr.istio {
                push(
                    tp.child("istio").child("virtualService"),
                    TrafficKind::VirtualService,
                    &i.virtual_service,
                );
                if let Some(dr) = &i.destination_rule {
                    push(
                        tp.child("istio").child("destinationRule"),
                        TrafficKind::DestinationRule,
                        dr,
                    );
                }
            }
            if let Some(s) = &tr.smi {
                push(
                    tp.child("smi").child("trafficSplit"),
                    TrafficKind::TrafficSplit,
                    &s.traffic_split,
                );
            }
            if let Some(g) = &tr.gateway_api {
                push(
                    tp.child("gatewayAPI").child("httpRoute"),
                    TrafficKind::HttpRoute,
                    &g.http_route,
                );
            }
        }
    }
    if let Some(bg) = &strategy.blue_green {
        let bp = rs.child("blueGreen");
        push(
            bp.child("activeService"),
            TrafficKind::Service,
            &bg.active_service,
        );
        push(
            bp.child("previewService"),
            TrafficKind::Service,
            &bg.preview_service,
        );
    }
    out
}

/// The objects `obj` names under a field whose value differs from `old` (all of them on create):
/// the ones whose use admission must authorize. A field that keeps its value was authorized when
/// it was set, so unrelated updates (annotations, scaling, the controller's own patches) ask the
/// API server nothing.
pub fn newly_named(obj: &StormService, old: Option<&StormService>) -> Vec<TrafficObject> {
    let before = old.map(traffic_objects).unwrap_or_default();
    traffic_objects(obj)
        .into_iter()
        .filter(|t| !before.contains(t))
        .collect()
}

/// Whether the object's owner opted in to being managed by StormService `storm`: its
/// [`crate::keys::ANNOTATION_MANAGED_BY`] annotation names it.
pub fn opted_in(managed_by: Option<&str>, storm: &str) -> bool {
    managed_by.is_some_and(|v| !storm.is_empty() && v.trim() == storm)
}

/// The denial when the user may not patch `object`.
pub fn not_allowed(
    object: &TrafficObject,
    namespace: &str,
    storm: &str,
    user: &str,
    reason: &str,
) -> FieldError {
    let why = if reason.trim().is_empty() {
        String::new()
    } else {
        format!(" ({})", reason.trim())
    };
    FieldError::forbidden(
        object.path.clone(),
        format!(
            "user \"{user}\" may not {VERB} {kind} \"{namespace}/{name}\"{why}, and the controller would {VERB} it for this StormService; \
             get {VERB} rights on {resource}{group} \"{name}\" in namespace \"{namespace}\" (for example the edit role there), \
             or have its owner opt in with the annotation {key}={storm} on the {kind}",
            kind = object.kind.kind(),
            name = object.name,
            resource = object.kind.resource(),
            group = match object.kind.group() {
                "" => String::new(),
                g => format!(".{g}"),
            },
            key = crate::keys::ANNOTATION_MANAGED_BY,
        ),
    )
}

/// The denial when the API server could not say whether the user may patch `object`: admission
/// fails closed.
pub fn not_checked(object: &TrafficObject, namespace: &str, user: &str, error: &str) -> FieldError {
    FieldError::forbidden(
        object.path.clone(),
        format!(
            "could not check whether user \"{user}\" may {VERB} {kind} \"{namespace}/{name}\" ({error}); \
             refused until it can be checked: retry, and if it persists check that the webhook may create \
             subjectaccessreviews.authorization.k8s.io and reach the API server",
            kind = object.kind.kind(),
            name = object.name,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn storm(strategy: serde_json::Value) -> StormService {
        serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
            "metadata": {"name": "app", "namespace": "ns"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "template": {"spec": {"roles": []}},
                     "rolloutStrategy": strategy}
        }))
        .unwrap()
    }

    fn canary() -> StormService {
        storm(json!({"type": "Canary", "canary": {
            "stableService": "s", "canaryService": "c", "steps": [{"weight": 10}],
            "trafficRouting": {
                "nginx": {"ingress": "ing", "servicePort": 80},
                "istio": {"virtualService": "vs", "destinationRule": "dr"},
                "smi": {"trafficSplit": "ts"},
                "gatewayAPI": {"httpRoute": "hr"}
            }
        }}))
    }

    #[test]
    fn every_written_object_is_named_with_its_field() {
        let got: Vec<(String, &str, String)> = traffic_objects(&canary())
            .into_iter()
            .map(|t| (t.path.as_str().to_string(), t.kind.kind(), t.name))
            .collect();
        let p = "spec.rolloutStrategy.canary";
        let want = [
            (format!("{p}.stableService"), "Service", "s"),
            (format!("{p}.canaryService"), "Service", "c"),
            (
                format!("{p}.trafficRouting.nginx.ingress"),
                "Ingress",
                "ing",
            ),
            (
                format!("{p}.trafficRouting.istio.virtualService"),
                "VirtualService",
                "vs",
            ),
            (
                format!("{p}.trafficRouting.istio.destinationRule"),
                "DestinationRule",
                "dr",
            ),
            (
                format!("{p}.trafficRouting.smi.trafficSplit"),
                "TrafficSplit",
                "ts",
            ),
            (
                format!("{p}.trafficRouting.gatewayAPI.httpRoute"),
                "HTTPRoute",
                "hr",
            ),
        ];
        let want: Vec<(String, &str, String)> = want
            .into_iter()
            .map(|(p, k, n)| (p, k, n.to_string()))
            .collect();
        assert_eq!(got, want);
        let bg = storm(json!({"type": "BlueGreen", "blueGreen": {
            "activeService": "a", "previewService": "p"}}));
        let names: Vec<String> = traffic_objects(&bg).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["a", "p"]);
    }

    #[test]
    fn only_changed_fields_need_authorizing() {
        let old = canary();
        assert_eq!(newly_named(&old, None).len(), 7, "a create checks all");
        assert!(newly_named(&old, Some(&old)).is_empty());
        let mut new = old.clone();
        let c = new
            .spec
            .rollout_strategy
            .as_mut()
            .and_then(|s| s.canary.as_mut())
            .unwrap();
        c.stable_service = Some("other".into());
        let changed = newly_named(&new, Some(&old));
        assert_eq!(changed.len(), 1);
        assert_eq!(
            changed[0].path.as_str(),
            "spec.rolloutStrategy.canary.stableService"
        );
        assert_eq!(changed[0].name, "other");
    }

    #[test]
    fn opt_in_names_the_stormservice_exactly() {
        assert!(opted_in(Some("app"), "app"));
        assert!(opted_in(Some(" app "), "app"));
        assert!(!opted_in(Some("other"), "app"));
        assert!(!opted_in(None, "app"));
        assert!(!opted_in(Some(""), ""));
    }

    #[test]
    fn denials_name_the_field_the_object_the_verb_and_the_fixes() {
        let t = &traffic_objects(&canary())[3];
        let e = not_allowed(t, "ns", "app", "system:serviceaccount:ns:tenant", "");
        let text = e.to_string();
        assert!(
            text.starts_with("spec.rolloutStrategy.canary.trafficRouting.istio.virtualService: "),
            "{text}"
        );
        for part in [
            "user \"system:serviceaccount:ns:tenant\" may not patch VirtualService \"ns/vs\"",
            "virtualservices.networking.istio.io \"vs\" in namespace \"ns\"",
            "stormservice.aibrix.ai/managed-by=app",
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
        let e = not_checked(t, "ns", "u", "timed out after 2s");
        assert!(e.to_string().contains("timed out after 2s"), "{e}");
    }
}
