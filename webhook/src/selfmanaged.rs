//! Self-managed certificates: the webhook issues its own CA and serving certificate, keeps them in a
//! Secret (so every replica serves the same pair), and writes the CA into its webhook
//! configurations' `caBundle` — for clusters without cert-manager.

use crate::certs::{self, CertError};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Annotation on the Secret: when its serving certificate expires (RFC 3339).
pub const NOT_AFTER: &str = "storm-webhook.orchestration.aibrix.ai/not-after";

/// Where the pair lives and whom it serves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret (keys `ca.crt`, `ca.key`, `tls.crt`, `tls.key`).
    pub secret: String,
    /// Name of the Mutating- and ValidatingWebhookConfiguration whose `caBundle` to keep.
    pub configuration: String,
    /// IP SANs of the serving certificate.
    pub ips: Vec<IpAddr>,
    /// DNS SANs of the serving certificate.
    pub dns: Vec<String>,
    /// How long a serving certificate is valid; it is renewed when a third of this remains.
    pub validity: Duration,
}

impl Settings {
    /// How often the Secret is looked at (for renewal, and for a pair another replica renewed):
    /// every 30 s, more often for short validities.
    pub fn period(&self) -> Duration {
        (self.validity / 6).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// What went wrong managing the certificates.
#[derive(Debug, thiserror::Error)]
pub enum SelfManagedError {
    /// Reading or writing the Secret failed.
    #[error("Secret {0}: {1}")]
    Secret(String, #[source] kube::Error),
    /// The Secret exists but lacks a key.
    #[error("Secret {0} has no {1}: delete it to have a new pair issued")]
    Incomplete(String, &'static str),
    /// Issuing the pair failed.
    #[error("issuing the certificates: {0}")]
    Issue(#[from] CertError),
    /// Writing the serving pair for the server failed.
    #[error("writing {0}: {1}")]
    Write(String, #[source] std::io::Error),
    /// Patching a webhook configuration failed.
    #[error("patching the caBundle of {0}: {1}")]
    Patch(String, #[source] kube::Error),
}

/// The pair to serve: from the Secret, or issued now and stored there. Of two replicas starting
/// together, the one whose create loses reads the winner's pair.
pub async fn ensure_pair(client: &Client, s: &Settings) -> Result<certs::Issued, SelfManagedError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let who = format!("{}/{}", s.namespace, s.secret);
    if let Some(secret) = api
        .get_opt(&s.secret)
        .await
        .map_err(|e| SelfManagedError::Secret(who.clone(), e))?
    {
        return from_secret(&secret, &who);
    }
    let (ca_pem, ca_key_pem) = certs::new_ca()?;
    let mut secret = Secret {
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    };
    secret.metadata.name = Some(s.secret.clone());
    secret.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        "storm-webhook".to_string(),
    )]));
    let issued = fill(&mut secret, s, &ca_pem, &ca_key_pem)?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %who, "issued a self-managed CA and serving certificate");
            Ok(issued)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api
                .get(&s.secret)
                .await
                .map_err(|e| SelfManagedError::Secret(who.clone(), e))?;
            from_secret(&secret, &who)
        }
        Err(e) => Err(SelfManagedError::Secret(who, e)),
    }
}

/// Issues a serving pair from the CA (`ca_pem` may bundle older CAs after it) into `secret`, with
/// its expiry in the [`NOT_AFTER`] annotation.
fn fill(
    secret: &mut Secret,
    s: &Settings,
    ca_pem: &str,
    ca_key_pem: &str,
) -> Result<certs::Issued, SelfManagedError> {
    let (cert_pem, key_pem) = certs::issue_for(ca_key_pem, &s.ips, &s.dns, s.validity)?;
    let not_after = SystemTime::now() + s.validity;
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, text) in [
        ("ca.crt", ca_pem),
        ("ca.key", ca_key_pem),
        ("tls.crt", &cert_pem),
        ("tls.key", &key_pem),
    ] {
        data.insert(key.to_string(), ByteString(text.as_bytes().to_vec()));
    }
    secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(NOT_AFTER.to_string(), rfc3339(not_after));
    Ok(certs::Issued {
        ca_pem: ca_pem.to_string(),
        cert_pem,
        key_pem,
    })
}

fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Whether the Secret's serving certificate is due for renewal at `now`: a third of its validity
/// or less remains, or its expiry is unknown (a Secret from before renewal existed).
pub fn due(secret: &Secret, validity: Duration, now: SystemTime) -> bool {
    let Some(not_after) = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NOT_AFTER))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(SystemTime::from)
    else {
        return true;
    };
    not_after
        .duration_since(now)
        .map_or(true, |left| left <= validity / 3)
}

/// The pair to serve now: the Secret's, renewed first when due. The CA is kept when the Secret
/// holds its key; a Secret without one (stored before renewal existed) gets a new CA, and its
/// `ca.crt` bundles the new CA before the old one, so the API server trusts the serving
/// certificate of either while replicas switch. Of replicas renewing at once, one update wins
/// (the update carries the resourceVersion read); the others read its pair.
pub async fn renew(client: &Client, s: &Settings) -> Result<certs::Issued, SelfManagedError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let who = format!("{}/{}", s.namespace, s.secret);
    let secret = api
        .get(&s.secret)
        .await
        .map_err(|e| SelfManagedError::Secret(who.clone(), e))?;
    if !due(&secret, s.validity, SystemTime::now()) {
        return from_secret(&secret, &who);
    }
    let data = secret.data.clone().unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let (ca_pem, ca_key_pem) = match (text("ca.crt"), text("ca.key")) {
        (Some(ca), Some(key)) => (ca, key),
        (old, _) => {
            let (ca, key) = certs::new_ca()?;
            (format!("{ca}{}", old.unwrap_or_default()), key)
        }
    };
    let mut renewed = secret.clone();
    let issued = fill(&mut renewed, s, &ca_pem, &ca_key_pem)?;
    match api
        .replace(&s.secret, &PostParams::default(), &renewed)
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %who, "renewed the self-managed serving certificate");
            Ok(issued)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api
                .get(&s.secret)
                .await
                .map_err(|e| SelfManagedError::Secret(who.clone(), e))?;
            from_secret(&secret, &who)
        }
        Err(e) => Err(SelfManagedError::Secret(who, e)),
    }
}

fn from_secret(secret: &Secret, who: &str) -> Result<certs::Issued, SelfManagedError> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &'static str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| SelfManagedError::Incomplete(who.to_string(), key))
    };
    Ok(certs::Issued {
        ca_pem: get("ca.crt")?,
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
    })
}

/// Writes the serving pair where the server reads (and re-reads) it.
pub fn write_serving_pair(
    pair: &certs::Issued,
    cert: &Path,
    key: &Path,
) -> Result<(), SelfManagedError> {
    for (path, text) in [(cert, &pair.cert_pem), (key, &pair.key_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| SelfManagedError::Write(path.display().to_string(), e))?;
    }
    Ok(())
}

