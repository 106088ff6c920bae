//! The HTTP(S) client the providers' requests go through: hyper with rustls on the ring provider
//! (the only crypto provider in the binary), the system's CA roots plus the Mozilla roots.

use super::egress::{EgressPolicy, PolicyResolver, Refused};
use super::provider::{MeasureError, Request};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;

/// Responses larger than this are refused: a metric is a number, not a download.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Building the HTTP client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// rustls refused the ring provider's protocol versions (a build problem).
    #[error("configuring TLS for analysis providers: {0}")]
    Tls(#[from] rustls::Error),
}

/// An HTTP/1.1 client for `http://` and `https://` URLs, built once and shared.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>,
    policy: Arc<EgressPolicy>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client trusting the system's CA certificates and the Mozilla roots (so a distroless image
    /// without a CA bundle still reaches Datadog), connecting only where `policy` allows.
    pub fn new(policy: EgressPolicy) -> Result<Self, ClientError> {
        let policy = Arc::new(policy);
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Unreadable system certificates are not fatal: the Mozilla roots cover public endpoints.
        let native = rustls_native_certs::load_native_certs();
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(
            added,
            ignored,
            errors = native.errors.len(),
            "analysis HTTP client: system CA certificates"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(PolicyResolver::new(policy.clone()));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { inner, policy })
    }

    /// Sends `request` and returns the status and body, within the request's timeout.
    pub async fn send(&self, request: Request) -> Result<(http::StatusCode, Bytes), MeasureError> {
        let timeout = request.timeout;
        // Messages show the URL without user info or query, which may carry credentials.
        let url = super::provider::shown_url(&request.url);
        let mut builder = http::Request::builder()
            .method(request.method)
            .uri(&request.url);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        // A URL naming an address is not resolved: the policy is checked here.
        if let Ok(uri) = request.url.parse::<http::Uri>()
            && let Some(host) = uri.host()
            && let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
        {
            self.policy
                .check(host, ip)
                .map_err(|r| MeasureError::Refused {
                    url: url.clone(),
                    reason: r.to_string(),
                })?;
        }
        let body = request.body.map(Bytes::from).unwrap_or_default();
        let req = builder
            .body(Full::new(body))
            .map_err(|e| MeasureError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response = self
                .inner
                .request(req)
                .await
                .map_err(|e| match refusal(&e) {
                    Some(r) => MeasureError::Refused {
                        url: url.clone(),
                        reason: r.to_string(),
                    },
                    None => MeasureError::Transport {
                        url: url.clone(),
                        reason: error_chain(&e),
                    },
                })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| MeasureError::Transport {
                    url: url.clone(),
                    reason: format!("reading the response: {e}"),
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| MeasureError::Timeout {
                url: url.clone(),
                timeout,
            })?
    }
}

/// The egress policy's refusal behind a connection error, if that is what it is.
fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}

/// An error with its sources, `a: b: c`, so "connection refused" is not hidden behind "client error".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
