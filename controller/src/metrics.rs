//! Prometheus metrics of the controller (filled in by the controller-shell work).

/// The controller's metrics registry.
#[derive(Default)]
pub struct Metrics;
