//! The StormService controller: observes a StormService's world, asks the rollout state machine
//! what to do, and executes its plan.
//!
//! One reconcile is four moves, each in its own file:
//! - [`observe`]: RoleSets and Pods from the watch caches, and the traffic routers read back;
//! - [`measure`]: analysis runs take the measurements that are due;
//! - `rollout::decide` (pure): the plan, with every write, event and requeue;
//! - [`apply`]: the plan's writes, in a fixed order (status, revisions, Services, routers,
//!   RoleSets, annotation removal, events).
//!
//! [`revisions`] keeps each revision's template (ControllerRevisions) so its RoleSets can be made
//! again after the template moved on.

use crate::cache::CachedPod;
use crate::context::Context;
use crate::error::{Backoff, Error};
use crate::feeds::{self, Feeds};
use crate::finalizers;
use crate::lanes::Locks;
use crate::owned::Owned;
use crate::rollout::{self, Input};
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storm_shared::keys::{AIBRIX_LABEL_STORM_SERVICE_NAME, LABEL_NAME};
use storm_shared::{RoleSet, StormService};
use tracing::{debug, info, warn};

pub mod adopt;
pub mod apply;
mod measure;
pub mod observe;
pub mod revisions;
mod routing;

pub use observe::{Caches, observe_pod};

/// Kind label of this controller's metrics.
pub const KIND: &str = "StormService";
/// Reconciles at most this many StormServices at once in the ordinary lane.
const CONCURRENCY: u16 = 16;
/// And in the urgent lane (aborts and analysis verdicts), beside the ordinary one. Aborts come in
/// bursts (an incident aborts many rollouts at once) and each is a few writes: a burst of up to
/// this many moves its traffic in one round, none waiting for a slot.
const URGENT_CONCURRENCY: u16 = 32;
/// How soon to look again while the caches are still loading.
const CACHE_RETRY: Duration = Duration::from_millis(500);

/// What the reconciles of this controller share.
pub struct State {
    /// Client, metrics, events.
    pub ctx: Arc<Context>,
    /// Takes analysis measurements.
    pub runner: crate::analysis::Runner,
    /// What the controller sees of the cluster.
    pub caches: Caches,
    /// Consecutive failures per StormService, for the retry backoff.
    pub backoff: Backoff<StormService>,
    /// One reconcile of a StormService at a time, across the two lanes.
    pub locks: Locks<ObjectRef<StormService>>,
    /// The StormServices as last seen: a reconcile that waited for its lock decides on the latest.
    pub store: Option<reflector::Store<StormService>>,
    /// Aborts sent to the urgent lane and not yet taken up there.
    pub urgent: crate::lanes::Pending<ObjectRef<StormService>>,
}

/// Sets up the StormService controller on the shared `feeds` and returns it, to run over all
/// namespaces until `shutdown` completes. The feeds start after every controller has set up.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    // Grouped by the StormService they belong to: our name label, else AIBrix's
    // `storm-service-name` (RoleSets and Pods AIBrix's controllers made are seen, to be adopted).
    let rolesets = feeds.rolesets.view(Owned::default());
    let pods = feeds.pods.view(Owned::default());
    // A RoleSet triggers the StormService that owns it; a Pod the one its label names.
    let triggers = futures::stream::select(
        feeds::triggers(feeds.rolesets.subscribe(), feeds::owners::<StormService, _>),
        feeds::triggers(feeds.pods.subscribe(), |pod: &CachedPod| {
            let name = pod.labels().get(AIBRIX_LABEL_STORM_SERVICE_NAME)?;
            Some(ObjectRef::<StormService>::new(name).within(pod.namespace().as_deref()?))
        }),
    );
    run_on(ctx, rolesets, pods, triggers, shutdown)
}

