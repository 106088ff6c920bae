//! `storm-controller`: the RoleSet and StormService controllers behind a Lease, with `/metrics`,
//! `/healthz` and `/readyz` on one HTTP port.
#![forbid(unsafe_code)]

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{ArgAction, Parser, ValueEnum};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use storm_controller::context::Context;
use storm_controller::leader::{self, Candidate};
use storm_controller::metrics::Metrics;
use storm_controller::{roleset, stormservice};
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Runs Storm Rollouts' controllers: RoleSets (Pods per role) and StormServices (rollouts).
#[derive(Debug, Parser)]
#[command(name = "storm-controller", version)]
struct Args {
    /// Address of the HTTP server for /metrics, /healthz and /readyz (port 0: any free port).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Reconcile only while holding the `storm-controller` Lease (`--leader-elect=false` for a
    /// single local process).
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the Lease (the controller's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "storm-system")]
    lease_namespace: String,
    /// Log output: `text` for people, `json` for log pipelines.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Controllers to run, comma-separated. Tests of one controller run only that one, so
    /// concurrent suites against a shared cluster don't act on each other's objects.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "roleset,stormservice"
    )]
    controllers: Vec<ControllerName>,
    /// Watch only this namespace (all namespaces when absent): a per-namespace install, or tests
    /// that share a cluster.
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Write the bound metrics port to this file once listening (with `--metrics-addr ...:0`).
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
    /// Destinations analysis requests may reach although the egress policy refuses their
    /// addresses, comma-separated: host names (`prometheus.monitoring.svc`), `*.domain` patterns,
    /// CIDRs or addresses. Loopback, link-local, the API server and the cluster ranges are
    /// refused unless listed here.
    #[arg(long, env = "ANALYSIS_EGRESS_ALLOW", value_delimiter = ',')]
    analysis_egress_allow: Vec<String>,
    /// The address ranges analysis requests may not reach, comma-separated CIDRs, replacing the
    /// default (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7: where
    /// clusters take Pod and Service addresses from).
    #[arg(long, env = "ANALYSIS_EGRESS_DENY", value_delimiter = ',')]
    analysis_egress_deny: Option<Vec<String>>,
    /// Longest request timeout an analysis metric may set (Go-style duration); longer ones are
    /// cut to it. Admission refuses them with the webhook's own setting.
    #[arg(long, env = "ANALYSIS_MAX_TIMEOUT", default_value = "30s", value_parser = parse_wait)]
    analysis_max_timeout: std::time::Duration,
    /// Shortest interval between an analysis metric's measurements (Go-style duration); shorter
    /// ones are raised to it.
    #[arg(long, env = "ANALYSIS_MIN_INTERVAL", default_value = "10s", value_parser = parse_wait)]
    analysis_min_interval: std::time::Duration,
    /// Analysis measurements that may run at once in the whole controller. Measurements run
    /// outside the reconciles: a slow provider never delays a rollout, abort or rollback.
    #[arg(long, env = "ANALYSIS_CONCURRENCY", default_value_t = 32)]
    analysis_concurrency: usize,
    /// Analysis measurements that may run at once in one namespace, so one tenant's slow or
    /// numerous metrics cannot take every slot.
    #[arg(long, env = "ANALYSIS_NAMESPACE_CONCURRENCY", default_value_t = 4)]
    analysis_namespace_concurrency: usize,
}

fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    storm_shared::units::parse_wait(text).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ControllerName {
    Roleset,
    Stormservice,
}

/// Stack of the runtime's threads (workers and the blocking pool, where analysis conditions are
/// evaluated): CEL's parser recurses for every level of brackets, and a condition nested
/// `MAX_EXPRESSION_DEPTH` deep needs more than tokio's default 2 MiB. Reserved, not committed,
/// until used.
const THREAD_STACK: usize = 16 << 20;

