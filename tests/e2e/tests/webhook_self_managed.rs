//! Self-managed webhook certificates against the local API server: the webhook issues its pair,
//! stores it in a Secret, writes the CA into its configurations' caBundle, and the API server
//! then reaches it over HTTPS with that CA.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;
use storm_test_support::process::{Process, binary, free_port};
use storm_test_support::{TestNamespace, unique_name, wait_for};

/// `kubectl apply` of `obj` as the admin.
fn apply(cluster: &storm_test_support::Cluster, obj: &Value, what: &str) -> Result<()> {
    cluster
        .kubectl_apply(serde_json::to_string(obj)?.as_bytes())
        .context(what.to_string())
}

/// A self-managed webhook for `ns`: its own configurations (URL mode, no caBundle, scoped to
/// `ns` so the other suites' requests never reach it) and the process, with `extra` arguments.
struct SelfManaged {
    webhook: Process,
    name: String,
    dir: std::path::PathBuf,
    port: u16,
}

fn start_self_managed(ns: &TestNamespace, extra: &[&str]) -> Result<SelfManaged> {
    let cluster = ns.cluster();
    cluster.install_crds()?;
    let bin = binary("storm-webhook", "storm-webhook")?;
    let port = free_port()?;
    let name = unique_name("e2e-self");
    // Our own configurations, URL mode, no caBundle yet, scoped to this test's namespace so the
    // other suites' requests never reach this webhook.
    let out = Command::new(&bin)
        .args([
            "registration",
            "--url",
            &format!("https://127.0.0.1:{port}"),
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "registration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut list: Value = serde_json::from_slice(&out.stdout)?;
    for item in list["items"].as_array_mut().context("a List")? {
        item["metadata"]["name"] = json!(name);
        for hook in item["webhooks"].as_array_mut().context("webhooks")? {
            if let Some(cc) = hook["clientConfig"].as_object_mut() {
                cc.remove("caBundle");
            }
            hook["namespaceSelector"] =
                json!({"matchLabels": {"kubernetes.io/metadata.name": ns.name()}});
        }
    }
    apply(cluster, &list, "registering the configurations")?;

    let dir = std::env::temp_dir().join(format!("storm-e2e-self-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        &dir.join("tls.crt").display().to_string(),
        "--tls-key",
        &dir.join("tls.key").display().to_string(),
        "--self-managed",
        "--self-managed-secret",
        &format!("{}/self-tls", ns.name()),
        "--webhook-configuration",
        &name,
        "--san",
        "127.0.0.1",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let env = vec![(
        "KUBECONFIG".to_string(),
        cluster.kubeconfig().display().to_string(),
    )];
    let webhook = Process::start("storm-webhook", bin, args, env)?;
    Ok(SelfManaged {
        webhook,
        name,
        dir,
        port,
    })
}

impl SelfManaged {
    fn cleanup(&self, ns: &TestNamespace) {
        let _ = ns
            .cluster()
            .kubectl()
            .args([
                "delete",
                "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn self_managed_certificates_are_issued_stored_and_registered() -> Result<()> {
    let ns = TestNamespace::new("wh-self").await?;
    let SelfManaged {
        mut webhook,
        name,
        dir,
        port,
    } = start_self_managed(&ns, &[])?;
    let result = async {
        // The pair is issued and stored.
        let secrets = ns.api::<Secret>();
        let ca = wait_for(
            "the Secret with the issued pair",
            Duration::from_secs(60),
            || async {
                let s = secrets.get_opt("self-tls").await?;
                Ok(s.and_then(|s| s.data)
                    .and_then(|d| d.get("ca.crt").map(|b| b.0.clone())))
            },
        )
        .await?;
        // Both configurations carry the CA.
        let mutating: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(ns.client());
        let validating: kube::Api<ValidatingWebhookConfiguration> = kube::Api::all(ns.client());
        wait_for(
            "caBundle set on both configurations",
            Duration::from_secs(60),
            || async {
                let m = mutating.get(&name).await?.webhooks.unwrap_or_default();
                let v = validating.get(&name).await?.webhooks.unwrap_or_default();
                let all_set = m
                    .iter()
                    .map(|w| &w.client_config)
                    .chain(v.iter().map(|w| &w.client_config))
                    .all(|cc| cc.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca));
                Ok((all_set && !m.is_empty() && !v.is_empty()).then_some(()))
            },
        )
        .await?;
        webhook.ensure_running()?;
        // The API server reaches it with that CA: a broken StormService is denied in this namespace.
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
            "{stderr}"
        );
        // And it was this webhook: its own metrics counted the review (HTTPS with the issued CA).
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, &ca)?;
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--cacert",
                &ca_file.display().to_string(),
                &format!("https://127.0.0.1:{port}/metrics"),
            ])
            .output()?;
        let metrics = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("storm_webhook_requests_total{")
                    && l.contains("kind=\"StormService\"")
                    && l.contains("result=\"denied\"")),
            "no denied StormService review counted:\n{metrics}"
        );
        // A restart (or a second replica) serves the stored pair rather than issuing another.
        let stored = secrets.get("self-tls").await?.data.context("data")?;
        let served = dir.join("tls.crt");
        std::fs::remove_file(&served)?;
        webhook.restart()?;
        let written = wait_for(
            "the restarted webhook to write its pair",
            Duration::from_secs(60),
            || async { Ok(std::fs::read(&served).ok()) },
        )
        .await?;
        ensure!(
            Some(&written) == stored.get("tls.crt").map(|b| &b.0),
            "a new pair was issued on restart"
        );
        let again = secrets.get("self-tls").await?.data.context("data")?;
        ensure!(
            again.get("ca.crt").map(|b| &b.0) == Some(&ca),
            "the CA changed on restart"
        );
        Ok(())
    }
    .await;
    let _ = ns
        .cluster()
        .kubectl()
        .args([
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            &name,
            "--ignore-not-found",
        ])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    ns.cleanup().await
}

