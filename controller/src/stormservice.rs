//! The StormService controller: observes RoleSets and Pods, asks the rollout state machine what to
//! do, and applies its plan: status first, then Services (traffic), then RoleSets (capacity).

use crate::context::{Context, MANAGER};
use crate::rollout::{self, Input, Observed, ObservedPod, ObservedRoleSet, Plan};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storm_shared::keys::{AIBRIX_LABEL_STORM_SERVICE_NAME, LABEL_NAME, LABEL_REVISION};
use storm_shared::types::API_VERSION;
use storm_shared::types::stormservice::{RoleSetTemplateSpec, TemplateMetadata};
use storm_shared::{RoleSet, StormService};
use tracing::{debug, info, warn};

mod measure;
mod routing;

/// Field manager for the Service selectors the controller pins.
const ROUTING_MANAGER: &str = "storm-controller-routing";
/// Reconciles at most this many StormServices at once.
const CONCURRENCY: u16 = 16;
/// Look again this often even when nothing happens (pauses requeue at their exact end).
const RESYNC: Duration = Duration::from_secs(300);

/// What went wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the status failed.
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    /// Removing acted-on control annotations failed.
    #[error("removing control annotations: {0}")]
    RemoveAnnotations(#[source] kube::Error),
    /// Pinning a Service's selector failed.
    #[error("pinning Service {0}: {1}")]
    PinService(String, #[source] kube::Error),
    /// Creating a RoleSet failed.
    #[error("creating RoleSet {0}: {1}")]
    CreateRoleSet(String, #[source] kube::Error),
    /// Deleting a RoleSet failed.
    #[error("deleting RoleSet {0}: {1}")]
    DeleteRoleSet(String, #[source] kube::Error),
    /// Recording a revision's template failed.
    #[error("recording revision {0}: {1}")]
    RecordRevision(String, #[source] kube::Error),
    /// A revision must be scaled up but its template is known nowhere.
    #[error("no template known for revision {0}: its ControllerRevision and RoleSets are gone")]
    UnknownRevision(String),
    /// The object has no namespace.
    #[error("StormService has no namespace")]
    NoNamespace,
    /// A traffic router could not be set.
    #[error("traffic routers: {0}")]
    Router(#[source] crate::routers::Error),
}

impl Error {
    fn label(&self) -> &'static str {
        match self {
            Error::WriteStatus(_) => "write_status",
            Error::RemoveAnnotations(_) => "remove_annotations",
            Error::PinService(..) => "pin_service",
            Error::CreateRoleSet(..) => "create_roleset",
            Error::DeleteRoleSet(..) => "delete_roleset",
            Error::RecordRevision(..) => "record_revision",
            Error::UnknownRevision(_) => "unknown_revision",
            Error::NoNamespace => "no_namespace",
            Error::Router(_) => "router",
        }
    }
}

struct State {
    ctx: Arc<Context>,
    runner: crate::analysis::Runner,
    rolesets: Store<RoleSet>,
    pods: Store<Pod>,
    services: Store<Service>,
    revisions: Store<ControllerRevision>,
}

/// Runs the StormService controller over all namespaces until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let labelled = watcher::Config::default().labels(LABEL_NAME);
    let (rolesets, rs_writer) = reflector::store::<RoleSet>();
    let roleset_events = watcher(ctx.api::<RoleSet>(), labelled.clone())
        .default_backoff()
        .modify(|r| r.managed_fields_mut().clear())
        .reflect(rs_writer)
        .touched_objects();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_events = watcher(ctx.api::<Pod>(), labelled)
        .default_backoff()
        .modify(crate::cache::slim_pod)
        .reflect(pod_writer)
        .touched_objects();
    let (services, svc_writer) = reflector::store::<Service>();
    let svc_reflector = watcher(ctx.api::<Service>(), watcher::Config::default())
        .default_backoff()
        .modify(crate::cache::slim_service)
        .reflect(svc_writer)
        .applied_objects()
        .for_each(|_| async {});
    tokio::spawn(svc_reflector);

    let (revisions, rev_writer) = reflector::store::<ControllerRevision>();
    let rev_reflector = watcher(
        ctx.api::<ControllerRevision>(),
        watcher::Config::default().labels(LABEL_NAME),
    )
    .default_backoff()
    .modify(|r| r.managed_fields_mut().clear())
    .reflect(rev_writer)
    .applied_objects()
    .for_each(|_| async {});
    tokio::spawn(rev_reflector);
    let analysis_caches = crate::analysis::Caches::watch(ctx.api(), ctx.api());

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    let runner = match crate::analysis::Runner::new() {
        Ok(r) => r
            .with_metrics(ctx.metrics.clone())
            .with_caches(analysis_caches),
        Err(e) => {
            warn!(error = %e, "analysis runner unavailable; StormService controller not started");
            return;
        }
    };
    let state = Arc::new(State {
        ctx,
        runner,
        rolesets,
        pods,
        services,
        revisions,
    });
    info!("StormService controller starting");
    Controller::new(state.ctx.api::<StormService>(), watcher::Config::default())
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .owns_stream(roleset_events)
        .watches_stream(pod_events, |pod: Pod| {
            let name = pod.labels().get(LABEL_NAME)?.clone();
            Some(ObjectRef::<StormService>::new(&name).within(&pod.namespace()?))
        })
        .graceful_shutdown_on(async move {
            let _ = stop_rx.await;
        })
        .run(reconcile, error_policy, state)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(namespace = ?obj.namespace, name = %obj.name, "reconciled"),
                Err(controller::Error::ReconcilerFailed(..)) => {}
                // Deleted between the trigger and the reconcile: nothing to do.
                Err(controller::Error::ObjectNotFound(obj)) => {
                    debug!(%obj, "gone before reconcile")
                }
                Err(e) => warn!(error = %e, "StormService controller"),
            }
        })
        .await;
    info!("StormService controller stopped");
}

