//! End-to-end suites live in `tests/`; what they and the benchmarks (`examples/`) share is here.

use storm_shared::RoleSet;

/// Whether the RoleSet's `Ready` condition is `True`.
pub fn roleset_is_ready(r: &RoleSet) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}
