//! Watch caches behind the rules' [`ClusterLookup`] and the policy evaluation.
//!
//! Every lookup on the request path reads an in-memory reflector store; nothing calls the API server
//! while a review is answered. Services, Ingresses and Namespaces are always watched. The kinds of
//! CRDs that may not be installed (this product's AnalysisTemplate and RolloutPolicy, Istio, SMI,
//! Gateway API) are found by discovery at start and every [`REDISCOVER_EVERY`] after, and watched
//! from then on. A kind that isn't installed, or whose cache hasn't synced, answers
//! [`Presence::Unknown`]: the rules then say nothing rather than something wrong.
//!
//! Until every watch started by the first discovery pass has listed, the caches are not
//! [`Caches::ready`]: `/readyz` says so and reviews are refused ([`ClusterView::unsynced`]), since
//! an empty RolloutPolicy cache reads as "no policy" and would admit what a listed one denies.
//! Once listed they stay ready: a kind installed later answers `Unknown` until its own watch has
//! listed, without taking admission down for everyone meanwhile.
//!
//! The caches keep only what the rules read ([`crate::slim`]): no managedFields, no labels but a
//! Namespace's, no annotations but the owner's opt-in [`storm_shared::keys::ANNOTATION_MANAGED_BY`], and of each spec
//! only the fields a rule looks at.

use crate::review::ClusterView;
use crate::slim;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use storm_shared::ownership::TrafficKind;
use storm_shared::references::{ClusterLookup, Presence, RouteInfo, ServiceInfo};
use storm_shared::types::{GROUP, VERSION};
use storm_shared::{AnalysisTemplate, RolloutPolicy};

/// How often kinds that were not installed are looked for again.
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(15);

/// One watched kind: its store once the watch started, and whether it has synced.
struct Slot<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: OnceLock<(Store<K>, K::DynamicType)>,
    ready: Arc<AtomicBool>,
}

impl<K: Resource + 'static> Default for Slot<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn default() -> Self {
        Self {
            store: OnceLock::new(),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<K> Slot<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync + 'static,
{
    fn started(&self) -> bool {
        self.store.get().is_some()
    }

    fn synced(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Starts watching (once): a reflector task fills the store (each object cut down by `slim`),
    /// another flags it synced.
    fn start(&self, api: Api<K>, dyntype: K::DynamicType, what: &'static str, slim: fn(&mut K)) {
        let writer = Writer::new(dyntype.clone());
        let store = writer.as_reader();
        if self.store.set((store.clone(), dyntype)).is_err() {
            return;
        }
        let ready = self.ready.clone();
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                ready.store(true, Ordering::Release);
                tracing::info!(kind = what, "watch cache synced");
            }
        });
        let stream = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(move |o: &mut K| {
                // What the rules read is small; don't keep the bulky parts of every object.
                o.managed_fields_mut().clear();
                slim(o);
            })
            .reflect(writer);
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(kind = what, error = %e, "watch failed; retrying with backoff");
                }
            }
        });
    }

    /// The cached object, or `Unknown` while the kind isn't watched or synced.
    fn get(&self, namespace: Option<&str>, name: &str) -> Presence<Arc<K>> {
        let Some((store, dyntype)) = self.store.get() else {
            return Presence::Unknown;
        };
        if !self.synced() {
            return Presence::Unknown;
        }
        let mut key = ObjectRef::<K>::new_with(name, dyntype.clone());
        if let Some(ns) = namespace {
            key = key.within(ns);
        }
        match store.get(&key) {
            Some(obj) => Presence::Found(obj),
            None => Presence::Missing,
        }
    }

    /// The object's owner opt-in annotation, when it is cached.
    fn managed_by(&self, namespace: &str, name: &str) -> Option<String> {
        match self.get(Some(namespace), name) {
            Presence::Found(o) => o
                .annotations()
                .get(storm_shared::keys::ANNOTATION_MANAGED_BY)
                .cloned(),
            _ => None,
        }
    }

    fn all(&self) -> Vec<Arc<K>> {
        self.store
            .get()
            .map(|(store, _)| store.state())
            .unwrap_or_default()
    }
}

