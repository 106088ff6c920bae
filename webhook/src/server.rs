//! HTTPS: routes, body limit, TLS with the reloading resolver, connections and graceful shutdown.

use crate::access::Authorizer;
use crate::certs::ReloadingResolver;
use crate::lookups::Caches;
use crate::metrics::{EndpointLabel, Metrics, Outcome, ResultLabel};
use crate::review::{self, Answer, Endpoint};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Largest request body accepted. An object is at most ~1.5 MiB in etcd and a review of an update
/// carries two of them; anything bigger is not from the API server.
pub const BODY_LIMIT: usize = 3 * 1024 * 1024;
/// A client gets this long to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A kept-alive connection may wait this long for its next request's headers (hyper bounds the
/// idle wait and the headers together). The API server keeps idle connections to a webhook for
/// 90 s (Go's transport default) and does not send a review (a POST) again when the connection
/// it picked was closed under it: closing idle connections sooner made admissions fail now and
/// then with `broken pipe` under load (seen at 1,000 StormServices with 10 s). So the client
/// closes first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the API server keeps an idle connection to a webhook.
pub const API_SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const _: () = assert!(IDLE_TIMEOUT.as_secs() > API_SERVER_IDLE_TIMEOUT.as_secs());
/// An oversized body declared up to this size is read and discarded before the 413, so a client
/// that doesn't wait for `100 Continue` reads the answer instead of a broken pipe.
pub const DRAIN_LIMIT: u64 = 4 * BODY_LIMIT as u64;
/// A request body must arrive within this long (the API server sends it at once).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, open connections get this long to finish their requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct AppState {
    /// Watch caches behind the rules.
    pub caches: Arc<Caches>,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// Asks the API server whether a StormService's author may patch what it names.
    pub authorizer: Authorizer,
    /// The settings the rules read.
    pub settings: review::Settings,
    /// Reviews (`/mutate`, `/validate`, `/noop`) need a client certificate that chains to the
    /// `--client-ca`; probes and `/metrics` do not.
    pub client_auth: bool,
}

/// What the TLS handshake established about the client of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// It presented a certificate the client verifier accepted.
    pub authenticated: bool,
}

/// The routes: `/mutate`, `/validate`, `/noop` (behind the client check), `/healthz`, `/readyz`,
/// `/metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/noop", post(noop))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticated,
        ))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn mutate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    answer(
        &state,
        EndpointLabel::Mutate,
        Some(Endpoint::Mutate),
        &headers,
        body,
    )
    .await
}

async fn validate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    answer(
        &state,
        EndpointLabel::Validate,
        Some(Endpoint::Validate),
        &headers,
        body,
    )
    .await
}

async fn noop(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    answer(&state, EndpointLabel::Noop, None, &headers, body).await
}

/// With client authentication on, a review from a client without a verified certificate is
/// answered 401 before its body is read.
async fn authenticated(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !state.client_auth || peer.is_some_and(|Extension(p)| p.authenticated) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        "a client certificate signed by the webhook's --client-ca is required: only the API server sends reviews",
    )
        .into_response()
}

