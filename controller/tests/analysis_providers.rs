//! The analysis engine against local HTTP servers: the web provider end to end through
//! `Runner::advance`, and the Datadog provider against a server speaking Datadog's v1 query API
//! (there is no Datadog here; the response shape is Datadog's documented one). No cluster: the
//! error-rate source reads no template, and the kube client points nowhere.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// A JSON response (axum is built without its `json` feature here).
type Reply = (StatusCode, String);

#[allow(non_snake_case)]
fn Json(v: Value) -> String {
    v.to_string()
}
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storm_controller::analysis::datadog::{Datadog, Keys};
use storm_controller::analysis::{Runner, Source};
use storm_shared::types::analysis::{
    DatadogMetric, Metric, MetricProvider, SecretRef, WebHeader, WebMethod, WebMetric,
};
use storm_shared::types::stormservice::{AnalysisPhase, AnalysisRunStatus};

#[derive(Clone, Default)]
struct App {
    rate: Arc<Mutex<Value>>,
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
    seen: Arc<Mutex<Vec<String>>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

async fn rate(State(app): State<App>) -> Reply {
    app.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let delay = *app.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let status = StatusCode::from_u16(*app.status.lock().unwrap()).unwrap();
    let value = app.rate.lock().unwrap().clone();
    (status, Json(json!({"data": {"errorRate": value}})))
}

async fn echo(State(app): State<App>, headers: HeaderMap, body: String) -> Reply {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    app.seen
        .lock()
        .unwrap()
        .push(format!("{auth}|{content_type}|{body}"));
    if auth != "Bearer t0ken" {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "no"})));
    }
    (
        StatusCode::OK,
        Json(json!({"result": {"rates": [0.5, 1.5]}})),
    )
}

/// Datadog's v1 query API as documented: keys in headers, from/to/query parameters, series with
/// a pointlist of [milliseconds, value|null].
async fn datadog_query(headers: HeaderMap, RawQuery(query): RawQuery) -> Reply {
    let params: HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("dd-api-key") != "api-secret" || header("dd-application-key") != "app-secret" {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"errors": ["Forbidden"]})),
        );
    }
    let (Some(from), Some(to), Some(query)) =
        (params.get("from"), params.get("to"), params.get("query"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": ["from, to and query are required"]})),
        );
    };
    let (from, to): (i64, i64) = (from.parse().unwrap(), to.parse().unwrap());
    if query.contains("by {") {
        return (
            StatusCode::OK,
            Json(json!({"status": "ok", "series": [
                {"pointlist": [[1.0e12, 1.0]]}, {"pointlist": [[1.0e12, 2.0]]}]})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({
            "status": "ok", "res_type": "time_series", "query": query,
            "from_date": from * 1000, "to_date": to * 1000,
            "series": [{
                "metric": "trace.http.request.errors", "scope": "service:llm",
                "display_name": "trace.http.request.errors", "interval": 60, "length": 3,
                "pointlist": [[(from * 1000) as f64, 0.5], [((to - 60) * 1000) as f64, (to - from) as f64 / 100.0], [(to * 1000) as f64, null]]
            }]
        })),
    )
}

async fn serve(app: App) -> String {
    let router = Router::new()
        .route("/rate", get(rate))
        .route("/echo", post(echo))
        .route("/api/v1/query", get(datadog_query))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// A client for an API server that does not exist: the error-rate source never calls it.
fn no_cluster() -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap()
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn web_metric(url: String) -> Metric {
    Metric {
        name: "error-rate".into(),
        provider: MetricProvider {
            web: Some(WebMetric {
                url,
                json_path: Some("{$.data.errorRate}".into()),
                timeout: Some("1s".into()),
                ..WebMetric::default()
            }),
            ..MetricProvider::default()
        },
        success_condition: Some("result <= 5".into()),
        ..Metric::default()
    }
}

fn new_run() -> AnalysisRunStatus {
    AnalysisRunStatus {
        name: "error-rate".into(),
        revision: "abc123".into(),
        phase: AnalysisPhase::Running,
        started_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(0))),
        ..AnalysisRunStatus::default()
    }
}

