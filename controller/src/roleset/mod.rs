//! The RoleSet controller: for each role of a RoleSet, `replicas` Pods named `<roleset>-<role>-<i>`,
//! failed Pods replaced after a grace period, and the RoleSet's status. The decisions are pure
//! functions in [`plan`] and [`status`]; this module watches, calls them and applies the result.

pub mod groups;
pub mod plan;
pub mod status;
pub mod update;

use crate::cache::CachedPod;
use crate::context::{Context, MANAGER};
use crate::error::{Backoff, Error};
use crate::feeds::{self, Feeds};
use crate::owned::Owned;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector;

use kube::{Api, Resource, ResourceExt};
use plan::{DeleteReason, PlanError};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storm_shared::keys::AIBRIX_LABEL_ROLE_TEMPLATE_HASH;
use storm_shared::status::Reason;
use storm_shared::types::podset::PodSet;
use storm_shared::types::roleset::RoleSet;
use tracing::{debug, info, warn};

/// Kind label of this controller's metrics.
pub const KIND: &str = "RoleSet";
/// RoleSets reconciled at once. Each reconcile is a handful of API calls; 8 keeps a large fleet
/// moving without flooding the API server's priority-and-fairness queue for this client.
const CONCURRENCY: u16 = 8;
/// Periodic re-check when nothing happens: watch events drive the work, this only heals a missed one.
const RESYNC: Duration = Duration::from_secs(300);
/// Retry delay while the Pod cache is still loading (only right after start).
const POD_CACHE_RETRY: Duration = Duration::from_millis(500);
/// What the reconciles of this controller share.
struct State {
    ctx: Arc<Context>,
    /// Pods carrying the `roleset-name` label, from one watch for all RoleSets, by controller.
    pods: Owned<CachedPod>,
    /// PodSets (the replicas of pod-group roles), from one watch for all RoleSets, by controller.
    podsets: Owned<PodSet>,
    /// Consecutive failures per RoleSet, for the retry backoff; cleared on success.
    backoff: Backoff<RoleSet>,
}

/// Sets up the RoleSet controller on the shared `feeds` and returns it, to run over the context's
/// namespace (all namespaces when it has none) until `shutdown` completes; reconciles in flight
/// then finish before it returns. The feeds start after every controller has set up.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let pods = feeds.pods_by_controller();
    let podsets = feeds.podsets_by_controller();
    let store = feeds.rolesets.store();
    // A RoleSet's own changes, and those of the Pods and PodSets it owns, trigger it.
    let triggers = futures::stream::select_all([
        feeds::triggers(feeds.rolesets.subscribe(), feeds::itself).boxed(),
        feeds::triggers(feeds.pods.subscribe(), feeds::owners::<RoleSet, _>).boxed(),
        feeds::triggers(feeds.podsets.subscribe(), feeds::owners::<RoleSet, _>).boxed(),
    ]);
    run_on(ctx, pods, podsets, store, triggers, shutdown)
}

async fn run_on(
    ctx: Arc<Context>,
    pods: Owned<CachedPod>,
    podsets: Owned<PodSet>,
    store: reflector::Store<RoleSet>,
    triggers: impl futures::Stream<Item = reflector::ObjectRef<RoleSet>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let state = Arc::new(State {
        ctx,
        pods,
        podsets,
        backoff: Backoff::default(),
    });
    let controller = crate::cache::controller(futures::stream::pending(), store)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(triggers);
    feeds::run_until(KIND, controller, shutdown, reconcile, error_policy, state).await;
}

async fn reconcile(roleset: Arc<RoleSet>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_roleset(&roleset, &state).await;
    state
        .backoff
        .finish(&state.ctx.metrics, KIND, &roleset, started, &result);
    result
}

