//! The PodSet controller: the `podGroupSize` Pods of each PodSet (one replica of a multi-node
//! role, made by a RoleSet), failed members replaced, and the PodSet's status. The decisions are
//! pure functions in [`plan`]; this module watches, calls them and applies the result.

pub mod plan;

use crate::cache::CachedPod;
use crate::context::{Context, MANAGER};
use crate::error::{Backoff, Error};
use crate::feeds::{self, Feeds};
use crate::owned::Owned;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector;

use kube::{Api, Resource, ResourceExt};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use storm_shared::status::Reason;
use storm_shared::types::podset::PodSet;
use tracing::{info, warn};

/// Kind label of this controller's metrics.
pub const KIND: &str = "PodSet";
/// PodSets reconciled at once.
const CONCURRENCY: u16 = 8;
/// Periodic re-check when nothing happens.
const RESYNC: Duration = Duration::from_secs(300);
/// Retry delay while the Pod cache is still loading.
const CACHE_RETRY: Duration = Duration::from_millis(500);

struct State {
    ctx: Arc<Context>,
    /// Pods by controller (the feed's Pods carry `roleset-name`, the members of a PodSet too).
    pods: Owned<CachedPod>,
    backoff: Backoff<PodSet>,
}

/// Sets up the PodSet controller on the shared `feeds` and returns it, to run until `shutdown`
/// completes. The feeds start after every controller has set up.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let pods = feeds.pods_by_controller();
    let store = feeds.podsets.store();
    // A PodSet's own changes, and those of the Pods it owns, trigger it.
    let triggers = futures::stream::select(
        feeds::triggers(feeds.podsets.subscribe(), feeds::itself),
        feeds::triggers(feeds.pods.subscribe(), feeds::owners::<PodSet, _>),
    );
    run_on(ctx, pods, store, triggers, shutdown)
}

async fn run_on(
    ctx: Arc<Context>,
    pods: Owned<CachedPod>,
    store: reflector::Store<PodSet>,
    triggers: impl futures::Stream<Item = reflector::ObjectRef<PodSet>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let state = Arc::new(State {
        ctx: ctx.clone(),
        pods,
        backoff: Backoff::default(),
    });
    let controller = crate::cache::controller(futures::stream::pending(), store)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(triggers);
    feeds::run_until(KIND, controller, shutdown, reconcile, error_policy, state).await;
}

fn error_policy(podset: Arc<PodSet>, error: &Error, state: Arc<State>) -> Action {
    state.backoff.policy(&podset, error)
}

async fn reconcile(podset: Arc<PodSet>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_podset(&podset, &state).await;
    state
        .backoff
        .finish(&state.ctx.metrics, KIND, &podset, started, &result);
    result
}