#[tokio::test]
async fn web_counted_measurements_follow_the_interval_and_succeed() {
    let app = App::default();
    *app.status.lock().unwrap() = 200;
    *app.rate.lock().unwrap() = json!(1.25);
    let base = serve(app.clone()).await;
    let metric = Metric {
        count: Some(3),
        interval: Some("10s".into()),
        ..web_metric(format!("{base}/rate"))
    };
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let runner = Runner::new(loopback_allowed()).unwrap();
    let client = no_cluster();
    let mut run = new_run();

    let next = runner.advance(&client, "ns", source, &mut run, t(0)).await;
    assert_eq!(next, Some(Duration::from_secs(10)));
    assert_eq!(run.phase, AnalysisPhase::Running);
    assert_eq!(run.metrics.len(), 1);
    assert_eq!(run.metrics[0].name, "errorRate");
    assert_eq!(run.metrics[0].count, 1);
    assert_eq!(
        run.metrics[0].measurements[0].value.as_deref(),
        Some("1.25")
    );

    // Not due yet: nothing measured, the remaining wait returned.
    let next = runner.advance(&client, "ns", source, &mut run, t(4)).await;
    assert_eq!(next, Some(Duration::from_secs(6)));
    assert_eq!(run.metrics[0].count, 1);

    // A restart: the run comes back from its serialized form, and a new runner carries on.
    let stored = serde_json::to_string(&run).unwrap();
    let mut run: AnalysisRunStatus = serde_json::from_str(&stored).unwrap();
    let runner = Runner::new(loopback_allowed()).unwrap();
    assert!(
        runner
            .advance(&client, "ns", source, &mut run, t(10))
            .await
            .is_some()
    );
    assert_eq!(
        runner.advance(&client, "ns", source, &mut run, t(20)).await,
        None
    );
    assert_eq!(run.phase, AnalysisPhase::Successful, "{run:#?}");
    assert_eq!(run.metrics[0].successful, 3);
    // A decided run is left alone.
    assert_eq!(
        runner.advance(&client, "ns", source, &mut run, t(30)).await,
        None
    );
    assert_eq!(run.metrics[0].count, 3);
}

#[tokio::test]
async fn web_error_rate_above_the_threshold_fails_the_run() {
    let app = App::default();
    *app.status.lock().unwrap() = 200;
    *app.rate.lock().unwrap() = json!(2);
    let base = serve(app.clone()).await;
    let metric = web_metric(format!("{base}/rate"));
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let runner = Runner::new(loopback_allowed()).unwrap();
    let client = no_cluster();
    let mut run = new_run();
    // Unbounded: it keeps measuring every 30s (the error-rate default) while the rate is fine.
    for i in 0..12 {
        let next = runner
            .advance(&client, "ns", source, &mut run, t(i * 30))
            .await;
        assert_eq!(next, Some(Duration::from_secs(30)), "{run:#?}");
    }
    assert_eq!(run.metrics[0].count, 12);
    assert_eq!(run.metrics[0].measurements.len(), 10);
    *app.rate.lock().unwrap() = json!(7.5);
    assert_eq!(
        runner
            .advance(&client, "ns", source, &mut run, t(360))
            .await,
        None
    );
    assert_eq!(run.phase, AnalysisPhase::Failed);
    let msg = run.message.unwrap();
    assert!(msg.starts_with("errorRate failed"), "{msg}");
    assert!(msg.contains("7.5"), "{msg}");
}

#[tokio::test]
async fn web_errors_count_toward_the_consecutive_error_limit_only() {
    let app = App::default();
    *app.status.lock().unwrap() = 503;
    let base = serve(app.clone()).await;
    let metric = Metric {
        count: Some(2),
        interval: Some("5s".into()),
        ..web_metric(format!("{base}/rate"))
    };
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    // 5 s is below the default interval floor (10 s), which would space the measurements out.
    let runner =
        Runner::new(loopback_allowed())
            .unwrap()
            .with_bounds(storm_shared::rules::AnalysisBounds {
                min_interval: std::time::Duration::from_secs(1),
                ..Default::default()
            });
    let client = no_cluster();
    let mut run = new_run();
    for i in 0..4 {
        assert!(
            runner
                .advance(&client, "ns", source, &mut run, t(i * 5))
                .await
                .is_some()
        );
    }
    assert_eq!(run.phase, AnalysisPhase::Running);
    let m = &run.metrics[0];
    assert_eq!((m.error, m.consecutive_error, m.successful), (4, 4, 0));
    assert!(
        m.measurements[0]
            .message
            .as_deref()
            .unwrap()
            .contains("HTTP 503"),
        "{m:#?}"
    );
    assert_eq!(
        runner.advance(&client, "ns", source, &mut run, t(20)).await,
        None
    );
    assert_eq!(run.phase, AnalysisPhase::Error);
    assert!(
        run.message
            .as_deref()
            .unwrap()
            .contains("more than consecutiveErrorLimit 4"),
        "{:?}",
        run.message
    );
}

