//! The CLI's one error type. Each variant names the action that failed and carries its cause; its
//! `Display` is the text users read, and [`Error::exit_code`] the code the process exits with.

use crate::controls::Control;
use std::path::PathBuf;
use storm_shared::errors::FieldError;
use storm_shared::types::stormservice::RolloutPhase;
use storm_shared::units::DurationError;

/// Why a command did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- Arguments and reaching the cluster ----
    /// `--timeout` is not a duration.
    #[error("--timeout {value:?}: {source}")]
    InvalidTimeout {
        value: String,
        #[source]
        source: DurationError,
    },
    /// The async runtime could not start.
    #[error("starting the runtime: {source}")]
    StartRuntime {
        #[source]
        source: std::io::Error,
    },
    /// No kubeconfig (or in-cluster configuration) could be loaded.
    #[error("no usable kubeconfig: {source}")]
    Kubeconfig {
        #[source]
        source: kube::config::InferConfigError,
    },
    /// The kube client could not be built from the configuration.
    #[error("building the client: {source}")]
    BuildClient {
        #[source]
        source: kube::Error,
    },

    // ---- Reading, watching and changing a StormService ----
    /// Reading the StormService failed.
    #[error("reading StormService {name}: {source}")]
    ReadStormService {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The StormService does not exist.
    #[error("StormService {name} not found in namespace {namespace}")]
    StormServiceNotFound { name: String, namespace: String },
    /// Listing the StormService's RoleSets failed.
    #[error("listing RoleSets: {source}")]
    ListRoleSets {
        #[source]
        source: kube::Error,
    },
    /// Watching the StormService failed.
    #[error("watching StormService {name}: {source}")]
    WatchStormService {
        name: String,
        #[source]
        source: kube::runtime::watcher::Error,
    },
    /// The watch stream ended while waiting.
    #[error("watch ended")]
    WatchEnded,
    /// Setting a control's annotation on the StormService failed.
    #[error("annotating StormService {name}: {source}")]
    AnnotateStormService {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Patching the StormService's images failed.
    #[error("updating StormService {name}: {source}")]
    UpdateStormService {
        name: String,
        #[source]
        source: kube::Error,
    },

    /// Listing the StormService's ControllerRevisions failed.
    #[error("listing revisions: {source}")]
    ListRevisions {
        #[source]
        source: kube::Error,
    },

    // ---- `undo` ----
    /// `--to-revision N` names no stored revision.
    #[error(
        "{name}: no revision {revision}; stored revisions: {} (see kubectl storm history {name})",
        join(known)
    )]
    RevisionNotFound {
        name: String,
        revision: i64,
        known: Vec<i64>,
    },
    /// Only the current template's revision is stored.
    #[error(
        "{name}: no earlier revision to go back to; stored revisions: {} (see kubectl storm history {name})",
        join(known)
    )]
    NoEarlierRevision { name: String, known: Vec<i64> },
    /// The revision asked for is the current template's.
    #[error("{name}: the template is already revision {revision}; nothing to undo")]
    AlreadyAtRevision { name: String, revision: i64 },
    /// The revision's stored template does not parse.
    #[error(
        "{name}: the stored template of revision {revision} cannot be read; choose another with --to-revision"
    )]
    RevisionUnreadable { name: String, revision: i64 },

    // ---- Verdicts about the rollout (not failures of the command) ----
    /// A control does not apply to the rollout as it stands; `why` says why.
    #[error("{name}: cannot {}: {why}", control.command())]
    Refused {
        name: String,
        control: Control,
        why: String,
    },
    /// While waiting for a phase, the rollout became Degraded or Aborted.
    #[error("rollout failed: phase {phase}: {message}")]
    RolloutFailed {
        phase: RolloutPhase,
        message: String,
    },
    /// Waiting for a phase (or watching) took longer than `--timeout`.
    #[error("timed out")]
    WaitTimedOut {
        #[source]
        source: tokio::time::error::Elapsed,
    },

    // ---- `set image` ----
    /// An image assignment has no `=`.
    #[error("{arg:?}: expected ROLE=IMAGE or ROLE/CONTAINER=IMAGE")]
    ImageAssignmentSyntax { arg: String },
    /// An image assignment has an empty role, container or image.
    #[error("{arg:?}: role, container and image must not be empty")]
    ImageAssignmentEmpty { arg: String },
    /// An image assignment names a role the StormService does not have.
    #[error("role {role:?} not found; roles: {}", roles.join(", "))]
    RoleNotFound { role: String, roles: Vec<String> },
    /// An image assignment names a container the role does not have.
    #[error(
        "container {container:?} not found in role {role:?}; containers: {}",
        containers.join(", ")
    )]
    ContainerNotFound {
        role: String,
        container: String,
        containers: Vec<String>,
    },
    /// An image assignment names no container, and the role has several.
    #[error(
        "role {role:?} has {} containers ({}): say which, as {role}/CONTAINER=IMAGE",
        containers.len(),
        containers.join(", ")
    )]
    ContainerAmbiguous {
        role: String,
        containers: Vec<String>,
    },
    /// The image patch could not be built as a JSON Patch.
    #[error("{source}")]
    BuildImagePatch {
        #[source]
        source: serde_json::Error,
    },

    // ---- `lint` ----
    /// An input file (or standard input) could not be read.
    #[error("{file}: cannot read: {source}")]
    ReadInput {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// An input is not YAML.
    #[error("{file}: not valid YAML: {source}")]
    InvalidYaml {
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A RolloutPolicy in the `--policy` file does not have the RolloutPolicy shape.
    #[error("{file}: RolloutPolicy: {error}")]
    ParsePolicy { file: String, error: FieldError },
    /// A RolloutPolicy in the `--policy` file breaks the RolloutPolicy rules.
    #[error("{file}: RolloutPolicy/{name}: {denial}")]
    InvalidPolicy {
        file: String,
        name: String,
        denial: String,
    },
    /// The `--policy` file holds no RolloutPolicy.
    #[error("{file}: no RolloutPolicy found")]
    NoPolicy { file: String },
    /// A CRD of this build has no OpenAPI schema to load.
    #[error("building the schemas: CRD {crd} has no schema")]
    CrdWithoutSchema { crd: String },
    /// A CRD's OpenAPI schema could not be turned into JSON.
    #[error("building the schemas: {source}")]
    CrdSchemaToJson {
        #[source]
        source: serde_json::Error,
    },
    /// A CRD's schema does not compile as a JSON Schema.
    #[error("building the schemas: {source}")]
    CompileCrdSchema {
        #[source]
        source: Box<jsonschema::ValidationError<'static>>,
    },

    // ---- `crds` ----
    /// Writing the CRD files failed.
    #[error("writing CRDs to {}: {source}", dir.display())]
    WriteCrds {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Rendering the CRDs as YAML failed.
    #[error("rendering CRDs: {source}")]
    RenderCrds {
        #[source]
        source: serde_yaml_ng::Error,
    },
}

fn join(numbers: &[i64]) -> String {
    if numbers.is_empty() {
        return "none".into();
    }
    numbers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// The process exit code: 1 when a control was refused or the rollout failed, 3 when a wait
    /// timed out, 2 for everything that kept the command from running (unreadable input, the API
    /// server, the kubeconfig).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Refused { .. }
            | Error::RolloutFailed { .. }
            | Error::RevisionNotFound { .. }
            | Error::NoEarlierRevision { .. }
            | Error::AlreadyAtRevision { .. }
            | Error::RevisionUnreadable { .. } => 1,
            Error::WaitTimedOut { .. } => 3,
            _ => 2,
        }
    }

    /// The line printed on stderr: a verdict about the rollout as it is, an error after `error: `.
    pub fn stderr_line(&self) -> String {
        match self {
            Error::Refused { .. } | Error::RolloutFailed { .. } | Error::WaitTimedOut { .. } => {
                self.to_string()
            }
            _ => format!("error: {self}"),
        }
    }
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