async fn run_on(
    ctx: Arc<Context>,
    rolesets: Owned<RoleSet>,
    pods: Owned<CachedPod>,
    triggers: impl futures::Stream<Item = ObjectRef<StormService>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (services, svc_writer) = reflector::store::<Service>();
    let svc_reflector = crate::cache::watch(ctx.api::<Service>(), watcher::Config::default())
        .modify(crate::cache::slim_service)
        .reflect(svc_writer)
        .applied_objects()
        .for_each(|_| async {});
    tokio::spawn(svc_reflector);

    let revisions = Owned::<ControllerRevision>::default();
    let rev_reflector = crate::cache::watch(
        ctx.api::<ControllerRevision>(),
        watcher::Config::default().labels(LABEL_NAME),
    )
    .modify(crate::cache::slim_revision)
    .inspect_ok(revisions.writer())
    .applied_objects()
    .for_each(|_| async {});
    tokio::spawn(rev_reflector);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    let (stormservices, ss_writer) = reflector::store::<StormService>();
    // Both lanes stop on it.
    let stop = stop_rx.shared();
    let analysis_caches = crate::analysis::Caches::watch(ctx.api());
    // Measurements run in the pool; a finished one wakes its StormService.
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded::<(String, String)>();
    let pool = Arc::new(crate::analysis::pool::Pool::new(
        ctx.analysis_pool,
        Some(wake_tx),
    ));
    let runner = match crate::analysis::Runner::new(ctx.egress.clone()) {
        Ok(r) => r
            .with_metrics(ctx.metrics.clone())
            .with_caches(analysis_caches)
            .with_bounds(ctx.analysis_bounds)
            .with_pool(pool),
        Err(e) => {
            warn!(error = %e, "analysis runner unavailable; StormService controller not started");
            return;
        }
    };
    let state = Arc::new(State {
        ctx,
        runner,
        caches: Caches {
            rolesets,
            pods,
            services,
            revisions,
        },
        backoff: Backoff::default(),
        locks: Locks::default(),
        store: Some(stormservices.clone()),
        urgent: Default::default(),
    });
    info!("StormService controller starting");
    // The StormServices themselves trigger a reconcile when users change them, not when this
    // controller writes their status: its own writes would otherwise reconcile every object
    // once more per write (and a status that changes on every reconcile would loop). What a
    // reconcile decides to wait for, it requeues for; RoleSets, Pods and finished measurements
    // trigger their StormService.
    //
    // Aborts and analysis verdicts also go to the urgent lane, which runs beside the ordinary one
    // with its own concurrency: an abort must not wait for a free slot behind a wave of ordinary
    // reconciles. (The ordinary lane reconciles them too, afterwards: it keeps the schedule.)
    let (urgent_tx, urgent_rx) = futures::channel::mpsc::unbounded::<ObjectRef<StormService>>();
    let urgent_abort = urgent_tx.clone();
    let aborts = state.urgent.clone();
    // Managed fields are read by no reconcile, and they are often the bulk of an object. The
    // template's Pod templates are the ones its update revision's RoleSets hold: one copy.
    let primary = crate::cache::watch(state.ctx.api::<StormService>(), watcher::Config::default())
        .modify(|s| {
            s.managed_fields_mut().clear();
            if let Some(spec) = s.spec.template.spec.as_mut() {
                crate::cache::share_templates(&mut spec.roles);
            }
        })
        .reflect(ss_writer)
        .applied_objects()
        .predicate_filter(user_change, Default::default())
        .inspect_ok(move |obj| {
            if pending_abort(obj) {
                let key = ObjectRef::from_obj(obj);
                aborts.insert(key.clone());
                if urgent_abort.unbounded_send(key.clone()).is_err() {
                    aborts.remove(&key);
                }
            }
        });
    let wakes = wake_rx.map(move |(ns, name)| {
        let key = ObjectRef::<StormService>::new(&name).within(&ns);
        let _ = urgent_tx.unbounded_send(key.clone());
        key
    });
    let urgent = crate::cache::controller(futures::stream::pending(), stormservices.clone())
        .with_config(controller::Config::default().concurrency(URGENT_CONCURRENCY))
        .reconcile_on(urgent_rx)
        .graceful_shutdown_on(stop.clone().map(|_| ()))
        .run(reconcile_urgent, error_policy_urgent, state.clone())
        .for_each(|_| async {});
    let ordinary = crate::cache::controller(primary, stormservices)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(futures::stream::select(wakes, triggers))
        .graceful_shutdown_on(stop.map(|_| ()))
        .run(reconcile, error_policy, state)
        .for_each(|result| async move { crate::feeds::log_outcome(KIND, result) });
    futures::join!(ordinary, urgent);
    info!("StormService controller stopped");
}

