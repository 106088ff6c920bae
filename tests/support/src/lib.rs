//! Test harness for end-to-end suites.
//!
//! [`cluster()`] starts the local control plane (`tests/controlplane/cluster.sh up`) or
//! attaches to the one already running, once per test process and under a file lock so
//! parallel test binaries never race. Every test then gets its own namespace through
//! [`TestNamespace`], a [`kube::Client`] from [`Cluster::client`], a preset `kubectl`
//! command from [`Cluster::kubectl`], polling helpers ([`wait_for`]) and component log
//! tails ([`dump_logs`], [`dump_logs_on_error`]) for failure reports.
//!
//! Environment:
//! - `STORM_CLUSTER_DIR`: state dir of the control plane (default `<repo>/.storm/cluster`),
//!   shared with `cluster.sh`.
//! - `STORM_KEEP_NAMESPACES=1`: do not delete test namespaces (debugging).

pub mod bench;
pub mod process;
pub mod prometheus;
pub mod webhook;

use std::fmt::Debug;
use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Label put on every namespace created by [`TestNamespace`].
pub const TEST_NAMESPACE_LABEL: &str = "storm.test/e2e";
/// Pod label: kwok drives the Pod to phase `Failed` (containers terminated, exit code 1).
pub const FAIL_LABEL: &str = "storm.test/fail";
/// Pod label: kwok makes the Pod look crash-looping: `Running`, containers waiting in
/// `CrashLoopBackOff` after exit code 1, never `Ready`. Prefer it over [`FAIL_LABEL`] for
/// Pods owned by a ReplicaSet, which replaces `Failed` Pods endlessly.
pub const CRASH_LOOP_LABEL: &str = "storm.test/crash-loop";
/// Pod label: kwok makes the Pod `Running` but never `Ready`.
pub const NEVER_READY_LABEL: &str = "storm.test/never-ready";

/// The local control plane this test process runs against.
#[derive(Debug, Clone)]
pub struct Cluster {
    kubeconfig: PathBuf,
    state_dir: PathBuf,
    repo_root: PathBuf,
}

static CLUSTER: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();

/// Repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// `STORM_CLUSTER_DIR` (relative to the repo root when relative, as in `cluster.sh`) or
/// `<repo>/.storm/cluster`.
fn state_dir(repo: &Path) -> PathBuf {
    match std::env::var_os("STORM_CLUSTER_DIR") {
        Some(dir) if !dir.is_empty() => repo.join(dir),
        _ => repo.join(".storm").join("cluster"),
    }
}

/// Installs rustls' ring crypto provider as the process default (once; a provider that is
/// already installed is fine).
pub fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err means some provider is already installed: exactly what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Starts the local control plane or attaches to the running one. Runs `cluster.sh up` at
/// most once per process, holding a file lock next to the state dir while it does.
pub fn cluster() -> Result<&'static Cluster> {
    install_crypto_provider();
    CLUSTER
        .get_or_init(|| start_or_attach().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("local control plane unavailable: {e}"))
}