fn error_policy(obj: Arc<StormService>, err: &Error, state: Arc<State>) -> Action {
    warn!(namespace = ?obj.namespace(), name = %obj.name_any(), error = %err, "reconcile failed");
    state
        .ctx
        .metrics
        .observe_reconcile("StormService", 0.0, Some(err.label()));
    Action::requeue(Duration::from_secs(5))
}

/// How soon to look again while the caches are still loading.
const CACHE_RETRY: Duration = Duration::from_millis(500);

fn caches_ready(state: &State) -> bool {
    use futures::FutureExt;
    let ready = |f: Option<Result<(), kube::runtime::reflector::store::WriterDropped>>| {
        matches!(f, Some(Ok(())))
    };
    ready(state.rolesets.wait_until_ready().now_or_never())
        && ready(state.pods.wait_until_ready().now_or_never())
        && ready(state.services.wait_until_ready().now_or_never())
        && ready(state.revisions.wait_until_ready().now_or_never())
        && state.runner.caches_ready()
}

/// Whether a cached object belongs to StormService `ns/name` (by namespace and name label).
fn belongs<K: Resource>(k: &K, ns: &str, name: &str) -> bool {
    k.meta().namespace.as_deref() == Some(ns)
        && k.labels().get(LABEL_NAME).map(String::as_str) == Some(name)
}

/// What the controller sees of one StormService, from its caches.
fn observe(state: &State, ns: &str, name: &str) -> Observed {
    let rolesets = state
        .rolesets
        .state()
        .iter()
        .filter(|r| belongs(r.as_ref(), ns, name) && r.meta().deletion_timestamp.is_none())
        .map(|r| ObservedRoleSet {
            name: r.name_any(),
            revision: r.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
            ready: r.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }),
        })
        .collect();
    let pods = state
        .pods
        .state()
        .iter()
        .filter(|p| belongs(p.as_ref(), ns, name) && p.meta().deletion_timestamp.is_none())
        .map(|p| observe_pod(p))
        .collect();
    Observed {
        rolesets,
        pods,
        router_weight: None,
    }
}

