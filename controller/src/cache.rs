//! What the controllers keep of watched objects. The caches hold every Pod and Service they watch;
//! dropping the parts no reconcile reads keeps memory flat as the number of StormServices grows.

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{ContainerState, Pod, PodCondition, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, ExponentialBackoff, watcher};
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A watch of `api` as every cache and trigger of the controller runs it: [`watcher`] with the
/// retry policy of [`Retry`].
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let retry = Retry::default();
    let expired = retry.expired.clone();
    watcher(api, config)
        .inspect(move |event| {
            if event.as_ref().is_err_and(gone) {
                expired.store(true, Ordering::Relaxed);
            }
        })
        .backoff(retry)
}

/// Whether the API server answered that the watch's resource version is gone (410): the watch
/// must list again, and the server is evidently up.
fn gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// How the controller's watches retry after an error: from 0.25 s, doubling up to 1 s, each
/// delay stretched by a random 0–100 % (so at most 2 s), and from the start again after 30 s
/// without errors. An answer that the resource version is gone (410) lists again at once and
/// starts the doubling over.
///
/// kube-runtime's default (client-go's: up to 30 s, reset only after 120 s quiet) kept the
/// controller blind for 36 s (p50) to 72 s (p99) after each kube-apiserver restart in the soak.
/// A 5 s cap (up to 10 s with the jitter) still left it blind for 21 s (p50): the connection
/// errors while the server was down had pushed the delay to its cap, and a restarted server
/// answers every watch that resumes from before the restart with 410, and a list made while
/// its watch cache still fills with 410 once more; each of those answers waited the full cap
/// again. A dozen watches retrying every second or two at worst cost the API server nothing.
pub struct Retry {
    delays: ResetTimerBackoff<ExponentialBackoff>,
    /// Set by the watch when its last error was a 410.
    expired: Arc<AtomicBool>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            delays: ResetTimerBackoff::new(
                ExponentialBackoff::from(
                    backon::ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(250))
                        .with_max_delay(Duration::from_secs(1))
                        .with_factor(2.0)
                        .with_jitter()
                        .without_max_times(),
                ),
                Duration::from_secs(30),
            ),
            expired: Arc::default(),
        }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.expired.swap(false, Ordering::Relaxed) {
            self.delays.reset();
            return Some(Duration::ZERO);
        }
        self.delays.next()
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.delays.reset();
    }
}

/// A controller whose triggers are `primary` (a [`watch`], reflected into `store`) and whatever
/// is added to it; the triggers retry on their own ([`Undelayed`]).
pub fn controller<K>(
    primary: impl Stream<Item = watcher::Result<K>> + Send + 'static,
    store: Store<K>,
) -> Controller<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Debug + Unpin,
{
    Controller::for_stream(primary, store).trigger_backoff(Undelayed)
}

/// The backoff for a controller's trigger streams as a whole: none. Each of them is a [`watch`]
/// that already waits before it retries; kube-runtime's `Controller` otherwise pauses the merged
/// stream of all its triggers after an error from any one of them. That paused every watch of
/// a controller (and so its caches and every reconcile they would trigger) for each 410 that
/// one watch saw after a kube-apiserver restart, the pauses doubling as the 410s came: the
/// soak saw reconciles stop for 50–72 s after each restart.
pub struct Undelayed;

impl Iterator for Undelayed {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for Undelayed {
    fn reset(&mut self) {}
}

/// A Pod as the caches keep it: its metadata and the part of its status a reconcile reads.
///
/// The watch decodes Pods straight into this type, so a Pod's spec (most of its size) is never
/// decoded at all, and the record has no room for it: a k8s-openapi `Pod` is 2.2 KB before any
/// field is set, its `PodSpec` inline even when empty.
#[derive(kube::Resource, Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[resource(inherit = Pod)]
pub struct CachedPod {
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CachedPodStatus>,
}

/// What the controllers read of a Pod's status: phase, readiness, and its containers' restarts
/// and states.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PodCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// A container's status as the controllers read it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
}

