//! End-to-end tests of the RoleSet controller against the local control plane: the real
//! `storm-controller` binary (only its RoleSet controller, no leader election) runs as a child
//! process of each test; Pods become Ready on kwok nodes; garbage collection is the real
//! kube-controller-manager's.
//!
//! Run: `cargo test -p storm-e2e --test roleset` (builds the controller and starts the cluster if needed).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use storm_shared::keys::{
    AIBRIX_LABEL_ROLE_NAME, AIBRIX_LABEL_ROLESET_NAME, AIBRIX_LABEL_STORM_SERVICE_NAME, LABEL_NAME,
    LABEL_REVISION, LABEL_ROLE,
};
use storm_shared::types::roleset::{RoleSet, RoleSetSpec, RoleSetStatus, RoleSpec};
use storm_test_support::{
    Cluster, FAIL_LABEL, TestNamespace, cluster, dump_logs_on_error, holds_for, pod_is_ready,
    pod_phase, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The controller as a child process.

/// Builds `storm-controller` once per test process (cargo serialises concurrent builds of the
/// shared target dir itself) and returns the path of the binary.
fn controller_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_controller().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("building storm-controller: {e}"))
}

fn build_controller() -> Result<PathBuf> {
    let repo = cluster()?.repo_root().to_path_buf();
    // `cargo test` builds only this package's targets; the controller binary is another package's.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `cargo test` gives this process the variables it sets for a package (CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR, ...). Build scripts such as ring's rerun when those change, so passing
    // them on would rebuild ring and everything above it here and again in the next plain build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ];
        if per_package.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key.as_ref());
        }
    }
    let out = cmd
        .args([
            "build",
            "-p",
            "storm-controller",
            "--bin",
            "storm-controller",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&repo)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build -p storm-controller")?;
    ensure!(
        out.status.success(),
        "cargo build -p storm-controller failed ({})",
        out.status
    );
    // The executable's path from cargo's own report, so CARGO_TARGET_DIR and friends are honoured.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["target"]["name"] == "storm-controller")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .context("cargo build reported no storm-controller executable")
}

/// A running `storm-controller`; killed when dropped, so a failing test leaves nothing behind.
struct ControllerProcess {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl ControllerProcess {
    /// Starts the RoleSet controller alone, without leader election, against the test cluster.
    /// Watching only `namespace` keeps concurrent tests (and other suites) from acting on each
    /// other's objects.
    fn start(cluster: &Cluster, namespace: &str) -> Result<Self> {
        Self::start_with(
            cluster,
            &[
                "--leader-elect=false",
                "--controllers=roleset",
                "--namespace",
                namespace,
            ],
            &[],
        )
    }