/// The serving certificate is renewed from the same CA when a third of its validity remains, the
/// renewed pair is stored and served, and the API server still reaches the webhook after the
/// first certificate has expired.
#[tokio::test]
async fn the_serving_certificate_is_renewed_before_it_expires() -> Result<()> {
    let ns = TestNamespace::new("wh-renew").await?;
    let hook = start_self_managed(&ns, &["--self-managed-validity=45s"])?;
    let result = async {
        let secrets = ns.api::<Secret>();
        let first = wait_for("the issued pair", Duration::from_secs(60), || async {
            Ok(secrets.get_opt("self-tls").await?)
        })
        .await?;
        let data = |s: &Secret, k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|b| b.0.clone())
                .unwrap_or_default()
        };
        let expires: k8s_openapi::jiff::Timestamp = first
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(storm_webhook_not_after()))
            .context("the expiry annotation")?
            .parse()?;
        let renewed = wait_for("the renewed pair", Duration::from_secs(60), || async {
            let s = secrets.get("self-tls").await?;
            Ok((data(&s, "tls.crt") != data(&first, "tls.crt")).then_some(s))
        })
        .await?;
        ensure!(
            data(&renewed, "ca.crt") == data(&first, "ca.crt"),
            "the CA changed: a caBundle would have to follow"
        );
        ensure!(
            k8s_openapi::jiff::Timestamp::now() < expires,
            "renewed only after the first certificate expired"
        );
        // Past the first certificate's expiry, the webhook still answers the API server.
        let wait = expires
            .duration_since(k8s_openapi::jiff::Timestamp::now())
            .as_secs()
            .max(0)
            .unsigned_abs();
        tokio::time::sleep(Duration::from_secs(wait + 2)).await;
        let served = std::fs::read(hook.dir.join("tls.crt"))?;
        let now = secrets.get("self-tls").await?;
        ensure!(
            served == data(&now, "tls.crt"),
            "the stored pair is not the served one"
        );
        let out = ns
            .kubectl()
            .args(["apply", "-f", "tests/fixtures/invalid/demo-broken.yaml"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success()
                && stderr.contains("spec.rolloutStrategy.canary.trafficRouting: Forbidden"),
            "not denied by the webhook: {stderr}"
        );
        Ok(())
    }
    .await;
    hook.cleanup(&ns);
    result?;
    ns.cleanup().await
}

