//! Label and annotation keys shared by the webhook, the controller and the CLI.

/// Prefix of every label and annotation this product owns.
pub const PREFIX: &str = "stormservice.aibrix.ai/";

/// Label on RoleSets and Pods: the StormService they belong to.
pub const LABEL_NAME: &str = "stormservice.aibrix.ai/name";
/// Label on RoleSets and Pods: the revision (hash of `spec.template`) they run.
pub const LABEL_REVISION: &str = "stormservice.aibrix.ai/revision";
/// Label on Pods: the role they play inside their RoleSet.
pub const LABEL_ROLE: &str = "stormservice.aibrix.ai/role";

/// AIBrix's own labels, kept beside ours so existing selectors and tooling keep working.
pub const AIBRIX_LABEL_STORM_SERVICE_NAME: &str = "storm-service-name";
/// AIBrix's RoleSet name label.
pub const AIBRIX_LABEL_ROLESET_NAME: &str = "roleset-name";
/// AIBrix's role name label.
pub const AIBRIX_LABEL_ROLE_NAME: &str = "role-name";

/// Annotation that pauses a rollout.
pub const ANNOTATION_PAUSE: &str = "stormservice.aibrix.ai/rollout-pause";
/// Annotation that resumes a paused rollout.
pub const ANNOTATION_RESUME: &str = "stormservice.aibrix.ai/rollout-resume";
/// Annotation that approves a step waiting for manual approval.
pub const ANNOTATION_APPROVAL: &str = "stormservice.aibrix.ai/rollout-approval";
/// Annotation that aborts a rollout and returns to the stable revision.
pub const ANNOTATION_ABORT: &str = "stormservice.aibrix.ai/rollout-abort";
/// Annotation that restarts an aborted or degraded rollout at step 0.
pub const ANNOTATION_RETRY: &str = "stormservice.aibrix.ai/rollout-retry";

/// Every control annotation, in the order the controller considers them.
pub const CONTROL_ANNOTATIONS: [&str; 5] = [
    ANNOTATION_ABORT,
    ANNOTATION_RETRY,
    ANNOTATION_PAUSE,
    ANNOTATION_RESUME,
    ANNOTATION_APPROVAL,
];

/// The only value a control annotation may carry.
pub const CONTROL_VALUE: &str = "true";
