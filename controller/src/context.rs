//! What every reconcile needs: the client, metrics and the event recorder.

use crate::events::Publisher;
use crate::metrics::Metrics;
use kube::runtime::events::Reporter;
use std::sync::Arc;

/// Field manager (and event reporter) name of the controller.
pub const MANAGER: &str = "storm-controller";

/// Shared state of the controllers.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Kubernetes Events.
    pub recorder: Publisher,
    /// Watch only this namespace (tests, or a per-namespace install); all namespaces when `None`.
    pub namespace: Option<String>,
    /// Where analysis requests may go.
    pub egress: crate::analysis::egress::EgressPolicy,
    /// Timeout cap and interval floor of analysis measurements.
    pub analysis_bounds: storm_shared::rules::AnalysisBounds,
    /// How many analysis measurements run at once, in all and per namespace.
    pub analysis_pool: crate::analysis::pool::PoolSettings,
}

impl Context {
    /// A context for `client`, reporting events as `instance` (the Pod name, when known).
    pub fn new(client: kube::Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        let recorder = Publisher::new(client.clone(), reporter);
        Self {
            client,
            metrics,
            recorder,
            namespace: None,
            egress: crate::analysis::egress::EgressPolicy::default(),
            analysis_bounds: storm_shared::rules::AnalysisBounds::default(),
            analysis_pool: crate::analysis::pool::PoolSettings::default(),
        }
    }

    /// The same context with an analysis egress policy.
    pub fn with_egress(mut self, egress: crate::analysis::egress::EgressPolicy) -> Self {
        self.egress = egress;
        self
    }

    /// The same context with other analysis bounds.
    pub fn with_analysis_bounds(mut self, bounds: storm_shared::rules::AnalysisBounds) -> Self {
        self.analysis_bounds = bounds;
        self
    }

    /// The same context with other analysis concurrency limits.
    pub fn with_analysis_pool(mut self, pool: crate::analysis::pool::PoolSettings) -> Self {
        self.analysis_pool = pool;
        self
    }

    /// The same context, limited to one namespace.
    pub fn in_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// An API for `K` over the watched namespace(s).
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        }
    }
}
