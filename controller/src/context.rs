//! What every reconcile needs: the client, metrics and the event recorder.

use crate::metrics::Metrics;
use kube::runtime::events::{Recorder, Reporter};
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
    pub recorder: Recorder,
}

impl Context {
    /// A context for `client`, reporting events as `instance` (the Pod name, when known).
    pub fn new(client: kube::Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            metrics,
            recorder,
        }
    }
}