/// The JSON Patch setting `caBundle` on every webhook of a configuration with `webhooks` entries.
pub fn ca_bundle_patch(webhooks: usize, ca_pem: &str) -> Value {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    Value::Array(
        (0..webhooks)
            .map(|i| json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
            .collect(),
    )
}

/// Sets the CA in both configurations' `caBundle` where it differs. Returns how many were patched.
pub async fn sync_ca_bundles(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<usize, SelfManagedError> {
    let mutating = sync_one(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        name,
        ca_pem,
        |c| ca_bundles(&c.webhooks, |w| &w.client_config),
    )
    .await?;
    let validating = sync_one(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        name,
        ca_pem,
        |c| ca_bundles(&c.webhooks, |w| &w.client_config),
    )
    .await?;
    Ok(usize::from(mutating) + usize::from(validating))
}

/// The `caBundle` of each of a configuration's `webhooks`, in order.
fn ca_bundles<W>(
    webhooks: &Option<Vec<W>>,
    config: impl Fn(&W) -> &WebhookClientConfig,
) -> Vec<Option<Vec<u8>>> {
    webhooks
        .iter()
        .flatten()
        .map(|w| config(w).ca_bundle.as_ref().map(|b| b.0.clone()))
        .collect()
}

/// Patches one configuration whose `bundles` (one per webhook) are not all the CA. Returns whether
/// it patched.
async fn sync_one<K>(
    api: Api<K>,
    name: &str,
    ca_pem: &str,
    bundles: impl Fn(&K) -> Vec<Option<Vec<u8>>>,
) -> Result<bool, SelfManagedError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(cfg) = api
        .get_opt(name)
        .await
        .map_err(|e| SelfManagedError::Patch(name.into(), e))?
    else {
        return Ok(false);
    };
    let current = bundles(&cfg);
    if current
        .iter()
        .all(|b| b.as_deref() == Some(ca_pem.as_bytes()))
    {
        return Ok(false);
    }
    let patch: json_patch::Patch = serde_json::from_value(ca_bundle_patch(current.len(), ca_pem))
        .map_err(|e| {
        SelfManagedError::Write("caBundle patch".into(), std::io::Error::other(e))
    })?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(|e| SelfManagedError::Patch(name.into(), e))?;
    Ok(true)
}

/// Keeps the pair and the `caBundle`s right, every [`Settings::period`]: renews the serving
/// certificate when due (or takes the one another replica renewed), puts the CA in both
/// configurations' `caBundle` (re-applying the manifests, which carry none, must not break
/// admission for long) and only then serves the new pair.
pub async fn keep(
    client: Client,
    s: Settings,
    cert: PathBuf,
    key: PathBuf,
    mut served: certs::Issued,
) {
    loop {
        tokio::time::sleep(s.period()).await;
        let pair = match renew(&client, &s).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the self-managed certificate");
                served.clone()
            }
        };
        match sync_ca_bundles(&client, &s.configuration, &pair.ca_pem).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(configuration = %s.configuration, patched = n, "caBundle set"),
            Err(e) => {
                tracing::warn!(error = %e, "keeping the caBundle");
                continue;
            }
        }
        if pair.cert_pem != served.cert_pem {
            match write_serving_pair(&pair, &cert, &key) {
                Ok(()) => {
                    tracing::info!("serving the renewed certificate");
                    served = pair;
                }
                Err(e) => tracing::warn!(error = %e, "writing the renewed certificate"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_of_the_validity_left_or_an_unknown_expiry() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let now = SystemTime::now();
        let at = |left: Duration| {
            let mut s = Secret::default();
            s.metadata.annotations = Some(BTreeMap::from([(
                NOT_AFTER.to_string(),
                rfc3339(now + left),
            )]));
            s
        };
        assert!(!due(&at(year / 2), year, now));
        assert!(due(&at(year / 3 - Duration::from_secs(60)), year, now));
        assert!(due(&Secret::default(), year, now));
        // Past expiry: due.
        let mut expired = Secret::default();
        expired.metadata.annotations = Some(BTreeMap::from([(
            NOT_AFTER.to_string(),
            rfc3339(now - Duration::from_secs(60)),
        )]));
        assert!(due(&expired, year, now));
    }

    #[test]
    fn the_patch_sets_every_webhook() {
        let p = ca_bundle_patch(2, "PEM");
        let b = base64::engine::general_purpose::STANDARD.encode("PEM");
        assert_eq!(
            p,
            json!([
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b}
            ])
        );
        assert!(serde_json::from_value::<json_patch::Patch>(p).is_ok());
    }

    #[test]
    fn an_incomplete_secret_says_what_is_missing() {
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "ca.crt".to_string(),
                ByteString(b"x".to_vec()),
            )])),
            ..Default::default()
        };
        let e = from_secret(&secret, "ns/s").expect_err("incomplete");
        assert!(e.to_string().contains("has no tls.crt"), "{e}");
    }
}
