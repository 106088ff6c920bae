//! Unit tests of `error.rs`: the exact lines and exit codes users get.

use super::*;
use std::time::Duration;

fn elapsed() -> tokio::time::error::Elapsed {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        // The timer needs the runtime: create it inside.
        .block_on(async {
            tokio::time::timeout(Duration::ZERO, std::future::pending::<()>()).await
        })
        .expect_err("elapsed")
}

fn api_error() -> kube::Error {
    kube::Error::LinesCodecMaxLineLengthExceeded
}

/// The text and exit code users get, as they were before the CLI had one error type.
#[test]
fn lines_and_exit_codes() {
    let io = || std::io::Error::other("boom");
    let cases: Vec<(Error, &str, u8)> = vec![
        (
            Error::InvalidTimeout {
                value: "soon".into(),
                source: DurationError::NotPositive,
            },
            "error: --timeout \"soon\": must be greater than zero",
            2,
        ),
        (
            Error::StartRuntime { source: io() },
            "error: starting the runtime: boom",
            2,
        ),
        (
            Error::BuildClient {
                source: api_error(),
            },
            "error: building the client: Error finding newline character",
            2,
        ),
        (
            Error::ReadStormService {
                name: "a".into(),
                source: api_error(),
            },
            "error: reading StormService a: Error finding newline character",
            2,
        ),
        (
            Error::StormServiceNotFound {
                name: "a".into(),
                namespace: "ns".into(),
            },
            "error: StormService a not found in namespace ns",
            2,
        ),
        (
            Error::ListRoleSets {
                source: api_error(),
            },
            "error: listing RoleSets: Error finding newline character",
            2,
        ),
        (Error::WatchEnded, "error: watch ended", 2),
        (
            Error::AnnotateStormService {
                name: "a".into(),
                source: api_error(),
            },
            "error: annotating StormService a: Error finding newline character",
            2,
        ),
        (
            Error::UpdateStormService {
                name: "a".into(),
                source: api_error(),
            },
            "error: updating StormService a: Error finding newline character",
            2,
        ),
        (
            Error::Refused {
                name: "a".into(),
                control: Control::Approve,
                why: "nothing is waiting for approval (phase Progressing)".into(),
            },
            "a: cannot approve: nothing is waiting for approval (phase Progressing)",
            1,
        ),
        (
            Error::RolloutFailed {
                phase: RolloutPhase::Degraded,
                message: "analysis failed".into(),
            },
            "rollout failed: phase Degraded: analysis failed",
            1,
        ),
        (Error::WaitTimedOut { source: elapsed() }, "timed out", 3),
        (
            Error::ImageAssignmentSyntax {
                arg: "prefill".into(),
            },
            "error: \"prefill\": expected ROLE=IMAGE or ROLE/CONTAINER=IMAGE",
            2,
        ),
        (
            Error::ImageAssignmentEmpty { arg: "=x".into() },
            "error: \"=x\": role, container and image must not be empty",
            2,
        ),
        (
            Error::RoleNotFound {
                role: "router".into(),
                roles: vec!["prefill".into(), "decode".into()],
            },
            "error: role \"router\" not found; roles: prefill, decode",
            2,
        ),
        (
            Error::ContainerNotFound {
                role: "decode".into(),
                container: "nope".into(),
                containers: vec!["vllm".into(), "sidecar".into()],
            },
            "error: container \"nope\" not found in role \"decode\"; containers: vllm, sidecar",
            2,
        ),
        (
            Error::ContainerAmbiguous {
                role: "decode".into(),
                containers: vec!["vllm".into(), "sidecar".into()],
            },
            "error: role \"decode\" has 2 containers (vllm, sidecar): say which, as decode/CONTAINER=IMAGE",
            2,
        ),
        (
            Error::ReadInput {
                file: "f.yaml".into(),
                source: io(),
            },
            "error: f.yaml: cannot read: boom",
            2,
        ),
        (
            Error::InvalidPolicy {
                file: "p.yaml".into(),
                name: "p".into(),
                denial: "spec.minOnTimeout: Invalid value".into(),
            },
            "error: p.yaml: RolloutPolicy/p: spec.minOnTimeout: Invalid value",
            2,
        ),
        (
            Error::NoPolicy {
                file: "p.yaml".into(),
            },
            "error: p.yaml: no RolloutPolicy found",
            2,
        ),
        (
            Error::CrdWithoutSchema { crd: "x.io".into() },
            "error: building the schemas: CRD x.io has no schema",
            2,
        ),
        (
            Error::WriteCrds {
                dir: "out".into(),
                source: io(),
            },
            "error: writing CRDs to out: boom",
            2,
        ),
    ];
    for (e, line, code) in cases {
        assert_eq!(e.stderr_line(), line);
        assert_eq!(e.exit_code(), code, "{line}");
    }
}

#[test]
fn causes_are_kept_as_sources() {
    use std::error::Error as _;
    let e = Error::ReadStormService {
        name: "a".into(),
        source: api_error(),
    };
    assert!(e.source().is_some());
    let e = Error::WaitTimedOut { source: elapsed() };
    assert!(e.source().is_some());
}
