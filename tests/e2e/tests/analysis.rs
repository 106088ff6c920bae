//! The analysis engine (`storm_controller::analysis`) against real servers: a real Prometheus
//! (Debian's `prometheus` package; the test fails and says how to install it when it is missing)
//! scraping a fake exporter whose counters the test sets, and AnalysisTemplates and Secrets read
//! from the local control plane. Datadog is a local server speaking Datadog's v1 query API shape:
//! there is no Datadog here.
//!
//! Run: `cargo test -p storm-e2e --test analysis`.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use serde_json::{Value, json};
use storm_controller::analysis::prometheus::Prometheus as PrometheusProvider;
use storm_controller::analysis::{Runner, Source};
use storm_shared::types::analysis::{
    AnalysisTemplate, AnalysisTemplateSpec, DatadogMetric, Metric, MetricProvider,
    PrometheusMetric, SecretRef, TemplateArg,
};
use storm_shared::types::stormservice::{
    AnalysisArg, AnalysisPhase, AnalysisRef, AnalysisRunStatus, AnalysisTemplateRef,
};
use storm_test_support::prometheus::{Exporter, Prometheus};
use storm_test_support::{TestNamespace, dump_logs_on_error, install_crypto_provider};

fn run(name: &str) -> AnalysisRunStatus {
    AnalysisRunStatus {
        name: name.into(),
        revision: "canary1".into(),
        phase: AnalysisPhase::Running,
        started_at: Some(Time(Timestamp::now())),
        ..AnalysisRunStatus::default()
    }
}

/// Advances `run` as the reconcile loop would, sleeping until each next measurement, until it is
/// decided (or 60 s pass).
async fn advance_until_decided(
    runner: &Runner,
    client: &kube::Client,
    namespace: &str,
    source: Source<'_>,
    run: &mut AnalysisRunStatus,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Some(next) = runner
        .advance(client, namespace, source, run, Timestamp::now())
        .await
    {
        if std::time::Instant::now() > deadline {
            bail!("run still {:?} after 60s: {run:#?}", run.phase);
        }
        tokio::time::sleep(next.max(Duration::from_millis(50))).await;
    }
    Ok(())
}

fn prometheus_metric(address: &str, query: &str) -> Metric {
    Metric {
        name: "errors".into(),
        provider: MetricProvider {
            prometheus: Some(PrometheusMetric {
                address: address.into(),
                query: query.into(),
                timeout: Some("5s".into()),
            }),
            ..MetricProvider::default()
        },
        success_condition: Some("result < 5".into()),
        ..Metric::default()
    }
}

/// A client for an API server that does not exist: the error-rate source reads nothing from it.
fn no_cluster() -> Result<kube::Client> {
    install_crypto_provider();
    Ok(kube::Client::try_from(kube::Config::new(
        "http://127.0.0.1:9".parse()?,
    ))?)
}