async fn reconcile_roleset(roleset: &RoleSet, state: &State) -> Result<Action, Error> {
    let namespace = roleset.namespace().ok_or(PlanError::FindNamespace)?;
    let name = roleset.name_any();
    if roleset.meta().deletion_timestamp.is_some() {
        // Garbage collection removes the Pods through their owner references; creating any now
        // would only race it. A RoleSet AIBrix made waits for AIBrix's finalizer: ours lets it go.
        let api: Api<RoleSet> = Api::namespaced(state.ctx.client.clone(), &namespace);
        crate::finalizers::release(&api, roleset, crate::finalizers::ROLESET)
            .await
            .map_err(|e| Error::ReleaseFinalizer(format!("RoleSet {name}"), e))?;
        return Ok(Action::await_change());
    }
    // Until the first list of Pods has arrived an empty cache would read as "no Pods": every Pod
    // would be re-created (harmless) and the status would claim none (wrong, and a write). Don't
    // wait for it here: the Pod watch is driven by this controller's own trigger stream, which
    // graceful shutdown stops first, so a reconcile waiting for it would block shutdown forever.
    let Some(uid) = roleset.uid() else {
        return Ok(Action::requeue(POD_CACHE_RETRY));
    };
    if !state.pods.listed() || !state.podsets.listed() {
        return Ok(Action::requeue(POD_CACHE_RETRY));
    }
    let owned_arcs = state.pods.owned_by(&namespace, &uid);
    let owned: Vec<&CachedPod> = owned_arcs.iter().map(Arc::as_ref).collect();
    let podset_arcs = state.podsets.owned_by(&namespace, &uid);
    let owned_podsets: Vec<&PodSet> = podset_arcs.iter().map(Arc::as_ref).collect();
    let now = Timestamp::now();
    let plan = plan::plan_pods(roleset, &owned, now)?;
    let pods: Api<Pod> = Api::namespaced(state.ctx.client.clone(), &namespace);

    for doomed in &plan.delete {
        let params = DeleteParams {
            // A stale cache must not delete a successor that took the name in the meantime.
            preconditions: doomed.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&doomed.name, &params).await {
            Ok(_) => {}
            // Gone already, or the name now belongs to another Pod: either way this one is gone.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => continue,
            Err(source) => {
                return Err(Error::DeletePod {
                    name: doomed.name.clone(),
                    source,
                });
            }
        }
        let (reason, note) = match doomed.reason {
            DeleteReason::Excess => (
                Reason::SuccessfulDelete,
                format!("Deleted Pod {}", doomed.name),
            ),
            DeleteReason::Failed => (
                Reason::ReplacingFailedPod,
                format!(
                    "Deleted Pod {} after {}s in a terminal phase; it will be re-created",
                    doomed.name,
                    plan::FAILED_POD_GRACE.as_secs()
                ),
            ),
            DeleteReason::Outdated => (
                Reason::ReplacingOutdatedPod,
                format!(
                    "Deleted Pod {}: its role's template changed; it will be re-created from the new one",
                    doomed.name
                ),
            ),
        };
        info!(%namespace, %name, pod = %doomed.name, %reason, "deleted Pod");
        publish(state, roleset, EventType::Normal, reason, note).await;
    }

    for update in &plan.in_place {
        // Containers are a list merged by name: only their images change. The UID in the body
        // makes a same-named successor refuse the patch (a UID cannot change).
        let containers: Vec<serde_json::Value> = update
            .images
            .iter()
            .map(|(c, image)| serde_json::json!({"name": c, "image": image}))
            .collect();
        let mut labels = update.revision_labels.clone();
        labels.insert(
            AIBRIX_LABEL_ROLE_TEMPLATE_HASH.to_string(),
            update.hash.clone(),
        );
        let body = serde_json::json!({
            "metadata": {
                "uid": update.uid,
                "labels": labels,
            },
            "spec": {"containers": containers},
        });
        match pods
            .patch(
                &update.name,
                &PatchParams::default(),
                &Patch::Strategic(&body),
            )
            .await
        {
            Ok(_) => {
                info!(%namespace, %name, pod = %update.name, "updated Pod in place");
                let note = format!(
                    "Updated Pod {} in place: images {}",
                    update.name,
                    update
                        .images
                        .iter()
                        .map(|(c, i)| format!("{c}={i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                publish(
                    state,
                    roleset,
                    EventType::Normal,
                    Reason::UpdatedPodInPlace,
                    note,
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => {
                debug!(%namespace, %name, pod = %update.name, "Pod changed before its in-place update");
            }
            Err(source) => {
                return Err(Error::UpdatePod {
                    name: update.name.clone(),
                    source,
                });
            }
        }
    }

    for pod in &plan.create {
        let pod_name = pod.name_any();
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => {
                info!(%namespace, %name, pod = %pod_name, "created Pod");
                let note = format!("Created Pod {pod_name}");
                publish(
                    state,
                    roleset,
                    EventType::Normal,
                    Reason::SuccessfulCreate,
                    note,
                )
                .await;
            }
            // Deterministic names make a repeated create (stale cache, retry) a no-op.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(%namespace, %name, pod = %pod_name, "Pod exists already");
            }
            Err(source) => {
                return Err(Error::CreatePod {
                    name: pod_name,
                    source,
                });
            }
        }
    }

    apply_groups(state, roleset, &namespace, &owned_podsets).await?;
    if let Some(strategy) = &roleset.spec.scheduling_strategy {
        let mut owner = roleset
            .controller_owner_ref(&())
            .ok_or(PlanError::BuildOwnerReference)?;
        owner.block_owner_deletion = Some(true);
        match crate::podgroups::ensure(&state.ctx.client, strategy, &name, &namespace, &owner).await
        {
            Ok(true) => {
                let note = format!("Created PodGroup {name} for gang scheduling");
                publish(
                    state,
                    roleset,
                    EventType::Normal,
                    Reason::PodGroupCreated,
                    note,
                )
                .await;
            }
            Ok(false) => {}
            Err(why) => {
                warn!(%namespace, %name, %why, "PodGroup");
                publish(
                    state,
                    roleset,
                    EventType::Warning,
                    Reason::PodGroupUnavailable,
                    why,
                )
                .await;
            }
        }
    }
    let status = status::compute_status(roleset, &owned, &owned_podsets, now);
    if roleset.status.as_ref() != Some(&status) {
        let api: Api<RoleSet> = Api::namespaced(state.ctx.client.clone(), &namespace);
        let body = serde_json::json!({
            "apiVersion": RoleSet::api_version(&()),
            "kind": RoleSet::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::WriteStatus)?;
        debug!(%namespace, %name, ready = status.ready_replicas, desired = status.replicas, "status written");
    }

    Ok(Action::requeue(plan.requeue_after.unwrap_or(RESYNC)))
}

/// Creates and deletes the PodSets of the RoleSet's pod-group roles.
async fn apply_groups(
    state: &State,
    roleset: &RoleSet,
    namespace: &str,
    owned: &[&PodSet],
) -> Result<(), Error> {
    let mut owner = roleset
        .controller_owner_ref(&())
        .ok_or(PlanError::BuildOwnerReference)?;
    owner.block_owner_deletion = Some(true);
    let plan = groups::plan_groups(roleset, owned, namespace, &owner);
    let api: Api<PodSet> = Api::namespaced(state.ctx.client.clone(), namespace);
    for (name, uid) in &plan.delete {
        let params = DeleteParams {
            preconditions: uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                info!(%namespace, podset = %name, "deleted PodSet");
                let note = format!("Deleted PodSet {name}");
                publish(
                    state,
                    roleset,
                    EventType::Normal,
                    Reason::SuccessfulDelete,
                    note,
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(source) => {
                return Err(Error::DeletePodSet {
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    for podset in &plan.create {
        let name = podset.name_any();
        match api.create(&PostParams::default(), podset).await {
            Ok(_) => {
                info!(%namespace, podset = %name, "created PodSet");
                let note = format!("Created PodSet {name}");
                publish(
                    state,
                    roleset,
                    EventType::Normal,
                    Reason::SuccessfulCreate,
                    note,
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => return Err(Error::CreatePodSet { name, source }),
        }
    }
    Ok(())
}

/// Records a Kubernetes Event on the RoleSet. Best effort: a lost event must not fail the reconcile.
async fn publish(state: &State, roleset: &RoleSet, type_: EventType, reason: Reason, note: String) {
    let event = Event {
        type_,
        reason: reason.as_str().to_string(),
        note: Some(note),
        action: "ReconcilePods".to_string(),
        secondary: None,
    };
    if let Err(e) = state
        .ctx
        .recorder
        .publish(&event, &roleset.object_ref(&()))
        .await
    {
        warn!(namespace = ?roleset.namespace(), name = %roleset.name_any(), error = %e, "recording event failed");
    }
}

fn error_policy(roleset: Arc<RoleSet>, error: &Error, state: Arc<State>) -> Action {
    state.backoff.policy(&roleset, error)
}