    /// Starts the controller with `args` (plus a free local metrics port) and extra `env`.
    fn start_with(cluster: &Cluster, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let binary = controller_binary()?;
        let metrics_port = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "storm-e2e-controller-{}-{metrics_port}.log",
            std::process::id()
        ));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&binary)
            .args(args)
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("RUST_LOG", "info,storm_controller=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            metrics_port,
            log,
        })
    }

    /// `GET path` on the controller's HTTP port; returns (status code, body).
    fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("malformed HTTP response: {response:.200}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// Fails if the process has exited (it must keep running for the whole test).
    fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "storm-controller exited ({status}); log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code (None: killed by a signal).
    async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "storm-controller still running after {timeout:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends SIGTERM, as Kubernetes does when it stops a Pod.
    fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        ensure!(status.success(), "kill -TERM failed ({status})");
        Ok(())
    }

    /// Whether this process has reconciled any RoleSet, according to its own /metrics.
    fn has_reconciled(&self) -> Result<bool> {
        let (code, body) = self.http_get("/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(body.contains("storm_reconcile_duration_seconds_count{kind=\"RoleSet\"}"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "storm-controller log ({}):\n{}",
                self.log.display(),
                self.log_tail()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn free_port() -> Result<u16> {
    // Bind to port 0, note the port, release it; the controller binds it a moment later.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Installs (or updates) the CRDs once per test process and waits until they are served.
fn install_crds(cluster: &Cluster) -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let run = || -> Result<()> {
                cluster.kubectl_run(["apply", "--server-side", "-f", "manifests/crds/"])?;
                cluster.kubectl_run([
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/rolesets.orchestration.aibrix.ai",
                ])?;
                Ok(())
            };
            run().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!("installing CRDs: {e}"))
}

/// The control plane, CRDs, a fresh namespace and a running controller.
async fn setup(prefix: &str) -> Result<(TestNamespace, ControllerProcess)> {
    let ns = TestNamespace::new(prefix).await?;
    let cluster = ns.cluster();
    install_crds(cluster)?;
    let controller = ControllerProcess::start(cluster, ns.name())?;
    Ok((ns, controller))
}

// ---------------------------------------------------------------------------------------------
// Fixtures and checks.

fn role(name: &str, replicas: i32, extra_labels: &[(&str, &str)]) -> RoleSpec {
    let mut labels: BTreeMap<String, String> = [("app".to_string(), format!("llm-{name}"))].into();
    labels.extend(
        extra_labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    RoleSpec {
        name: name.to_string(),
        replicas: Some(replicas),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "engine".to_string(),
                    image: Some(format!("registry.invalid/storm/{name}:1.0")),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        },
        ..RoleSpec::default()
    }
}

/// A RoleSet labelled as the StormService controller labels its RoleSets.
fn roleset(name: &str, roles: Vec<RoleSpec>) -> RoleSet {
    let mut rs = RoleSet::new(
        name,
        RoleSetSpec {
            roles,
            ..RoleSetSpec::default()
        },
    );
    rs.metadata.labels = Some(
        [
            (LABEL_NAME.to_string(), "llm".to_string()),
            (LABEL_REVISION.to_string(), "r1".to_string()),
        ]
        .into(),
    );
    rs
}

fn labelled_pods(pods: &[Pod]) -> BTreeMap<String, &Pod> {
    pods.iter().map(|p| (p.name_any(), p)).collect()
}

async fn pods_of(api: &Api<Pod>, roleset: &str) -> Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("{AIBRIX_LABEL_ROLESET_NAME}={roleset}"));
    Ok(api.list(&lp).await?.items)
}