#[tokio::test]
async fn prometheus_results_from_a_real_server() -> Result<()> {
    let exporter = Exporter::start()?;
    exporter.set("canary1", 98, 2);
    exporter.set("stable", 1000, 0);
    let prometheus = Prometheus::start(&[exporter.target()])?;
    let canary = exporter.error_percent_query("canary1");
    prometheus.wait_for_value(&canary, 2.0)?;
    // The real Prometheus listens on loopback, which the default egress policy refuses.
    let runner = Runner::new(storm_controller::analysis::egress::EgressPolicy::new(
        &["127.0.0.1".into()],
        None,
    )?)?;
    let base = prometheus.base_url();
    let query = |q: &str| {
        let spec = PrometheusMetric {
            address: base.clone(),
            query: q.to_string(),
            timeout: None,
        };
        let runner = &runner;
        async move {
            runner
                .query(&PrometheusProvider { spec: &spec }, Timestamp::now())
                .await
        }
    };
    // A one-sample vector is a number, several samples a list, a scalar a number, no samples null.
    assert_eq!(query(&canary).await?, json!(2.0));
    assert_eq!(
        query("sort_desc(storm_test_requests_total{outcome=\"success\"})").await?,
        json!([1000.0, 98.0])
    );
    assert_eq!(
        query("scalar(sum(storm_test_requests_total{outcome=\"error\"}))").await?,
        json!(2.0)
    );
    assert_eq!(
        query(&exporter.error_percent_query("unknown")).await?,
        Value::Null
    );
    let err = query("sum(rate(storm_test_requests_total[1m]")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad_data"), "{err}");

    // The error-rate metric through Runner::advance: 2% passes count 2, then 10% fails.
    let client = no_cluster()?;
    let counted = Metric {
        count: Some(2),
        interval: Some("1s".into()),
        ..prometheus_metric(&base, &canary)
    };
    let source = Source::ErrorRate {
        metric: &counted,
        threshold: 5.0,
    };
    let mut passing = run("error-rate");
    advance_until_decided(&runner, &client, "unused", source, &mut passing).await?;
    ensure!(
        passing.phase == AnalysisPhase::Successful,
        "expected Successful: {passing:#?}"
    );
    ensure!(passing.metrics[0].successful == 2, "{passing:#?}");

    exporter.set("canary1", 90, 10);
    prometheus.wait_for_value(&canary, 10.0)?;
    let unbounded = prometheus_metric(&base, &canary);
    let source = Source::ErrorRate {
        metric: &unbounded,
        threshold: 5.0,
    };
    let mut failing = run("error-rate");
    advance_until_decided(&runner, &client, "unused", source, &mut failing).await?;
    ensure!(
        failing.phase == AnalysisPhase::Failed,
        "expected Failed: {failing:#?}"
    );
    let message = failing.message.clone().unwrap_or_default();
    ensure!(message.contains("value 10"), "{message}");

    // No requests for the revision: no value, inconclusive rather than a pass.
    let empty = prometheus_metric(&base, &exporter.error_percent_query("unknown"));
    let mut inconclusive = run("error-rate");
    advance_until_decided(
        &runner,
        &client,
        "unused",
        Source::ErrorRate {
            metric: &empty,
            threshold: 5.0,
        },
        &mut inconclusive,
    )
    .await?;
    ensure!(
        inconclusive.phase == AnalysisPhase::Inconclusive,
        "{inconclusive:#?}"
    );
    Ok(())
}

async fn create_template(ns: &TestNamespace, name: &str, spec: AnalysisTemplateSpec) -> Result<()> {
    ns.api::<AnalysisTemplate>()
        .create(&PostParams::default(), &AnalysisTemplate::new(name, spec))
        .await
        .with_context(|| format!("creating AnalysisTemplate {name}"))?;
    Ok(())
}