/// A Pod's health as the rollout sees it.
pub fn observe_pod(p: &Pod) -> ObservedPod {
    let status = p.status.as_ref();
    let ready_cond = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let ready = ready_cond.is_some_and(|c| c.status == "True");
    let crash_looping = status
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.restart_count >= 3
                    || c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CrashLoopBackOff")
            })
        });
    let unready_since = if ready {
        None
    } else {
        ready_cond
            .and_then(|c| c.last_transition_time.as_ref())
            .or(p.meta().creation_timestamp.as_ref())
            .map(|t| t.0)
    };
    ObservedPod {
        name: p.name_any(),
        revision: p.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
        ready,
        failed: status.and_then(|s| s.phase.as_deref()) == Some("Failed"),
        crash_looping,
        unready_since,
    }
}

async fn reconcile(obj: Arc<StormService>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    if obj.meta().deletion_timestamp.is_some() {
        state.ctx.metrics.forget_rollout(&ns, &name);
        return Ok(Action::await_change());
    }
    // An empty cache reads as "no RoleSets, no Pods": status counts would drop to zero and a
    // decision would be made blind. Until every cache has its first list, look again shortly (not
    // wait: these watches are driven by this controller's streams, which shutdown stops first).
    if !caches_ready(&state) {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    let mut observed = observe(&state, &ns, &name);
    let now = Timestamp::now();
    let update = rollout::revision::of_template(&obj.spec.template);
    let stable = obj
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .unwrap_or_else(|| update.clone());
    let mut extra_notes = Vec::new();
    // The routers' weight, read back: a canary step is reached only when it is in place.
    let routing = routing::Routing::of(&obj, &ns, &stable, &update);
    if let Some(r) = &routing {
        match r.read(&state.ctx.client).await {
            Ok(w) => observed.router_weight = w,
            Err(e) if stable != update => {
                extra_notes.push(routing::error_note("reading the traffic routers", &e))
            }
            Err(e) => {
                debug!(namespace = %ns, name = %name, error = %e, "traffic routers not readable at rest")
            }
        }
    }
    // Analyses take their due measurements; the decision reads their verdicts.
    let mut status = obj.status.clone();
    let mut analysis_due = None;
    if let Some(st) = status.as_mut() {
        let (due, notes) = measure::advance(
            &state.runner,
            &state.ctx.client,
            &obj,
            &ns,
            st,
            &update,
            now,
        )
        .await;
        analysis_due = due;
        extra_notes.extend(notes);
    }
    let annotations = obj.annotations().clone();
    let input = Input {
        name: &name,
        generation: obj.meta().generation,
        spec: &obj.spec,
        status: status.as_ref(),
        annotations: &annotations,
        observed: &observed,
        now,
    };
    let mut plan = rollout::decide(&input);
    extra_notes.append(&mut plan.notes);
    plan.notes = extra_notes;
    // The routers are told the weight after this decision; read it back soon.
    let router_moving =
        routing.is_some() && stable != update && observed.router_weight != Some(plan.weight);
    for d in analysis_due
        .into_iter()
        .chain(router_moving.then_some(Duration::from_secs(1)))
    {
        plan.requeue_after = Some(plan.requeue_after.map_or(d, |r| r.min(d)));
    }
    let result = apply(&obj, &ns, &name, &observed, &plan, &state).await;
    let rs = plan.status.rollout_status.as_ref();
    state.ctx.metrics.set_rollout(
        &ns,
        &name,
        rs.and_then(|r| r.phase).map_or("Healthy", phase_name),
        i64::from(rs.and_then(|r| r.current_step_index).unwrap_or(0)),
        i64::from(
            rs.and_then(|r| r.canary_status.as_ref())
                .map_or(0, |c| c.current_weight),
        ),
    );
    state.ctx.metrics.observe_reconcile(
        "StormService",
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::label),
    );
    result?;
    let after = plan
        .requeue_after
        .map_or(RESYNC, |d| d.clamp(Duration::from_secs(1), RESYNC));
    Ok(Action::requeue(after))
}