impl From<&Pod> for CachedPod {
    /// The record of a whole Pod (as the watch would have decoded it), slimmed.
    fn from(pod: &Pod) -> Self {
        let mut cached = CachedPod {
            metadata: pod.metadata.clone(),
            status: pod.status.as_ref().map(|s| CachedPodStatus {
                phase: s.phase.clone(),
                conditions: s.conditions.clone(),
                container_statuses: s.container_statuses.as_ref().map(|cs| {
                    cs.iter()
                        .map(|c| CachedContainerStatus {
                            name: c.name.clone(),
                            ready: c.ready,
                            restart_count: c.restart_count,
                            state: c.state.clone(),
                        })
                        .collect()
                }),
                start_time: s.start_time.clone(),
            }),
        };
        slim_pod(&mut cached);
        cached
    }
}

/// Keeps of a cached Pod only what the controllers read: its labels, owner, phase, `Ready`
/// condition, and its containers' restarts and states (without their messages).
pub fn slim_pod(p: &mut CachedPod) {
    p.managed_fields_mut().clear();
    // Only what the RoleSet controller reads: whether an in-place update is possible.
    p.annotations_mut()
        .retain(|k, _| k == crate::roleset::update::ANNOTATION_SHAPE_HASH);
    if let Some(status) = p.status.as_mut() {
        // Only `Ready` is read (readiness, and since when a Pod is not ready).
        if let Some(conditions) = status.conditions.as_mut() {
            conditions.retain(|c| c.type_ == "Ready");
            for c in conditions.iter_mut() {
                c.last_probe_time = None;
                c.message = None;
            }
        }
        for c in status.container_statuses.iter_mut().flatten() {
            if let Some(state) = c.state.as_mut() {
                if let Some(w) = state.waiting.as_mut() {
                    w.message = None;
                }
                if let Some(t) = state.terminated.as_mut() {
                    t.message = None;
                    t.container_id = None;
                }
            }
        }
    }
}

/// Keeps a ControllerRevision's `data` (a StormService's template) as one JSON string: as a
/// `serde_json::Value` tree it takes about seven times the memory of its text
/// (`stormservice::revisions::stored_template` reads either).
pub fn slim_revision(cr: &mut ControllerRevision) {
    cr.managed_fields_mut().clear();
    cr.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
    if let Some(data) = cr.data.as_mut()
        && !data.0.is_string()
        && let Ok(json) = serde_json::to_string(&data.0)
    {
        data.0 = serde_json::Value::String(json);
    }
}

/// Keeps of a Service only its selector: that is all the controller pins or compares.
pub fn slim_service(s: &mut Service) {
    s.managed_fields_mut().clear();
    s.annotations_mut().clear();
    s.status = None;
    if let Some(spec) = s.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::ServiceSpec {
            selector: spec.selector.take(),
            ..Default::default()
        };
    }
}

/// Whether a store has had its first list: `Ok(false)` while loading (look again shortly; don't
/// wait, the watches are driven by the controllers' own streams, which shutdown stops first),
/// an error once its watch has stopped.
pub fn listed<K>(
    store: &kube::runtime::reflector::Store<K>,
    what: &'static str,
) -> Result<bool, crate::error::Error>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    match store.wait_until_ready().now_or_never() {
        Some(Ok(())) => Ok(true),
        Some(Err(_)) => Err(crate::error::Error::ReadCache(what)),
        None => Ok(false),
    }
}