fn template_ref(names: &[&str], args: &[(&str, &str)]) -> AnalysisRef {
    AnalysisRef {
        templates: names
            .iter()
            .map(|n| AnalysisTemplateRef {
                name: (*n).into(),
                namespace: None,
            })
            .collect(),
        args: args
            .iter()
            .map(|(n, v)| AnalysisArg {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
    }
}

#[tokio::test]
async fn templates_and_args_from_the_cluster_against_prometheus() -> Result<()> {
    dump_logs_on_error(templates_and_args(TestNamespace::new("analysis-prom").await?).await)
}

async fn templates_and_args(ns: TestNamespace) -> Result<()> {
    ns.cluster().install_crds()?;
    let exporter = Exporter::start()?;
    exporter.set("canary1", 99, 1);
    let prometheus = Prometheus::start(&[exporter.target()])?;
    prometheus.wait_for_value(&exporter.error_percent_query("canary1"), 1.0)?;

    let metric = Metric {
        count: Some(2),
        interval: Some("1s".into()),
        ..prometheus_metric(
            &prometheus.base_url(),
            &exporter.error_percent_query("{{args.revision}}"),
        )
    };
    create_template(
        &ns,
        "error-rate",
        AnalysisTemplateSpec {
            args: vec![TemplateArg {
                name: "revision".into(),
                value: None,
            }],
            metrics: vec![metric],
        },
    )
    .await?;
    // The real Prometheus listens on loopback, which the default egress policy refuses.
    let runner = Runner::new(storm_controller::analysis::egress::EgressPolicy::new(
        &["127.0.0.1".into()],
        None,
    )?)?;
    let client = ns.client();

    let analysis = template_ref(&["error-rate"], &[("revision", "canary1")]);
    let mut passing = run("step-1");
    advance_until_decided(
        &runner,
        &client,
        ns.name(),
        Source::Templates(&analysis),
        &mut passing,
    )
    .await?;
    ensure!(
        passing.phase == AnalysisPhase::Successful,
        "expected Successful: {passing:#?}"
    );
    ensure!(
        passing.metrics[0].name == "error-rate/errors",
        "{passing:#?}"
    );

    // A missing argument and a missing template end the run in Error, saying what to fix.
    let no_revision = template_ref(&["error-rate"], &[]);
    let mut missing_arg = run("step-2");
    let next = runner
        .advance(
            &client,
            ns.name(),
            Source::Templates(&no_revision),
            &mut missing_arg,
            Timestamp::now(),
        )
        .await;
    ensure!(next.is_none() && missing_arg.phase == AnalysisPhase::Error);
    let message = missing_arg.message.unwrap_or_default();
    ensure!(
        message.contains("AnalysisTemplate error-rate") && message.contains("\"revision\""),
        "{message}"
    );

    let absent = template_ref(&["no-such-template"], &[]);
    let mut missing_template = run("step-3");
    runner
        .advance(
            &client,
            ns.name(),
            Source::Templates(&absent),
            &mut missing_template,
            Timestamp::now(),
        )
        .await;
    ensure!(missing_template.phase == AnalysisPhase::Error);
    let message = missing_template.message.unwrap_or_default();
    ensure!(
        message.contains(&format!(
            "AnalysisTemplate {}/no-such-template not found",
            ns.name()
        )),
        "{message}"
    );
    ns.cleanup().await
}

/// A local server answering `GET /api/v1/query` as Datadog's v1 API does, when the request carries
/// the expected keys; 403 otherwise. Served from a thread for the rest of the test process.
/// Returns its base URL.
fn fake_datadog(api_key: &'static str, app_key: &'static str) -> Result<String> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 2048];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let has = |name: &str, value: &str| {
                head.lines()
                    .any(|l| l.trim() == format!("{name}: {}", value.to_lowercase()))
            };
            let (status, body) = if !head.starts_with("get /api/v1/query?") {
                ("404 Not Found", json!({"errors": ["not found"]}))
            } else if has("dd-api-key", api_key) && has("dd-application-key", app_key) {
                (
                    "200 OK",
                    json!({"status": "ok", "res_type": "time_series", "series": [{
                        "metric": "trace.errors", "scope": "service:llm",
                        "pointlist": [[1.7e12, 0.5], [1.7e12 + 60000.0, 1.5], [1.7e12 + 120000.0, null]]
                    }]}),
                )
            } else {
                ("403 Forbidden", json!({"errors": ["Forbidden"]}))
            };
            let body = body.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(format!("http://{addr}"))
}

#[tokio::test]
async fn datadog_keys_come_from_a_secret_in_the_namespace() -> Result<()> {
    dump_logs_on_error(datadog_keys(TestNamespace::new("analysis-dd").await?).await)
}