fn phase_name(p: storm_shared::types::stormservice::RolloutPhase) -> &'static str {
    use storm_shared::types::stormservice::RolloutPhase::*;
    match p {
        Healthy => "Healthy",
        Progressing => "Progressing",
        Paused => "Paused",
        Completed => "Completed",
        Degraded => "Degraded",
        Aborted => "Aborted",
    }
}

async fn apply(
    obj: &StormService,
    ns: &str,
    name: &str,
    observed: &Observed,
    plan: &Plan,
    state: &State,
) -> Result<(), Error> {
    let client = state.ctx.client.clone();
    let api: Api<StormService> = Api::namespaced(client.clone(), ns);
    // 1. Status: the decision, including the controls it acted on, is recorded before anything else.
    if obj.status.as_ref() != Some(&plan.status) {
        let body =
            json!({"apiVersion": API_VERSION, "kind": "StormService", "status": plan.status});
        api.patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::WriteStatus)?;
    }
    // 2. The template of the revision being rolled out is kept, so its RoleSets can be recreated
    //    after the template moves on (abort, rollback, a stable RoleSet lost).
    record_revision(obj, ns, name, state).await?;
    prune_revisions(obj, ns, name, plan, state).await?;
    // 3. Traffic before capacity (an abort must move traffic at once): Services select their
    //    revision first, then the routers get the weight. The decision only takes capacity away
    //    from a revision once the routers report that its traffic is gone.
    pin_services(ns, plan, state).await?;
    let mut notes = Vec::new();
    let mut routed = Ok(());
    // The revisions as decided: at completion the new one is stable already.
    let update = plan.status.update_revision.clone().unwrap_or_default();
    let stable = plan
        .status
        .current_revision
        .clone()
        .unwrap_or_else(|| update.clone());
    if let Some(r) = routing::Routing::of(obj, ns, &stable, &update) {
        let in_rollout = obj
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref())
            != Some(update.as_str());
        match r.set(&client, observed.router_weight, plan.weight).await {
            Ok(true) => info!(
                namespace = ns,
                name,
                weight = plan.weight,
                "traffic routers set"
            ),
            Ok(false) => {}
            Err(e) if in_rollout => {
                notes.push(routing::error_note("setting the traffic routers", &e));
                routed = Err(Error::Router(e));
            }
            Err(e) => {
                debug!(namespace = ns, name, error = %e, "traffic routers not settable at rest")
            }
        }
    }
    // 4. Capacity: create what is missing, then delete what is too much. A failure here is returned
    //    after the events: the decision was recorded and its events must not be lost.
    let scaled = scale(obj, ns, name, observed, plan, state).await;
    // 5. Controls that acted go away (they are acknowledged in the status just written).
    if !plan.remove_annotations.is_empty() {
        let nulls: serde_json::Map<String, serde_json::Value> = plan
            .remove_annotations
            .iter()
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect();
        let body = json!({"metadata": {"annotations": nulls}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(Error::RemoveAnnotations)?;
    }
    // 6. Events, last: the record of what happened, not part of it.
    let reference = obj.object_ref(&());
    for note in plan.notes.iter().chain(&notes) {
        let ev = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.clone(),
            note: Some(note.message.clone()),
            // The recorder folds events with the same (type, reason, action) into one series, which
            // would hide "Step 1 completed" under "Step 0 completed": the action carries the
            // specific message so distinct transitions stay distinct events.
            action: note.message.chars().take(128).collect(),
            secondary: None,
        };
        if let Err(e) = state.ctx.recorder.publish(&ev, &reference).await {
            warn!(namespace = ns, name, error = %e, "recording event");
        }
    }
    if let Some(reason) = &plan.rollback {
        state.ctx.metrics.rollback(reason);
    }
    scaled.and(routed)
}