/// What a user (or another controller) changes on a StormService: spec (generation), labels,
/// annotations (the manual controls), finalizers and deletion. Status is not in it.
fn user_change(obj: &StormService) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.finalizers.hash(&mut h);
    meta.deletion_timestamp.as_ref().map(|t| t.0).hash(&mut h);
    Some(h.finish())
}

fn error_policy(obj: Arc<StormService>, err: &Error, state: Arc<State>) -> Action {
    state.backoff.policy(&obj, err)
}

async fn reconcile(obj: Arc<StormService>, state: Arc<State>) -> Result<Action, Error> {
    let (_lock, obj) = lock_latest(obj, &state).await;
    // An abort the urgent lane has yet to move traffic for: this lane follows once it has (its
    // writes would only compete with the urgent ones).
    if state.urgent.contains(&ObjectRef::from_obj(obj.as_ref())) {
        return Ok(Action::requeue(URGENT_FIRST));
    }
    let started = Instant::now();
    let result = reconcile_stormservice(&obj, &state, Scope::All).await;
    state
        .backoff
        .finish(&state.ctx.metrics, KIND, &obj, started, &result);
    result
}

/// The urgent lane. An abort: only the writes that put traffic back on stable (Services, routers),
/// before anything else, then the stable RoleSets it lacks; the ordinary lane then records it and
/// takes the canary's capacity away. An analysis
/// verdict: the whole reconcile, at once. What comes next (requeues, retries after an error) is
/// the ordinary lane's, which was triggered by the same change.
async fn reconcile_urgent(obj: Arc<StormService>, state: Arc<State>) -> Result<Action, Error> {
    let (_lock, obj) = lock_latest(obj, &state).await;
    let key = ObjectRef::from_obj(obj.as_ref());
    let scope = if state.urgent.remove(&key) {
        Scope::Stable
    } else {
        Scope::All
    };
    debug!(namespace = ?obj.namespace(), name = %obj.name_any(), stable_only = scope == Scope::Stable, "urgent reconcile");
    let started = Instant::now();
    let result = reconcile_stormservice(&obj, &state, scope).await;
    state
        .backoff
        .finish(&state.ctx.metrics, KIND, &obj, started, &result);
    result.map(|_| Action::await_change())
}

fn error_policy_urgent(obj: Arc<StormService>, err: &Error, _: Arc<State>) -> Action {
    debug!(namespace = ?obj.namespace(), name = %obj.name_any(), error = %err,
           "urgent reconcile failed; the ordinary lane retries");
    Action::await_change()
}

/// Holds `obj`'s lock, then returns the latest cached version of it: a reconcile that waited for
/// the other lane must not decide on the object it was dispatched with (an abort the other lane
/// acted on since would be undone by a decision from before it).
async fn lock_latest(
    obj: Arc<StormService>,
    state: &State,
) -> (
    crate::lanes::Guard<ObjectRef<StormService>>,
    Arc<StormService>,
) {
    let key = ObjectRef::from_obj(obj.as_ref());
    let lock = state.locks.lock(key.clone()).await;
    let latest = state
        .store
        .as_ref()
        .and_then(|store| store.get(&key))
        .unwrap_or(obj);
    (lock, latest)
}