fn storm_webhook_not_after() -> &'static str {
    "storm-webhook.orchestration.aibrix.ai/not-after"
}

/// The shipped policy (certs/self-managed/cabundle-policy.yaml): the webhook's ServiceAccount may
/// change a webhook configuration's caBundle and nothing else. Acted as through impersonation,
/// with system:masters so that RBAC (which would also stop a configuration not named storm-webhook)
/// is not what refuses.
#[tokio::test]
async fn the_webhook_account_may_change_only_the_ca_bundle() -> Result<()> {
    let ns = TestNamespace::new("wh-cabundle").await?;
    let cluster = ns.cluster();
    cluster.kubectl_run(["apply", "-f", "certs/self-managed/cabundle-policy.yaml"])?;
    let name = unique_name("e2e-cabundle");
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "probe.storm.example.com",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            // Nothing is ever sent to it.
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}},
            "rules": [{"apiGroups": ["example.invalid"], "apiVersions": ["v1"],
                       "operations": ["CREATE"], "resources": ["probes"]}]
        }]
    });
    apply(cluster, &config, &format!("creating {name}"))?;
    let result = async {
        let as_webhook_with = |patch: &str, dry: bool| -> Result<(bool, String)> {
            let mut cmd = cluster.kubectl();
            cmd.args([
                "--as=system:serviceaccount:storm-system:storm-webhook",
                "--as-group=system:masters",
                "patch",
                "validatingwebhookconfiguration",
                &name,
                "--type=json",
                "-p",
                patch,
            ]);
            if dry {
                cmd.arg("--dry-run=server");
            }
            let out = cmd.output()?;
            Ok((
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        };
        let as_webhook = |patch: &str| as_webhook_with(patch, false);
        let widen = r#"[{"op":"replace","path":"/webhooks/0/rules/0/resources","value":["secrets"]}]"#;
        // The policy takes a moment to be in force; until then, try without changing anything.
        wait_for("the policy to deny widening the rules", Duration::from_secs(30), || async {
            let (ok, stderr) = as_webhook_with(widen, true)?;
            Ok((!ok && stderr.contains("caBundle and nothing else")).then_some(()))
        })
        .await?;
        for patch in [
            widen,
            r#"[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Fail"}]"#,
            r#"[{"op":"replace","path":"/webhooks/0/clientConfig/url","value":"https://10.0.0.1/steal"}]"#,
            r#"[{"op":"add","path":"/metadata/labels","value":{"x":"y"}}]"#,
        ] {
            let (ok, stderr) = as_webhook(patch)?;
            ensure!(!ok && stderr.contains("nothing else"), "{patch}: {stderr}");
        }
        let (ok, stderr) = as_webhook(
            r#"[{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"Q0E="}]"#,
        )?;
        ensure!(ok, "setting the caBundle was refused: {stderr}");
        let out = cluster
            .kubectl()
            .args([
                "--as=system:serviceaccount:storm-system:storm-webhook",
                "--as-group=system:masters",
                "delete",
                "validatingwebhookconfiguration",
                &name,
            ])
            .output()?;
        ensure!(!out.status.success(), "the webhook account deleted a configuration");
        // Anyone else may still change it.
        let out = cluster
            .kubectl()
            .args([
                "patch",
                "validatingwebhookconfiguration",
                &name,
                "--type=json",
                "-p",
                widen,
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
    .await;
    let _ = cluster
        .kubectl()
        .args([
            "delete",
            "validatingwebhookconfiguration",
            &name,
            "--ignore-not-found",
        ])
        .output();
    result?;
    ns.cleanup().await
}
