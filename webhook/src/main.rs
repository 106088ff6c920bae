//! `storm-webhook`: serve admission reviews over HTTPS, issue development certificates, or print the
//! webhook configurations for a URL (local control plane) or a Service (cluster).
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use storm_webhook::access::Authorizer;
use storm_webhook::certs::{self, PairPaths, ReloadingResolver};
use storm_webhook::lookups::Caches;
use storm_webhook::metrics::Metrics;
use storm_webhook::registration::{self, Target};
use storm_webhook::server::{self, AppState};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Admission webhook for Storm Rollouts (StormService, AnalysisTemplate, RolloutPolicy).
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve admission reviews (the default).
    Serve(ServeArgs),
    /// Write a CA and a serving certificate: ca.crt, ca.key, tls.crt, tls.key.
    Certs(CertsArgs),
    /// Print the Mutating- and ValidatingWebhookConfiguration as a JSON List for `kubectl apply -f -`.
    Registration(RegistrationArgs),
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (see --port-file).
    #[arg(long, env = "STORM_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// PEM certificate chain (re-read when it changes).
    #[arg(long, env = "STORM_WEBHOOK_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (re-read when it changes).
    #[arg(long, env = "STORM_WEBHOOK_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Write the bound port here once listening (for --listen 127.0.0.1:0).
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    cert_poll_ms: u64,
    /// Async worker threads (default: one per core).
    #[arg(long, env = "STORM_WEBHOOK_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Don't talk to a cluster: every reference lookup is unknown, no policies. For benchmarks.
    #[arg(long)]
    offline: bool,
    /// Issue and keep our own certificates (no cert-manager): a CA and serving pair stored in
    /// --self-managed-secret, written to --tls-cert/--tls-key, and the CA kept in the caBundle of the
    /// --webhook-configuration webhook configurations.
    #[arg(long)]
    self_managed: bool,
    /// CA file (PEM) the API server's client certificate for webhooks chains to: with it, reviews
    /// without such a certificate are answered 401 (probes and /metrics stay open). Give the API
    /// server the certificate with an AdmissionConfiguration (docs/multi-tenant.md).
    #[arg(long, env = "CLIENT_CA_FILE")]
    client_ca: Option<std::path::PathBuf>,
    /// How long a self-managed serving certificate is valid (e.g. 8760h); it is renewed, from the
    /// same CA, when a third of this remains.
    #[arg(long, default_value = "8760h", value_parser = parse_validity)]
    self_managed_validity: Duration,
    /// NAMESPACE/NAME of the Secret holding the self-managed pair.
    #[arg(long, default_value = "storm-system/storm-webhook-tls")]
    self_managed_secret: String,
    /// Name of the Mutating- and ValidatingWebhookConfiguration whose caBundle is kept.
    #[arg(long, default_value = "storm-webhook")]
    webhook_configuration: String,
    /// Subject alternative names of a self-managed serving certificate (IPs or DNS names).
    #[arg(long = "san", default_values_t = [
        "storm-webhook.storm-system.svc".to_string(),
        "storm-webhook.storm-system.svc.cluster.local".to_string(),
    ])]
    sans: Vec<String>,
    /// Log format.
    #[arg(long, env = "STORM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Longest request timeout an analysis metric (Prometheus or web) may set, Go-style duration;
    /// longer ones are denied. Keep it equal to the controller's --analysis-max-timeout.
    #[arg(long, env = "ANALYSIS_MAX_TIMEOUT", default_value = "30s", value_parser = parse_wait)]
    analysis_max_timeout: Duration,
    /// Shortest interval between an analysis metric's measurements, Go-style duration; shorter
    /// ones are denied. Keep it equal to the controller's --analysis-min-interval.
    #[arg(long, env = "ANALYSIS_MIN_INTERVAL", default_value = "10s", value_parser = parse_wait)]
    analysis_min_interval: Duration,
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    storm_shared::units::parse_wait(text).map_err(|e| e.to_string())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
struct CertsArgs {
    /// Directory for ca.crt, ca.key, tls.crt, tls.key (an existing CA there is reused).
    #[arg(long)]
    out_dir: PathBuf,
    /// IP addresses for the serving certificate.
    #[arg(long = "host")]
    hosts: Vec<IpAddr>,
    /// DNS names for the serving certificate.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// Make a new CA even if one exists in --out-dir.
    #[arg(long)]
    new_ca: bool,
}