/// The watch caches of one webhook process.
pub struct Caches {
    services: Slot<Service>,
    ingresses: Slot<Ingress>,
    namespaces: Slot<Namespace>,
    templates: Slot<AnalysisTemplate>,
    policies: Slot<RolloutPolicy>,
    virtual_services: Slot<DynamicObject>,
    destination_rules: Slot<DynamicObject>,
    traffic_splits: Slot<DynamicObject>,
    http_routes: Slot<DynamicObject>,
    discovered: AtomicBool,
    /// Latched once everything the first discovery pass started has listed.
    listed: AtomicBool,
    offline: bool,
}

/// A kind that may or may not be installed, looked up by group and kind (any served version).
struct Optional {
    group: &'static str,
    kind: &'static str,
}

const VIRTUAL_SERVICE: Optional = Optional {
    group: "networking.istio.io",
    kind: "VirtualService",
};
const DESTINATION_RULE: Optional = Optional {
    group: "networking.istio.io",
    kind: "DestinationRule",
};
const TRAFFIC_SPLIT: Optional = Optional {
    group: "split.smi-spec.io",
    kind: "TrafficSplit",
};
const HTTP_ROUTE: Optional = Optional {
    group: "gateway.networking.k8s.io",
    kind: "HTTPRoute",
};

impl Caches {
    fn empty(offline: bool) -> Self {
        Self {
            services: Slot::default(),
            ingresses: Slot::default(),
            namespaces: Slot::default(),
            templates: Slot::default(),
            policies: Slot::default(),
            virtual_services: Slot::default(),
            destination_rules: Slot::default(),
            traffic_splits: Slot::default(),
            http_routes: Slot::default(),
            discovered: AtomicBool::new(false),
            listed: AtomicBool::new(false),
            offline,
        }
    }

    /// Caches that watch nothing: every lookup is `Unknown`, no policies. For benchmarks and tests
    /// of the HTTP layer (`--offline`).
    pub fn offline() -> Arc<Self> {
        Arc::new(Self::empty(true))
    }

    /// Starts the always-present watches and the discovery loop for the optional kinds.
    pub fn start(client: Client) -> Arc<Self> {
        let caches = Arc::new(Self::empty(false));
        caches
            .services
            .start(Api::all(client.clone()), (), "Service", slim::service);
        caches
            .ingresses
            .start(Api::all(client.clone()), (), "Ingress", slim::ingress);
        caches
            .namespaces
            .start(Api::all(client.clone()), (), "Namespace", slim::namespace);
        let looping = caches.clone();
        tokio::spawn(async move {
            loop {
                looping.discover(&client).await;
                looping.discovered.store(true, Ordering::Release);
                if looping.all_optional_started() {
                    break;
                }
                tokio::time::sleep(REDISCOVER_EVERY).await;
            }
        });
        caches
    }

    fn all_optional_started(&self) -> bool {
        self.templates.started()
            && self.policies.started()
            && self.virtual_services.started()
            && self.destination_rules.started()
            && self.traffic_splits.started()
            && self.http_routes.started()
    }

    async fn discover(&self, client: &Client) {
        if !self.templates.started()
            && served(
                client,
                &GroupVersionKind::gvk(GROUP, VERSION, "AnalysisTemplate"),
            )
            .await
        {
            self.templates.start(
                Api::all(client.clone()),
                (),
                "AnalysisTemplate",
                slim::analysis_template,
            );
        }
        if !self.policies.started()
            && served(
                client,
                &GroupVersionKind::gvk(GROUP, VERSION, "RolloutPolicy"),
            )
            .await
        {
            self.policies.start(
                Api::all(client.clone()),
                (),
                "RolloutPolicy",
                slim::rollout_policy,
            );
        }
        let routers: [(_, _, fn(&mut DynamicObject)); 4] = [
            (
                &self.virtual_services,
                VIRTUAL_SERVICE,
                slim::virtual_service,
            ),
            (
                &self.destination_rules,
                DESTINATION_RULE,
                slim::destination_rule,
            ),
            (&self.traffic_splits, TRAFFIC_SPLIT, slim::traffic_split),
            (&self.http_routes, HTTP_ROUTE, slim::http_route),
        ];
        for (slot, which, cut) in routers {
            if slot.started() {
                continue;
            }
            if let Some(ar) = recommended(client, &which).await {
                slot.start(Api::all_with(client.clone(), &ar), ar, which.kind, cut);
            }
        }
    }

