//! The RoleSet controller: Pods for each role (filled in by the controller-shell work).
