//! Rules that need to know what else exists in the cluster: referenced Services, Ingresses, mesh
//! objects and AnalysisTemplates.
//!
//! The rules stay pure: they ask a [`ClusterLookup`], which the webhook backs with watch caches and
//! tests back with plain maps. Every finding is a warning; a RolloutPolicy may turn them into denials.

use crate::errors::{FieldPath, Warning};
use crate::types::stormservice::{AnalysisRef, StormService};
use std::collections::BTreeMap;

/// What a lookup knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence<T> {
    /// The object exists; here is what the rules need of it.
    Found(T),
    /// The kind is known and the object does not exist.
    Missing,
    /// Nothing can be said: the kind is not installed in this cluster, or the cache is not ready.
    Unknown,
}

/// What the rules need of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The Service's Pod selector.
    pub selector: BTreeMap<String, String>,
    /// The Service's ports.
    pub ports: Vec<i32>,
}

/// What the rules need of an Ingress, VirtualService, TrafficSplit or HTTPRoute: the Services (or
/// hosts) it sends traffic to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteInfo {
    /// Names of the backend Services in the object's namespace; for Istio the destination hosts,
    /// short or fully qualified (matched by [`crate::routing_refs::istio_host_is`]); for an
    /// HTTPRoute only the backendRefs [`crate::routing_refs::gateway_ref_service`] accepts.
    pub backends: Vec<String>,
}

/// Read access to the cluster's objects, by namespace and name.
pub trait ClusterLookup {
    /// A Service.
    fn service(&self, namespace: &str, name: &str) -> Presence<ServiceInfo>;
    /// A networking.k8s.io Ingress.
    fn ingress(&self, namespace: &str, name: &str) -> Presence<RouteInfo>;
    /// An Istio VirtualService.
    fn virtual_service(&self, namespace: &str, name: &str) -> Presence<RouteInfo>;
    /// An Istio DestinationRule.
    fn destination_rule(&self, namespace: &str, name: &str) -> Presence<()>;
    /// An SMI TrafficSplit.
    fn traffic_split(&self, namespace: &str, name: &str) -> Presence<RouteInfo>;
    /// A Gateway API HTTPRoute.
    fn http_route(&self, namespace: &str, name: &str) -> Presence<RouteInfo>;
    /// An AnalysisTemplate.
    fn analysis_template(&self, namespace: &str, name: &str) -> Presence<()>;
    /// The [`crate::keys::ANNOTATION_MANAGED_BY`] opt-in of a Service or traffic router object;
    /// `None` when it has none, does not exist, or is not known (then admission asks the API
    /// server whether the user may patch it).
    fn managed_by(
        &self,
        _kind: crate::ownership::TrafficKind,
        _namespace: &str,
        _name: &str,
    ) -> Option<String> {
        None
    }
}

/// Checks every reference of a StormService against the cluster.
pub fn check_references(obj: &StormService, lookup: &dyn ClusterLookup) -> Vec<Warning> {
    let mut out = Vec::new();
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    let Some(strategy) = &obj.spec.rollout_strategy else {
        return out;
    };
    // Paths and Pod labels are made only for a warning: most references check out.
    let rs_path = || FieldPath::new("spec").child("rolloutStrategy");
    let pod_labels = std::cell::OnceCell::new();
    let service = |out: &mut Vec<Warning>, path: &dyn Fn() -> FieldPath, name: &str| match lookup
        .service(ns, name)
    {
        Presence::Missing => out.push(Warning::new(
            path(),
            format!("Service \"{name}\" does not exist in namespace \"{ns}\" yet"),
        )),
        Presence::Found(info) => {
            if !info.selector.is_empty()
                && !pod_labels
                    .get_or_init(|| pod_label_sets(obj))
                    .iter()
                    .any(|labels| selects(&info.selector, labels))
            {
                out.push(Warning::new(
                    path(),
                    format!(
                        "Service \"{name}\" selects {} but no role's Pods carry those labels; it will never route to this StormService",
                        render(&info.selector)
                    ),
                ));
            }
        }
        Presence::Unknown => {}
    };
    if let Some(canary) = &strategy.canary {
        let cp = || rs_path().child("canary");
        if let Some(s) = &canary.stable_service {
            service(&mut out, &|| cp().child("stableService"), s);
        }
        if let Some(c) = &canary.canary_service {
            service(&mut out, &|| cp().child("canaryService"), c);
        }
        for (i, step) in canary.steps.iter().enumerate() {
            if let Some(a) = &step.analysis {
                templates(
                    lookup,
                    ns,
                    a,
                    &|| cp().child("steps").index(i).child("analysis"),
                    &mut out,
                );
            }
        }
        if let Some(tr) = &canary.traffic_routing {
            let tp = || cp().child("trafficRouting");
            let wanted: Vec<&str> = [
                canary.stable_service.as_deref(),
                canary.canary_service.as_deref(),
            ]
            .into_iter()
            .flatten()
            .collect();
            if let Some(n) = &tr.nginx {
                let p = || tp().child("nginx").child("ingress");
                route(
                    lookup.ingress(ns, &n.ingress),
                    "Ingress",
                    &n.ingress,
                    ns,
                    &wanted[..wanted.len().min(1)],
                    same_name,
                    &p,
                    &mut out,
                );
                if let Some(c) = &canary.canary_service
                    && let Presence::Found(info) = lookup.service(ns, c)
                    && !info.ports.contains(&n.service_port)
                {
                    out.push(Warning::new(
                        tp().child("nginx").child("servicePort"),
                        format!("canary Service \"{c}\" has no port {}", n.service_port),
                    ));
                }
            }
            if let Some(i) = &tr.istio {
                let p = || tp().child("istio").child("virtualService");
                route(
                    lookup.virtual_service(ns, &i.virtual_service),
                    "VirtualService",
                    &i.virtual_service,
                    ns,
                    &wanted,
                    crate::routing_refs::istio_host_is,
                    &p,
                    &mut out,
                );
                if let Some(dr) = &i.destination_rule
                    && lookup.destination_rule(ns, dr) == Presence::Missing
                {
                    out.push(Warning::new(
                        tp().child("istio").child("destinationRule"),
                        format!(
                            "DestinationRule \"{dr}\" does not exist in namespace \"{ns}\" yet"
                        ),
                    ));
                }
            }
            if let Some(s) = &tr.smi {
                let p = || tp().child("smi").child("trafficSplit");
                route(
                    lookup.traffic_split(ns, &s.traffic_split),
                    "TrafficSplit",
                    &s.traffic_split,
                    ns,
                    &wanted,
                    same_name,
                    &p,
                    &mut out,
                );
            }
            if let Some(g) = &tr.gateway_api {
                let p = || tp().child("gatewayAPI").child("httpRoute");
                route(
                    lookup.http_route(ns, &g.http_route),
                    "HTTPRoute",
                    &g.http_route,
                    ns,
                    &wanted,
                    same_name,
                    &p,
                    &mut out,
                );
            }
        }
    }
    if let Some(bg) = &strategy.blue_green {
        let bp = || rs_path().child("blueGreen");
        service(
            &mut out,
            &|| bp().child("activeService"),
            &bg.active_service,
        );
        service(
            &mut out,
            &|| bp().child("previewService"),
            &bg.preview_service,
        );
        if let Some(a) = &bg.pre_promotion_analysis {
            templates(
                lookup,
                ns,
                a,
                &|| bp().child("prePromotionAnalysis"),
                &mut out,
            );
        }
        if let Some(a) = &bg.post_promotion_analysis {
            templates(
                lookup,
                ns,
                a,
                &|| bp().child("postPromotionAnalysis"),
                &mut out,
            );
        }
    }
    out
}