    /// Ready once the first discovery pass is done and every watch it started has listed; stays
    /// ready after (a kind installed later answers `Unknown` until its own watch has listed).
    pub fn ready(&self) -> bool {
        if self.offline || self.listed.load(Ordering::Acquire) {
            return true;
        }
        let listed = self.pending().is_empty();
        if listed {
            self.listed.store(true, Ordering::Release);
            tracing::info!("every watch cache has listed: ready");
        }
        listed
    }

    /// What has not listed yet (empty when nothing is pending).
    fn pending(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.discovered.load(Ordering::Acquire) {
            out.push("API discovery of the optional kinds");
        }
        let slots = [
            ("Service", true, self.services.synced()),
            ("Ingress", true, self.ingresses.synced()),
            ("Namespace", true, self.namespaces.synced()),
            (
                "AnalysisTemplate",
                self.templates.started(),
                self.templates.synced(),
            ),
            (
                "RolloutPolicy",
                self.policies.started(),
                self.policies.synced(),
            ),
            (
                "VirtualService",
                self.virtual_services.started(),
                self.virtual_services.synced(),
            ),
            (
                "DestinationRule",
                self.destination_rules.started(),
                self.destination_rules.synced(),
            ),
            (
                "TrafficSplit",
                self.traffic_splits.started(),
                self.traffic_splits.synced(),
            ),
            (
                "HTTPRoute",
                self.http_routes.started(),
                self.http_routes.synced(),
            ),
        ];
        out.extend(
            slots
                .iter()
                .filter(|(_, started, synced)| *started && !*synced)
                .map(|(kind, _, _)| *kind),
        );
        out
    }
}

/// Whether the API server serves this exact group/version/kind.
async fn served(client: &Client, gvk: &GroupVersionKind) -> bool {
    match kube::discovery::oneshot::pinned_kind(client, gvk).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(group = %gvk.group, kind = %gvk.kind, error = %e, "kind not served (yet)");
            false
        }
    }
}

/// The preferred served version of an optional kind, if its group is installed.
async fn recommended(client: &Client, which: &Optional) -> Option<ApiResource> {
    match kube::discovery::oneshot::group(client, which.group).await {
        Ok(group) => group.recommended_kind(which.kind).map(|(ar, _)| ar),
        Err(e) => {
            tracing::debug!(group = which.group, kind = which.kind, error = %e, "kind not installed");
            None
        }
    }
}

fn route<K>(found: Presence<Arc<K>>, backends: impl Fn(&K) -> Vec<String>) -> Presence<RouteInfo> {
    match found {
        Presence::Found(obj) => Presence::Found(RouteInfo {
            backends: backends(&obj),
        }),
        Presence::Missing => Presence::Missing,
        Presence::Unknown => Presence::Unknown,
    }
}

fn exists<K>(found: Presence<Arc<K>>) -> Presence<()> {
    match found {
        Presence::Found(_) => Presence::Found(()),
        Presence::Missing => Presence::Missing,
        Presence::Unknown => Presence::Unknown,
    }
}

