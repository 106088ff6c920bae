//! The Storm Rollouts controller: RoleSets and their Pods, and the rollouts of StormServices.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod cache;
pub mod context;
pub mod error;
pub mod events;
pub mod feeds;
pub mod finalizers;
pub mod lanes;
pub mod leader;
pub mod metrics;
pub mod owned;
pub mod podgroups;
pub mod podset;
pub mod roleset;
pub mod rollout;
pub mod routers;
pub mod stormservice;
