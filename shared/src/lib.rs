//! StormService API types and rules.
#![forbid(unsafe_code)]