/// Whether `obj` carries an abort its status does not acknowledge yet.
fn pending_abort(obj: &StormService) -> bool {
    pending(obj, &[storm_shared::keys::ANNOTATION_ABORT])
}

/// Whether `obj` carries a control annotation its status does not acknowledge yet: one that would
/// act now.
fn pending_control(obj: &StormService) -> bool {
    pending(obj, &storm_shared::keys::CONTROL_ANNOTATIONS)
}

/// Whether `obj` carries one of the control annotations `keys` that its status does not
/// acknowledge yet.
fn pending(obj: &StormService, keys: &[&str]) -> bool {
    let acknowledged = obj
        .status
        .as_ref()
        .and_then(|s| s.rollout_status.as_ref())
        .map(|r| r.acknowledged_controls.as_slice())
        .unwrap_or_default();
    keys.iter().any(|key| {
        obj.annotations()
            .get(*key)
            .is_some_and(|v| v == storm_shared::keys::CONTROL_VALUE)
            && !acknowledged.iter().any(|a| a == key)
    })
}

/// What a reconcile does: everything, or (an abort in the urgent lane) only the writes that
/// restore stable: traffic back on it, then the RoleSets it lacks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    Stable,
}

async fn reconcile_stormservice(
    obj: &StormService,
    state: &State,
    scope: Scope,
) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let api: kube::Api<StormService> = kube::Api::namespaced(state.ctx.client.clone(), &ns);
    if obj.meta().deletion_timestamp.is_some() {
        state.ctx.metrics.forget_rollout(&ns, &name);
        // Traffic back on stable in the user's routing objects before the StormService goes.
        if finalizers::carries(obj, finalizers::TRAFFIC) {
            let note = routing::revert_on_delete(&state.ctx.client, obj, &ns)
                .await
                .map_err(Error::Router)?;
            apply::publish(&state.ctx, obj, note.iter()).await;
        }
        finalizers::release_all(&api, obj, &[finalizers::STORMSERVICE, finalizers::TRAFFIC])
            .await
            .map_err(|e| Error::ReleaseFinalizer(format!("StormService {name}"), e))?;
        return Ok(Action::await_change());
    }
    // An empty cache reads as "no RoleSets, no Pods": status counts would drop to zero and a
    // decision would be made blind. Until every cache has its first list, look again shortly (not
    // wait: these watches are driven by this controller's streams, which shutdown stops first).
    if !state.caches.ready() || !state.runner.caches_ready() {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    // A control annotation acts at most once: the status this controller wrote when it acted
    // acknowledges it. The watch cache may not show that write yet (a requeue right after it, a
    // watch re-established after an API server restart), and acting on the cached object would
    // act again. So before a control acts, the object is read from the API server.
    let fresh;
    let obj = if pending_control(obj) {
        fresh = api
            .get(&name)
            .await
            .map_err(|e| Error::ReadFresh(format!("StormService {name}"), e))?;
        &fresh
    } else {
        obj
    };
    let now = Timestamp::now();
    // The revision of the current template, once per reconcile.
    let update = revisions::update_revision(&state.caches, obj);
    // RoleSets AIBrix's controllers made are adopted first (or the StormService waits).
    match adopt::adopt(&state.ctx.client, &state.caches, obj, &update).await? {
        adopt::Adoption::Nothing => {}
        // Look again once the caches show the adopted objects.
        adopt::Adoption::Adopted(_) => return Ok(Action::requeue(CACHE_RETRY)),
    }
    // A canary with traffic routers carries our finalizer before any router moves, so that its
    // deletion can put the traffic back on stable.
    if routing::Routing::of(obj, &ns, &update, &update).is_some()
        && finalizers::add(&api, obj, finalizers::TRAFFIC)
            .await
            .map_err(|e| Error::AddFinalizer(format!("StormService {name}"), e))?
    {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    let budget = obj.spec.capacity_budget().map(|b| b.resource.as_str());
    let mut observed = state.caches.observe(&ns, &name, budget);
    observe::read_routers(&state.ctx.client, obj, &ns, &update, &mut observed).await;
    // Analyses take their due measurements; the decision reads their verdicts.
    let mut status = obj.status.clone();
    // A status AIBrix's controller wrote names its own revisions: read them as the revisions its
    // RoleSets were adopted into. When AIBrix's current revision has no RoleSet left, to us the
    // StormService is deploying for the first time (its adopted RoleSets carry the current one).
    if let Some(st) = status.as_mut()
        && let Some(current) = st.current_revision.clone()
        && current != update
        && adopt::foreign_revision(&state.caches, obj, &current)
    {
        st.current_revision = adopt::adopted_as(&state.caches, obj, &current);
        st.update_revision = st.current_revision.clone();
    }
    let mut measured = rollout::Measured::default();
    // Measurements are taken (and their results collected) only by a reconcile that records them.
    if let Some(st) = status.as_mut().filter(|_| scope == Scope::All) {
        let (next_due, notes) =
            measure::advance(&state.runner, &state.ctx.client, obj, &ns, st, &update, now).await;
        measured = rollout::Measured { notes, next_due };
    }
    let annotations = obj.annotations().clone();
    let input = Input {
        name: &name,
        generation: obj.meta().generation,
        spec: &obj.spec,
        status: status.as_ref(),
        annotations: &annotations,
        observed: &observed,
        update: &update,
        measured: &measured,
        now,
    };
    let plan = rollout::decide(&input);
    // A status this reconcile writes does not trigger the next one (the watch ignores status);
    // look again shortly with it, as a decision may follow from it (a completed rollout resets
    // the routers once its status says Completed). One look per change: no loop.
    let wrote_status = obj.status.as_ref() != Some(&plan.status);
    if scope == Scope::Stable {
        // The rest (status, deletions, events) is the ordinary lane's, which decides again.
        if plan.rollback.is_some() {
            apply::traffic(&state.ctx, &state.caches, obj, &observed, &plan).await?;
            apply::restore_stable(&state.ctx, &state.caches, obj, &update, &plan).await?;
        }
        return Ok(Action::await_change());
    }
    apply::apply(&state.ctx, &state.caches, obj, &observed, &plan).await?;
    let requeue = if wrote_status {
        plan.requeue_after.min(STATUS_RECHECK)
    } else {
        plan.requeue_after
    };
    Ok(Action::requeue(requeue))
}

/// How soon the ordinary lane looks again at an abort the urgent lane has yet to take up.
const URGENT_FIRST: Duration = Duration::from_millis(100);

/// How soon a StormService whose status was just written is looked at again.
const STATUS_RECHECK: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pending_control_tests {
    use super::pending_control;
    use serde_json::json;
    use storm_shared::StormService;

    fn with(annotations: serde_json::Value, acknowledged: &[&str]) -> StormService {
        serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
            "metadata": {"name": "s", "namespace": "ns", "annotations": annotations},
            "spec": {"selector": {"matchLabels": {"app": "s"}},
                     "template": {"spec": {"roles": []}}},
            "status": {"rolloutStatus": {"acknowledgedControls": acknowledged}}
        }))
        .expect("StormService")
    }

    #[test]
    fn only_an_unacknowledged_control_is_pending() {
        let abort = "stormservice.aibrix.ai/rollout-abort";
        assert!(pending_control(&with(json!({abort: "true"}), &[])));
        assert!(!pending_control(&with(json!({abort: "true"}), &[abort])));
        assert!(!pending_control(&with(json!({abort: "false"}), &[])));
        assert!(!pending_control(&with(
            json!({"example.com/other": "true"}),
            &[]
        )));
        assert!(pending_control(&with(
            json!({abort: "true", "stormservice.aibrix.ai/rollout-retry": "true"}),
            &[abort]
        )));
    }
}