/// How long in-flight reconciles get to finish after SIGTERM, within the Pod's default 30 s
/// termination grace, leaving time to release the Lease.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The API server's addresses, refused to analysis requests: the one the client configuration
/// names (resolved) and the in-cluster Service address.
async fn api_server_addresses() -> Vec<std::net::IpAddr> {
    let mut hosts: Vec<(String, u16)> = Vec::new();
    if let Ok(config) = kube::Config::infer().await
        && let Some(host) = config.cluster_url.host()
    {
        let port = config.cluster_url.port_u16().unwrap_or(443);
        hosts.push((host.trim_matches(['[', ']']).to_string(), port));
    }
    if let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") {
        hosts.push((host, 443));
    }
    let mut out = Vec::new();
    for (host, port) in hosts {
        if let Ok(ip) = host.parse() {
            out.push(ip);
        } else if let Ok(found) = tokio::net::lookup_host((host.as_str(), port)).await {
            out.extend(found.map(|a| a.ip()));
        }
    }
    out
}

/// Starting or running the controller failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("analysis egress setting: {0}")]
    Egress(#[from] storm_controller::analysis::egress::SettingError),
    #[error("loading the Kubernetes client configuration: {0}")]
    LoadKubeConfig(#[source] kube::Error),
    #[error("binding the metrics address {addr}: {source}")]
    BindMetrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("installing the signal handlers: {0}")]
    InstallSignalHandlers(#[source] std::io::Error),
    #[error("writing the port file {path}: {source}")]
    WritePortFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    // kube's rustls needs a process-wide crypto provider; installing ring explicitly avoids
    // depending on which provider features happen to be unified into the build.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        warn!("a rustls crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "starting the Tokio runtime failed");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "storm-controller failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A client from the usual configuration (KUBECONFIG, in-cluster) that counts every request it sends
/// in `storm_kube_requests_total`: the load the controller puts on the API server.
async fn counting_client(metrics: Arc<Metrics>) -> Result<kube::Client, RunError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| RunError::LoadKubeConfig(kube::Error::InferConfig(e)))?;
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(RunError::LoadKubeConfig)?;
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        metrics.kube_request(req.method(), req.uri().query());
        req
    });
    Ok(builder.with_layer(&count).build())
}

