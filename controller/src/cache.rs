//! What the controllers keep of watched objects. The caches hold every Pod and Service they watch;
//! dropping the parts no reconcile reads keeps memory flat as the number of StormServices grows.

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::ExponentialBackoff;
use std::time::Duration;

/// How the controller's watches retry after an error: from 0.5 s, doubling (with jitter) up to
/// 5 s, and from the start again after 30 s without errors.
///
/// kube-runtime's default (client-go's: up to 30 s, reset only after 120 s quiet) kept the
/// controller blind for 36 s (p50) to 72 s (p99) after each kube-apiserver restart in the soak:
/// every restart within two minutes of the last one pushed the next retry towards 30 s, and CRD
/// resources answer 404 for a moment after a restart. A few watches retrying every 5 s at worst
/// cost the API server nothing.
pub fn watch_backoff() -> impl Backoff + 'static {
    ResetTimerBackoff::new(
        ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(5))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(30),
    )
}

/// Keeps of a Pod only what the controllers read (labels, phase, readiness, restarts): the caches hold
/// every Pod of every StormService, and Pod specs are most of a Pod's size.
pub fn slim_pod(p: &mut Pod) {
    p.managed_fields_mut().clear();
    // Only what the RoleSet controller reads: whether an in-place update is possible.
    p.annotations_mut()
        .retain(|k, _| k == crate::roleset::update::ANNOTATION_SHAPE_HASH);
    p.spec = None;
    if let Some(status) = p.status.as_mut() {
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
        status.pod_ips = None;
        status.host_ips = None;
        status.resource_claim_statuses = None;
        for c in status.container_statuses.iter_mut().flatten() {
            c.last_state = None;
            c.image_id = String::new();
            c.volume_mounts = None;
            c.allocated_resources = None;
            c.resources = None;
        }
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