async fn reconcile_podset(podset: &PodSet, state: &State) -> Result<Action, Error> {
    let namespace = podset.namespace().ok_or(Error::NoNamespace)?;
    let name = podset.name_any();
    if podset.meta().deletion_timestamp.is_some() {
        let api: Api<PodSet> = Api::namespaced(state.ctx.client.clone(), &namespace);
        crate::finalizers::release(&api, podset, crate::finalizers::PODSET)
            .await
            .map_err(|e| Error::ReleaseFinalizer(format!("PodSet {name}"), e))?;
        return Ok(Action::await_change());
    }
    if !state.pods.listed() {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    let Some(uid) = podset.uid() else {
        return Ok(Action::requeue(CACHE_RETRY));
    };
    let owned_arcs = state.pods.owned_by(&namespace, &uid);
    let owned: Vec<&CachedPod> = owned_arcs.iter().map(Arc::as_ref).collect();
    let mut owner = podset.controller_owner_ref(&()).ok_or(Error::NoNamespace)?;
    owner.block_owner_deletion = Some(true);
    let group = plan::plan(podset, &owned, &owner, Timestamp::now());
    let pods: Api<Pod> = Api::namespaced(state.ctx.client.clone(), &namespace);
    for (pod, uid) in &group.delete {
        let params = DeleteParams {
            preconditions: uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(pod, &params).await {
            Ok(_) => info!(%namespace, podset = %name, %pod, "deleted Pod"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(source) => {
                return Err(Error::DeletePod {
                    name: pod.clone(),
                    source,
                });
            }
        }
    }
    for pod in &group.create {
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => info!(%namespace, podset = %name, pod = %pod.name_any(), "created Pod"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(Error::CreatePod {
                    name: pod.name_any(),
                    source,
                });
            }
        }
    }
    if let Some(strategy) = &podset.spec.scheduling_strategy {
        let event =
            match crate::podgroups::ensure(&state.ctx.client, strategy, &name, &namespace, &owner)
                .await
            {
                Ok(true) => Some((
                    EventType::Normal,
                    Reason::PodGroupCreated,
                    format!("Created PodGroup {name} for gang scheduling"),
                )),
                Ok(false) => None,
                Err(why) => {
                    warn!(%namespace, %name, %why, "PodGroup");
                    Some((EventType::Warning, Reason::PodGroupUnavailable, why))
                }
            };
        if let Some((type_, reason, note)) = event {
            let ev = Event {
                type_,
                reason: reason.as_str().to_string(),
                note: Some(note),
                action: "ReconcilePodGroup".to_string(),
                secondary: None,
            };
            if let Err(e) = state
                .ctx
                .recorder
                .publish(&ev, &podset.object_ref(&()))
                .await
            {
                warn!(%namespace, %name, error = %e, "recording event failed");
            }
        }
    }
    let status = plan::status(podset, &owned);
    if podset.status.as_ref() != Some(&status) {
        let api: Api<PodSet> = Api::namespaced(state.ctx.client.clone(), &namespace);
        let body = serde_json::json!({
            "apiVersion": PodSet::api_version(&()),
            "kind": PodSet::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| Error::WritePodSetStatus {
            name: name.clone(),
            source,
        })?;
    }
    Ok(Action::requeue(group.requeue_after.unwrap_or(RESYNC)))
}

#[cfg(test)]
mod tests {
    use super::plan::*;
    use crate::roleset::groups::build_podset;
    use crate::roleset::plan::tests::{role, roleset};
    use k8s_openapi::jiff::Timestamp;
    use kube::{Resource, ResourceExt};

    fn podset(size: i32) -> PodSet {
        let mut r = role("worker", Some(1));
        r.pod_group_size = Some(size);
        r.stateful = Some(true);
        let rs = roleset(vec![r.clone()]);
        let owner = rs.controller_owner_ref(&()).expect("owner");
        let mut p = build_podset(&rs, &r, "llm-abc123-0-worker-0", 0, "ns", owner);
        p.metadata.uid = Some("ps-uid".into());
        p
    }
    use storm_shared::types::podset::PodSet;

    #[test]
    fn a_podset_makes_its_group_with_group_env_first_and_hostnames() {
        let ps = podset(3);
        let owner = ps.controller_owner_ref(&()).expect("owner");
        let now = Timestamp::from_second(1_800_000_000).expect("now");
        let g = plan(&ps, &[], &owner, now);
        let names: Vec<String> = g.create.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            [
                "llm-abc123-0-worker-0-0",
                "llm-abc123-0-worker-0-1",
                "llm-abc123-0-worker-0-2"
            ]
        );
        let pod = &g.create[2];
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("llm-abc123-0-worker-0-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("llm"));
        let env: Vec<(String, String)> = spec.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            env[0],
            ("PODSET_NAME".into(), "llm-abc123-0-worker-0".into())
        );
        assert_eq!(env[1], ("POD_GROUP_INDEX".into(), "2".into()));
        assert_eq!(env[2], ("POD_GROUP_SIZE".into(), "3".into()));
        assert_eq!(env[3].0, "STORM_SERVICE_NAME");
        let labels = pod.labels();
        assert_eq!(
            labels
                .get("stormservice.orchestration.aibrix.ai/podset-name")
                .map(String::as_str),
            Some("llm-abc123-0-worker-0")
        );
        assert_eq!(
            labels
                .get("stormservice.orchestration.aibrix.ai/pod-group-index")
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(
            labels.get("roleset-name").map(String::as_str),
            Some("llm-abc123-0")
        );
        let o = &pod.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((o.kind.as_str(), o.uid.as_str()), ("PodSet", "ps-uid"));
        // Status: nothing yet.
        let st = status(&ps, &[]);
        assert_eq!(
            (st.ready_pods, st.total_pods, st.phase.as_deref()),
            (0, 0, Some("Pending"))
        );
    }
}