async fn run(args: Args) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let egress = storm_controller::analysis::egress::EgressPolicy::new(
        &args.analysis_egress_allow,
        args.analysis_egress_deny.as_deref(),
    )?
    .with_api_server(api_server_addresses().await);
    let client = counting_client(metrics.clone()).await?;
    let identity = leader::identity();
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone(), Some(identity.clone()))
            .in_namespace(args.namespace.clone())
            .with_egress(egress)
            .with_analysis_bounds(storm_shared::rules::AnalysisBounds {
                max_timeout: args.analysis_max_timeout,
                min_interval: args.analysis_min_interval,
            })
            .with_analysis_pool(storm_controller::analysis::pool::PoolSettings {
                global: args.analysis_concurrency,
                per_namespace: args.analysis_namespace_concurrency,
            }),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = shutdown_signals()?;
    tokio::spawn(async move {
        signals.await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| RunError::BindMetrics {
            addr: args.metrics_addr,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(args.metrics_addr);
    info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    if let Some(path) = &args.port_file {
        std::fs::write(path, format!("{}\n", bound.port())).map_err(|source| {
            RunError::WritePortFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    let server = tokio::spawn(serve(
        listener,
        metrics.clone(),
        ready.clone(),
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(mark_ready_when_api_answers(client.clone(), ready));

    let candidate = Candidate::new(client.clone(), &args.lease_namespace, identity.clone());
    // The election has its own stop signal: once leading, it keeps renewing until the controllers
    // have stopped, so the Lease can't expire (and a standby start) under reconciles still finishing.
    let (election_stop, election_stop_rx) = watch::channel(false);
    let mut election = if args.leader_elect {
        info!(%identity, namespace = %args.lease_namespace, lease = leader::LEASE_NAME, "waiting for leadership");
        let (mut leading, task) = leader::spawn(candidate.clone(), election_stop_rx);
        let mut stop = stop_rx.clone();
        tokio::select! {
            won = leading.wait_for(|l| *l) => {
                if won.is_err() {
                    error!("leader election stopped before winning");
                    std::process::exit(1);
                }
            }
            _ = stop.wait_for(|s| *s) => {
                let _ = election_stop.send(true);
                let _ = task.await;
                let _ = server.await;
                return Ok(());
            }
        }
        info!(%identity, "leading; starting controllers");
        Some((leading, task))
    } else {
        info!("leader election disabled; starting controllers");
        None
    };

    let mut controllers = tokio::task::JoinSet::new();
    // One watch per kind for all controllers; each sets up on it before it starts.
    let mut feeds = storm_controller::feeds::Feeds::new(&ctx);
    if args.controllers.contains(&ControllerName::Roleset) {
        controllers.spawn(roleset::run(
            ctx.clone(),
            &mut feeds,
            stopped(stop_rx.clone()),
        ));
        controllers.spawn(storm_controller::podset::run(
            ctx.clone(),
            &mut feeds,
            stopped(stop_rx.clone()),
        ));
    }
    if args.controllers.contains(&ControllerName::Stormservice) {
        controllers.spawn(stormservice::run(
            ctx.clone(),
            &mut feeds,
            stopped(stop_rx.clone()),
        ));
    }
    feeds.spawn();

    let lost = async {
        match election.as_mut().map(|(leading, _)| leading) {
            Some(rx) => {
                // Err: the election task ended because we are stopping, not because we lost.
                if rx.wait_for(|l| !*l).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    let mut stop = stop_rx.clone();
    let overdue = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = async { while controllers.join_next().await.is_some() {} } => {}
        _ = overdue => {
            warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after shutdown was requested; stopping anyway");
        }
        _ = lost => {
            // Another replica may be reconciling already; the only safe move is to stop at once.
            // Exiting (non-zero) lets Kubernetes restart us as a fresh candidate.
            error!(%identity, "lost leadership; exiting");
            std::process::exit(1);
        }
    }
    if let Some((_, task)) = election {
        let _ = election_stop.send(true);
        let _ = task.await;
        candidate.release().await;
    }
    let _ = server.await;
    info!("stopped");
    Ok(())
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Completes on the first SIGTERM (Kubernetes stopping the Pod) or SIGINT (Ctrl-C).
fn shutdown_signals() -> Result<impl Future<Output = ()> + Send + 'static, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::InstallSignalHandlers)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::InstallSignalHandlers)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// `/readyz` turns ready once the API server has answered: a replica that can't reach it is of no
/// use, while a standby (not leading) replica is ready, so Deployment rollouts don't stall on it.
async fn mark_ready_when_api_answers(client: kube::Client, ready: Arc<AtomicBool>) {
    loop {
        match client.apiserver_version().await {
            Ok(v) => {
                info!(server = %v.git_version, "API server reachable");
                ready.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => warn!(error = %e, "API server not reachable yet"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(HttpState { metrics, ready });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        error!(error = %e, "metrics server failed");
    }
}

async fn metrics_page(State(state): State<HttpState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "API server not reached yet",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_suit_a_deployment() {
        let args = Args::parse_from(["storm-controller"]);
        assert!(args.leader_elect);
        assert_eq!(args.metrics_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            args.controllers,
            [ControllerName::Roleset, ControllerName::Stormservice]
        );
    }

    #[test]
    fn local_run_flags_parse() {
        let args = Args::parse_from([
            "storm-controller",
            "--leader-elect=false",
            "--metrics-addr",
            "127.0.0.1:0",
            "--lease-namespace",
            "default",
            "--log-format",
            "json",
            "--controllers",
            "roleset",
        ]);
        assert!(!args.leader_elect);
        assert_eq!(args.lease_namespace, "default");
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.controllers, [ControllerName::Roleset]);
        assert!(Args::parse_from(["storm-controller", "--leader-elect"]).leader_elect);
    }
}
