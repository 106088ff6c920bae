//! The StormService controller: revisions, RoleSets and rollouts.
