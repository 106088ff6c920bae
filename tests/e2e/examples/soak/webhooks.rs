//! The soak's admission webhook: two replicas behind a round-robin TCP relay standing in for the
//! Service and kube-proxy, registered with the shipped webhook configurations (failurePolicy as
//! shipped), each running as the storm-webhook ServiceAccount with the RBAC of manifests/webhook.
//! The `webhook_kill` fault SIGKILLs one replica during a burst of `kubectl apply`; the relay keeps
//! sending it connections until its endpoint would be removed ([`ENDPOINT_DELAY`]), as a Service
//! does until the Pod's readiness fails.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use storm_test_support::Cluster;
use storm_test_support::process::{Process, binary, free_port};

/// How long a killed replica still gets connections: until its readiness probe fails and its
/// endpoint leaves the Service.
pub const ENDPOINT_DELAY: Duration = Duration::from_secs(3);

pub struct Webhooks {
    replicas: Vec<Process>,
    ports: Vec<u16>,
    in_rotation: Arc<Vec<AtomicBool>>,
    ca: PathBuf,
}

impl Webhooks {
    /// Starts both replicas with the dev stack's serving certificate, the relay, and registers
    /// the webhook configurations with the relay's address.
    pub async fn start(cluster: &Cluster) -> Result<Self> {
        let dev = storm_test_support::webhook::running()?;
        let certs = dev.ca.parent().context("the dev CA has no directory")?;
        let bin = binary("storm-webhook", "storm-webhook")?;
        let kubeconfig = cluster.service_account_kubeconfig("webhook")?;
        let client_ca = cluster.pki_dir().join("webhook-client-ca.crt");
        let mut replicas = Vec::new();
        let mut ports = Vec::new();
        for i in 0..2 {
            let port = free_port()?;
            let mut args = vec![
                "--listen".to_string(),
                format!("127.0.0.1:{port}"),
                "--tls-cert".into(),
                certs.join("tls.crt").display().to_string(),
                "--tls-key".into(),
                certs.join("tls.key").display().to_string(),
                "--analysis-min-interval=1s".into(),
            ];
            if client_ca.is_file() {
                args.extend(["--client-ca".into(), client_ca.display().to_string()]);
            }
            let env = vec![
                ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
                ("RUST_LOG".to_string(), "info".to_string()),
            ];
            replicas.push(Process::start(
                &format!("webhook-{i}"),
                bin.clone(),
                args,
                env,
            )?);
            ports.push(port);
        }
        let in_rotation: Arc<Vec<AtomicBool>> =
            Arc::new((0..2).map(|_| AtomicBool::new(true)).collect());
        let this = Self {
            replicas,
            ports,
            in_rotation,
            ca: dev.ca.clone(),
        };
        for i in 0..2 {
            this.wait_ready(i).await?;
        }
        let service = relay(this.ports.clone(), this.in_rotation.clone()).await?;
        let out = std::process::Command::new(&bin)
            .args(["registration", "--url"])
            .arg(format!("https://127.0.0.1:{service}"))
            .arg("--ca-bundle")
            .arg(&this.ca)
            .output()?;
        ensure!(out.status.success(), "storm-webhook registration failed");
        cluster
            .kubectl_apply(&out.stdout)
            .context("registering the webhook replicas")?;
        Ok(this)
    }

    async fn wait_ready(&self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = tokio::process::Command::new("curl")
                .args(["-fsS", "--max-time", "2", "--cacert"])
                .arg(&self.ca)
                .arg(format!("https://127.0.0.1:{}/readyz", self.ports[i]))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await?
                .success();
            if ok {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "webhook-{i} not ready within 60 s:\n{}",
                self.replicas[i].log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL of replica `i`; it leaves the relay's rotation [`ENDPOINT_DELAY`] later.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.replicas[i].kill()?;
        let rotation = self.in_rotation.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ENDPOINT_DELAY).await;
            rotation[i].store(false, Ordering::SeqCst);
        });
        Ok(())
    }

    /// Starts replica `i` again and puts it back once it is ready.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.replicas[i].restart()?;
        self.wait_ready(i).await?;
        self.in_rotation[i].store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Fails if a replica that should run has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        for r in &mut self.replicas {
            r.ensure_running()?;
        }
        Ok(())
    }

    /// Panics in the replicas' logs.
    pub fn panics(&self) -> usize {
        self.replicas
            .iter()
            .map(|r| r.log_tail(usize::MAX).matches("panicked").count())
            .sum()
    }
}

impl Drop for Webhooks {
    /// Unregisters the configurations that point at the relay (as `dev.sh down` does): with
    /// failurePolicy Fail they would refuse every StormService write once the soak is gone. The
    /// next `dev.sh up` registers the dev webhook again.
    fn drop(&mut self) {
        if let Ok(cluster) = storm_test_support::cluster() {
            let _ = cluster
                .kubectl()
                .args([
                    "delete",
                    "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                    "storm-webhook",
                    "--ignore-not-found",
                ])
                .output();
        }
    }
}

/// Round-robin over the backends in rotation; a connection to a backend that is gone is dropped,
/// as kube-proxy drops it (no retry on another endpoint).
async fn relay(backends: Vec<u16>, in_rotation: Arc<Vec<AtomicBool>>) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = backends.len();
            let start = next.fetch_add(1, Ordering::Relaxed);
            let Some(i) = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| in_rotation[i].load(Ordering::SeqCst))
            else {
                continue;
            };
            let port = backends[i];
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Ok(port)
}

/// What one `kubectl apply` of the burst got.
pub struct Applied {
    pub name: String,
    pub manifest: Value,
    pub result: std::result::Result<(), String>,
    pub took: Duration,
}

/// `kubectl apply` of every manifest at once (real kubectl, admin identity, 30 s request timeout).
pub async fn apply_burst(
    cluster: &Cluster,
    namespace: &str,
    manifests: Vec<(String, Value)>,
) -> Vec<Applied> {
    let runs = manifests.into_iter().map(|(name, manifest)| {
        let mut cmd = tokio::process::Command::from(cluster.kubectl());
        cmd.args(["-n", namespace, "apply", "--request-timeout=30s", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        async move {
            let start = Instant::now();
            let result = async {
                let mut child = cmd.spawn().map_err(|e| e.to_string())?;
                let mut stdin = child.stdin.take().ok_or("no stdin")?;
                tokio::io::AsyncWriteExt::write_all(&mut stdin, manifest.to_string().as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                drop(stdin);
                let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
                }
            }
            .await;
            Applied {
                name,
                manifest,
                result,
                took: start.elapsed(),
            }
        }
    });
    futures::future::join_all(runs).await
}
