//! The controller's one error type and its one retry policy.
//!
//! Both reconcilers (StormService and RoleSet) fail with [`Error`]; each variant names the action
//! that failed and carries its cause, and [`Error::metric_label`] is the bounded `error` label of
//! `storm_reconcile_errors_total`. A failed object is retried with a per-object exponential
//! [`Backoff`] (1 s, 2 s, 4 s, … up to [`MAX_BACKOFF`]); a success resets it.

use crate::roleset::plan::PlanError;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// What went wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace.
    #[error("the object has no namespace")]
    NoNamespace,
    /// A watch cache stopped (its watch task ended), so what the object owns cannot be known.
    #[error("reading the {0} cache: the watch has stopped")]
    ReadCache(&'static str),
    /// Writing the object's status failed.
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    /// Removing acted-on control annotations failed.
    #[error("removing control annotations: {0}")]
    RemoveAnnotations(#[source] kube::Error),
    /// Pinning a Service's selector failed.
    #[error("pinning Service {0}: {1}")]
    PinService(String, #[source] kube::Error),
    /// A traffic router could not be set.
    #[error("traffic routers: {0}")]
    Router(#[source] crate::routers::Error),
    /// Creating a RoleSet failed.
    #[error("creating RoleSet {0}: {1}")]
    CreateRoleSet(String, #[source] kube::Error),
    /// Deleting a RoleSet failed.
    #[error("deleting RoleSet {0}: {1}")]
    DeleteRoleSet(String, #[source] kube::Error),
    /// Updating a RoleSet to a new template in place failed.
    #[error("updating RoleSet {0} in place: {1}")]
    RetemplateRoleSet(String, #[source] kube::Error),
    /// Resizing a RoleSet's roles failed.
    #[error("resizing the roles of RoleSet {0}: {1}")]
    ResizeRoleSet(String, #[source] kube::Error),
    /// Recording (or pruning) a revision's template failed.
    #[error("recording revision {0}: {1}")]
    RecordRevision(String, #[source] kube::Error),
    /// A revision must be scaled up but its template is known nowhere.
    #[error("no template known for revision {0}: its ControllerRevision and RoleSets are gone")]
    UnknownRevision(String),
    /// A RoleSet's Pods could not be planned (the RoleSet lacks metadata).
    #[error("planning Pods: {0}")]
    PlanPods(#[from] PlanError),
    /// Creating a Pod failed.
    #[error("creating Pod {name}: {source}")]
    CreatePod {
        /// Name of the Pod.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Adopting an object AIBrix's controllers made failed.
    #[error("adopting {0}: {1}")]
    Adopt(String, #[source] kube::Error),
    /// Removing AIBrix's finalizer from an object being deleted failed.
    #[error("removing AIBrix's finalizer from {0}: {1}")]
    ReleaseFinalizer(String, #[source] kube::Error),
    /// Reading an object from the API server (not the cache) failed.
    #[error("reading {0} from the API server: {1}")]
    ReadFresh(String, #[source] kube::Error),
    /// Adding our finalizer to a StormService with traffic routers failed.
    #[error("adding finalizer stormservice.aibrix.ai/traffic to {0}: {1}")]
    AddFinalizer(String, #[source] kube::Error),
    /// Creating a PodSet failed.
    #[error("creating PodSet {name}: {source}")]
    CreatePodSet {
        /// Name of the PodSet.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Deleting a PodSet failed.
    #[error("deleting PodSet {name}: {source}")]
    DeletePodSet {
        /// Name of the PodSet.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing a PodSet's status failed.
    #[error("writing the status of PodSet {name}: {source}")]
    WritePodSetStatus {
        /// Name of the PodSet.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Updating a Pod in place failed.
    #[error("updating Pod {name} in place: {source}")]
    UpdatePod {
        /// Name of the Pod.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Deleting a Pod failed.
    #[error("deleting Pod {name}: {source}")]
    DeletePod {
        /// Name of the Pod.
        name: String,
        /// The API error.
        source: kube::Error,
    },
}

impl Error {
    /// A short, bounded label for `storm_reconcile_errors_total{error=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoNamespace => "no_namespace",
            Error::ReadCache(_) => "read_cache",
            Error::WriteStatus(_) => "write_status",
            Error::RemoveAnnotations(_) => "remove_annotations",
            Error::PinService(..) => "pin_service",
            Error::Router(_) => "router",
            Error::CreateRoleSet(..) => "create_roleset",
            Error::DeleteRoleSet(..) => "delete_roleset",
            Error::ResizeRoleSet(..) => "resize_roleset",
            Error::RetemplateRoleSet(..) => "retemplate_roleset",
            Error::RecordRevision(..) => "record_revision",
            Error::UnknownRevision(_) => "unknown_revision",
            Error::PlanPods(_) => "plan_pods",
            Error::CreatePod { .. } => "create_pod",
            Error::DeletePod { .. } => "delete_pod",
            Error::UpdatePod { .. } => "update_pod",
            Error::CreatePodSet { .. } => "create_podset",
            Error::ReleaseFinalizer(..) => "release_finalizer",
            Error::AddFinalizer(..) => "add_finalizer",
            Error::ReadFresh(..) => "read_fresh",
            Error::Adopt(..) => "adopt",
            Error::DeletePodSet { .. } => "delete_podset",
            Error::WritePodSetStatus { .. } => "write_podset_status",
        }
    }
}

/// First delay after a failed reconcile; doubled per consecutive failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest delay between retries of a failing object. Short enough that a rollout blocked by a
/// transient error (a router object being created, an API server restart) moves again soon.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Delay before retry number `failures` (1-based): 1 s, 2 s, 4 s, … capped at [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    MIN_BACKOFF
        .saturating_mul(1u32 << exponent)
        .min(MAX_BACKOFF)
}

/// Consecutive failures per object, for the retry backoff.
pub struct Backoff<K: Resource>
where
    K::DynamicType: Hash + Eq,
{
    failures: Mutex<HashMap<ObjectRef<K>, u32>>,
}

impl<K: Resource> Default for Backoff<K>
where
    K::DynamicType: Hash + Eq,
{
    fn default() -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Resource> Backoff<K>
where
    K::DynamicType: Hash + Eq + Default,
{
    /// Counts a failure of `obj` and returns the action: retry after the backoff.
    pub fn failed(&self, obj: &K) -> (u32, Action) {
        let failures = match self.failures.lock() {
            Ok(mut map) => {
                let n = map.entry(ObjectRef::from_obj(obj)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            // A poisoned lock only loses the count; retry at the slowest pace.
            Err(_) => u32::MAX,
        };
        (failures, Action::requeue(backoff(failures)))
    }

    /// A success: the next failure starts from the shortest delay again.
    pub fn succeeded(&self, obj: &K) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&ObjectRef::from_obj(obj));
        }
    }

    /// The error policy of every controller: count the failure, log it, retry after the backoff.
    pub fn policy(&self, obj: &K, error: &Error) -> Action {
        let (failures, action) = self.failed(obj);
        tracing::warn!(namespace = ?obj.meta().namespace, name = ?obj.meta().name, error = %error,
                       failures, retry = ?action, "reconcile failed");
        action
    }

    /// After a reconcile of `kind` that began at `started`: its duration and error in the metrics,
    /// and a success resets the backoff.
    pub fn finish(
        &self,
        metrics: &crate::metrics::Metrics,
        kind: &'static str,
        obj: &K,
        started: std::time::Instant,
        result: &Result<Action, Error>,
    ) {
        metrics.observe_reconcile(
            kind,
            started.elapsed().as_secs_f64(),
            result.as_ref().err().map(Error::metric_label),
        );
        if result.is_ok() {
            self.succeeded(obj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storm_shared::RoleSet;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn failures_count_per_object_and_reset_on_success() {
        let b = Backoff::<RoleSet>::default();
        let mut a = RoleSet::new("a", Default::default());
        a.metadata.namespace = Some("ns".into());
        let mut other = a.clone();
        other.metadata.name = Some("b".into());
        assert_eq!(b.failed(&a).0, 1);
        assert_eq!(b.failed(&a).0, 2);
        assert_eq!(b.failed(&other).0, 1);
        b.succeeded(&a);
        assert_eq!(b.failed(&a), (1, Action::requeue(MIN_BACKOFF)));
    }

    #[test]
    fn labels_are_bounded_snake_case() {
        let e = Error::PlanPods(PlanError::FindNamespace);
        assert_eq!(e.metric_label(), "plan_pods");
        assert_eq!(Error::ReadCache("Pod").metric_label(), "read_cache");
        assert_eq!(
            Error::UnknownRevision("r".into()).metric_label(),
            "unknown_revision"
        );
    }
}