fn start_or_attach() -> Result<Cluster> {
    let repo = repo_root();
    let state = state_dir(&repo);
    let parent = state
        .parent()
        .context("cluster state dir has no parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut lock_path = state.clone().into_os_string();
    lock_path.push(".harness.lock");
    let lock_path = PathBuf::from(lock_path);
    let lock = File::create(&lock_path)
        .with_context(|| format!("creating lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;

    let script = repo.join("tests/controlplane/cluster.sh");
    let started = Instant::now();
    // stdout carries only the kubeconfig path; progress (stderr) goes to the test output.
    let output = Command::new(&script)
        .arg("up")
        .current_dir(&repo)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} up", script.display()))?;
    drop(lock);
    if !output.status.success() {
        bail!(
            "{} up failed ({}); component logs: {}",
            script.display(),
            output.status,
            state.join("logs").display()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let kubeconfig = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| state.join("kubeconfig"));
    if !kubeconfig.is_file() {
        bail!(
            "cluster.sh up did not leave a kubeconfig at {}",
            kubeconfig.display()
        );
    }
    eprintln!(
        "storm-test-support: control plane ready in {:.1}s, KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        kubeconfig.display()
    );
    Ok(Cluster {
        kubeconfig,
        state_dir: state,
        repo_root: repo,
    })
}

impl Cluster {
    /// Path of the admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig authenticating as the ServiceAccount of `component` (`controller` or
    /// `webhook`), with its RBAC applied exactly as `manifests/` ship it (`dev.sh kubeconfig`):
    /// what the suites run the binaries with, so a permission missing from the manifests fails a
    /// suite as it would fail a cluster. Once per test process and component.
    pub fn service_account_kubeconfig(&self, component: &str) -> Result<PathBuf> {
        static KUBECONFIGS: std::sync::Mutex<Vec<(String, PathBuf)>> =
            std::sync::Mutex::new(Vec::new());
        let mut known = KUBECONFIGS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, path)) = known.iter().find(|(c, _)| c == component) {
            return Ok(path.clone());
        }
        let script = self.repo_root.join("tests/dev/dev.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .args(["kubeconfig", component])
            .current_dir(&self.repo_root)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {} kubeconfig {component}", script.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "dev.sh kubeconfig {component} failed ({})",
            out.status
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        anyhow::ensure!(
            path.is_file(),
            "dev.sh kubeconfig printed no file: {path:?}"
        );
        known.push((component.to_string(), path.clone()));
        Ok(path)
    }

    /// The control plane's state dir (certs, logs, PIDs).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Directory holding one log file per component.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// PEM of the cluster CA (signs the API server's and the admin's certificates); handy
    /// as a webhook `caBundle` when the webhook serves a certificate from the same CA.
    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        let path = self.state_dir.join("pki").join("ca.crt");
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Directory with the cluster PKI (`ca.crt`, `ca.key`, ...): sign a webhook serving
    /// certificate with the CA and [`Cluster::ca_pem`] is its `caBundle`.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    /// Applies every `manifests/crds/*.yaml` with `kubectl apply --server-side` (once per
    /// process) and waits until the CRDs are Established. Returns the applied
    /// `customresourcedefinition.apiextensions.k8s.io/<name>` resource names; empty when the
    /// directory holds no manifests.
    ///
    /// Install CRDs early: the garbage collector re-discovers resources every 30 s, so until
    /// then it may not act on owner references to custom resources of new CRDs.
    pub fn install_crds(&self) -> Result<Vec<String>> {
        static CRDS: OnceLock<std::result::Result<Vec<String>, String>> = OnceLock::new();
        CRDS.get_or_init(|| self.apply_crds().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow!("installing CRDs: {e}"))
    }

    fn apply_crds(&self) -> Result<Vec<String>> {
        let dir = self.repo_root.join("manifests").join("crds");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        self.apply_crd_files(&files)
    }

    /// Applies the third-party CRDs the traffic routers write to (Istio VirtualService and
    /// DestinationRule, Gateway API HTTPRoute, SMI TrafficSplit), as their projects publish them,
    /// with `kubectl apply --server-side` and waits until they are Established. Idempotent; runs
    /// once per process. The files come from `tests/controlplane/thirdparty-crds.sh`, which pins
    /// the upstream modules in `tests/controlplane/thirdparty/go.mod` and caches the extracted
    /// YAML per version outside the repo (`make thirdparty-crds`). Returns the applied
    /// `customresourcedefinition.apiextensions.k8s.io/<name>` resource names.
    pub fn install_thirdparty_crds(&self) -> Result<Vec<String>> {
        static CRDS: OnceLock<std::result::Result<Vec<String>, String>> = OnceLock::new();
        CRDS.get_or_init(|| self.apply_thirdparty_crds().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow!("installing third-party CRDs: {e}"))
    }

    fn apply_thirdparty_crds(&self) -> Result<Vec<String>> {
        let script = self.repo_root.join("tests/controlplane/thirdparty-crds.sh");
        let output = Command::new(&script)
            .current_dir(&self.repo_root)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !output.status.success() {
            bail!("{} failed ({})", script.display(), output.status);
        }
        let files: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        if files.is_empty() {
            bail!("{} listed no CRD files", script.display());
        }
        self.apply_crd_files(&files)
    }

    /// Server-side applies every file and waits until the CRDs in them are Established.
    pub fn apply_crd_files(&self, files: &[PathBuf]) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for file in files {
            let mut args: Vec<&std::ffi::OsStr> = [
                "apply",
                "--server-side",
                "--force-conflicts",
                "-o",
                "name",
                "-f",
            ]
            .iter()
            .map(std::ffi::OsStr::new)
            .collect();
            args.push(file.as_os_str());
            let out = self.kubectl_run(args)?;
            names.extend(
                out.lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("customresourcedefinition"))
                    .map(str::to_string),
            );
        }
        if !files.is_empty() && names.is_empty() {
            bail!("no CustomResourceDefinition in {files:?}");
        }
        if !names.is_empty() {
            let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
            wait.extend(names.iter().map(String::as_str));
            self.kubectl_run(wait)?;
        }
        Ok(names)
    }

    /// Repository root, for reaching `manifests/` and fixtures.
    pub fn repo_root(&self) -> &Path {
        &self.repo_root
    }

    /// A fresh client for the admin kubeconfig. Create one per test: a client is tied to the
    /// Tokio runtime it was built on, and every `#[tokio::test]` has its own runtime.
    pub async fn client(&self) -> Result<Client> {
        install_crypto_provider();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading kubeconfig")?;
        Client::try_from(config).context("building kube client")
    }

    /// `kubectl` with `KUBECONFIG` set to the admin kubeconfig, run from the repo root.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .current_dir(&self.repo_root)
            .stdin(Stdio::null());
        cmd
    }

    /// `kubectl apply -f -` of `manifest` (YAML or JSON) as the admin, failing with kubectl's
    /// stderr unless it exits 0.
    pub fn kubectl_apply(&self, manifest: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl apply")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(manifest)?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Runs `kubectl` with `args`, failing with its stderr unless it exits 0; returns stdout.
    pub fn kubectl_run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.kubectl();
        cmd.args(args);
        let shown = format!("{cmd:?}");
        let out = cmd.output().with_context(|| format!("running {shown}"))?;
        if !out.status.success() {
            bail!(
                "{shown} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates namespace `name` unless it exists (another suite may create it at the same
    /// moment: that is not an error).
    pub fn ensure_namespace(&self, name: &str) -> Result<()> {
        let found =
            self.kubectl_run(["get", "namespace", name, "--ignore-not-found", "-o", "name"])?;
        if found.trim().is_empty() {
            let _ = self.kubectl_run(["create", "namespace", name]);
        }
        Ok(())
    }

    /// The last `lines` lines of every component log, with headers naming the files.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let dir = self.log_dir();
        let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return format!("(no component logs in {}: {e})\n", dir.display()),
        };
        files.sort();
        for file in files {
            out.push_str(&format!(
                "===== {} (last {lines} lines) =====\n",
                file.display()
            ));
            match tail(&file, lines) {
                Ok(text) => out.push_str(&text),
                Err(e) => out.push_str(&format!("(unreadable: {e})\n")),
            }
        }
        out
    }
}

