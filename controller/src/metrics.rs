//! Prometheus metrics of the controller (filled in by the controller-shell work).