#[tokio::test]
async fn web_timeouts_and_empty_results() {
    let app = App::default();
    *app.status.lock().unwrap() = 200;
    *app.rate.lock().unwrap() = Value::Null;
    let base = serve(app.clone()).await;
    let metric = web_metric(format!("{base}/rate"));
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let runner = Runner::new(loopback_allowed()).unwrap();
    let client = no_cluster();

    let mut run = new_run();
    assert_eq!(
        runner.advance(&client, "ns", source, &mut run, t(0)).await,
        None
    );
    assert_eq!(run.phase, AnalysisPhase::Inconclusive, "{run:#?}");

    *app.delay.lock().unwrap() = Duration::from_secs(3);
    let mut run = new_run();
    runner.advance(&client, "ns", source, &mut run, t(0)).await;
    let m = &run.metrics[0].measurements[0];
    assert_eq!(m.phase, AnalysisPhase::Error);
    assert!(
        m.message.as_deref().unwrap().contains("timed out after 1s"),
        "{m:?}"
    );
}

#[tokio::test]
async fn web_post_sends_headers_and_body() {
    let app = App::default();
    let base = serve(app.clone()).await;
    let metric = Metric {
        provider: MetricProvider {
            web: Some(WebMetric {
                url: format!("{base}/echo"),
                method: Some(WebMethod::Post),
                headers: vec![WebHeader {
                    key: "Authorization".into(),
                    value: "Bearer t0ken".into(),
                    ..WebHeader::default()
                }],
                body: Some("{\"service\":\"llm\"}".into()),
                json_path: Some("$.result.rates[1]".into()),
                timeout: None,
            }),
            ..MetricProvider::default()
        },
        success_condition: Some("result < 2".into()),
        ..web_metric(String::new())
    };
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let runner = Runner::new(loopback_allowed()).unwrap();
    let mut run = new_run();
    runner
        .advance(&no_cluster(), "ns", source, &mut run, t(0))
        .await;
    let m = &run.metrics[0];
    assert_eq!(m.successful, 1, "{m:#?}");
    assert_eq!(m.measurements[0].value.as_deref(), Some("1.5"));
    assert_eq!(
        app.seen.lock().unwrap().as_slice(),
        ["Bearer t0ken|application/json|{\"service\":\"llm\"}"]
    );
    // The header value is never in the status.
    assert!(!serde_json::to_string(&run).unwrap().contains("t0ken"));
}

/// Keys from a Secret that also names the address they go to (a local stand-in, which a metric's
/// own `address` may not name: it must be one of Datadog's sites).
fn keys(api: &str, app: &str, address: &str) -> Keys {
    let data = BTreeMap::from([
        ("api-key".to_string(), ByteString(api.as_bytes().to_vec())),
        ("app-key".to_string(), ByteString(app.as_bytes().to_vec())),
        (
            "address".to_string(),
            ByteString(address.as_bytes().to_vec()),
        ),
    ]);
    Keys::from_secret(&Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("datadog".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Secret::default()
    })
    .unwrap()
}

