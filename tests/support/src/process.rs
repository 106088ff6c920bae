//! The product's binaries as child processes of a test: built once per test process, started
//! against the test cluster, killed (and their logs shown on failure) when dropped.

use crate::Cluster;
use anyhow::{Context, Result, anyhow, bail, ensure};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Builds a binary of the workspace once per test process and returns its path.
///
/// `cargo test` builds only the tested package's targets, so another package's binary is built
/// here. Cargo serialises concurrent builds of the shared target dir itself.
pub fn binary(package: &str, bin: &str) -> Result<PathBuf> {
    built(package, bin, false)
}

/// Like [`binary`], built with `--release` (benchmarks).
pub fn release_binary(package: &str, bin: &str) -> Result<PathBuf> {
    built(package, bin, true)
}

fn built(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<BTreeMap<String, std::result::Result<PathBuf, String>>>> =
        OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut built = built.lock().map_err(|_| anyhow!("binary cache poisoned"))?;
    let key = format!("{package}/{bin}/{release}");
    let entry = built
        .entry(key)
        .or_insert_with(|| build(package, bin, release).map_err(|e| format!("{e:#}")));
    entry.clone().map_err(|e| anyhow!("building {bin}: {e}"))
}

fn build(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    let repo = crate::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `cargo test` hands its per-package variables to this process. Build scripts (ring's among
    // them) rerun when those change, so passing them on would rebuild half the tree, twice.
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
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .args([
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&repo)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo build -p {package}"))?;
    ensure!(
        out.status.success(),
        "cargo build -p {package} failed ({})",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["target"]["name"] == bin)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo build reported no {bin} executable"))
}

/// A free TCP port on loopback (bound and released; the child binds it a moment later).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process with its log in a file.
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args` and `env`, stdout and stderr into a log file.
    pub fn start(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("storm-e2e-{name}-{}-{seq}.log", std::process::id()));
        let mut p = Self {
            name: name.into(),
            program,
            args,
            env,
            child: None,
            log,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(
            file,
            "---- start {} {}",
            self.program.display(),
            self.args.join(" ")
        )?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("killing")?;
            c.wait().context("waiting")?;
        }
        Ok(())
    }

    /// Starts the process again with the same arguments (after [`Process::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Fails if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.as_mut().map(Child::try_wait) {
            None => bail!("{} is not running", self.name),
            Some(Ok(Some(status))) => bail!(
                "{} exited ({status}); log:\n{}",
                self.name,
                self.log_tail(60)
            ),
            Some(Ok(None)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
        if std::thread::panicking() {
            eprintln!(
                "{} log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(80)
            );
        } else if std::env::var_os("STORM_KEEP_LOGS").is_some() {
            eprintln!(
                "STORM_KEEP_LOGS set: {} log kept at {}",
                self.name,
                self.log.display()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `storm-controller` running against the test cluster, limited to one namespace so tests that
/// run at the same time never act on each other's objects. It authenticates as the
/// `storm-controller` ServiceAccount with exactly the RBAC of `manifests/controller`
/// ([`Cluster::service_account_kubeconfig`]) unless a test passes its own `KUBECONFIG`; when it is
/// dropped, a request its RBAC denied fails the test (see [`Controller::allow_rbac_denials`]).
pub struct Controller {
    /// The process.
    pub process: Process,
    /// Port of /metrics, /healthz and /readyz.
    pub http_port: u16,
    rbac_denials_allowed: bool,
}

/// How the API server words an RBAC denial of the shipped ServiceAccounts:
/// `User "system:serviceaccount:storm-system:storm-controller" cannot get resource ...`.
/// Other 403s (a namespace of another test being terminated) are not about our roles.
pub fn rbac_denials(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("system:serviceaccount:storm-system:storm-") && l.contains(" cannot ")
        })
        .collect()
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.rbac_denials_allowed || std::thread::panicking() {
            return;
        }
        let log = std::fs::read_to_string(&self.process.log).unwrap_or_default();
        let denied = rbac_denials(&log);
        if !denied.is_empty() {
            panic!(
                "storm-controller was denied by the RBAC of manifests/controller ({} requests); \
                 grant it there, with the code path that needs it:\n{}",
                denied.len(),
                denied
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

impl Controller {
    /// For a test that shows what the controller does without a grant (an analysis Secret it may
    /// not read): RBAC denials in its log do not fail the test.
    pub fn allow_rbac_denials(&mut self) {
        self.rbac_denials_allowed = true;
    }

    /// Starts the controller for `namespace`.
    pub fn start(cluster: &Cluster, namespace: &str) -> Result<Self> {
        Self::start_program(
            cluster,
            namespace,
            binary("storm-controller", "storm-controller")?,
            "info,storm_controller=debug",
        )
    }

    /// Starts `program` (a controller build) for `namespace` with `RUST_LOG=log`.
    pub fn start_program(
        cluster: &Cluster,
        namespace: &str,
        program: PathBuf,
        log: &str,
    ) -> Result<Self> {
        Self::start_with(cluster, Some(namespace), program, log, &[], &[])
    }

    /// Starts the controller for `namespace` with `extra` arguments and `env` (which may replace
    /// KUBECONFIG).
    pub fn start_in(
        cluster: &Cluster,
        namespace: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_with(
            cluster,
            Some(namespace),
            binary("storm-controller", "storm-controller")?,
            "info,storm_controller=debug",
            extra,
            env,
        )
    }

    /// Starts the controller for every namespace, with `extra` arguments. Only for a suite that
    /// runs alone in its test binary: it acts on every StormService in the cluster.
    pub fn start_cluster_wide(cluster: &Cluster, extra: &[&str]) -> Result<Self> {
        Self::start_with(
            cluster,
            None,
            binary("storm-controller", "storm-controller")?,
            "info,storm_controller=debug",
            extra,
            &[],
        )
    }

    fn start_with(
        cluster: &Cluster,
        namespace: Option<&str>,
        program: PathBuf,
        log: &str,
        extra: &[&str],
        env_extra: &[(&str, &str)],
    ) -> Result<Self> {
        let http_port = free_port()?;
        let mut args = Vec::new();
        if !extra.iter().any(|a| a.starts_with("--leader-elect")) {
            args.push("--leader-elect=false".to_string());
        }
        if let Some(ns) = namespace {
            args.extend(["--namespace".to_string(), ns.to_string()]);
        }
        args.extend([
            "--metrics-addr".into(),
            format!("127.0.0.1:{http_port}"),
            // The suites' Prometheus and web stand-ins listen on loopback, which the egress
            // policy refuses unless allowed.
            "--analysis-egress-allow=127.0.0.1,localhost".into(),
            // The suites measure every second or two to stay short.
            "--analysis-min-interval=1s".into(),
        ]);
        args.extend(extra.iter().map(|a| (*a).to_string()));
        let mut env = vec![
            (
                "KUBECONFIG".to_string(),
                cluster
                    .service_account_kubeconfig("controller")?
                    .display()
                    .to_string(),
            ),
            ("RUST_LOG".to_string(), log.to_string()),
        ];
        for (k, v) in env_extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_string(), (*v).to_string()));
        }
        let process = Process::start("storm-controller", program, args, env)?;
        Ok(Self {
            process,
            http_port,
            rbac_denials_allowed: false,
        })
    }

    /// `GET path` on the controller's HTTP port: (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.http_port, path)
    }
}

/// A plain HTTP/1.1 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
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

#[cfg(test)]
mod tests {
    use super::rbac_denials;

    #[test]
    fn rbac_denials_are_the_api_servers_wording_for_our_service_accounts_only() {
        let log = concat!(
            "WARN reading: secrets \"t\" is forbidden: User \"system:serviceaccount:storm-system:storm-controller\" cannot get resource \"secrets\" in API group \"\" in the namespace \"a\"\n",
            "WARN creating: pods \"p\" is forbidden: unable to create new content in namespace b because it is being terminated\n",
            "WARN as a tenant: User \"system:serviceaccount:team:dev\" cannot get resource \"pods\"\n",
            "INFO fine\n",
        );
        let found = rbac_denials(log);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("cannot get resource \"secrets\""));
    }
}