/// The last `lines` lines of `path` (reads at most the final 256 KiB).
fn tail(path: &Path, lines: usize) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(256 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = all[from..].join("\n");
    out.push('\n');
    Ok(out)
}

/// Prints the tails of all component logs to stderr (shown for failing tests).
pub fn dump_logs() {
    match CLUSTER.get() {
        Some(Ok(cluster)) => eprintln!("{}", cluster.log_tails(60)),
        _ => {
            let dir = state_dir(&repo_root()).join("logs");
            eprintln!(
                "control plane not started by this process; logs (if any) in {}",
                dir.display()
            );
        }
    }
}

/// Passes `result` through, dumping component log tails first when it is an error.
pub fn dump_logs_on_error<T, E: Debug>(
    result: std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    if let Err(e) = &result {
        eprintln!("test failed: {e:?}");
        dump_logs();
    }
    result
}

/// Polls `check` every 250ms until it yields `Some(value)` or `timeout` passes. Errors
/// from `check` count as "not yet" and the last one is reported on timeout, together with
/// the control-plane log directory.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            let logs = state_dir(&repo_root()).join("logs");
            let last = last_error
                .map(|e| format!("; last error: {e:#}"))
                .unwrap_or_default();
            bail!(
                "timed out after {timeout:?} waiting for {what}{last} (control-plane logs: {})",
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asserts that `check` keeps holding (returns `Ok(true)`) for the whole `period`.
pub async fn holds_for<F, Fut>(what: &str, period: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if !check().await.with_context(|| format!("checking {what}"))? {
            bail!("{what} stopped holding before {period:?} passed");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Whether the Pod's `Ready` condition is `True`.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Pod's phase (`Pending`, `Running`, `Failed`, ...), empty when unset.
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// YAML documents (a multi-document stream, as `kubectl kustomize` or `helm template` print it)
/// as JSON values, empty ones dropped.
pub fn yaml_documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(doc).context("parsing YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A namespace of its own for one test, deleted when dropped (or by [`TestNamespace::cleanup`]).
pub struct TestNamespace {
    name: String,
    client: Client,
    cluster: &'static Cluster,
    deleted: bool,
}

impl TestNamespace {
    /// Starts/attaches to the cluster and creates a uniquely named namespace
    /// `e2e-<prefix>-<suffix>`, waiting until its `default` ServiceAccount exists so Pods
    /// can be created right away.
    pub async fn new(prefix: &str) -> Result<Self> {
        let cluster = cluster()?;
        // As a real cluster would have it: the admission webhook registered (failurePolicy as
        // shipped) in front of every suite. STORM_E2E_NO_WEBHOOK=1 runs without it.
        if std::env::var_os("STORM_E2E_NO_WEBHOOK").is_none() {
            webhook::running()?;
        }
        let client = cluster.client().await?;
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let this = Self {
            name,
            client,
            cluster,
            deleted: false,
        };
        let sas: Api<ServiceAccount> = this.api();
        wait_for(
            &format!("ServiceAccount default in {}", this.name),
            Duration::from_secs(30),
            || async { Ok(sas.get_opt("default").await?.map(|_| ())) },
        )
        .await?;
        Ok(this)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client this namespace was created with.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The cluster this namespace lives in.
    pub fn cluster(&self) -> &'static Cluster {
        self.cluster
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// What an admin does for a team that may use Secrets in analysis (the command in
    /// `manifests/controller/analysis-secrets.yaml`): binds the shipped
    /// `storm-controller-analysis-secrets` ClusterRole to the controller in this namespace.
    pub fn grant_analysis_secrets(&self) -> Result<()> {
        self.cluster
            .kubectl_run(["apply", "-f", "manifests/controller/analysis-secrets.yaml"])?;
        self.cluster.kubectl_run([
            "-n",
            &self.name,
            "create",
            "rolebinding",
            "storm-controller-analysis-secrets",
            "--clusterrole=storm-controller-analysis-secrets",
            "--serviceaccount=storm-system:storm-controller",
        ])?;
        Ok(())
    }

    /// `kubectl` preset with the admin kubeconfig and `--namespace <this>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd = self.cluster.kubectl();
        cmd.arg("--namespace").arg(&self.name);
        cmd
    }

    /// Deletes the namespace now (without waiting for finalization).
    pub async fn cleanup(mut self) -> Result<()> {
        self.deleted = true;
        if keep_namespaces() {
            eprintln!("STORM_KEEP_NAMESPACES set: keeping namespace {}", self.name);
            return Ok(());
        }
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        self.release_finalizers();
        Ok(())
    }

    /// A test's controller stops with its test: a StormService with traffic routers keeps the
    /// controller's `stormservice.aibrix.ai/traffic` finalizer, and a namespace being deleted
    /// would wait for it forever. The harness removes it, as an admin would after uninstalling.
    fn release_finalizers(&self) {
        let Ok(out) = self
            .cluster
            .kubectl()
            .args(["-n", &self.name, "get", "stormservices", "-o", "name"])
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        for obj in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self
                .cluster
                .kubectl()
                .args(["-n", &self.name, "patch", obj, "--type", "merge", "-p"])
                .arg(r#"{"metadata":{"finalizers":null}}"#)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if keep_namespaces() {
            eprintln!("STORM_KEEP_NAMESPACES set: keeping namespace {}", self.name);
            return;
        }
        // Drop cannot await and may run outside any runtime: use kubectl, don't wait.
        let result = self
            .cluster
            .kubectl()
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(result, Ok(s) if s.success()) {
            eprintln!("warning: could not delete test namespace {}", self.name);
        }
        self.release_finalizers();
    }
}

fn keep_namespaces() -> bool {
    std::env::var("STORM_KEEP_NAMESPACES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A DNS-label-safe unique name `e2e-<prefix>-<suffix>` (at most 63 characters).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean = clean.trim_matches('-').to_string();
    clean.truncate(40);
    let clean = clean.trim_end_matches('-');
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let seed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let suffix = base36(seed.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 16);
    if clean.is_empty() {
        format!("e2e-{suffix}")
    } else {
        format!("e2e-{clean}-{suffix}")
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    for _ in 0..8 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels_and_distinct() {
        let a = unique_name("Pod Ready/Test_");
        let b = unique_name("Pod Ready/Test_");
        assert_ne!(a, b);
        for n in [&a, &b, &unique_name(""), &unique_name(&"x".repeat(100))] {
            assert!(n.len() <= 63, "{n}");
            assert!(n.starts_with("e2e-"), "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(!n.ends_with('-'), "{n}");
        }
        assert!(a.starts_with("e2e-pod-ready-test-"), "{a}");
    }

    #[test]
    fn tail_returns_last_lines() {
        let dir = std::env::temp_dir().join(unique_name("tail"));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.log");
        fs::write(&file, "1\n2\n3\n4\n").unwrap();
        assert_eq!(tail(&file, 2).unwrap(), "3\n4\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