async fn pin_services(ns: &str, plan: &Plan, state: &State) -> Result<(), Error> {
    let api: Api<Service> = Api::namespaced(state.ctx.client.clone(), ns);
    for (svc, rev) in &plan.services {
        let Some(current) = state.services.get(&ObjectRef::new(svc).within(ns)) else {
            // A missing Service is the user's to create; admission already warned about it.
            debug!(namespace = ns, service = %svc, "Service not found; not pinned");
            continue;
        };
        let pinned = current
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get(LABEL_REVISION))
            .map(String::as_str);
        if pinned == Some(rev.as_str()) {
            continue;
        }
        // A Service's selector is an atomic map: server-side apply would replace the user's keys.
        // A merge patch adds or updates our one key and leaves theirs alone.
        let body = json!({"spec": {"selector": {LABEL_REVISION: rev}}});
        let params = PatchParams {
            field_manager: Some(ROUTING_MANAGER.into()),
            ..Default::default()
        };
        api.patch(svc, &params, &Patch::Merge(&body))
            .await
            .map_err(|e| Error::PinService(svc.clone(), e))?;
        info!(namespace = ns, service = %svc, revision = %rev, "Service pinned");
    }
    Ok(())
}

/// The index of a RoleSet named `<service>-<revision>-<index>`.
fn index_of(roleset: &str, prefix: &str) -> Option<i32> {
    roleset.strip_prefix(prefix)?.parse().ok()
}

async fn scale(
    obj: &StormService,
    ns: &str,
    name: &str,
    observed: &Observed,
    plan: &Plan,
    state: &State,
) -> Result<(), Error> {
    let api: Api<RoleSet> = Api::namespaced(state.ctx.client.clone(), ns);
    let revisions: BTreeSet<String> = observed
        .revisions()
        .into_iter()
        .chain(plan.scale.keys().cloned())
        .collect();
    let mut deletions = Vec::new();
    for rev in revisions {
        let want = plan.scale.get(&rev).copied().unwrap_or(0);
        let prefix = format!("{name}-{rev}-");
        let have: BTreeSet<i32> = observed
            .rolesets
            .iter()
            .filter(|r| r.revision == rev)
            .filter_map(|r| index_of(&r.name, &prefix))
            .collect();
        let missing: Vec<i32> = (0..want).filter(|i| !have.contains(i)).collect();
        let template = if missing.is_empty() {
            None
        } else {
            Some(template_of(obj, &rev, ns, name, state)?)
        };
        for i in missing {
            let rs = roleset_for(
                obj,
                template.as_ref().unwrap_or(&obj.spec.template),
                &rev,
                i,
            );
            match api.create(&PostParams::default(), &rs).await {
                Ok(_) => info!(namespace = ns, roleset = %rs.name_any(), "RoleSet created"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(Error::CreateRoleSet(rs.name_any(), e)),
            }
        }
        for r in observed.rolesets.iter().filter(|r| r.revision == rev) {
            if index_of(&r.name, &prefix).is_none_or(|i| i >= want) {
                deletions.push(r.name.clone());
            }
        }
    }
    for d in deletions {
        match api.delete(&d, &DeleteParams::background()).await {
            Ok(_) => info!(namespace = ns, roleset = %d, "RoleSet deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::DeleteRoleSet(d, e)),
        }
    }
    Ok(())
}

/// Name of the ControllerRevision holding a revision's template.
fn revision_name(name: &str, rev: &str) -> String {
    format!("{name}-{rev}")
}

/// Stores the current template as a ControllerRevision, once per revision.
async fn record_revision(
    obj: &StormService,
    ns: &str,
    name: &str,
    state: &State,
) -> Result<(), Error> {
    let rev = rollout::revision::of_template(&obj.spec.template);
    let cr_name = revision_name(name, &rev);
    if state
        .revisions
        .get(&ObjectRef::new(&cr_name).within(ns))
        .is_some()
    {
        return Ok(());
    }
    let number = state
        .revisions
        .state()
        .iter()
        .filter(|r| belongs(r.as_ref(), ns, name))
        .map(|r| r.revision)
        .max()
        .unwrap_or(0)
        + 1;
    let mut cr = ControllerRevision {
        data: Some(RawExtension(
            serde_json::to_value(&obj.spec.template).unwrap_or_default(),
        )),
        revision: number,
        ..Default::default()
    };
    cr.metadata.name = Some(cr_name.clone());
    cr.metadata.namespace = Some(ns.to_string());
    cr.metadata.labels = Some(BTreeMap::from([
        (LABEL_NAME.to_string(), name.to_string()),
        (LABEL_REVISION.to_string(), rev),
    ]));
    cr.metadata.owner_references = Some(vec![owner(obj)]);
    let api: Api<ControllerRevision> = Api::namespaced(state.ctx.client.clone(), ns);
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::RecordRevision(cr_name, e)),
    }
}

