//! One watch per kind, shared by every controller that reads that kind.
//!
//! Three controllers read Pods (RoleSet, PodSet, StormService) and two read RoleSets and PodSets.
//! Each used to open its own watch and keep its own copy of every object, so a Pod was held in
//! memory two or three times. A [`Feed`] runs one watch, keeps each object once (in a
//! kube-runtime [`Store`], which also serves as a controller's primary store), and hands the
//! same `Arc` to each grouped view ([`Owned`]) and each subscriber (a controller's triggers).
//!
//! A feed is set up before it starts: views and subscribers are registered on it, then
//! [`Feed::spawn`] runs the watch for the rest of the process.

use crate::cache::CachedPod;
use crate::context::Context;
use crate::owned::Owned;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::{Stream, StreamExt, TryFuture};

use kube::Resource;
use kube::ResourceExt;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{Controller, WatchStreamExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use storm_shared::keys::AIBRIX_LABEL_ROLESET_NAME;
use storm_shared::types::podset::PodSet;
use storm_shared::types::roleset::RoleSet;
use tracing::{debug, info, warn};

/// Trims an object before it is kept (fields no reconcile reads).
pub type Slim<K> = fn(&mut K);

/// One watch of a kind, its objects kept once, fanned out to views and subscribers.
pub struct Feed<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    api: kube::Api<K>,
    config: watcher::Config,
    slim: Slim<K>,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
    views: Vec<Owned<K>>,
    subscribers: Vec<UnboundedSender<Arc<K>>>,
}

impl<K> Feed<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    /// A feed of the objects of `api` that `config` selects, each trimmed by `slim`.
    pub fn new(api: kube::Api<K>, config: watcher::Config, slim: Slim<K>) -> Self {
        let (store, writer) = reflector::store();
        Feed {
            api,
            config,
            slim,
            store,
            writer,
            views: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// Every object, by reference: a controller's primary store.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A view grouping the feed's objects as `view` does (it must be new and empty).
    pub fn view(&mut self, view: Owned<K>) -> Owned<K> {
        self.views.push(view.clone());
        view
    }

    /// Every object the watch applies or deletes from now on (after a relist, every object
    /// listed), once it is in the store and the views.
    pub fn subscribe(&mut self) -> UnboundedReceiver<Arc<K>> {
        let (tx, rx) = unbounded();
        self.subscribers.push(tx);
        rx
    }

    /// Runs the watch for the rest of the process.
    pub fn spawn(self) {
        tokio::spawn(self.run());
    }

    /// Runs the watch if a view or a subscriber reads it (a controller reading the store as
    /// its primary subscribes to it for its triggers).
    fn spawn_if_read(self) {
        if !self.views.is_empty() || !self.subscribers.is_empty() {
            self.spawn();
        }
    }

    async fn run(mut self) {
        let slim = self.slim;
        let mut events =
            std::pin::pin!(crate::cache::watch(self.api.clone(), self.config.clone()).modify(slim));
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.apply(event),
                // The watch retries on its own (with `cache::Retry`); the caches keep serving.
                Err(e) => warn!(error = %e, kind = %K::kind(&Default::default()), "watch"),
            }
        }
    }

    /// Applies one watch event to the store, then the views, then tells the subscribers.
    fn apply(&mut self, event: watcher::Event<K>) {
        self.writer.apply_watcher_event(&event);
        match event {
            watcher::Event::Apply(obj) => {
                // The store's own `Arc`: views and subscribers share its one copy.
                let Some(kept) = self.store.get(&ObjectRef::from_obj(&obj)) else {
                    return;
                };
                drop(obj);
                for view in &self.views {
                    view.insert(kept.clone());
                }
                self.publish(kept);
            }
            watcher::Event::Delete(obj) => {
                let (ns, name) = (obj.meta().namespace.clone(), obj.meta().name.clone());
                for view in &self.views {
                    view.remove(
                        ns.as_deref().unwrap_or_default(),
                        name.as_deref().unwrap_or_default(),
                    );
                }
                self.publish(Arc::new(obj));
            }
            // A relist: the store swaps the listed objects in at `InitDone`, the views with it.
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                let all = self.store.state();
                for view in &self.views {
                    view.replace(all.iter().cloned());
                }
                for obj in all {
                    self.publish(obj);
                }
            }
        }
    }

    fn publish(&mut self, obj: Arc<K>) {
        // A subscriber whose controller stopped is dropped.
        self.subscribers
            .retain(|tx| tx.unbounded_send(obj.clone()).is_ok());
    }
}

/// The feeds the controllers share: set up by each controller as it starts, then spawned.
pub struct Feeds {
    /// Pods carrying AIBrix's `roleset-name` (every Pod a RoleSet or a PodSet makes).
    pub pods: Feed<CachedPod>,
    /// Every RoleSet.
    pub rolesets: Feed<RoleSet>,
    /// Every PodSet.
    pub podsets: Feed<PodSet>,
    pods_by_controller: Option<Owned<CachedPod>>,
    podsets_by_controller: Option<Owned<PodSet>>,
}