/// Backend Services of an Ingress: the default backend and every path's backend.
pub fn ingress_backends(ing: &Ingress) -> Vec<String> {
    let Some(spec) = &ing.spec else {
        return Vec::new();
    };
    let mut out: Vec<String> = spec
        .default_backend
        .iter()
        .filter_map(|b| b.service.as_ref().map(|s| s.name.clone()))
        .collect();
    for rule in spec.rules.iter().flatten() {
        for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
            if let Some(s) = &path.backend.service {
                out.push(s.name.clone());
            }
        }
    }
    out
}

fn strings_at(items: Option<&Value>, pointer: &str) -> Vec<String> {
    items
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| item.pointer(pointer).and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Destination hosts of an Istio VirtualService's HTTP routes.
pub fn virtual_service_backends(vs: &DynamicObject) -> Vec<String> {
    vs.data
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|http| strings_at(http.get("route"), "/destination/host"))
        .collect()
}

/// Backend Services of an SMI TrafficSplit.
pub fn traffic_split_backends(ts: &DynamicObject) -> Vec<String> {
    strings_at(ts.data.pointer("/spec/backends"), "/service")
}

/// Backend Services of a Gateway API HTTPRoute: the backendRefs that are core Services of the
/// route's namespace (the controller's own test, `routing_refs::gateway_ref_service`).
pub fn http_route_backends(route: &DynamicObject) -> Vec<String> {
    let namespace = route.metadata.namespace.clone().unwrap_or_default();
    route
        .data
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|rule| rule.get("backendRefs").and_then(Value::as_array))
        .flatten()
        .filter_map(|r| storm_shared::routing_refs::gateway_ref_service(r, &namespace))
        .map(str::to_string)
        .collect()
}

impl ClusterLookup for Caches {
    fn service(&self, namespace: &str, name: &str) -> Presence<ServiceInfo> {
        match self.services.get(Some(namespace), name) {
            Presence::Found(svc) => {
                let spec = svc.spec.clone().unwrap_or_default();
                Presence::Found(ServiceInfo {
                    selector: spec.selector.unwrap_or_default(),
                    ports: spec
                        .ports
                        .unwrap_or_default()
                        .iter()
                        .map(|p| p.port)
                        .collect(),
                })
            }
            Presence::Missing => Presence::Missing,
            Presence::Unknown => Presence::Unknown,
        }
    }

    fn ingress(&self, namespace: &str, name: &str) -> Presence<RouteInfo> {
        route(self.ingresses.get(Some(namespace), name), ingress_backends)
    }

    fn virtual_service(&self, namespace: &str, name: &str) -> Presence<RouteInfo> {
        route(
            self.virtual_services.get(Some(namespace), name),
            virtual_service_backends,
        )
    }

    fn destination_rule(&self, namespace: &str, name: &str) -> Presence<()> {
        exists(self.destination_rules.get(Some(namespace), name))
    }

    fn traffic_split(&self, namespace: &str, name: &str) -> Presence<RouteInfo> {
        route(
            self.traffic_splits.get(Some(namespace), name),
            traffic_split_backends,
        )
    }

    fn http_route(&self, namespace: &str, name: &str) -> Presence<RouteInfo> {
        route(
            self.http_routes.get(Some(namespace), name),
            http_route_backends,
        )
    }

    fn analysis_template(&self, namespace: &str, name: &str) -> Presence<()> {
        exists(self.templates.get(Some(namespace), name))
    }

    fn managed_by(&self, kind: TrafficKind, namespace: &str, name: &str) -> Option<String> {
        match kind {
            TrafficKind::Service => self.services.managed_by(namespace, name),
            TrafficKind::Ingress => self.ingresses.managed_by(namespace, name),
            TrafficKind::VirtualService => self.virtual_services.managed_by(namespace, name),
            TrafficKind::DestinationRule => self.destination_rules.managed_by(namespace, name),
            TrafficKind::TrafficSplit => self.traffic_splits.managed_by(namespace, name),
            TrafficKind::HttpRoute => self.http_routes.managed_by(namespace, name),
        }
    }
}

impl ClusterView for Caches {
    fn unsynced(&self) -> Option<String> {
        if self.ready() {
            return None;
        }
        Some(format!(
            "its watch caches have not listed yet ({})",
            self.pending().join(", ")
        ))
    }