fn templates(
    lookup: &dyn ClusterLookup,
    ns: &str,
    a: &AnalysisRef,
    path: &dyn Fn() -> FieldPath,
    out: &mut Vec<Warning>,
) {
    for (i, t) in a.templates.iter().enumerate() {
        let tns = t.namespace.as_deref().unwrap_or(ns);
        if lookup.analysis_template(tns, &t.name) == Presence::Missing {
            out.push(Warning::new(
                path().child("templates").index(i).child("name"),
                // The controller does not wait for a missing template: the run ends `Error`.
                format!(
                    "AnalysisTemplate \"{}\" does not exist in namespace \"{tns}\" yet; create it before the rollout reaches this analysis: a run whose template is missing ends Error, which rolls back with AnalysisFailed (or stops the rollout when autoRollback is off)",
                    t.name
                ),
            ));
        }
    }
}

/// A backend naming a Service of the object's namespace by its name (Ingress, TrafficSplit, and
/// HTTPRoute refs already narrowed to core Services of the namespace).
fn same_name(backend: &str, service: &str, _ns: &str) -> bool {
    backend == service
}

/// Checks that a routing object exists and sends traffic to every wanted Service.
#[allow(clippy::too_many_arguments)]
fn route(
    found: Presence<RouteInfo>,
    kind: &str,
    name: &str,
    ns: &str,
    wanted: &[&str],
    matches: fn(&str, &str, &str) -> bool,
    path: &dyn Fn() -> FieldPath,
    out: &mut Vec<Warning>,
) {
    match found {
        Presence::Missing => out.push(Warning::new(
            path(),
            format!("{kind} \"{name}\" does not exist in namespace \"{ns}\" yet"),
        )),
        Presence::Found(info) => {
            for w in wanted {
                let hit = info.backends.iter().any(|b| matches(b, w, ns));
                if !hit {
                    out.push(Warning::new(
                        path(),
                        format!("{kind} \"{name}\" has no route to Service \"{w}\"; add one so the controller can set its weight"),
                    ));
                }
            }
        }
        Presence::Unknown => {}
    }
}

/// The label sets Pods of this StormService will carry, one per role: the role's Pod template labels
/// plus the labels the controller adds.
fn pod_label_sets(obj: &StormService) -> Vec<BTreeMap<String, String>> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let roles = obj.spec.template.roles();
    roles
        .iter()
        .map(|role| {
            let mut labels = role
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if let Some(tl) = obj
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref())
            {
                labels.extend(tl.clone());
            }
            labels.insert(crate::keys::LABEL_NAME.into(), name.clone());
            labels.insert(crate::keys::LABEL_ROLE.into(), role.name.clone());
            labels.insert(
                crate::keys::AIBRIX_LABEL_STORM_SERVICE_NAME.into(),
                name.clone(),
            );
            labels.insert(
                crate::keys::AIBRIX_LABEL_ROLE_NAME.into(),
                role.name.clone(),
            );
            labels
        })
        .collect()
}

/// Whether a Service selector can select Pods with these labels. The revision label is left out:
/// the controller pins it itself.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector
        .iter()
        .filter(|(k, _)| k.as_str() != crate::keys::LABEL_REVISION)
        .all(|(k, v)| labels.get(k) == Some(v))
}

fn render(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