#[tokio::test]
async fn datadog_v1_query_against_a_local_server() {
    let base = serve(App::default()).await;
    let spec = DatadogMetric {
        query: "sum:trace.http.request.errors{service:llm}.as_count()".into(),
        interval: Some("10m".into()),
        address: None,
        secret_ref: SecretRef {
            name: "datadog".into(),
        },
    };
    let runner = Runner::new(loopback_allowed()).unwrap();
    let good = keys("api-secret", "app-secret", &base);
    let value = runner
        .query(
            &Datadog {
                spec: &spec,
                keys: &good,
            },
            t(0),
        )
        .await
        .unwrap();
    // The latest non-null point; the server encodes the window (600s) in it.
    assert_eq!(value, json!(6.0));

    let bad = keys("wrong-api", "wrong-app", &base);
    let err = runner
        .query(
            &Datadog {
                spec: &spec,
                keys: &bad,
            },
            t(0),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(err.contains("Secret datadog"), "{err}");
    assert!(
        !err.contains("wrong-api") && !err.contains("wrong-app"),
        "{err}"
    );

    let grouped = DatadogMetric {
        query: "sum:errors{*} by {pod}".into(),
        ..spec.clone()
    };
    let err = runner
        .query(
            &Datadog {
                spec: &grouped,
                keys: &good,
            },
            t(0),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("2 series"), "{err}");
}

#[tokio::test]
async fn unreachable_servers_are_measurement_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metric = web_metric(format!("http://127.0.0.1:{port}/rate"));
    let runner = Runner::new(loopback_allowed()).unwrap();
    let mut run = new_run();
    let next = runner
        .advance(
            &no_cluster(),
            "ns",
            Source::ErrorRate {
                metric: &metric,
                threshold: 5.0,
            },
            &mut run,
            t(0),
        )
        .await;
    assert_eq!(next, Some(Duration::from_secs(30)));
    let m = &run.metrics[0].measurements[0];
    assert_eq!(m.phase, AnalysisPhase::Error);
    let msg = m.message.as_deref().unwrap();
    assert!(msg.contains("request to http://127.0.0.1"), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
}

/// The egress policy of tests whose providers are local stand-ins on loopback.
fn loopback_allowed() -> storm_controller::analysis::egress::EgressPolicy {
    storm_controller::analysis::egress::EgressPolicy::new(
        &["127.0.0.1".into(), "localhost".into()],
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn the_default_egress_policy_refuses_loopback_and_ends_the_metric_at_once() {
    let app = App::default();
    *app.status.lock().unwrap() = 200;
    *app.rate.lock().unwrap() = json!(1);
    let base = serve(app.clone()).await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let runner = Runner::new(storm_controller::analysis::egress::EgressPolicy::default()).unwrap();
    let client = no_cluster();
    // By address and by a name that resolves to it.
    for url in [
        format!("{base}/rate"),
        format!("http://localhost:{port}/rate"),
    ] {
        let metric = Metric {
            count: Some(3),
            interval: Some("10s".into()),
            ..web_metric(url.clone())
        };
        let source = Source::ErrorRate {
            metric: &metric,
            threshold: 5.0,
        };
        let mut run = new_run();
        let next = runner.advance(&client, "ns", source, &mut run, t(0)).await;
        assert_eq!(next, None, "{url}: decided at once, not retried");
        assert_eq!(run.phase, AnalysisPhase::Error, "{url}: {run:#?}");
        let message = run.metrics[0].message.clone().unwrap_or_default();
        assert!(
            message.contains("--analysis-egress-allow") && message.contains("loopback"),
            "{url}: {message}"
        );
    }
    assert_eq!(
        app.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the stand-in was never asked"
    );
    // Allowed, the same URL is measured.
    let metric = web_metric(format!("{base}/rate"));
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let mut run = new_run();
    Runner::new(loopback_allowed())
        .unwrap()
        .advance(&client, "ns", source, &mut run, t(0))
        .await;
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// In the controller, measurements run in a pool outside `advance`: `advance` starts the due one
/// and returns without it, the pool wakes the StormService when it is done, and the next
/// `advance` records it.
#[tokio::test]
async fn measurements_in_the_pool_are_started_then_recorded() {
    use storm_controller::analysis::pool::{Pool, PoolSettings};
    let app = App::default();
    *app.status.lock().unwrap() = 200;
    *app.rate.lock().unwrap() = json!(1.25);
    *app.delay.lock().unwrap() = Duration::from_millis(300);
    let base = serve(app.clone()).await;
    let metric = web_metric(format!("{base}/rate"));
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let (tx, mut woken) = futures::channel::mpsc::unbounded();
    let pool = Arc::new(Pool::new(PoolSettings::default(), Some(tx)));
    let runner = Runner::new(loopback_allowed()).unwrap().with_pool(pool);
    let client = no_cluster();
    let mut run = new_run();

    let next = runner
        .advance_for(&client, "ns", "llm", source, &mut run, t(0))
        .await;
    // Started, not waited for: nothing recorded yet, and a look again within the timeout cap.
    assert_eq!(run.metrics[0].count, 0, "{run:#?}");
    assert_eq!(run.phase, AnalysisPhase::Running);
    assert!(
        next.is_some_and(|d| d >= Duration::from_secs(30)),
        "{next:?}"
    );
    // Asked again while it runs: not started twice.
    runner
        .advance_for(&client, "ns", "llm", source, &mut run, t(0))
        .await;

    let wake = futures::StreamExt::next(&mut woken).await;
    assert_eq!(wake, Some(("ns".to_string(), "llm".to_string())));
    runner
        .advance_for(&client, "ns", "llm", source, &mut run, t(1))
        .await;
    assert_eq!(run.metrics[0].count, 1, "{run:#?}");
    assert_eq!(
        run.metrics[0].measurements[0].value.as_deref(),
        Some("1.25")
    );
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A timeout above the cap is cut to it; an interval below the floor is raised to it.
#[tokio::test]
async fn timeouts_are_capped_and_intervals_floored() {
    let app = App::default();
    *app.status.lock().unwrap() = 200;
    *app.rate.lock().unwrap() = json!(1);
    *app.delay.lock().unwrap() = Duration::from_secs(3);
    let base = serve(app.clone()).await;
    let mut metric = Metric {
        count: Some(3),
        interval: Some("1s".into()),
        ..web_metric(format!("{base}/rate"))
    };
    metric.provider.web.as_mut().unwrap().timeout = Some("168h".into());
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let runner =
        Runner::new(loopback_allowed())
            .unwrap()
            .with_bounds(storm_shared::rules::AnalysisBounds {
                max_timeout: Duration::from_secs(1),
                min_interval: Duration::from_secs(10),
            });
    let mut run = new_run();
    let next = runner
        .advance(&no_cluster(), "ns", source, &mut run, t(0))
        .await;
    let m = &run.metrics[0].measurements[0];
    assert!(
        m.message
            .as_deref()
            .unwrap_or("")
            .contains("timed out after 1s"),
        "{m:?}"
    );
    // The error is retried after the floored interval, not after 1 s.
    assert!(
        next.is_some_and(|d| d >= Duration::from_secs(9)),
        "{next:?}"
    );
}

/// A `Host` header (stored before admission refused it) is refused at run time: nothing is sent.
#[tokio::test]
async fn refused_headers_are_never_sent() {
    let app = App::default();
    let base = serve(app.clone()).await;
    let mut metric = web_metric(format!("{base}/rate"));
    metric.provider.web.as_mut().unwrap().headers = vec![WebHeader {
        key: "Host".into(),
        value: "metadata.google.internal".into(),
        ..WebHeader::default()
    }];
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let runner = Runner::new(loopback_allowed()).unwrap();
    let mut run = new_run();
    runner
        .advance(&no_cluster(), "ns", source, &mut run, t(0))
        .await;
    assert_eq!(run.metrics[0].phase, AnalysisPhase::Error, "{run:#?}");
    let message = run.metrics[0].message.clone().unwrap_or_default();
    assert!(message.contains("header \"Host\""), "{message}");
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A result too large for the conditions is an error, not a CEL walk over it.
#[tokio::test]
async fn results_are_size_capped() {
    let app = App::default();
    *app.status.lock().unwrap() = 200;
    *app.rate.lock().unwrap() = json!((0..5000).collect::<Vec<i32>>());
    let base = serve(app.clone()).await;
    let metric = web_metric(format!("{base}/rate"));
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let runner = Runner::new(loopback_allowed()).unwrap();
    let mut run = new_run();
    runner
        .advance(&no_cluster(), "ns", source, &mut run, t(0))
        .await;
    let m = &run.metrics[0].measurements[0];
    assert_eq!(m.phase, AnalysisPhase::Error);
    assert!(
        m.message
            .as_deref()
            .unwrap_or("")
            .contains("more than 1000"),
        "{m:?}"
    );
}
