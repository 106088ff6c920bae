//! The shell's write order, against a mock API server: for a canary step, an abort and a
//! completion, the plan `rollout::decide` makes is applied by [`apply::apply`] and every request
//! the API server receives is recorded. The writes must come in the documented order: status,
//! revisions, Services, traffic routers, RoleSets, annotation removal, events.

use super::apply;
use super::observe::Caches;
use crate::context::Context;
use crate::metrics::Metrics;
use crate::owned::Owned;
use crate::rollout::{self, Input, Measured, Observed, ObservedRoleSet, Plan};
use http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use storm_shared::StormService;
use storm_shared::keys::{ANNOTATION_ABORT, ANNOTATION_APPROVAL, LABEL_NAME, LABEL_REVISION};
use storm_shared::types::API_VERSION;

/// One request the mock API server received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
}

/// The kinds of writes, in the order the shell must make them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Write {
    Status,
    Revision,
    Service,
    Router,
    RoleSet,
    Annotations,
    Event,
}

impl Seen {
    /// What a request writes; None for reads (discovery, the router object).
    fn write(&self) -> Option<Write> {
        let p = self.path.as_str();
        if self.method == Method::GET {
            return None;
        }
        Some(if p.contains("/stormservices/") && p.ends_with("/status") {
            Write::Status
        } else if p.contains("/controllerrevisions") {
            Write::Revision
        } else if p.contains("/services") {
            Write::Service
        } else if p.contains("/trafficsplits/") {
            Write::Router
        } else if p.contains("/rolesets") {
            Write::RoleSet
        } else if p.contains("/stormservices/") {
            Write::Annotations
        } else if p.contains("/events") {
            Write::Event
        } else {
            panic!("unexpected write {self:?}")
        })
    }
}

/// A recording API server: answers every request plausibly and remembers it.
fn mock_client(obj: &StormService, split: Value) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let obj_json = serde_json::to_vec(obj).expect("object");
    let service = tower::service_fn(move |req: Request<Body>| {
        let log = log.clone();
        let obj_json = obj_json.clone();
        let split = split.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let body = req.into_body().collect_bytes().await?.to_vec();
            log.lock().expect("log").push(Seen {
                method: method.clone(),
                path: path.clone(),
            });
            let reply: Vec<u8> = if path == "/apis" {
                serde_json::to_vec(
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                        {"name": "split.smi-spec.io",
                         "versions": [{"groupVersion": "split.smi-spec.io/v1alpha2", "version": "v1alpha2"}],
                         "preferredVersion": {"groupVersion": "split.smi-spec.io/v1alpha2", "version": "v1alpha2"}}
                    ]}),
                )?
            } else if path.contains("/trafficsplits/") && method == Method::GET {
                serde_json::to_vec(&split)?
            } else if path.contains("/stormservices/") {
                obj_json
            } else if path.contains("/services/") {
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": path.rsplit('/').next(), "namespace": "ns"}}))?
            } else if method == Method::DELETE {
                serde_json::to_vec(
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )?
            } else {
                body
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Response::builder()
                    .status(if method == Method::POST { 201 } else { 200 })
                    .header("content-type", "application/json")
                    .body(Body::from(reply))?,
            )
        }
    });
    (kube::Client::new(service, "ns"), seen)
}

/// A canary StormService routed through an SMI TrafficSplit, at template revision `update`.
fn stormservice(status: Value, annotations: Value) -> StormService {
    serde_json::from_value(json!({
        "apiVersion": API_VERSION, "kind": "StormService",
        "metadata": {"name": "svc", "namespace": "ns", "uid": "u-1", "generation": 2,
                     "annotations": annotations},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"roles": [{"name": "r", "replicas": 1,
                "template": {"spec": {"containers": [{"name": "c", "image": "v2"}]}}}]}},
            "rolloutStrategy": {"type": "Canary", "canary": {
                "stableService": "stable", "canaryService": "canary",
                "trafficRouting": {"smi": {"trafficSplit": "split"}},
                "steps": [{"weight": 50}, {"pause": {"untilApproval": true}}]
            }}
        },
        "status": status
    }))
    .expect("StormService")
}