/// Whether `obj` is controlled by `owner` (same namespace, a controller reference with its UID).
pub fn controlled_by<K: kube::Resource, O: kube::Resource>(obj: &K, owner: &O) -> bool {
    let Some(uid) = owner.meta().uid.as_deref() else {
        return false;
    };
    obj.meta().namespace == owner.meta().namespace
        && obj
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn expired() -> watcher::Error {
        watcher::Error::WatchError(Box::new(
            Status::failure("too old resource version: 11096 (11101)", "Expired").with_code(410),
        ))
    }

    #[test]
    fn retries_wait_at_most_two_seconds() {
        let mut retry = Retry::default();
        for _ in 0..50 {
            let delay = retry.next().expect("retries never give up");
            assert!(delay <= Duration::from_secs(2), "{delay:?}");
        }
    }

    #[test]
    fn a_gone_resource_version_lists_again_at_once_and_starts_the_delays_over() {
        let mut retry = Retry::default();
        for _ in 0..10 {
            retry.next();
        }
        // What the watch stream sets when the server answers 410.
        assert!(gone(&expired()));
        retry.expired.store(true, Ordering::Relaxed);
        assert_eq!(retry.next(), Some(Duration::ZERO));
        // The next error (of any kind) waits the first delay again, not the cap.
        let first = retry.next().unwrap();
        assert!(first <= Duration::from_millis(500), "{first:?}");
    }

    #[test]
    fn only_a_gone_resource_version_skips_the_delay() {
        let forbidden = watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(
            Status::failure("forbidden", "Forbidden").with_code(403),
        )));
        assert!(!gone(&forbidden));
        assert!(!gone(&watcher::Error::NoResourceVersion));
        let list_expired = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            Status::failure("continue token expired", "Expired").with_code(410),
        )));
        assert!(gone(&list_expired));
    }
}

#[cfg(test)]
mod trigger_tests {
    use super::*;
    use futures::stream;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::controller::Action;
    use kube::runtime::reflector::{self, ObjectRef};
    use std::time::Instant;

    /// One watch failing again and again (as every watch does while a restarted API server
    /// answers 410) must not hold back what another trigger asks for.
    #[tokio::test]
    async fn an_error_in_one_trigger_does_not_pause_the_others() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let cm = ConfigMap {
            metadata: kube::core::ObjectMeta {
                name: Some("woken".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(cm));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // The primary watch fails six times in a row, then stays quiet.
        let failing = stream::iter((0..6).map(|_| Err(watcher::Error::NoResourceVersion)))
            .chain(stream::pending());
        // Another trigger asks for a reconcile a moment later.
        let wake = stream::once(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ObjectRef::<ConfigMap>::new("woken").within("ns")
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let started = Instant::now();
        let run = controller(failing, store)
            .reconcile_on(wake)
            .run(
                move |_, tx: Arc<tokio::sync::mpsc::UnboundedSender<Instant>>| async move {
                    tx.send(Instant::now()).ok();
                    Ok::<_, kube::Error>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                Arc::new(tx),
            )
            .for_each(|_| async {});
        tokio::spawn(run);
        // kube-runtime's own trigger backoff would wait 0.8 + 1.6 + 3.2 + 6.4 + 12.8 s first.
        let reconciled = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the reconcile was held back by another trigger's errors")
            .expect("reconciled");
        assert!(reconciled - started < Duration::from_secs(5));
    }

    /// A Pod as the API server sends it: spec, managed fields, every condition and status field.
    fn full_pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "llm-abc-0-decode-0", "namespace": "ns", "uid": "u1",
                "labels": {"storm-service-name": "llm", "role-name": "decode"},
                "annotations": {
                    "kubectl.kubernetes.io/restartedAt": "x",
                    crate::roleset::update::ANNOTATION_SHAPE_HASH: "abc"
                },
                "ownerReferences": [{"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RoleSet",
                                     "name": "llm-abc-0", "uid": "rs1", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]
            },
            "spec": {"containers": [{"name": "engine", "image": "vllm:1",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.1",
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False", "message": "containers not ready",
                     "lastTransitionTime": "2026-01-01T00:01:00Z"}
                ],
                "containerStatuses": [{
                    "name": "engine", "ready": false, "restartCount": 3, "image": "vllm:1",
                    "imageID": "sha256:x",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"exitCode": 1}}
                }]
            }
        })
    }

    #[test]
    fn the_pod_cache_decodes_only_what_reconciles_read() {
        assert_eq!(CachedPod::kind(&()), "Pod");
        assert_eq!(CachedPod::plural(&()), "pods");
        assert_eq!(CachedPod::api_version(&()), "v1");

        let mut cached: CachedPod = serde_json::from_value(full_pod()).expect("a Pod decodes");
        slim_pod(&mut cached);
        assert_eq!(
            cached.labels().get("role-name").map(String::as_str),
            Some("decode")
        );
        assert_eq!(
            cached.annotations().keys().collect::<Vec<_>>(),
            [crate::roleset::update::ANNOTATION_SHAPE_HASH]
        );
        assert!(
            cached
                .meta()
                .managed_fields
                .as_ref()
                .is_none_or(Vec::is_empty)
        );
        assert_eq!(cached.owner_references()[0].uid, "rs1");
        let status = cached.status.as_ref().expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let conditions = status.conditions.as_ref().expect("conditions");
        assert_eq!(conditions.len(), 1, "only Ready is kept");
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].message, None);
        assert!(conditions[0].last_transition_time.is_some());
        let c = &status.container_statuses.as_ref().expect("containers")[0];
        assert_eq!(
            (c.name.as_str(), c.ready, c.restart_count),
            ("engine", false, 3)
        );
        let waiting = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(waiting.message, None);
        assert!(status.start_time.is_some());

        // A whole Pod converted (as tests and a Pod read from the API do) gives the same record.
        let pod: Pod = serde_json::from_value(full_pod()).expect("a Pod decodes");
        assert_eq!(CachedPod::from(&pod), cached);
    }
}