impl Feeds {
    /// The feeds over the context's namespace (all namespaces when it has none), not started.
    pub fn new(ctx: &Context) -> Self {
        Feeds {
            // Every Pod we create carries `roleset-name`, also the members of a PodSet and the
            // Pods of a RoleSet applied on its own (as AIBrix allows), which has no StormService.
            pods: Feed::new(
                ctx.api(),
                watcher::Config::default().labels(AIBRIX_LABEL_ROLESET_NAME),
                crate::cache::slim_pod,
            ),
            // Managed fields are read by no reconcile, and they are often the bulk of an object.
            // A revision's RoleSets hold one copy of each role's Pod template.
            rolesets: Feed::new(ctx.api(), watcher::Config::default(), |r| {
                r.managed_fields_mut().clear();
                crate::cache::share_templates(&mut r.spec.roles);
            }),
            podsets: Feed::new(ctx.api(), watcher::Config::default(), |p| {
                p.managed_fields_mut().clear()
            }),
            pods_by_controller: None,
            podsets_by_controller: None,
        }
    }

    /// Pods by the UID of their controller (a RoleSet or a PodSet): one view for both.
    pub fn pods_by_controller(&mut self) -> Owned<CachedPod> {
        let pods = &mut self.pods;
        self.pods_by_controller
            .get_or_insert_with(|| pods.view(Owned::by_controller()))
            .clone()
    }

    /// PodSets by the UID of their controller (a RoleSet).
    pub fn podsets_by_controller(&mut self) -> Owned<PodSet> {
        let podsets = &mut self.podsets;
        self.podsets_by_controller
            .get_or_insert_with(|| podsets.view(Owned::by_controller()))
            .clone()
    }

    /// Starts the watches some controller reads.
    pub fn spawn(self) {
        self.pods.spawn_if_read();
        self.rolesets.spawn_if_read();
        self.podsets.spawn_if_read();
    }
}

/// The controllers' triggers from a subscription: each object to the objects `to` names.
pub fn triggers<K, P, I>(
    rx: UnboundedReceiver<Arc<K>>,
    to: impl Fn(&K) -> I + Send + 'static,
) -> impl Stream<Item = ObjectRef<P>> + Send + 'static
where
    K: Send + Sync + 'static,
    P: Resource + 'static,
    P::DynamicType: Default,
    I: IntoIterator<Item = ObjectRef<P>>,
    I::IntoIter: Send + 'static,
{
    rx.flat_map(move |obj| futures::stream::iter(to(&obj)))
}

/// The object itself (a controller's primary triggers).
pub fn itself<K>(obj: &K) -> Option<ObjectRef<K>>
where
    K: Resource,
    K::DynamicType: Default,
{
    Some(ObjectRef::from_obj(obj))
}

/// The owners of kind `P` of `obj` (as kube-runtime's `owns` triggers them): every owner
/// reference of `P`'s kind and API version.
pub fn owners<P, K>(obj: &K) -> Vec<ObjectRef<P>>
where
    K: Resource,
    P: Resource,
    P::DynamicType: Default,
{
    let dt = P::DynamicType::default();
    let (kind, api_version) = (P::kind(&dt), P::api_version(&dt));
    let ns = obj.meta().namespace.as_deref();
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == kind && o.api_version == api_version)
        .map(|o| {
            let r = ObjectRef::<P>::new(&o.name);
            match ns {
                Some(ns) => r.within(ns),
                None => r,
            }
        })
        .collect()
}

