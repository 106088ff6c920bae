//! The Storm Rollouts admission webhook: defaulting and validation of StormServices, validation of
//! AnalysisTemplates and RolloutPolicies, RolloutPolicy enforcement, over HTTPS.
//!
//! [`review::handle`] is the decision (bytes in, review out, no I/O); [`server`] is the HTTPS shell,
//! [`lookups`] the watch caches the rules read, [`access`] the author's rights on the objects a
//! StormService names (asked of the API server between two calls of the handler), [`certs`] the
//! reloading certificate resolver.
#![forbid(unsafe_code)]

pub mod access;
pub mod certs;
pub mod lookups;
pub mod metrics;
pub mod registration;
pub mod review;
pub mod selfmanaged;
pub mod server;
pub mod slim;