/// One copy of each distinct role Pod template across the caches: the RoleSets of a revision,
/// and the StormService whose template they were made from, hold equal templates, and a decoded
/// k8s-openapi template is the largest part of either. Each template a watch event brings is
/// replaced by an equal one already held, if any; what no cached object holds any more is
/// forgotten.
pub fn share_templates(roles: &mut [storm_shared::types::roleset::RoleSpec]) {
    static HELD: std::sync::Mutex<Option<Templates>> = std::sync::Mutex::new(None);
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let held = held.get_or_insert_with(Templates::default);
    for role in roles {
        role.template = held.share(std::mem::take(&mut role.template));
    }
}

/// Templates by a hash of their JSON; equal hashes are compared in full before sharing.
#[derive(Default)]
struct Templates {
    by_hash: std::collections::HashMap<u64, Vec<std::sync::Weak<PodTemplateSpec>>>,
    added: usize,
}

impl Templates {
    fn share(&mut self, template: Arc<PodTemplateSpec>) -> Arc<PodTemplateSpec> {
        use std::hash::{BuildHasher, RandomState};
        static KEYS: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
        let json = serde_json::to_vec(&*template).unwrap_or_default();
        let key = KEYS.get_or_init(RandomState::new).hash_one(&json);
        let bucket = self.by_hash.entry(key).or_default();
        if let Some(same) = bucket
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|t| **t == *template)
        {
            return same;
        }
        bucket.retain(|t| t.strong_count() > 0);
        bucket.push(Arc::downgrade(&template));
        self.added += 1;
        // Forget the templates no object holds any more, now and then: O(1) per event on average.
        if self.added.is_multiple_of(1024) {
            self.by_hash.retain(|_, b| {
                b.retain(|t| t.strong_count() > 0);
                !b.is_empty()
            });
        }
        template
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_hash.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    fn template(image: &str) -> Arc<PodTemplateSpec> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"labels": {"app": "a"}},
                "spec": {"containers": [{"name": "server", "image": image}]}
            }))
            .expect("template"),
        )
    }

    #[test]
    fn equal_templates_are_held_once_and_forgotten_when_unused() {
        let mut held = Templates::default();
        let a = held.share(template("app:v1"));
        let b = held.share(template("app:v1"));
        assert!(Arc::ptr_eq(&a, &b), "equal templates share one allocation");
        let c = held.share(template("app:v2"));
        assert!(!Arc::ptr_eq(&a, &c), "different templates stay apart");
        assert_eq!(*c, *template("app:v2"));
        assert_eq!(held.len(), 2);
        drop((a, b));
        // An unheld template is not handed out again: a new one takes its place.
        let d = held.share(template("app:v1"));
        assert_eq!(Arc::strong_count(&d), 1);
        for _ in 0..2048 {
            held.share(template("app:v3"));
        }
        // v1 (d) and v2 (c) are still held; the many v3 copies were shared or forgotten.
        assert!(held.len() <= 3, "{} entries", held.len());
        drop((c, d));
    }
}