async fn datadog_keys(ns: TestNamespace) -> Result<()> {
    ns.cluster().install_crds()?;
    ns.grant_analysis_secrets()?;
    let address = fake_datadog("api-from-secret", "app-from-secret")?;
    let secret = |name: &str, keys: &[(&str, &str)]| Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            keys.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        ),
        ..Secret::default()
    };
    let secrets = ns.api::<Secret>();
    for s in [
        secret(
            "datadog",
            &[
                ("api-key", "api-from-secret"),
                ("app-key", "app-from-secret"),
                ("address", &address),
            ],
        ),
        secret("partial", &[("api-key", "api-from-secret")]),
        secret(
            "wrong",
            &[
                ("api-key", "api-wrong-value"),
                ("app-key", "app-wrong-value"),
                ("address", &address),
            ],
        ),
    ] {
        secrets.create(&PostParams::default(), &s).await?;
    }
    let metric = |secret: &str| Metric {
        name: "errors".into(),
        provider: MetricProvider {
            datadog: Some(DatadogMetric {
                query: "avg:trace.errors{revision:{{args.revision}}}".into(),
                interval: Some("5m".into()),
                // The stand-in's address comes from the Secret: a metric may name only
                // Datadog's own sites.
                address: None,
                secret_ref: SecretRef {
                    name: secret.into(),
                },
            }),
            ..MetricProvider::default()
        },
        success_condition: Some("result < 5".into()),
        ..Metric::default()
    };
    for (template, secret) in [
        ("dd", "datadog"),
        ("dd-absent", "absent"),
        ("dd-partial", "partial"),
        ("dd-wrong", "wrong"),
    ] {
        create_template(
            &ns,
            template,
            AnalysisTemplateSpec {
                args: vec![TemplateArg {
                    name: "revision".into(),
                    value: None,
                }],
                metrics: vec![metric(secret)],
            },
        )
        .await?;
    }
    // The real Prometheus listens on loopback, which the default egress policy refuses.
    let runner = Runner::new(storm_controller::analysis::egress::EgressPolicy::new(
        &["127.0.0.1".into()],
        None,
    )?)?;
    let client = ns.client();
    let advance = |template: &'static str| {
        let (runner, client, ns) = (&runner, &client, &ns);
        async move {
            let analysis = template_ref(&[template], &[("revision", "canary1")]);
            let mut r = run("pre-promotion");
            let next = runner
                .advance(
                    client,
                    ns.name(),
                    Source::Templates(&analysis),
                    &mut r,
                    Timestamp::now(),
                )
                .await;
            (next, r)
        }
    };

    let (next, ok) = advance("dd").await;
    ensure!(
        next.is_none() && ok.phase == AnalysisPhase::Successful,
        "{ok:#?}"
    );
    ensure!(
        ok.metrics[0].measurements[0].value.as_deref() == Some("1.5"),
        "{ok:#?}"
    );

    let (_, absent) = advance("dd-absent").await;
    ensure!(absent.phase == AnalysisPhase::Error, "{absent:#?}");
    let message = absent.message.clone().unwrap_or_default();
    ensure!(
        message.contains(&format!("Secret {}/absent not found", ns.name())),
        "{message}"
    );

    let (_, partial) = advance("dd-partial").await;
    ensure!(partial.phase == AnalysisPhase::Error, "{partial:#?}");
    let message = partial.message.clone().unwrap_or_default();
    ensure!(
        message.contains("Secret partial has no \"app-key\""),
        "{message}"
    );

    // Rejected keys are a measurement error (retried), and the keys never reach the status.
    let (next, wrong) = advance("dd-wrong").await;
    ensure!(
        next.is_some() && wrong.phase == AnalysisPhase::Running,
        "{wrong:#?}"
    );
    let measured = &wrong.metrics[0].measurements[0];
    ensure!(measured.phase == AnalysisPhase::Error, "{wrong:#?}");
    ensure!(
        measured
            .message
            .as_deref()
            .is_some_and(|m| m.contains("HTTP 403") && m.contains("Secret wrong")),
        "{wrong:#?}"
    );
    for r in [&ok, &absent, &partial, &wrong] {
        let text = serde_json::to_string(r)?;
        ensure!(
            !text.contains("from-secret") && !text.contains("wrong-value"),
            "credentials leaked into the status: {text}"
        );
    }
    ns.cleanup().await
}
