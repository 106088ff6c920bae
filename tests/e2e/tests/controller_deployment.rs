//! End-to-end tests of `storm-controller` as it is deployed: Lease-based leader election (a
//! standby stays idle, takes over an expired Lease, exits when it loses it), graceful SIGTERM
//! shutdown that releases the Lease, and the ServiceAccount + RBAC of manifests/controller.
//! Each test's Lease lives in its own namespace (except the RBAC test's, in storm-system as
//! deployed), so tests and other suites never compete for it.
//!
//! Run: `cargo test -p storm-e2e --test controller_deployment`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use storm_shared::keys::{AIBRIX_LABEL_ROLESET_NAME, LABEL_NAME, LABEL_REVISION};
use storm_shared::types::roleset::{RoleSet, RoleSetSpec, RoleSpec};
use storm_test_support::process::{binary, free_port, http_get};
use storm_test_support::{Cluster, TestNamespace, dump_logs_on_error, holds_for, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

fn controller_binary() -> Result<PathBuf> {
    binary("storm-controller", "storm-controller")
}

/// A running `storm-controller` with a test's own arguments; killed when dropped. Unlike
/// `storm_test_support::process::Process` it exposes what these tests look at: the exit code and
/// SIGTERM.
struct ControllerProcess {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl ControllerProcess {
    /// Starts the controller with `args` (plus a free local metrics port) and extra `env`.
    fn start(cluster: &Cluster, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
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

    /// `GET path` on the controller's HTTP port: (status code, body).
    fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.metrics_port, path)
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

/// A one-container role template.
fn role(name: &str, replicas: i32) -> RoleSpec {
    RoleSpec {
        name: name.to_string(),
        replicas: Some(replicas),
        template: std::sync::Arc::new(PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), format!("llm-{name}"))].into()),
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
        }),
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
    let labels: BTreeMap<String, String> = [
        (LABEL_NAME.to_string(), "llm".to_string()),
        (LABEL_REVISION.to_string(), "r1".to_string()),
    ]
    .into();
    rs.metadata.labels = Some(labels);
    rs
}

async fn pods_of(api: &Api<Pod>, roleset: &str) -> Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("{AIBRIX_LABEL_ROLESET_NAME}={roleset}"));
    Ok(api.list(&lp).await?.items)
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
    ns.cluster().install_crds()?;
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
        let mut controller = ControllerProcess::start(
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
                &roleset("llm-r1-0", vec![role("decode", 1)]),
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
    ns.cluster().install_crds()?;
    let leases: Api<Lease> = ns.api();
    let result = async {
        let mut controller = ControllerProcess::start(
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

#[tokio::test]
async fn runs_under_its_own_service_account_and_rbac() -> Result<()> {
    let ns = TestNamespace::new("rs-rbac").await?;
    let cluster = ns.cluster();
    cluster.install_crds()?;
    let result = async {
        let kubeconfig = cluster.service_account_kubeconfig("controller")?;
        let kubeconfig = kubeconfig.to_str().context("non-UTF-8 temp path")?;
        let identity = format!("e2e-rbac-{}", std::process::id());
        // All namespaces, as deployed (cluster-wide list/watch), and leader election in
        // storm-system (the namespaced Lease Role).
        let mut controller = ControllerProcess::start(
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
                &roleset("llm-r1-0", vec![role("prefill", 1), role("decode", 2)]),
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

/// Analysis Secrets are readable by the controller only where the admin binds the shipped
/// storm-controller-analysis-secrets ClusterRole in a namespace (the command in
/// manifests/controller/analysis-secrets.yaml), and only with get.
#[tokio::test]
async fn analysis_secrets_are_readable_only_where_the_admin_grants_them() -> Result<()> {
    let ns = TestNamespace::new("rbac-secrets").await?;
    let other = TestNamespace::new("rbac-nosecrets").await?;
    let cluster = ns.cluster();
    let result = async {
        cluster.service_account_kubeconfig("controller")?;
        cluster.kubectl_run(["apply", "-f", "manifests/controller/analysis-secrets.yaml"])?;
        let can = |verb: &str, namespace: &str| -> Result<bool> {
            let out = cluster
                .kubectl()
                .args([
                    "auth",
                    "can-i",
                    verb,
                    "secrets",
                    "-n",
                    namespace,
                    "--as=system:serviceaccount:storm-system:storm-controller",
                ])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
        };
        ensure!(!can("get", ns.name())?, "Secrets readable before any grant");
        ns.grant_analysis_secrets()?;
        wait_for("the grant", Duration::from_secs(20), || async {
            Ok(can("get", ns.name())?.then_some(()))
        })
        .await?;
        ensure!(!can("list", ns.name())?, "Secrets listable");
        ensure!(
            !can("get", other.name())?,
            "Secrets readable in a namespace without the grant"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    dump_logs_on_error(result)?;
    other.cleanup().await?;
    ns.cleanup().await
}