/// Revisions kept beside the stable and the rolled-out one when `revisionHistoryLimit` is unset.
const DEFAULT_REVISION_HISTORY: usize = 10;

/// The ControllerRevisions to delete: all but the `limit` newest, never the ones in `keep`.
/// `revisions` are (name, revision number, revision hash).
pub fn revisions_to_prune(
    mut revisions: Vec<(String, i64, String)>,
    limit: usize,
    keep: &[&str],
) -> Vec<String> {
    revisions.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mut kept = 0;
    let mut out = Vec::new();
    for (name, _, hash) in revisions {
        if keep.contains(&hash.as_str()) {
            continue;
        }
        if kept < limit {
            kept += 1;
        } else {
            out.push(name);
        }
    }
    out
}

/// Deletes ControllerRevisions beyond `spec.revisionHistoryLimit` (the stable and the rolled-out
/// revision always stay: their RoleSets may have to be recreated).
async fn prune_revisions(
    obj: &StormService,
    ns: &str,
    name: &str,
    plan: &Plan,
    state: &State,
) -> Result<(), Error> {
    let limit = obj
        .spec
        .revision_history_limit
        .map_or(DEFAULT_REVISION_HISTORY, |l| {
            usize::try_from(l).unwrap_or(0)
        });
    let mine: Vec<(String, i64, String)> = state
        .revisions
        .state()
        .iter()
        .filter(|r| belongs(r.as_ref(), ns, name))
        .map(|r| {
            (
                r.name_any(),
                r.revision,
                r.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let stable = plan.status.current_revision.clone().unwrap_or_default();
    let update = plan.status.update_revision.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(state.ctx.client.clone(), ns);
    for doomed in revisions_to_prune(mine, limit, &[&stable, &update]) {
        match api.delete(&doomed, &DeleteParams::default()).await {
            Ok(_) => info!(namespace = ns, revision = %doomed, "old revision pruned"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::RecordRevision(doomed, e)),
        }
    }
    Ok(())
}

/// The template of a revision: the current one, its ControllerRevision, or a surviving RoleSet's.
fn template_of(
    obj: &StormService,
    rev: &str,
    ns: &str,
    name: &str,
    state: &State,
) -> Result<RoleSetTemplateSpec, Error> {
    if rollout::revision::of_template(&obj.spec.template) == rev {
        return Ok(obj.spec.template.clone());
    }
    if let Some(cr) = state
        .revisions
        .get(&ObjectRef::new(&revision_name(name, rev)).within(ns))
        && let Some(Ok(t)) = cr
            .data
            .as_ref()
            .map(|d| serde_json::from_value::<RoleSetTemplateSpec>(d.0.clone()))
    {
        return Ok(t);
    }
    // The oldest surviving RoleSet of the revision (lowest index) that is not going away.
    let survivor = state
        .rolesets
        .state()
        .into_iter()
        .filter(|r| {
            belongs(r.as_ref(), ns, name)
                && r.meta().deletion_timestamp.is_none()
                && r.labels().get(LABEL_REVISION).map(String::as_str) == Some(rev)
        })
        .min_by_key(|r| index_of(&r.name_any(), &format!("{name}-{rev}-")).unwrap_or(i32::MAX));
    match survivor {
        Some(r) => {
            let mut labels = r.labels().clone();
            labels.remove(LABEL_NAME);
            labels.remove(LABEL_REVISION);
            labels.remove(AIBRIX_LABEL_STORM_SERVICE_NAME);
            Ok(RoleSetTemplateSpec {
                metadata: Some(TemplateMetadata {
                    labels: Some(labels),
                    annotations: r.metadata.annotations.clone(),
                }),
                spec: Some(r.spec.clone()),
            })
        }
        None => Err(Error::UnknownRevision(rev.to_string())),
    }
}

fn owner(obj: &StormService) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.into(),
        kind: "StormService".into(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The RoleSet with index `i` of revision `rev`, made from that revision's template.
fn roleset_for(obj: &StormService, template: &RoleSetTemplateSpec, rev: &str, i: i32) -> RoleSet {
    let name = obj.name_any();
    let tpl_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = tpl_meta.labels.unwrap_or_default();
    labels.insert(LABEL_NAME.into(), name.clone());
    labels.insert(LABEL_REVISION.into(), rev.to_string());
    labels.insert(AIBRIX_LABEL_STORM_SERVICE_NAME.into(), name.clone());
    // The revision's own template, not the current one: a stable RoleSet recreated during an abort
    // must run the stable revision.
    let mut rs = RoleSet::new(
        &format!("{name}-{rev}-{i}"),
        template.spec.clone().unwrap_or_default(),
    );
    rs.metadata.namespace = obj.namespace();
    rs.metadata.labels = Some(labels);
    rs.metadata.annotations = tpl_meta.annotations;
    rs.metadata.owner_references = Some(vec![owner(obj)]);
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roleset_names_and_labels() {
        let obj: StormService = serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "StormService",
            "metadata": {"name": "svc", "namespace": "ns", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "a"}}, "spec": {"roles": [{"name": "r"}]}}}
        }))
        .expect("object");
        let rs = roleset_for(&obj, &obj.spec.template, "abc", 2);
        assert_eq!(rs.name_any(), "svc-abc-2");
        assert_eq!(rs.labels().get("app").map(String::as_str), Some("a"));
        assert_eq!(
            rs.labels().get(LABEL_REVISION).map(String::as_str),
            Some("abc")
        );
        // A RoleSet of another revision is made from that revision's template, whatever the
        // current one says.
        let mut old_template = obj.spec.template.clone();
        old_template.spec.as_mut().expect("spec").roles[0].name = "old-role".into();
        let old_rs = roleset_for(&obj, &old_template, "old", 0);
        assert_eq!(old_rs.spec.roles[0].name, "old-role");
        let owner = &rs.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
        assert_eq!(index_of("svc-abc-12", "svc-abc-"), Some(12));
        assert_eq!(index_of("svc-abcd-1", "svc-abc-"), None);
    }

    #[test]
    fn old_revisions_are_pruned_beyond_the_limit_but_never_stable_or_update() {
        let revs: Vec<(String, i64, String)> = (1..=5)
            .map(|i| (format!("svc-r{i}"), i, format!("r{i}")))
            .collect();
        // Newest first: r5 (update) and r1 (stable) are kept whatever the limit; of the rest the
        // newest `limit` stay.
        assert_eq!(
            revisions_to_prune(revs.clone(), 1, &["r1", "r5"]),
            vec!["svc-r3", "svc-r2"]
        );
        assert_eq!(
            revisions_to_prune(revs.clone(), 0, &["r1", "r5"]),
            vec!["svc-r4", "svc-r3", "svc-r2"]
        );
        assert!(revisions_to_prune(revs, 10, &["r1"]).is_empty());
    }

    #[test]
    fn pod_health_from_status() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {LABEL_REVISION: "r"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:01:00Z"}],
                       "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 5}]}
        }))
        .expect("pod");
        let o = observe_pod(&pod);
        assert!(!o.ready && o.crash_looping && !o.failed);
        assert_eq!(o.unready_since.map(|t| t.as_second()), Some(1_767_225_660));
        assert_eq!(o.revision, "r");
    }
}