fn split(canary_weight: i32) -> Value {
    json!({"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
           "metadata": {"name": "split", "namespace": "ns", "resourceVersion": "7"},
           "spec": {"service": "root", "backends": [
               {"service": "stable", "weight": 100 - canary_weight},
               {"service": "canary", "weight": canary_weight}]}})
}

fn apply_event<K>(writer: &mut Writer<K>, objects: Vec<K>)
where
    K: kube::Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

fn service(name: &str, pinned: Option<&str>) -> Service {
    let mut selector = BTreeMap::from([("app".to_string(), "llm".to_string())]);
    if let Some(rev) = pinned {
        selector.insert(LABEL_REVISION.into(), rev.into());
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"},
                                  "spec": {"selector": selector}}))
    .expect("Service")
}

fn revision(rev: &str) -> ControllerRevision {
    serde_json::from_value(
        json!({"metadata": {"name": format!("svc-{rev}"), "namespace": "ns",
        "labels": {LABEL_NAME: "svc", LABEL_REVISION: rev}}, "revision": 1}),
    )
    .expect("ControllerRevision")
}

/// The world of one reconcile: caches, observed RoleSets and the routers' reported weight.
struct World {
    services: Vec<Service>,
    revisions: Vec<ControllerRevision>,
    rolesets: Vec<(String, bool)>,
    router_weight: Option<i32>,
}

/// Decides with `rollout::decide` and applies the plan; returns the plan and the requests seen.
async fn reconcile_once(obj: &StormService, world: World, reported: i32) -> (Plan, Vec<Seen>) {
    let (client, seen) = mock_client(obj, split(reported));
    let ctx = Context::new(client, Arc::new(Metrics::new()), None);
    let (services, mut svc_writer) = reflector::store::<Service>();
    apply_event(&mut svc_writer, world.services);
    let caches = Caches {
        rolesets: Owned::of([]),
        pods: Owned::of([]),
        services,
        revisions: Owned::of(world.revisions),
    };
    let update = rollout::revision::of_template(&obj.spec.template);
    let observed = Observed {
        rolesets: world
            .rolesets
            .iter()
            .map(|(name, ready)| ObservedRoleSet {
                role_status: Vec::new(),
                roles: Default::default(),
                index: name.rsplit('-').next().and_then(|i| i.parse().ok()),
                name: name.clone(),
                revision: name
                    .strip_prefix("svc-")
                    .and_then(|r| r.rsplit_once('-'))
                    .map(|(r, _)| r.to_string())
                    .unwrap_or_default(),
                ready: *ready,
                holds: 0,
            })
            .collect(),
        pods: Vec::new(),
        router_weight: world.router_weight,
        router_error: None,
        held_by_terminating: 0,
    };
    let annotations = obj.annotations().clone();
    let input = Input {
        name: "svc",
        generation: Some(2),
        spec: &obj.spec,
        status: obj.status.as_ref(),
        annotations: &annotations,
        observed: &observed,
        update: &update,
        measured: &Measured::default(),
        now: Timestamp::from_second(1_800_000_000).expect("now"),
    };
    let plan = rollout::decide(&input);
    apply::apply(&ctx, &caches, obj, &observed, &plan)
        .await
        .expect("apply");
    let seen = seen.lock().expect("log").clone();
    (plan, seen)
}

/// The writes in the order they were made, and a check that the order is the documented one.
fn writes_in_order(seen: &[Seen]) -> Vec<Write> {
    let writes: Vec<Write> = seen.iter().filter_map(Seen::write).collect();
    let mut sorted = writes.clone();
    sorted.sort();
    assert_eq!(writes, sorted, "writes out of order: {seen:#?}");
    writes_made(seen)
}