/// Runs `controller` (a controller on a feed's store, its triggers added) until `shutdown`
/// completes; reconciles in flight then finish before it returns. `kind` names it in the logs.
pub async fn run_until<K, Ctx, Fut>(
    kind: &'static str,
    controller: Controller<K>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> Fut,
    error_policy: impl Fn(Arc<K>, &Fut::Error, Arc<Ctx>) -> Action,
    state: Arc<Ctx>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Debug + Unpin + Eq + Hash + Clone,
    Fut: TryFuture<Ok = Action> + Send + 'static,
    Fut::Error: std::error::Error + Send + 'static,
{
    // `graceful_shutdown_on` wants a `Sync` future; the caller's need not be. A oneshot bridges.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    info!("{kind} controller starting");
    controller
        .graceful_shutdown_on(async move {
            let _ = stop_rx.await;
        })
        .run(reconcile, error_policy, state)
        .for_each(|result| async move { log_outcome(kind, result) })
        .await;
    info!("{kind} controller stopped");
}

/// Logs what a controller's run stream yields for one reconcile. Reconcile errors are not logged
/// here: the error policy logged them.
pub fn log_outcome<K, E>(
    kind: &str,
    result: Result<(ObjectRef<K>, Action), controller::Error<E, watcher::Error>>,
) where
    K: Resource,
    K::DynamicType: Debug,
    E: std::error::Error,
{
    match result {
        Ok((obj, _)) => debug!(namespace = ?obj.namespace, name = %obj.name, "reconciled"),
        Err(controller::Error::ReconcilerFailed(..)) => {}
        // A trigger for an object deleted before its reconcile: nothing left to do.
        Err(controller::Error::ObjectNotFound(obj)) => {
            debug!(namespace = ?obj.namespace, name = %obj.name, "{kind} gone before reconcile")
        }
        Err(e) => warn!(error = %e, "{kind} controller"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::ResourceExt;
    use kube::core::ObjectMeta;
    use storm_shared::keys::LABEL_NAME;
    use storm_shared::types::roleset::RoleSet;
    use storm_shared::types::stormservice::StormService;

    fn pod(name: &str, svc: &str, uid: &str) -> CachedPod {
        CachedPod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                labels: Some([(LABEL_NAME.to_string(), svc.to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "orchestration.aibrix.ai/v1alpha1".into(),
                    kind: "RoleSet".into(),
                    name: format!("rs-{uid}"),
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn feed() -> Feed<CachedPod> {
        // Never spawned: the tests apply events by hand. Building an `Api` needs a client, and
        // a client needs a runtime, but no server is called.
        let client = kube::Client::new(
            tower::service_fn(|_: http::Request<kube::client::Body>| async {
                Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::other(
                    "no server in unit tests",
                ))
            }),
            "default",
        );
        Feed::new(kube::Api::all(client), watcher::Config::default(), |_| {})
    }

    #[tokio::test]
    async fn views_and_subscribers_share_the_stores_one_copy() {
        let mut feed = feed();
        let by_service = feed.view(Owned::default());
        let by_controller = feed.view(Owned::by_controller());
        let mut rx = feed.subscribe();
        feed.apply(watcher::Event::Init);
        feed.apply(watcher::Event::InitApply(pod("p1", "svc", "u1")));
        // Nothing is served or published before the list is done.
        assert!(!by_service.listed());
        assert!(rx.try_recv().is_err());
        feed.apply(watcher::Event::InitDone);
        assert!(by_service.listed() && by_controller.listed());

        let in_store = feed.store.state().pop().expect("listed");
        let a = by_service
            .owned_by("ns", "svc")
            .pop()
            .expect("in its StormService's group");
        let b = by_controller
            .owned_by("ns", "u1")
            .pop()
            .expect("in its controller's group");
        let published = rx.try_recv().expect("published");
        assert!(Arc::ptr_eq(&in_store, &a) && Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&b, &published));

        // A change: stored once, the same Arc everywhere; relabelled, it moves group.
        feed.apply(watcher::Event::Apply(pod("p1", "other", "u1")));
        let a = by_service.owned_by("ns", "other").pop().expect("moved");
        assert!(by_service.owned_by("ns", "svc").is_empty());
        let b = by_controller.owned_by("ns", "u1").pop().expect("kept");
        let published = rx.try_recv().expect("published");
        assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&b, &published));
        assert_eq!(
            Arc::strong_count(&a),
            6,
            "the store, two views and three locals here"
        );

        // A deletion leaves every view and is still published (its owner must look again).
        feed.apply(watcher::Event::Delete(pod("p1", "other", "u1")));
        assert!(by_service.owned_by("ns", "other").is_empty());
        assert!(by_controller.owned_by("ns", "u1").is_empty());
        assert!(feed.store.state().is_empty());
        let gone = rx.try_recv().expect("published");
        assert_eq!(gone.name_any(), "p1");
    }

    #[tokio::test]
    async fn a_subscriber_that_stopped_is_dropped() {
        let mut feed = feed();
        let rx = feed.subscribe();
        let mut kept = feed.subscribe();
        drop(rx);
        feed.apply(watcher::Event::Apply(pod("p1", "svc", "u1")));
        assert_eq!(feed.subscribers.len(), 1);
        assert!(kept.try_recv().is_ok());
    }

    #[test]
    fn owners_are_the_references_of_the_owner_kind_in_the_objects_namespace() {
        let mut p = pod("p1", "svc", "u1");
        p.metadata
            .owner_references
            .get_or_insert_default()
            .push(OwnerReference {
                api_version: "orchestration.aibrix.ai/v1alpha1".into(),
                kind: "StormService".into(),
                name: "svc".into(),
                uid: "u2".into(),
                ..Default::default()
            });
        let rs: Vec<ObjectRef<RoleSet>> = owners(&p);
        assert_eq!(rs, [ObjectRef::new("rs-u1").within("ns")]);
        let ss: Vec<ObjectRef<StormService>> = owners(&p);
        assert_eq!(ss, [ObjectRef::new("svc").within("ns")]);
        // Same kind name, other group: not an owner of ours.
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "RoleSet".into(),
            name: "x".into(),
            ..Default::default()
        }]);
        assert!(owners::<RoleSet, _>(&p).is_empty());
    }
}
