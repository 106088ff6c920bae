//! Cluster-lookup rules, against a lookup backed by plain maps.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use storm_shared::StormService;
use storm_shared::references::{ClusterLookup, Presence, RouteInfo, ServiceInfo, check_references};
use storm_shared::rules::parse;

#[derive(Default)]
struct World {
    services: BTreeMap<String, ServiceInfo>,
    ingresses: BTreeMap<String, RouteInfo>,
    templates: Vec<String>,
    /// Whether the Istio/SMI/Gateway kinds are installed.
    meshes: bool,
    virtual_services: BTreeMap<String, RouteInfo>,
}

fn found<T: Clone>(m: &BTreeMap<String, T>, name: &str) -> Presence<T> {
    m.get(name)
        .cloned()
        .map_or(Presence::Missing, Presence::Found)
}

impl ClusterLookup for World {
    fn service(&self, _: &str, name: &str) -> Presence<ServiceInfo> {
        found(&self.services, name)
    }
    fn ingress(&self, _: &str, name: &str) -> Presence<RouteInfo> {
        found(&self.ingresses, name)
    }
    fn virtual_service(&self, _: &str, name: &str) -> Presence<RouteInfo> {
        if self.meshes {
            found(&self.virtual_services, name)
        } else {
            Presence::Unknown
        }
    }
    fn destination_rule(&self, _: &str, _: &str) -> Presence<()> {
        if self.meshes {
            Presence::Missing
        } else {
            Presence::Unknown
        }
    }
    fn traffic_split(&self, _: &str, _: &str) -> Presence<RouteInfo> {
        Presence::Unknown
    }
    fn http_route(&self, _: &str, _: &str) -> Presence<RouteInfo> {
        Presence::Unknown
    }
    fn analysis_template(&self, _: &str, name: &str) -> Presence<()> {
        if self.templates.iter().any(|t| t == name) {
            Presence::Found(())
        } else {
            Presence::Missing
        }
    }
}

fn svc(selector: &[(&str, &str)], ports: &[i32]) -> ServiceInfo {
    ServiceInfo {
        selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: ports.to_vec(),
    }
}

fn complete_world() -> World {
    let mut w = World::default();
    w.services
        .insert("my-app-stable".into(), svc(&[("app", "my-app")], &[80]));
    w.services
        .insert("my-app-canary".into(), svc(&[("app", "my-app")], &[80]));
    w.ingresses.insert(
        "my-app-ingress".into(),
        RouteInfo {
            backends: vec!["my-app-stable".into()],
        },
    );
    w.templates.push("success-rate-check".into());
    w
}

fn paths(obj: &serde_json::Value, w: &World) -> Vec<String> {
    let o: StormService = parse(obj).expect("parses");
    check_references(&o, w)
        .into_iter()
        .map(|w| w.path.to_string())
        .collect()
}

#[test]
fn everything_present_no_warnings() {
    assert!(paths(&canary(), &complete_world()).is_empty());
}

#[test]
fn missing_objects_warn_at_their_reference() {
    let mut got = paths(&canary(), &World::default());
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.rolloutStrategy.canary.canaryService",
            "spec.rolloutStrategy.canary.stableService",
            "spec.rolloutStrategy.canary.steps[1].analysis.templates[0].name",
            "spec.rolloutStrategy.canary.trafficRouting.nginx.ingress",
        ]
    );
}

#[test]
fn service_whose_selector_cannot_match_warns() {
    let mut w = complete_world();
    w.services.insert(
        "my-app-canary".into(),
        svc(&[("app", "someone-else")], &[80]),
    );
    assert_eq!(
        paths(&canary(), &w),
        vec!["spec.rolloutStrategy.canary.canaryService"]
    );
    // The revision label is the controller's to pin: it doesn't count against the user.
    w.services.insert(
        "my-app-canary".into(),
        svc(
            &[
                ("app", "my-app"),
                ("stormservice.aibrix.ai/revision", "abc"),
            ],
            &[80],
        ),
    );
    assert!(paths(&canary(), &w).is_empty());
}

#[test]
fn ingress_without_the_stable_service_warns() {
    let mut w = complete_world();
    w.ingresses.insert(
        "my-app-ingress".into(),
        RouteInfo {
            backends: vec!["other".into()],
        },
    );
    assert_eq!(
        paths(&canary(), &w),
        vec!["spec.rolloutStrategy.canary.trafficRouting.nginx.ingress"]
    );
}

#[test]
fn canary_service_without_the_port_warns() {
    let mut w = complete_world();
    w.services
        .insert("my-app-canary".into(), svc(&[("app", "my-app")], &[8080]));
    assert_eq!(
        paths(&canary(), &w),
        vec!["spec.rolloutStrategy.canary.trafficRouting.nginx.servicePort"]
    );
}

#[test]
fn uninstalled_mesh_kinds_are_tolerated() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/trafficRouting",
        json!({"istio": {"virtualService": "vs", "destinationRule": "dr"}}),
    );
    assert!(paths(&v, &complete_world()).is_empty());
    let mut w = complete_world();
    w.meshes = true;
    let mut got = paths(&v, &w);
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.rolloutStrategy.canary.trafficRouting.istio.destinationRule",
            "spec.rolloutStrategy.canary.trafficRouting.istio.virtualService"
        ]
    );
    // A VirtualService that routes to both hosts (short or fully qualified) is fine.
    w.virtual_services.insert(
        "vs".into(),
        RouteInfo {
            backends: vec![
                "my-app-stable".into(),
                "my-app-canary.default.svc.cluster.local".into(),
            ],
        },
    );
    assert_eq!(
        paths(&v, &w),
        vec!["spec.rolloutStrategy.canary.trafficRouting.istio.destinationRule"]
    );
    // A host of the same name in another namespace is not the StormService's Service: admission
    // warns, as the controller refuses to set it (one implementation: routing_refs).
    w.virtual_services.insert(
        "vs".into(),
        RouteInfo {
            backends: vec![
                "my-app-stable".into(),
                "my-app-canary.other.svc.cluster.local".into(),
            ],
        },
    );
    let mut got = paths(&v, &w);
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.rolloutStrategy.canary.trafficRouting.istio.destinationRule",
            "spec.rolloutStrategy.canary.trafficRouting.istio.virtualService"
        ]
    );
}

#[test]
fn blue_green_services_and_templates() {
    let mut v = blue_green();
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/prePromotionAnalysis",
        json!({"templates": [{"name": "smoke"}]}),
    );
    let mut got = paths(&v, &World::default());
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.rolloutStrategy.blueGreen.activeService",
            "spec.rolloutStrategy.blueGreen.prePromotionAnalysis.templates[0].name",
            "spec.rolloutStrategy.blueGreen.previewService",
        ]
    );
}

/// The controller does not wait for a missing template: the warning must say what really happens.
#[test]
fn a_missing_template_warns_that_the_run_will_fail_not_wait() {
    let o: StormService = parse(&canary()).expect("parses");
    let warning = check_references(&o, &World::default())
        .into_iter()
        .find(|w| w.path.to_string().ends_with(".analysis.templates[0].name"))
        .expect("a warning about the template");
    assert_eq!(
        warning.message,
        "AnalysisTemplate \"success-rate-check\" does not exist in namespace \"default\" yet; create it before the rollout reaches this analysis: a run whose template is missing ends Error, which rolls back with AnalysisFailed (or stops the rollout when autoRollback is off)"
    );
}
