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

/// AIBrix's label on RoleSets: the ControllerRevision (`<stormservice>-<revision>`) they run.
pub const AIBRIX_LABEL_STORM_SERVICE_REVISION: &str = "storm-service-revision";
/// AIBrix's label on Pods: the hash of their role's Pod template.
pub const AIBRIX_LABEL_ROLE_TEMPLATE_HASH: &str = "role-template-hash";
/// Prefix of AIBrix's own StormService annotations and labels.
pub const AIBRIX_PREFIX: &str = "stormservice.orchestration.aibrix.ai/";
/// AIBrix's annotation on RoleSets and Pods: the RoleSet's index within its StormService.
pub const AIBRIX_ANNOTATION_ROLESET_INDEX: &str =
    "stormservice.orchestration.aibrix.ai/roleset-index";
/// AIBrix's annotation on RoleSets: the revision (ControllerRevision name) they run.
pub const AIBRIX_ANNOTATION_REVISION: &str = "stormservice.orchestration.aibrix.ai/revision";
/// AIBrix's label and annotation on Pods of stateful roles: the Pod's index within its role.
pub const AIBRIX_ROLE_REPLICA_INDEX: &str =
    "stormservice.orchestration.aibrix.ai/role-replica-index";

/// AIBrix's label on Pods, and prefix (`<this>.<role>`) of the RoleSet annotation it comes from:
/// the number of the revision that introduced the role's current Pod template.
pub const AIBRIX_ROLE_REVISION: &str = "stormservice.orchestration.aibrix.ai/role-revision";
/// As [`AIBRIX_ROLE_REVISION`], with that revision's ControllerRevision name.
pub const AIBRIX_ROLE_REVISION_NAME: &str =
    "stormservice.orchestration.aibrix.ai/role-revision-name";

/// AIBrix's label on the Pods of a PodSet: the PodSet's name.
pub const AIBRIX_LABEL_PODSET_NAME: &str = "stormservice.orchestration.aibrix.ai/podset-name";
/// AIBrix's label on the Pods of a PodSet: the Pod's index in its group.
pub const AIBRIX_LABEL_POD_GROUP_INDEX: &str =
    "stormservice.orchestration.aibrix.ai/pod-group-index";
/// Env first in every container (and init container) of a PodSet's Pods: the PodSet's name.
pub const ENV_PODSET_NAME: &str = "PODSET_NAME";
/// The Pod's index in its group.
pub const ENV_POD_GROUP_INDEX: &str = "POD_GROUP_INDEX";
/// The group's size.
pub const ENV_POD_GROUP_SIZE: &str = "POD_GROUP_SIZE";

/// Env injected into every container of a StormService's Pods (AIBrix's names), in this order,
/// before the user's own env; a user variable of one of these names is dropped.
pub const ENV_STORM_SERVICE_NAME: &str = "STORM_SERVICE_NAME";
/// The RoleSet's name.
pub const ENV_ROLESET_NAME: &str = "ROLESET_NAME";
/// The RoleSet's index within its StormService.
pub const ENV_ROLESET_INDEX: &str = "ROLESET_INDEX";
/// The role's name.
pub const ENV_ROLE_NAME: &str = "ROLE_NAME";
/// The hash of the role's Pod template (as the Pod was created: an in-place update keeps it).
pub const ENV_ROLE_TEMPLATE_HASH: &str = "ROLE_TEMPLATE_HASH";
/// The Pod's index within its role (stateful roles only).
pub const ENV_ROLE_REPLICA_INDEX: &str = "ROLE_REPLICA_INDEX";
/// Every injected name: a user variable of one of these is dropped.
pub const INJECTED_ENV: [&str; 6] = [
    ENV_STORM_SERVICE_NAME,
    ENV_ROLESET_NAME,
    ENV_ROLESET_INDEX,
    ENV_ROLE_NAME,
    ENV_ROLE_TEMPLATE_HASH,
    ENV_ROLE_REPLICA_INDEX,
];

/// Annotation on a Service or traffic router object, set by its owner: the StormService (its name,
/// in the object's namespace) that may have the controller write it even when the StormService's
/// author may not patch it. Without it, admission asks whether the author may `patch` the object.
pub const ANNOTATION_MANAGED_BY: &str = "stormservice.aibrix.ai/managed-by";

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
/// Annotation that promotes a running rollout in full: the remaining steps, pauses, approvals
/// and step analyses are skipped (capacity still comes before traffic).
pub const ANNOTATION_PROMOTE_FULL: &str = "stormservice.aibrix.ai/rollout-promote-full";

/// Every control annotation, in the order the controller considers them.
pub const CONTROL_ANNOTATIONS: [&str; 6] = [
    ANNOTATION_ABORT,
    ANNOTATION_RETRY,
    ANNOTATION_PAUSE,
    ANNOTATION_RESUME,
    ANNOTATION_APPROVAL,
    ANNOTATION_PROMOTE_FULL,
];

/// The only value a control annotation may carry.
pub const CONTROL_VALUE: &str = "true";