fn ready_condition(status: &RoleSetStatus) -> Option<(&str, &str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.as_str(), c.reason.as_deref().unwrap_or("")))
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn roleset_gets_labelled_owned_pods_that_become_ready_and_status_says_so() -> Result<()> {
    let (ns, mut controller) = setup("rs-pods").await?;
    let result = async {
        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        let created = rolesets
            .create(
                &PostParams::default(),
                &roleset(
                    "llm-r1-0",
                    vec![role("prefill", 2, &[]), role("decode", 1, &[])],
                ),
            )
            .await?;
        let uid = created.uid().context("created RoleSet has no uid")?;

        let all = wait_for("three Pods Ready", TIMEOUT, || async {
            let list = pods_of(&pods, "llm-r1-0").await?;
            Ok((list.len() == 3 && list.iter().all(pod_is_ready)).then_some(list))
        })
        .await?;
        let by_name = labelled_pods(&all);
        let names: Vec<&str> = by_name.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "llm-r1-0-decode-0",
                "llm-r1-0-prefill-0",
                "llm-r1-0-prefill-1"
            ]
        );
        for (name, pod) in &by_name {
            let role = if name.contains("prefill") {
                "prefill"
            } else {
                "decode"
            };
            let labels = pod.labels();
            for (key, want) in [
                (LABEL_NAME, "llm"),
                (LABEL_REVISION, "r1"),
                (LABEL_ROLE, role),
                (AIBRIX_LABEL_STORM_SERVICE_NAME, "llm"),
                (AIBRIX_LABEL_ROLESET_NAME, "llm-r1-0"),
                (AIBRIX_LABEL_ROLE_NAME, role),
                ("app", &format!("llm-{role}")),
            ] {
                assert_eq!(
                    labels.get(key).map(String::as_str),
                    Some(want),
                    "{name}: {key}"
                );
            }
            let owners = pod.owner_references();
            assert_eq!(owners.len(), 1, "{name}: {owners:?}");
            let owner = &owners[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("RoleSet", "llm-r1-0", uid.as_str())
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(owner.block_owner_deletion, Some(true));
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            assert!(
                node.is_some_and(|n| n.starts_with("kwok-node-")),
                "{name} on {node:?}"
            );
        }

        let status = wait_for("RoleSet status Ready=True", TIMEOUT, || async {
            let rs = rolesets.get("llm-r1-0").await?;
            let status = rs.status.clone().unwrap_or_default();
            let done = status.ready_replicas == 3
                && ready_condition(&status) == Some(("True", "AllPodsReady"));
            Ok(done.then_some(status))
        })
        .await?;
        assert_eq!(status.replicas, 3);
        assert_eq!(status.observed_generation, created.metadata.generation);
        let roles: Vec<(&str, i32, i32, i32)> = status
            .roles
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.replicas,
                    r.ready_replicas,
                    r.not_ready_replicas,
                )
            })
            .collect();
        assert_eq!(roles, [("prefill", 2, 2, 0), ("decode", 1, 1, 0)]);

        // The status is written by server-side apply under the controller's field manager.
        let rs = rolesets.get("llm-r1-0").await?;
        let managers: Vec<&str> = rs
            .managed_fields()
            .iter()
            .filter(|m| m.subresource.as_deref() == Some("status"))
            .filter_map(|m| m.manager.as_deref())
            .collect();
        assert_eq!(managers, ["storm-controller"]);

        // The metrics endpoint saw those reconciles; the health endpoints answer.
        let (code, body) = controller.http_get("/metrics")?;
        assert_eq!(code, 200);
        assert!(
            body.contains("storm_reconcile_duration_seconds_count{kind=\"RoleSet\"}"),
            "{body}"
        );
        assert_eq!(controller.http_get("/healthz")?.0, 200);
        assert_eq!(controller.http_get("/readyz")?.0, 200);
        controller.ensure_running()
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn scaling_a_role_down_or_removing_it_deletes_the_extra_pods() -> Result<()> {
    let (ns, mut controller) = setup("rs-scale").await?;
    let result = async {
        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        rolesets
            .create(
                &PostParams::default(),
                &roleset(
                    "llm-r1-0",
                    vec![role("prefill", 3, &[]), role("decode", 1, &[])],
                ),
            )
            .await?;
        wait_for("four Pods Ready", TIMEOUT, || async {
            let list = pods_of(&pods, "llm-r1-0").await?;
            Ok((list.len() == 4 && list.iter().all(pod_is_ready)).then_some(()))
        })
        .await?;
        let survivor_uid = pods.get("llm-r1-0-prefill-0").await?.uid();

        // prefill: 3 -> 1 (a merge patch of the whole roles list, as kubectl edit would do).
        let roles = serde_json::to_value(vec![role("prefill", 1, &[]), role("decode", 1, &[])])?;
        rolesets
            .patch(
                "llm-r1-0",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": { "roles": roles } })),
            )
            .await?;
        wait_for("prefill-1 and prefill-2 gone", TIMEOUT, || async {
            let names: Vec<String> = pods_of(&pods, "llm-r1-0")
                .await?
                .iter()
                .map(|p| p.name_any())
                .collect();
            Ok((names == ["llm-r1-0-decode-0", "llm-r1-0-prefill-0"]).then_some(()))
        })
        .await?;
        assert_eq!(
            pods.get("llm-r1-0-prefill-0").await?.uid(),
            survivor_uid,
            "the kept Pod must not have been replaced"
        );
        let status = wait_for("status shows 2 Pods", TIMEOUT, || async {
            let status = rolesets.get("llm-r1-0").await?.status.unwrap_or_default();
            Ok((status.replicas == 2 && status.ready_replicas == 2).then_some(status))
        })
        .await?;
        assert_eq!(ready_condition(&status), Some(("True", "AllPodsReady")));
        assert_eq!(status.roles[0].replicas, 1);

        // Nothing comes back while the spec stays as it is.
        holds_for("two Pods", Duration::from_secs(3), || async {
            Ok(pods_of(&pods, "llm-r1-0").await?.len() == 2)
        })
        .await?;

        // Removing a role deletes its Pods too.
        let roles = serde_json::to_value(vec![role("prefill", 1, &[])])?;
        rolesets
            .patch(
                "llm-r1-0",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": { "roles": roles } })),
            )
            .await?;
        wait_for("decode Pod gone", TIMEOUT, || async {
            let names: Vec<String> = pods_of(&pods, "llm-r1-0")
                .await?
                .iter()
                .map(|p| p.name_any())
                .collect();
            Ok((names == ["llm-r1-0-prefill-0"]).then_some(()))
        })
        .await?;
        controller.ensure_running()
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn deleting_the_roleset_garbage_collects_its_pods() -> Result<()> {
    let (ns, mut controller) = setup("rs-gc").await?;
    let result = async {
        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        rolesets
            .create(
                &PostParams::default(),
                &roleset("llm-r1-0", vec![role("decode", 2, &[])]),
            )
            .await?;
        wait_for("two Pods", TIMEOUT, || async {
            Ok((pods_of(&pods, "llm-r1-0").await?.len() == 2).then_some(()))
        })
        .await?;
        rolesets
            .delete("llm-r1-0", &DeleteParams::background())
            .await?;
        // kube-controller-manager's garbage collector follows the owner references.
        wait_for("Pods garbage-collected", TIMEOUT, || async {
            Ok(pods_of(&pods, "llm-r1-0").await?.is_empty().then_some(()))
        })
        .await?;
        // And the controller does not bring them back.
        holds_for("no Pods", Duration::from_secs(3), || async {
            Ok(pods_of(&pods, "llm-r1-0").await?.is_empty())
        })
        .await?;
        controller.ensure_running()
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn a_failed_pod_is_replaced_only_after_its_grace_period() -> Result<()> {
    let (ns, mut controller) = setup("rs-failed").await?;
    let result = async {
        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        rolesets
            .create(
                &PostParams::default(),
                &roleset("llm-r1-0", vec![role("decode", 1, &[(FAIL_LABEL, "true")])]),
            )
            .await?;
        let first = wait_for("Pod Failed", TIMEOUT, || async {
            let pod = pods.get_opt("llm-r1-0-decode-0").await?;
            Ok(pod.filter(|p| pod_phase(p) == "Failed"))
        })
        .await?;
        let first_uid = first.uid().context("Pod has no uid")?;
        let status = wait_for("status Ready=False", TIMEOUT, || async {
            let status = rolesets.get("llm-r1-0").await?.status.unwrap_or_default();
            Ok((ready_condition(&status) == Some(("False", "PodsNotReady"))).then_some(status))
        })
        .await?;
        assert_eq!(status.roles[0].not_ready_replicas, 1);

        // Health checks must see the failure: the same Pod stays for a good part of the 30 s.
        holds_for("the failed Pod stays", Duration::from_secs(20), || async {
            let pod = pods.get_opt("llm-r1-0-decode-0").await?;
            Ok(pod.and_then(|p| p.uid()).as_deref() == Some(first_uid.as_str()))
        })
        .await?;
        // Then it is replaced by a new Pod under the same name.
        wait_for("replacement Pod", Duration::from_secs(40), || async {
            let pod = pods.get_opt("llm-r1-0-decode-0").await?;
            Ok(pod
                .filter(|p| p.uid().as_deref() != Some(first_uid.as_str()))
                .map(|_| ()))
        })
        .await?;
        controller.ensure_running()
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

// ---------------------------------------------------------------------------------------------
// Leader election of the binary (here because it drives the same controller child process).
// Each test uses its own namespace for the Lease, so tests and other suites never compete.

const LEASE: &str = "storm-controller";

fn lease_held_by(holder: &str, renewed: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(renewed)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn a_standby_waits_takes_over_an_expired_lease_and_exits_when_it_loses_it() -> Result<()> {
    let ns = TestNamespace::new("rs-leader").await?;
    install_crds(ns.cluster())?;
    let leases: Api<Lease> = ns.api();
    let result = async {
        // Build first: the standby checks below must fit into the other leader's 15 s.
        controller_binary()?;
        // Another replica leads (its Lease is fresh for the next 15 s).
        leases
            .create(
                &PostParams::default(),
                &lease_held_by("other", Timestamp::now()),
            )
            .await?;
        let mut controller = ControllerProcess::start_with(
            ns.cluster(),
            &[
                "--leader-elect",
                "--lease-namespace",
                ns.name(),
                "--controllers=roleset",
            ],
            &[("POD_NAME", "e2e-candidate")],
        )?;
        // Ready as a standby (so a Deployment rollout never waits for leadership) ...
        wait_for("standby /readyz 200", TIMEOUT, || async {
            Ok((controller.http_get("/readyz").ok().map(|r| r.0) == Some(200)).then_some(()))
        })
        .await?;
        // ... but not reconciling, and not touching the live Lease.
        holds_for("standby stays idle", Duration::from_secs(4), || async {
            Ok(!controller.has_reconciled()? && holder(&leases).await?.as_deref() == Some("other"))
        })
        .await?;

        // The other leader dies: its Lease stops being renewed and expires.
        let stale = Timestamp::now() - SignedDuration::from_secs(60);
        let mut lease = leases.get(LEASE).await?;
        lease.spec = lease_held_by("other", stale).spec;
        leases
            .replace(LEASE, &PostParams::default(), &lease)
            .await?;
        wait_for(
            "the standby takes the Lease",
            Duration::from_secs(10),
            || async {
                Ok((holder(&leases).await?.as_deref() == Some("e2e-candidate")).then_some(()))
            },
        )
        .await?;
        let spec = leases.get(LEASE).await?.spec.unwrap_or_default();
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.lease_duration_seconds, Some(15));

        // Leading, it reconciles.
        let rolesets: Api<RoleSet> = ns.api();
        rolesets
            .create(
                &PostParams::default(),
                &roleset("llm-r1-0", vec![role("decode", 1, &[])]),
            )
            .await?;
        wait_for("the leader reconciles", TIMEOUT, || async {
            Ok(controller.has_reconciled()?.then_some(()))
        })
        .await?;
        // Renewals keep moving renewTime forward.
        let first = leases.get(LEASE).await?.spec.and_then(|s| s.renew_time);
        wait_for("a renewal", Duration::from_secs(10), || async {
            let now = leases.get(LEASE).await?.spec.and_then(|s| s.renew_time);
            Ok((now > first).then_some(()))
        })
        .await?;

        // Someone else takes the Lease (a network partition healed, say): the process must stop
        // reconciling at once, and does so by exiting non-zero.
        let mut lease = leases.get(LEASE).await?;
        lease.spec = lease_held_by("other", Timestamp::now()).spec;
        leases
            .replace(LEASE, &PostParams::default(), &lease)
            .await?;
        let code = controller.wait_exit(Duration::from_secs(10)).await?;
        assert_eq!(code, Some(1), "exit code after losing leadership");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_releases_the_lease() -> Result<()> {
    let ns = TestNamespace::new("rs-release").await?;
    install_crds(ns.cluster())?;
    let leases: Api<Lease> = ns.api();
    let result = async {
        let mut controller = ControllerProcess::start_with(
            ns.cluster(),
            &[
                "--leader-elect=true",
                "--lease-namespace",
                ns.name(),
                "--controllers=roleset",
            ],
            &[("POD_NAME", "e2e-leader")],
        )?;
        wait_for("the Lease is created and held", TIMEOUT, || async {
            Ok((holder(&leases).await?.as_deref() == Some("e2e-leader")).then_some(()))
        })
        .await?;
        controller.terminate()?;
        // Well under the binary's 20 s shutdown cap: reconciles must actually finish, not time out.
        let code = controller.wait_exit(Duration::from_secs(10)).await?;
        assert_eq!(code, Some(0), "exit code after SIGTERM");
        // Released: no holder, so a successor need not wait out the 15 s.
        assert_eq!(holder(&leases).await?, None);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

// ---------------------------------------------------------------------------------------------
// RBAC: the binary under its own ServiceAccount and manifests/controller's roles.

/// Applies the controller's ServiceAccount and RBAC from manifests/controller and returns a
/// kubeconfig file authenticating as that ServiceAccount.
fn service_account_kubeconfig(cluster: &Cluster) -> Result<PathBuf> {
    // The Namespace belongs to manifests/webhook; create it only if this cluster lacks it.
    let ns = cluster.kubectl_run([
        "get",
        "namespace",
        "storm-system",
        "--ignore-not-found",
        "-o",
        "name",
    ])?;
    if ns.trim().is_empty() {
        cluster.kubectl_run(["create", "namespace", "storm-system"])?;
    }
    cluster.kubectl_run([
        "apply",
        "-n",
        "storm-system",
        "-f",
        "manifests/controller/serviceaccount.yaml",
        "-f",
        "manifests/controller/rbac.yaml",
    ])?;
    let token = cluster.kubectl_run([
        "create",
        "token",
        "storm-controller",
        "-n",
        "storm-system",
        "--duration=30m",
    ])?;
    let admin = std::fs::read_to_string(cluster.kubeconfig())?;
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .map(str::trim)
        .context("no server in the admin kubeconfig")?
        .to_string();
    let dir = std::env::temp_dir().join(format!("storm-e2e-sa-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, cluster.ca_pem()?)?;
    let kubeconfig = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: sa\n\
         clusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
         users:\n- name: sa\n  user:\n    token: {}\n\
         contexts:\n- name: sa\n  context:\n    cluster: c\n    user: sa\n",
        ca.display(),
        token.trim()
    );
    std::fs::write(&kubeconfig, text)?;
    Ok(kubeconfig)
}

#[tokio::test]
async fn runs_under_its_own_service_account_and_rbac() -> Result<()> {
    let ns = TestNamespace::new("rs-rbac").await?;
    let cluster = ns.cluster();
    install_crds(cluster)?;
    let result = async {
        let kubeconfig = service_account_kubeconfig(cluster)?;
        let kubeconfig = kubeconfig.to_str().context("non-UTF-8 temp path")?;
        let identity = format!("e2e-rbac-{}", std::process::id());
        // All namespaces, as deployed (cluster-wide list/watch), and leader election in
        // storm-system (the namespaced Lease Role).
        let mut controller = ControllerProcess::start_with(
            cluster,
            &[
                "--leader-elect",
                "--lease-namespace",
                "storm-system",
                "--controllers=roleset",
            ],
            &[("KUBECONFIG", kubeconfig), ("POD_NAME", &identity)],
        )?;
        let leases: Api<Lease> = Api::namespaced(ns.client(), "storm-system");
        // A Lease left by an earlier, killed run expires within its 15 s.
        wait_for(
            "leadership in storm-system",
            Duration::from_secs(30),
            || async {
                Ok((holder(&leases).await?.as_deref() == Some(identity.as_str())).then_some(()))
            },
        )
        .await?;

        let rolesets: Api<RoleSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        rolesets
            .create(
                &PostParams::default(),
                &roleset(
                    "llm-r1-0",
                    vec![role("prefill", 1, &[]), role("decode", 2, &[])],
                ),
            )
            .await?;
        wait_for("Pods created and status written", TIMEOUT, || async {
            let n = pods_of(&pods, "llm-r1-0").await?.len();
            let status = rolesets.get("llm-r1-0").await?.status.unwrap_or_default();
            Ok((n == 3 && status.ready_replicas == 3).then_some(()))
        })
        .await?;
        // Events about the RoleSet were recorded (events.k8s.io create).
        let events = cluster.kubectl_run([
            "get",
            "events.events.k8s.io",
            "-n",
            ns.name(),
            "--field-selector",
            "reason=SuccessfulCreate,regarding.kind=RoleSet",
            "-o",
            "name",
        ])?;
        ensure!(
            !events.trim().is_empty(),
            "no SuccessfulCreate events for the RoleSet"
        );
        controller.ensure_running()?;
        // RBAC denials read `User "system:serviceaccount:..." cannot <verb> resource ...`; other
        // 403s (a terminating namespace of another test) are not about our roles.
        let log = std::fs::read_to_string(&controller.log)?;
        let denied = log
            .lines()
            .any(|l| l.contains("forbidden") && l.contains(" cannot "));
        ensure!(!denied, "RBAC denied something:\n{}", controller.log_tail());
        Ok::<_, anyhow::Error>(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}