#[derive(Args, Debug)]
struct RegistrationArgs {
    /// URL base the API server calls, e.g. https://127.0.0.1:8443 (URL mode).
    #[arg(long, conflicts_with = "service")]
    url: Option<String>,
    /// Service NAMESPACE/NAME the API server calls on port 443 (Service mode).
    #[arg(long)]
    service: Option<String>,
    /// PEM CA certificate to put in caBundle.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve_main(cli.serve),
        Some(Command::Serve(args)) => serve_main(args),
        Some(Command::Certs(args)) => certs_main(&args),
        Some(Command::Registration(args)) => registration_main(&args),
    }
}

fn certs_main(args: &CertsArgs) -> ExitCode {
    let mut dns = args.dns.clone();
    if args.hosts.is_empty() && dns.is_empty() {
        dns = default_dns_names();
    }
    match certs::write_pair(&args.out_dir, &args.hosts, &dns, args.new_ca) {
        Ok(_) => {
            eprintln!(
                "wrote ca.crt, ca.key, tls.crt, tls.key to {}",
                args.out_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("storm-webhook certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The names the in-cluster Service answers to.
fn default_dns_names() -> Vec<String> {
    let svc = "storm-webhook";
    let ns = registration::SYSTEM_NAMESPACE;
    vec![
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("{svc}.{ns}"),
    ]
}

fn registration_main(args: &RegistrationArgs) -> ExitCode {
    let target = match (&args.url, &args.service) {
        (Some(url), _) => Target::Url(url.clone()),
        (None, Some(svc)) => match svc.split_once('/') {
            Some((namespace, name)) => Target::Service {
                namespace: namespace.into(),
                name: name.into(),
            },
            None => {
                eprintln!("storm-webhook registration: --service wants NAMESPACE/NAME");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => {
            eprintln!("storm-webhook registration: give --url or --service");
            return ExitCode::FAILURE;
        }
    };
    let ca = match &args.ca_bundle {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                eprintln!(
                    "storm-webhook registration: reading {}: {e}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let list = registration::render(&target, ca.as_deref());
    match serde_json::to_string_pretty(&list) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("storm-webhook registration: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_validity(text: &str) -> Result<Duration, String> {
    let d: k8s_openapi::jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration such as 8760h: {e}"))?;
    let d = Duration::try_from(d).map_err(|_| format!("{text:?} must be positive"))?;
    if d < Duration::from_secs(30) {
        return Err(format!("{text:?} is shorter than 30s"));
    }
    Ok(d)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Stack of each worker thread. Reviews run on them, and CEL's parser recurses deeply for every
/// level of brackets: a condition nested `MAX_EXPRESSION_DEPTH` (32) deep needs more than 4 MiB in
/// a debug build, past tokio's default of 2 MiB. Reserved, not committed, until used.
const WORKER_STACK: usize = 16 << 20;

fn serve_main(args: ServeArgs) -> ExitCode {
    init_tracing(args.log_format);
    // kube's client and our server both use rustls; pick ring once for the whole process.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.thread_stack_size(WORKER_STACK);
    if let Some(n) = args.worker_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "storm-webhook stopped");
            ExitCode::FAILURE
        }
    }
}

/// Why the webhook stopped: the binary's one error type. The library's domain errors
/// (certificates, self-managed issuance) arrive wrapped with their source; a review the server
/// cannot read is not an error of the server but an answer to the caller (`review::BadReview`).
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("--tls-cert and --tls-key are required (or STORM_WEBHOOK_TLS_CERT/_KEY)")]
    NoCertificate,
    #[error("loading the serving certificate: {0}")]
    Certificate(#[from] certs::CertError),
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("connecting to the cluster (KUBECONFIG or in-cluster config): {0}")]
    Cluster(#[from] kube::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("writing the port file {path}: {source}")]
    PortFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--self-managed-secret {0:?}: expected NAMESPACE/NAME")]
    SelfManagedSecretName(String),
    #[error("self-managed certificates: {0}")]
    SelfManaged(#[from] storm_webhook::selfmanaged::SelfManagedError),
}

async fn serve(args: ServeArgs) -> Result<(), Error> {
    let (Some(cert), Some(key)) = (args.tls_cert.clone(), args.tls_key.clone()) else {
        return Err(Error::NoCertificate);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if args.self_managed {
        let client = kube::Client::try_default().await?;
        let (namespace, secret) = args
            .self_managed_secret
            .split_once('/')
            .ok_or_else(|| Error::SelfManagedSecretName(args.self_managed_secret.clone()))?;
        let (ips, dns): (Vec<String>, Vec<String>) = args
            .sans
            .iter()
            .cloned()
            .partition(|s| s.parse::<std::net::IpAddr>().is_ok());
        let settings = storm_webhook::selfmanaged::Settings {
            namespace: namespace.to_string(),
            secret: secret.to_string(),
            configuration: args.webhook_configuration.clone(),
            ips: ips.iter().filter_map(|i| i.parse().ok()).collect(),
            dns,
            validity: args.self_managed_validity,
        };
        storm_webhook::selfmanaged::ensure_pair(&client, &settings).await?;
        // A stored pair past its renewal point is renewed before it is served.
        let pair = storm_webhook::selfmanaged::renew(&client, &settings).await?;
        if let Err(e) = storm_webhook::selfmanaged::sync_ca_bundles(
            &client,
            &settings.configuration,
            &pair.ca_pem,
        )
        .await
        {
            tracing::warn!(error = %e, "setting the caBundle (retried every period)");
        }
        storm_webhook::selfmanaged::write_serving_pair(&pair, &cert, &key)?;
        tokio::spawn(storm_webhook::selfmanaged::keep(
            client,
            settings,
            cert.clone(),
            key.clone(),
            pair,
        ));
    }
    let paths = PairPaths { cert, key };
    let resolver = Arc::new(ReloadingResolver::new(certs::load(&paths, &provider)?));
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(certs::watch(
        resolver.clone(),
        paths,
        provider.clone(),
        Duration::from_millis(args.cert_poll_ms.max(100)),
        metrics.clone(),
    ));
    let (caches, authorizer) = if args.offline {
        tracing::warn!("offline: no cluster lookups, no RolloutPolicies, access checks refuse");
        (Caches::offline(), Authorizer::offline())
    } else {
        let client = kube::Client::try_default().await?;
        (
            Caches::start(client.clone()),
            Authorizer::new(client, storm_webhook::access::SAR_TIMEOUT),
        )
    };
    let client_ca = match &args.client_ca {
        Some(path) => Some(Arc::new(certs::load_roots(path)?)),
        None => None,
    };
    let client_auth = client_ca.is_some();
    let tls = Arc::new(server::tls_config(resolver, provider, client_ca)?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: args.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Listen {
        addr: args.listen,
        source,
    })?;
    if let Some(path) = &args.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", bound.port()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| Error::PortFile {
                path: path.clone(),
                source,
            })?;
    }
    tracing::info!(address = %bound, "listening (HTTPS)");
    let settings = storm_webhook::review::Settings {
        analysis_bounds: storm_shared::rules::AnalysisBounds {
            max_timeout: args.analysis_max_timeout,
            min_interval: args.analysis_min_interval,
        },
    };
    let app = server::router(Arc::new(AppState {
        caches,
        metrics,
        authorizer,
        settings,
        client_auth,
    }));
    server::serve(listener, tls, app, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("signal received");
}
