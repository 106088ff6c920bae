//! The rollout state machine: pure functions from (spec, status, observed world, now) to a plan.
