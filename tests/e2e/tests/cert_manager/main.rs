//! cert-manager for real: cert-manager's own controller and CA injector (built from its Go module
//! by `tests/controlplane/cert-manager.sh`) run against the local control plane with the
//! Issuers and Certificates of `certs/cert-manager`. The Certificate is issued, the CA injected
//! into both webhook configurations, our webhook serves the issued pair to the API server, and a
//! renewal forced as `cmctl renew` forces it is served without a restart and without one failed
//! admission.
//!
//! Isolation from the suites running beside it: the cert-manager objects live in this test's
//! namespace instead of `storm-system`, the controller and the CA injector are limited to that
//! namespace (`--namespace`), and the webhook configurations have names of their own and a
//! namespaceSelector matching only this namespace. The shared `storm-webhook` configurations are
//! never touched.

mod background;
mod overlay;
mod probes;
mod secret_volume;

use anyhow::{Context, Result, ensure};
use background::Background;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use overlay::{Overlay, SERVING};
use probes::{
    DENIED_CREATES, RELOADS, REQUESTS, VALIDATED_CREATES, connections_to, counter, serial_of,
    served_serial, webhook_get,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use storm_test_support::process::{binary, rbac_denials};
use storm_test_support::{
    Cluster, TestNamespace, dump_logs_on_error, unique_name, wait_for, yaml_documents,
};

/// The Secrets of `certs/cert-manager/issuers.yaml`: the serving pair's and the CA's.
const SERVING_SECRET: &str = "storm-webhook-tls";
const CA_SECRET: &str = "storm-webhook-ca";
const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn cert_manager_issues_injects_and_renews_without_a_restart_or_a_failed_admission()
-> Result<()> {
    let ns = TestNamespace::new("cert-manager").await?;
    let mut run = Run {
        processes: Vec::new(),
        configuration: unique_name("e2e-cert-manager"),
        dir: std::env::temp_dir().join(format!("storm-e2e-{}", ns.name())),
    };
    let result = scenario(&ns, &mut run).await;
    let failed = result.is_err();
    let result = dump_logs_on_error(result);
    run.finish(ns.cluster(), failed);
    result?;
    ns.cleanup().await
}

/// Everything the test started, stopped and removed at the end.
struct Run {
    processes: Vec<Background>,
    /// The name of both webhook configurations.
    configuration: String,
    /// The mounted Secret, the webhook's port file, the CA file.
    dir: PathBuf,
}

impl Run {
    fn finish(mut self, cluster: &Cluster, failed: bool) {
        // The configurations go first: nothing is sent to a webhook that is about to stop.
        let _ = cluster
            .kubectl()
            .args([
                "delete",
                "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                &self.configuration,
                "--ignore-not-found",
            ])
            .output();
        for p in &mut self.processes {
            p.keep_log = failed;
        }
        self.processes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn scenario(ns: &TestNamespace, run: &mut Run) -> Result<()> {
    let started = Instant::now();
    let cluster = ns.cluster();
    cluster.install_crds()?;
    start_cert_manager(ns, run)?;

    let overlay = Overlay::render(cluster)?;
    let issued = issue(ns, run, &overlay).await?;

    // The Secret as a kubelet mounts it, kept in step while the test runs.
    let tls = run.dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    let stop_projection = Arc::new(AtomicBool::new(false));
    let projection = tokio::spawn({
        let (secrets, tls, stop) = (ns.api::<Secret>(), tls.clone(), stop_projection.clone());
        async move { secret_volume::keep_projected(secrets, SERVING_SECRET, &tls, stop).await }
    });
    wait_for("the Secret mounted", TIMEOUT, || async {
        Ok(std::fs::read(tls.join("tls.key")).ok().map(|_| ()))
    })
    .await?;

    let webhook = start_webhook(ns, run, &tls, &issued.ca).await?;
    inject(ns, run, &overlay, &webhook, &issued).await?;
    admission_works(ns, &webhook).await?;
    renew_under_load(ns, run, &webhook, &issued).await?;

    stop_projection.store(true, Ordering::Relaxed);
    let projected = projection.await??;
    let log = run.processes[webhook.process].log();
    let denied = rbac_denials(&log);
    ensure!(
        denied.is_empty(),
        "the webhook was denied by the RBAC of manifests/webhook:\n{}",
        denied.join("\n")
    );
    eprintln!(
        "{projected} versions of the Secret mounted; whole test {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds cert-manager (once per machine, then cached), installs its CRDs and starts its
/// controller and CA injector: as a cluster runs them, but out of cluster, limited to this
/// namespace, as the admin (its chart's RBAC is not installed), without leader election (see the
/// mains in tests/controlplane/certmanager).
fn start_cert_manager(ns: &TestNamespace, run: &mut Run) -> Result<()> {
    let cluster = ns.cluster();
    let script = cluster
        .repo_root()
        .join("tests/controlplane/cert-manager.sh");
    let status = Command::new(&script)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(status.success(), "{} failed ({status})", script.display());
    let out = Command::new(&script).arg("--print-dir").output()?;
    ensure!(
        out.status.success(),
        "{} --print-dir failed",
        script.display()
    );
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    install_crds(cluster, &dir.join("crds"))?;

    let scope = [
        format!("--namespace={}", ns.name()),
        format!("--kubeconfig={}", cluster.kubeconfig().display()),
        "-v=2".to_string(),
    ];
    let mut controller = scope.to_vec();
    // Only ClusterIssuers read from it, and a namespaced controller runs none.
    controller.push(format!("--cluster-resource-namespace={}", ns.name()));
    for (name, args) in [("controller", &controller[..]), ("cainjector", &scope[..])] {
        run.processes.push(Background::start(
            cluster,
            &format!("cert-manager-{name}.{}", ns.name()),
            &dir.join(name),
            args,
            &[],
        )?);
    }
    Ok(())
}

/// cert-manager's CRDs, from the module the binaries were built from.
fn install_crds(cluster: &Cluster, dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    // Right after a CRD is first created, `kubectl wait` can find no status yet and give up;
    // the next attempt finds them all.
    let mut attempt = 0;
    loop {
        match cluster.apply_crd_files(&files) {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 2 => {
                eprintln!("installing cert-manager's CRDs, again: {e:#}");
                attempt += 1;
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What cert-manager issued from the overlay.
struct Issued {
    /// The CA Certificate's `ca.crt`.
    ca: Vec<u8>,
    /// The serial of the serving certificate.
    serial: String,
    /// The Certificates of the test's namespace.
    certificates: Api<DynamicObject>,
}

/// Applies the overlay's Issuers and Certificates and waits until the serving Certificate is
/// Ready: issued from the CA into its Secret.
async fn issue(ns: &TestNamespace, run: &mut Run, overlay: &Overlay) -> Result<Issued> {
    let applied = Instant::now();
    for obj in overlay.issuers(ns.name())? {
        ns.cluster()
            .kubectl_apply(serde_json::to_string(&obj)?.as_bytes())?;
    }
    let certificates: Api<DynamicObject> = Api::namespaced_with(
        ns.client(),
        ns.name(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "cert-manager.io",
            "v1",
            "Certificate",
        )),
    );
    let deadline = Instant::now() + TIMEOUT;
    loop {
        // A cert-manager that fails to start says so here rather than as a timeout.
        for p in &mut run.processes {
            p.ensure_running()?;
        }
        if condition_true(&certificates.get(SERVING).await?, "Ready") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "Certificate {SERVING} not Ready after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "Certificate {SERVING} Ready {:.1}s after the apply",
        applied.elapsed().as_secs_f64()
    );
    let secrets = ns.api::<Secret>();
    let serving = secrets.get(SERVING_SECRET).await?;
    let ca = secret_field(&secrets.get(CA_SECRET).await?, "ca.crt")?;
    ensure!(
        secret_field(&serving, "ca.crt")? == ca,
        "the serving Secret's ca.crt is not the CA Certificate's"
    );
    Ok(Issued {
        ca,
        serial: serial_of(&secret_field(&serving, "tls.crt")?)?,
        certificates,
    })
}

/// Our webhook, serving the mounted pair.
struct Webhook {
    /// Its index in [`Run::processes`].
    process: usize,
    pid: u32,
    port: u16,
    /// The CA, for reading its certificate and metrics over HTTPS.
    ca_file: PathBuf,
}

impl Webhook {
    fn metrics(&self) -> Result<String> {
        webhook_get(self.port, &self.ca_file, "/metrics")
    }
}

/// Starts our webhook on the mounted files, as dev.sh starts it, as its ServiceAccount.
async fn start_webhook(
    ns: &TestNamespace,
    run: &mut Run,
    tls: &Path,
    ca: &[u8],
) -> Result<Webhook> {
    let cluster = ns.cluster();
    let port_file = run.dir.join("port");
    let mut args = vec![
        "serve".to_string(),
        "--listen=127.0.0.1:0".to_string(),
        format!("--port-file={}", port_file.display()),
        format!("--tls-cert={}", tls.join("tls.crt").display()),
        format!("--tls-key={}", tls.join("tls.key").display()),
    ];
    let client_ca = cluster.pki_dir().join("webhook-client-ca.crt");
    if client_ca.is_file() {
        args.push(format!("--client-ca={}", client_ca.display()));
    }
    run.processes.push(Background::start(
        cluster,
        &format!("storm-webhook.{}", ns.name()),
        &binary("storm-webhook", "storm-webhook")?,
        &args,
        &[(
            "KUBECONFIG",
            &cluster.service_account_kubeconfig("webhook")?,
        )],
    )?);
    let process = run.processes.len() - 1;
    let port = wait_for("the webhook's port file", TIMEOUT, || async {
        Ok(std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok()))
    })
    .await?;
    let ca_file = run.dir.join("ca.crt");
    std::fs::write(&ca_file, ca)?;
    Ok(Webhook {
        process,
        pid: run.processes[process].pid(),
        port,
        ca_file,
    })
}

/// Registers both configurations, annotated as the overlay annotates them, and waits until the CA
/// injector has written the CA into the caBundle of every webhook of both; the webhook serves
/// the issued certificate, which that CA verifies for 127.0.0.1.
async fn inject(
    ns: &TestNamespace,
    run: &Run,
    overlay: &Overlay,
    webhook: &Webhook,
    issued: &Issued,
) -> Result<()> {
    let registered = Instant::now();
    for obj in overlay.configurations(&run.configuration, ns.name(), webhook.port)? {
        ns.cluster()
            .kubectl_apply(serde_json::to_string(&obj)?.as_bytes())?;
    }
    wait_for(
        "the CA injected into both configurations",
        TIMEOUT,
        || async {
            Ok(ca_bundles_are(ns, &run.configuration, &issued.ca)
                .await?
                .then_some(()))
        },
    )
    .await?;
    eprintln!(
        "the CA injected into both configurations {:.1}s after they were applied",
        registered.elapsed().as_secs_f64()
    );
    ensure!(
        served_serial(webhook.port, &webhook.ca_file)? == issued.serial,
        "the webhook does not serve the issued certificate"
    );
    wait_for("the webhook ready", TIMEOUT, || async {
        Ok(webhook_get(webhook.port, &webhook.ca_file, "/readyz")
            .ok()
            .map(|_| ()))
    })
    .await
}

/// Every webhook of both configurations `name` has caBundle `ca`.
async fn ca_bundles_are(ns: &TestNamespace, name: &str, ca: &[u8]) -> Result<bool> {
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(ns.client());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(ns.client());
    let m = mutating.get(name).await?.webhooks.unwrap_or_default();
    let v = validating.get(name).await?.webhooks.unwrap_or_default();
    let bundles: Vec<_> = m
        .iter()
        .map(|w| &w.client_config)
        .chain(v.iter().map(|w| &w.client_config))
        .map(|cc| cc.ca_bundle.as_ref().map(|b| b.0.as_slice()))
        .collect();
    Ok(!m.is_empty() && !v.is_empty() && bundles.iter().all(|b| *b == Some(ca)))
}

/// Admission through that chain: the API server calls this webhook (its own counters move) with
/// the caBundle the injector wrote; a broken StormService is denied, the demo's admitted.
async fn admission_works(ns: &TestNamespace, webhook: &Webhook) -> Result<()> {
    let metrics = webhook.metrics()?;
    let (validated, denied) = (
        counter(&metrics, REQUESTS, VALIDATED_CREATES),
        counter(&metrics, REQUESTS, DENIED_CREATES),
    );
    let out = ns
        .kubectl()
        .args(["apply", "-f", "tests/fixtures/invalid/demo-broken.yaml"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "the broken StormService was admitted"
    );
    ensure!(
        stderr.contains("spec.rolloutStrategy.canary.trafficRouting: Forbidden"),
        "not the webhook's denial: {stderr}"
    );
    let out = ns
        .kubectl()
        .args(["apply", "-f", "tests/fixtures/demo.yaml"])
        .output()?;
    ensure!(
        out.status.success(),
        "the demo StormService was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = webhook.metrics()?;
    ensure!(
        counter(&metrics, REQUESTS, DENIED_CREATES) == denied + 1,
        "the denial was not this webhook's:\n{metrics}"
    );
    ensure!(
        counter(&metrics, REQUESTS, VALIDATED_CREATES) == validated + 1,
        "this webhook did not admit the demo StormService:\n{metrics}"
    );
    Ok(())
}

/// Forces a renewal with cert-manager's own means while dry-run creates of a StormService keep
/// coming, and checks the webhook serves the renewed certificate without restarting, every
/// admission answered by it, none failed.
async fn renew_under_load(
    ns: &TestNamespace,
    run: &mut Run,
    webhook: &Webhook,
    issued: &Issued,
) -> Result<()> {
    let storm_services: Api<DynamicObject> = Api::namespaced_with(
        ns.client(),
        ns.name(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "orchestration.aibrix.ai",
            "v1alpha1",
            "StormService",
        )),
    );
    let demo = std::fs::read_to_string(ns.cluster().repo_root().join("tests/fixtures/demo.yaml"))?;
    let mut probe = yaml_documents(&demo)?
        .into_iter()
        .find(|d| d["kind"] == "StormService")
        .context("no StormService in tests/fixtures/demo.yaml")?;
    probe["metadata"]["name"] = json!("renewal-probe");
    let probe: DynamicObject = serde_json::from_value(probe)?;

    let metrics = webhook.metrics()?;
    let (validated, reloads) = (
        counter(&metrics, REQUESTS, VALIDATED_CREATES),
        counter(&metrics, RELOADS, &[r#"result="success""#]),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let admissions = tokio::spawn(admit_continuously(storm_services, probe, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let triggered = Instant::now();
    renew(&issued.certificates, SERVING).await?;
    let secrets = ns.api::<Secret>();
    let renewed = wait_for("the renewed certificate in the Secret", TIMEOUT, || async {
        let serial = serial_of(&secret_field(
            &secrets.get(SERVING_SECRET).await?,
            "tls.crt",
        )?)?;
        Ok((serial != issued.serial).then_some(serial))
    })
    .await?;
    let in_secret = triggered.elapsed().as_secs_f64();
    wait_for(
        "the webhook serving the renewed certificate",
        TIMEOUT,
        || async {
            let served = served_serial(webhook.port, &webhook.ca_file).ok();
            Ok((served.as_ref() == Some(&renewed)).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "renewed: serial {} -> {renewed}, in the Secret {in_secret:.1}s and served {:.1}s after \
         the trigger",
        issued.serial,
        triggered.elapsed().as_secs_f64()
    );

    // The API server keeps its TLS connection to the webhook open (one, reused by every admission
    // so far), so the admissions above may all have gone over a handshake with the first
    // certificate. Moving both configurations to https://localhost:PORT (a name the renewed
    // certificate carries) makes the API server build new clients and connect anew: the
    // admissions that follow go over a handshake with the renewed certificate.
    let before = connections_to(webhook.port)?;
    for (kind, path) in [
        ("mutatingwebhookconfiguration", "/mutate"),
        ("validatingwebhookconfiguration", "/validate"),
    ] {
        let patch = json!([{"op": "replace", "path": "/webhooks/0/clientConfig/url",
                            "value": format!("https://localhost:{}{path}", webhook.port)}]);
        ns.cluster().kubectl_run([
            "patch",
            kind,
            &run.configuration,
            "--type=json",
            "-p",
            &patch.to_string(),
        ])?;
    }
    let fresh = wait_for(
        "the API server connecting to the webhook anew",
        TIMEOUT,
        || async {
            Ok(connections_to(webhook.port)?
                .difference(&before)
                .next()
                .copied())
        },
    )
    .await?;
    eprintln!("the API server connected anew from port {fresh} (before: {before:?})");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = admissions.await?;

    ensure!(
        failures.is_empty(),
        "{} of {sent} admissions failed during the renewal; the first:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    ensure!(sent >= 20, "only {sent} admissions during the renewal");
    let metrics = webhook.metrics()?;
    let judged = counter(&metrics, REQUESTS, VALIDATED_CREATES) - validated;
    ensure!(
        judged == sent,
        "{sent} admissions sent, this webhook judged {judged}:\n{metrics}"
    );
    ensure!(
        counter(&metrics, RELOADS, &[r#"result="success""#]) > reloads,
        "no certificate reload counted:\n{metrics}"
    );
    // The process started before the renewal never exited: no restart.
    run.processes[webhook.process].ensure_running()?;
    let crt = issued.certificates.get(SERVING).await?;
    ensure!(
        condition_true(&crt, "Ready") && crt.data["status"]["revision"] == 2,
        "the Certificate after the renewal: {:#}",
        crt.data["status"]
    );
    // Same CA, so the injected caBundle stays as it was.
    ensure!(
        ca_bundles_are(ns, &run.configuration, &issued.ca).await?,
        "caBundle changed"
    );
    eprintln!(
        "{sent} admissions during the renewal, all judged by this webhook (pid {}), none failed",
        webhook.pid
    );
    Ok(())
}

/// What `cmctl renew` does (cert-manager's own means of forcing a renewal): the Certificate's
/// `Issuing` condition set True with reason `ManuallyTriggered` through the status subresource,
/// the update carrying the resourceVersion it read. cert-manager's trigger controller then
/// leaves it alone and the key manager, request manager and issuing controllers issue anew.
async fn renew(certificates: &Api<DynamicObject>, name: &str) -> Result<()> {
    let mut crt = certificates.get(name).await?;
    ensure!(
        !condition_true(&crt, "Issuing"),
        "{name} is already being issued"
    );
    let generation = crt.metadata.generation;
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let conditions = crt.data["status"]["conditions"]
        .as_array_mut()
        .context("status.conditions")?;
    conditions.retain(|c| c["type"] != "Issuing");
    conditions.push(json!({
        "type": "Issuing",
        "status": "True",
        "reason": "ManuallyTriggered",
        "message": "Certificate re-issuance manually triggered",
        "observedGeneration": generation,
        "lastTransitionTime": now,
    }));
    certificates
        .replace_status(name, &PostParams::default(), &crt)
        .await
        .with_context(|| format!("triggering the issuance of {name}"))?;
    Ok(())
}

/// Dry-run creates of `obj`, one after the other until `stop`: (how many were sent, the errors).
async fn admit_continuously(
    api: Api<DynamicObject>,
    obj: DynamicObject,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<String>) {
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let (mut sent, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        sent += 1;
        if let Err(e) = api.create(&dry_run, &obj).await {
            failures.push(format!("admission {sent}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (sent, failures)
}

fn secret_field(secret: &Secret, key: &str) -> Result<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .with_context(|| format!("no {key} in Secret {:?}", secret.metadata.name))
}

fn condition_true(obj: &DynamicObject, kind: &str) -> bool {
    obj.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}
