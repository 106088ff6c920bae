//! StormService API types and the rules every part of Storm Rollouts shares.
//!
//! Everything here is pure: no I/O, no async, no clock. The webhook, the controller and the CLI call
//! the same functions, so a rule lives in one place.
#![forbid(unsafe_code)]

pub mod capacity;
pub mod defaults;
pub mod errors;
pub mod keys;
pub mod ownership;
pub mod policy;
pub mod references;
pub mod routing_refs;
pub mod rules;
pub mod startup;
pub mod status;
pub mod types;
pub mod units;

pub use types::analysis::{AnalysisTemplate, AnalysisTemplateSpec};
pub use types::podset::{PodSet, PodSetSpec};
pub use types::policy::{RolloutPolicy, RolloutPolicySpec};
pub use types::roleset::{RoleSet, RoleSetSpec};
pub use types::stormservice::{StormService, StormServiceSpec};
