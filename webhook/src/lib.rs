//! The Storm Rollouts admission webhook: defaulting and validation of StormServices, validation of
//! AnalysisTemplates and RolloutPolicies, RolloutPolicy enforcement, over HTTPS.
//!
//! [`review::handle`] is the decision (bytes in, review out, no I/O); [`server`] is the HTTPS shell,
//! [`lookups`] the watch caches the rules read, [`certs`] the reloading certificate resolver.
#![forbid(unsafe_code)]

pub mod certs;
pub mod lookups;
pub mod metrics;
pub mod registration;
pub mod review;
pub mod selfmanaged;
pub mod server;
