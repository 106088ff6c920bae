//! What the runner reads from watch caches instead of the API server: AnalysisTemplates, and, when
//! a store is given, the metadata of Secrets (whether a Datadog Secret exists, and its
//! resourceVersion; never its data). The controller starts only the template watch.
//!
//! The controller builds [`Caches::watch`] over the namespace(s) it watches and gives it to the
//! runner ([`super::Runner::with_caches`]); tests feed [`Caches::new`] stores of their own.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use std::sync::Arc;
use storm_shared::types::analysis::AnalysisTemplate;
use tracing::warn;

/// The runner's caches: AnalysisTemplates, and Secrets' metadata.
#[derive(Clone)]
pub struct Caches {
    templates: Store<AnalysisTemplate>,
    secrets: Store<PartialObjectMeta<Secret>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

/// What the Secret cache says of a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SecretSeen {
    /// The cache has not listed Secrets yet (or cannot): read the Secret to know.
    Unknown,
    /// No such Secret.
    Absent,
    /// It exists, at this resourceVersion.
    Present(Option<String>),
}

impl Caches {
    /// Caches over these stores (tests fill them through their writers).
    pub fn new(
        templates: Store<AnalysisTemplate>,
        secrets: Store<PartialObjectMeta<Secret>>,
    ) -> Self {
        Self { templates, secrets }
    }

    /// Starts the watch behind the template cache over the namespace(s) of `templates` (managed
    /// fields dropped); it runs until the process ends.
    ///
    /// No Secret cache is started: a metadata watch needs `list` on Secrets, and RBAC cannot limit
    /// `list` to metadata, so the controller's identity could then read every Secret's data in
    /// bulk. Its Secret store stays unlisted, and a due Datadog metric reads its Secret by name
    /// (`get`), only when it is due. A deployment that accepts `list` may build [`Caches::new`]
    /// with a metadata store of its own.
    pub fn watch(templates: Api<AnalysisTemplate>) -> Self {
        let (template_store, template_writer) = reflector::store::<AnalysisTemplate>();
        let template_reflector = crate::cache::watch(templates, watcher::Config::default())
            .modify(|t| t.managed_fields_mut().clear())
            .reflect(template_writer)
            .applied_objects()
            .for_each(|r| async move {
                if let Err(e) = r {
                    warn!(error = %e, "watching AnalysisTemplates");
                }
            });
        tokio::spawn(template_reflector);
        // Never listed: its writer is dropped at once.
        let (secret_store, _) = reflector::store::<PartialObjectMeta<Secret>>();
        Self::new(template_store, secret_store)
    }

    /// Whether the templates have been listed once. The Secret cache is not waited for: until it
    /// has listed, a due Datadog metric reads its Secret as it would without a cache.
    pub fn ready(&self) -> bool {
        matches!(
            self.templates.wait_until_ready().now_or_never(),
            Some(Ok(()))
        )
    }

    /// The AnalysisTemplate `namespace/name`, if it exists.
    pub fn template(&self, namespace: &str, name: &str) -> Option<Arc<AnalysisTemplate>> {
        self.templates.get(&ObjectRef::new(name).within(namespace))
    }

    /// Whether the Secret `namespace/name` exists, from its metadata.
    pub(super) fn secret(&self, namespace: &str, name: &str) -> SecretSeen {
        if !matches!(self.secrets.wait_until_ready().now_or_never(), Some(Ok(()))) {
            return SecretSeen::Unknown;
        }
        match self.secrets.get(&ObjectRef::new(name).within(namespace)) {
            Some(s) => SecretSeen::Present(s.metadata.resource_version.clone()),
            None => SecretSeen::Absent,
        }
    }
}

/// Keeps of a Secret's metadata only what the runner reads: name, namespace, uid, resourceVersion
/// (for a metadata store given to [`Caches::new`]; labels and annotations may hold a copy of the data).
pub fn slim_secret(s: &mut PartialObjectMeta<Secret>) {
    let m = std::mem::take(&mut s.metadata);
    s.metadata = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        ..ObjectMeta::default()
    };
}