/// Reads the body (refusing an oversized one by its Content-Length before reading it, so a client
/// waiting for `100 Continue` never sends it), answers, counts and logs.
async fn answer(
    state: &AppState,
    label: EndpointLabel,
    endpoint: Option<Endpoint>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match declared {
        Some(n) if n > BODY_LIMIT as u64 => {
            // A client that waits for `100 Continue` gets the answer before sending anything. One
            // that sends at once gets it after its body (up to a bound), not a reset mid-write.
            let waits = headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if !waits && n <= DRAIN_LIMIT {
                let _ = tokio::time::timeout(BODY_TIMEOUT, drain(body)).await;
            }
            Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("length limit exceeded: Content-Length is {n}"),
            ))
        }
        _ => match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT)).await
        {
            Ok(read) => read.map_err(|e| {
                let too_big = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || e.to_string().contains("length limit");
                if too_big {
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "length limit exceeded".to_string(),
                    )
                } else {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body: {e}"),
                    )
                }
            }),
            Err(_) => Err((
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {BODY_TIMEOUT:?}"),
            )),
        },
    };
    let body = match body {
        Ok(b) => b,
        Err((status, text)) => {
            let outcome = Outcome {
                denial: Some(text.clone()),
                ..Outcome::bare(ResultLabel::BadRequest)
            };
            state.metrics.observe(label, &outcome, started.elapsed());
            tracing::warn!(endpoint = label.as_str(), %status, reason = %text, "request body refused");
            let status_body = serde_json::json!({
                "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "code": status.as_u16(),
                "reason": match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
                    StatusCode::REQUEST_TIMEOUT => "Timeout",
                    _ => "BadRequest",
                },
                "message": format!("request body refused: {text} (limit {BODY_LIMIT} bytes)"),
            });
            return (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                status_body.to_string(),
            )
                .into_response();
        }
    };
    let answer = match endpoint {
        Some(e) => {
            let first = review::handle(e, &body, state.caches.as_ref(), &state.settings);
            if first.authorize.is_empty() {
                first
            } else {
                // Only when a create or update newly names Services or router objects: ask the
                // API server, then judge again with the answers (the hot path asks nothing).
                let decided = state.authorizer.decide(first.authorize).await;
                review::handle_with(e, &body, state.caches.as_ref(), &state.settings, &decided)
            }
        }
        None => review::noop_answer(),
    };
    let Answer {
        http_status,
        body,
        outcome,
        ..
    } = answer;
    state.metrics.observe(label, &outcome, started.elapsed());
    log(label, &outcome);
    Response::builder()
        .status(StatusCode::from_u16(http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Reads and discards a refused body.
async fn drain(body: Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}

fn log(endpoint: EndpointLabel, o: &Outcome) {
    match o.result {
        ResultLabel::Denied => tracing::info!(
            endpoint = endpoint.as_str(),
            kind = o.kind.as_str(),
            operation = o.operation.as_str(),
            namespace = %o.namespace,
            name = %o.name,
            reason = o.denial.as_deref().unwrap_or_default(),
            "denied"
        ),
        ResultLabel::BadRequest => tracing::warn!(
            endpoint = endpoint.as_str(),
            reason = o.denial.as_deref().unwrap_or_default(),
            "not an admission review"
        ),
        ResultLabel::Allowed | ResultLabel::Patched => tracing::debug!(
            endpoint = endpoint.as_str(),
            kind = o.kind.as_str(),
            operation = o.operation.as_str(),
            namespace = %o.namespace,
            name = %o.name,
            result = o.result.as_str(),
            "admitted"
        ),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.caches.ready();
    state.metrics.set_ready(ready);
    if ready {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watch caches not synced yet",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// TLS 1.2 and 1.3 with the given provider, certificates from the resolver, HTTP/1.1. With
/// `client_ca`, clients may present a certificate, which must chain to it (one that does not fails
/// the handshake); whether reviews require one is [`AppState::client_auth`].
pub fn tls_config(
    resolver: Arc<ReloadingResolver>,
    provider: Arc<CryptoProvider>,
    client_ca: Option<Arc<rustls::RootCertStore>>,
) -> Result<ServerConfig, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(roots) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(format!("--client-ca: {e}")))?,
        ),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts connections until `shutdown` resolves, then lets open requests finish (up to
/// [`DRAIN_TIMEOUT`]). Each connection does its handshake in its own task, so a slow or broken
/// client never holds up the others.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    // Handshakes still running at shutdown are dropped, not waited for: no request is in them yet.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let mut stopping = stopping_rx.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let tls = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = stopping.wait_for(|s| *s) => return,
            };
            let client = Peer {
                authenticated: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty()),
            };
            let service = TowerToHyperService::new(app.layer(Extension(client)));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    tracing::info!("shutting down: draining open connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}
