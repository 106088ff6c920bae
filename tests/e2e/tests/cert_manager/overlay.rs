//! `certs/cert-manager` as the suite applies it: rendered by `kubectl kustomize`, its objects
//! rewritten only as far as running beside other suites on one local cluster needs.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use storm_test_support::{Cluster, yaml_documents};

/// The serving Certificate of `certs/cert-manager/issuers.yaml`.
pub const SERVING: &str = "storm-webhook-serving";
/// Where the overlay points the CA injector (`inject-ca-from` on both configurations).
const OVERLAY_INJECT_FROM: &str = "storm-system/storm-webhook-serving";
const INJECT_CA_FROM: &str = "cert-manager.io/inject-ca-from";

/// The overlay as `kubectl apply -k certs/cert-manager` would apply it.
pub struct Overlay {
    /// Its Issuers and Certificates.
    cert_manager: Vec<Value>,
    /// Its Mutating- and ValidatingWebhookConfiguration, annotated for the CA injector.
    configurations: Vec<Value>,
}

impl Overlay {
    /// Renders `certs/cert-manager`.
    pub fn render(cluster: &Cluster) -> Result<Self> {
        let docs = yaml_documents(&cluster.kubectl_run(["kustomize", "certs/cert-manager"])?)?;
        let (cert_manager, rest): (Vec<Value>, Vec<Value>) = docs.into_iter().partition(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("cert-manager.io/"))
        });
        let configurations: Vec<Value> = rest
            .into_iter()
            .filter(|d| {
                d["kind"]
                    .as_str()
                    .is_some_and(|k| k.ends_with("WebhookConfiguration"))
            })
            .collect();
        ensure!(
            cert_manager.len() == 4,
            "expected 2 Issuers and 2 Certificates in certs/cert-manager, found {cert_manager:#?}"
        );
        ensure!(
            configurations.len() == 2,
            "expected both webhook configurations in certs/cert-manager"
        );
        Ok(Self {
            cert_manager,
            configurations,
        })
    }

    /// The Issuers and Certificates, moved into `ns` (instead of storm-system). The serving
    /// Certificate also names 127.0.0.1 and localhost: here the webhook is a local process the
    /// API server dials at https://127.0.0.1:PORT (later https://localhost:PORT), not the Service
    /// whose DNS names the overlay lists (those stay). Nothing else changes.
    pub fn issuers(&self, ns: &str) -> Result<Vec<Value>> {
        let mut objs = self.cert_manager.clone();
        for obj in &mut objs {
            obj["metadata"]["namespace"] = json!(ns);
            if obj["kind"] == "Certificate" && obj["metadata"]["name"] == SERVING {
                obj["spec"]["dnsNames"]
                    .as_array_mut()
                    .context("the serving Certificate's dnsNames")?
                    .push(json!("localhost"));
                obj["spec"]["ipAddresses"] = json!(["127.0.0.1"]);
            }
        }
        ensure!(
            objs.iter()
                .any(|o| o["kind"] == "Certificate" && o["metadata"]["name"] == SERVING),
            "no Certificate {SERVING} in certs/cert-manager"
        );
        Ok(objs)
    }

    /// The webhook configurations for one test: named `name`, the CA injector pointed at the
    /// serving Certificate in `ns`, the webhook called at `https://127.0.0.1:{port}` (URL mode,
    /// the Service's path kept), and only for requests in `ns`. Rules, failurePolicy and
    /// timeouts stay as shipped.
    pub fn configurations(&self, name: &str, ns: &str, port: u16) -> Result<Vec<Value>> {
        let mut objs = self.configurations.clone();
        for obj in &mut objs {
            ensure!(
                obj["metadata"]["annotations"][INJECT_CA_FROM] == OVERLAY_INJECT_FROM,
                "the overlay's {} has no {INJECT_CA_FROM}: {OVERLAY_INJECT_FROM}",
                obj["kind"]
            );
            obj["metadata"]["name"] = json!(name);
            obj["metadata"]["annotations"][INJECT_CA_FROM] = json!(format!("{ns}/{SERVING}"));
            for hook in obj["webhooks"].as_array_mut().context("webhooks")? {
                let path = hook["clientConfig"]["service"]["path"]
                    .as_str()
                    .context("a Service path")?
                    .to_string();
                hook["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}{path}")});
                hook["namespaceSelector"] =
                    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
            }
        }
        Ok(objs)
    }
}