/// The kinds of write in the order they were made (each run of one kind once).
fn writes_made(seen: &[Seen]) -> Vec<Write> {
    let mut kinds: Vec<Write> = seen.iter().filter_map(Seen::write).collect();
    kinds.dedup();
    kinds
}

fn rollout_status(update: &str, step: i32, phase: &str, reason: &str, weight: i32) -> Value {
    json!({"currentRevision": "old", "updateRevision": update,
           "rolloutStatus": {"phase": phase, "currentStepIndex": step,
              "canaryStatus": {"currentWeight": weight},
              "conditions": [{"type": "Progressing", "status": "True", "reason": reason}]}})
}

fn update_of(obj: &StormService) -> String {
    rollout::revision::of_template(&obj.spec.template)
}

#[tokio::test]
async fn a_step_writes_status_revision_services_router_rolesets_annotations_events() {
    let probe = stormservice(json!({}), json!({}));
    let update = update_of(&probe);
    // Step 0 (weight 50) with its canary ready, the router still at 0; an approval that nothing
    // waits for (removed, with a Warning event); a RoleSet of an older revision to remove.
    let obj = stormservice(
        rollout_status(&update, 0, "Progressing", "StepProgressing", 0),
        json!({ANNOTATION_APPROVAL: "true"}),
    );
    let world = World {
        services: vec![service("stable", None), service("canary", None)],
        revisions: vec![revision("old")],
        rolesets: vec![
            ("svc-old-0".into(), true),
            ("svc-old-1".into(), true),
            (format!("svc-{update}-0"), true),
            ("svc-older-0".into(), true),
        ],
        router_weight: Some(0),
    };
    let (plan, seen) = reconcile_once(&obj, world, 0).await;
    assert_eq!(plan.weight, 50);
    assert_eq!(
        writes_in_order(&seen),
        vec![
            Write::Status,
            Write::Revision,
            Write::Service,
            Write::Router,
            Write::RoleSet,
            Write::Annotations,
            Write::Event,
        ]
    );
    // The RoleSet write is the older revision going; nothing of stable or the canary.
    let deleted: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == Method::DELETE)
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(deleted[0].ends_with("/rolesets/svc-older-0"), "{deleted:?}");
}

#[tokio::test]
async fn an_abort_moves_traffic_before_any_roleset_and_acknowledges_last() {
    let probe = stormservice(json!({}), json!({}));
    let update = update_of(&probe);
    let obj = stormservice(
        rollout_status(&update, 0, "Progressing", "StepReached", 50),
        json!({ANNOTATION_ABORT: "true"}),
    );
    let world = World {
        services: vec![
            service("stable", Some("old")),
            service("canary", Some(&update)),
        ],
        revisions: vec![revision("old"), revision(&update)],
        rolesets: vec![
            ("svc-old-0".into(), true),
            ("svc-old-1".into(), true),
            (format!("svc-{update}-0"), true),
            ("svc-older-0".into(), true),
        ],
        router_weight: Some(50),
    };
    let (plan, seen) = reconcile_once(&obj, world, 50).await;
    assert_eq!(plan.weight, 0);
    // The canary keeps its RoleSet until the router reports 0: only the older one goes now.
    assert_eq!(plan.scale.get(&update), Some(&1));
    // Traffic first (the fewest writes that restore stable), then the status that records it,
    // then the documented order (the headless Service for per-Pod DNS in its usual place).
    assert_eq!(
        writes_made(&seen),
        vec![
            Write::Service,
            Write::Router,
            Write::Status,
            Write::Service,
            Write::RoleSet,
            Write::Annotations,
            Write::Event,
        ]
    );
}

