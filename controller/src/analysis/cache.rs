//! What the runner reads from watch caches instead of the API server: AnalysisTemplates, and the
//! metadata of Secrets (whether a Datadog Secret exists, and its resourceVersion; never its data).
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

    /// Starts the watches behind the caches, over the namespace(s) of the given APIs: every
    /// AnalysisTemplate (managed fields dropped), and only the metadata of Secrets (kube's
    /// metadata watch: `Api<PartialObjectMeta<_>>` lists and watches `PartialObjectMetadata`, so
    /// no Secret data reaches the controller; of it name and resourceVersion are kept, labels and
    /// annotations, which may hold a last-applied copy of the data, dropped). The watches run until
    /// the process ends.
    pub fn watch(
        templates: Api<AnalysisTemplate>,
        secrets: Api<PartialObjectMeta<Secret>>,
    ) -> Self {
        let (template_store, template_writer) = reflector::store::<AnalysisTemplate>();
        let template_reflector = watcher(templates, watcher::Config::default())
            .default_backoff()
            .modify(|t| t.managed_fields_mut().clear())
            .reflect(template_writer)
            .applied_objects()
            .for_each(|r| async move {
                if let Err(e) = r {
                    warn!(error = %e, "watching AnalysisTemplates");
                }
            });
        tokio::spawn(template_reflector);
        let (secret_store, secret_writer) = reflector::store::<PartialObjectMeta<Secret>>();
        let secret_reflector = watcher(secrets, watcher::Config::default())
            .default_backoff()
            .modify(slim_secret)
            .reflect(secret_writer)
            .applied_objects()
            .for_each(|r| async move {
                if let Err(e) = r {
                    warn!(error = %e, "watching Secrets (metadata, for Datadog keys)");
                }
            });
        tokio::spawn(secret_reflector);
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

/// Keeps of a Secret's metadata only what the runner reads: name, namespace, uid, resourceVersion.
fn slim_secret(s: &mut PartialObjectMeta<Secret>) {
    let m = std::mem::take(&mut s.metadata);
    s.metadata = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        ..ObjectMeta::default()
    };
}