    fn policies(&self) -> Vec<RolloutPolicy> {
        self.policies
            .all()
            .iter()
            .map(|p| RolloutPolicy::clone(p))
            .collect()
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        match self.namespaces.get(None, namespace) {
            Presence::Found(ns) => ns.labels().clone(),
            // Not cached yet (just created): the one label every namespace carries.
            _ => [(
                "kubernetes.io/metadata.name".to_string(),
                namespace.to_string(),
            )]
            .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(data: Value) -> DynamicObject {
        serde_json::from_value(data).unwrap()
    }

    #[test]
    fn reads_backends_of_every_router_kind() {
        let ing: Ingress = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                "rules": [{"http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "stable", "port": {"number": 80}}}}
                ]}}]
            }
        }))
        .unwrap();
        assert_eq!(ingress_backends(&ing), ["fallback", "stable"]);
        let vs = dynamic(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "vs"},
            "spec": {"http": [{"route": [
                {"destination": {"host": "stable"}, "weight": 100},
                {"destination": {"host": "canary.ns.svc.cluster.local"}}
            ]}]}
        }));
        assert_eq!(
            virtual_service_backends(&vs),
            ["stable", "canary.ns.svc.cluster.local"]
        );
        let ts = dynamic(json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {"name": "ts"},
            "spec": {"service": "root", "backends": [{"service": "stable", "weight": 90}, {"service": "canary", "weight": 10}]}
        }));
        assert_eq!(traffic_split_backends(&ts), ["stable", "canary"]);
        let hr = dynamic(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r"},
            "spec": {"rules": [{"backendRefs": [
                {"name": "stable", "port": 80},
                {"name": "bucket", "kind": "Backend", "group": "example.io"},
                {"name": "canary", "kind": "Service", "port": 80}
            ]}]}
        }));
        assert_eq!(http_route_backends(&hr), ["stable", "canary"]);
        // A ref to another namespace, or to a Service-named kind of another group, is not one
        // of the route's Services (the controller's test too).
        let hr = dynamic(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"rules": [{"backendRefs": [
                {"name": "stable", "namespace": "ns"},
                {"name": "canary", "namespace": "elsewhere"},
                {"name": "canary", "group": "other.io", "kind": "Service"}
            ]}]}
        }));
        assert_eq!(http_route_backends(&hr), ["stable"]);
    }

    #[test]
    fn offline_caches_know_nothing_and_are_ready() {
        let c = Caches::offline();
        assert!(c.ready());
        assert_eq!(c.unsynced(), None);
        assert_eq!(c.service("ns", "x"), Presence::Unknown);
        assert_eq!(c.analysis_template("ns", "x"), Presence::Unknown);
        assert!(c.policies().is_empty());
        assert_eq!(
            c.namespace_labels("ns").get("kubernetes.io/metadata.name"),
            Some(&"ns".to_string())
        );
    }

    #[test]
    fn caches_that_have_not_listed_are_not_ready_and_say_what_they_wait_for() {
        let c = Caches::empty(false);
        assert!(!c.ready());
        let why = c.unsynced().unwrap();
        for part in ["API discovery", "Service", "Ingress", "Namespace"] {
            assert!(why.contains(part), "{part} not in {why}");
        }
        // Not started (not installed) optional kinds are not waited for.
        assert!(!why.contains("RolloutPolicy"), "{why}");
        c.discovered.store(true, Ordering::Release);
        for slot in [&c.services.ready, &c.ingresses.ready] {
            slot.store(true, Ordering::Release);
        }
        assert_eq!(c.pending(), ["Namespace"]);
        c.namespaces.ready.store(true, Ordering::Release);
        assert!(c.ready());
        // Latched: ready from then on.
        c.namespaces.ready.store(false, Ordering::Release);
        assert!(c.ready());
        assert_eq!(c.unsynced(), None);
    }
}