#[tokio::test]
async fn a_completion_pins_services_then_removes_old_rolesets_then_records_events() {
    let probe = stormservice(json!({}), json!({}));
    let update = update_of(&probe);
    // Past the last step: the canary at full size, the router at 100, stable's RoleSets gone (the
    // decision before removed them); a RoleSet of an older revision is still there.
    let mut status = rollout_status(&update, 2, "Progressing", "Promoting", 100);
    status["rolloutStatus"]["approvedStep"] = json!(1);
    let mut obj = stormservice(status, json!({}));
    let world = || World {
        services: vec![
            service("stable", Some("old")),
            service("canary", Some(&update)),
        ],
        revisions: vec![revision("old"), revision(&update)],
        rolesets: vec![
            (format!("svc-{update}-0"), true),
            (format!("svc-{update}-1"), true),
            ("svc-older-0".into(), true),
        ],
        router_weight: Some(100),
    };
    // With the default drain delay (60 s with a router) the older RoleSet stays, listed.
    let (plan, seen) = reconcile_once(&obj, world(), 100).await;
    assert_eq!(
        plan.status.current_revision.as_deref(),
        Some(update.as_str())
    );
    assert!(seen.iter().all(|s| s.method != Method::DELETE));
    let drains = plan
        .status
        .rollout_status
        .as_ref()
        .map(|r| r.scale_downs.clone())
        .unwrap_or_default();
    assert_eq!(
        drains
            .iter()
            .map(|d| d.revision.as_str())
            .collect::<Vec<_>>(),
        ["older"]
    );
    // Without one, it goes in the same decision.
    let rs = obj.spec.rollout_strategy.as_mut().expect("strategy");
    rs.canary.as_mut().expect("canary").scale_down_delay_seconds = Some(0);
    let (plan, seen) = reconcile_once(&obj, world(), 100).await;
    assert_eq!(
        plan.status.current_revision.as_deref(),
        Some(update.as_str())
    );
    // The router is at 100 already: no router write. The older RoleSet goes after the Services.
    assert_eq!(
        writes_in_order(&seen),
        vec![Write::Status, Write::Service, Write::RoleSet, Write::Event]
    );
    let deleted = seen.iter().filter(|s| s.method == Method::DELETE).count();
    assert_eq!(deleted, 1);
}

#[tokio::test]
async fn a_service_without_a_selector_is_never_given_one() {
    let probe = stormservice(json!({}), json!({}));
    let update = update_of(&probe);
    let obj = stormservice(
        rollout_status(&update, 0, "Progressing", "StepProgressing", 0),
        json!({}),
    );
    // The stable Service is someone's manual Endpoints: no selector at all.
    let manual: Service = serde_json::from_value(
        json!({"metadata": {"name": "stable", "namespace": "ns"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .expect("Service");
    let world = World {
        services: vec![manual, service("canary", None)],
        revisions: vec![revision("old")],
        rolesets: vec![
            ("svc-old-0".into(), true),
            ("svc-old-1".into(), true),
            (format!("svc-{update}-0"), true),
        ],
        router_weight: Some(0),
    };
    let (_, seen) = reconcile_once(&obj, world, 0).await;
    // (The POST is the StormService's own headless Service.)
    let service_writes: Vec<&str> = seen
        .iter()
        .filter(|s| s.write() == Some(Write::Service) && s.method == Method::PATCH)
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(service_writes.len(), 1, "{service_writes:?}");
    assert!(
        service_writes[0].ends_with("/services/canary"),
        "{service_writes:?}"
    );
    // And a Warning event says so.
    assert!(seen.iter().any(|s| s.write() == Some(Write::Event)));
    let empty: Service =
        serde_json::from_value(json!({"metadata": {"name": "m"}, "spec": {"selector": {}}}))
            .expect("Service");
    let message = apply::pin_refusal(&empty, "ns").expect("refused");
    assert!(
        message.contains("Service ns/m has no selector"),
        "{message}"
    );
    assert!(apply::pin_refusal(&service("s", None), "ns").is_none());
}
