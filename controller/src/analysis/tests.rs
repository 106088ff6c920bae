use super::*;
use serde_json::json;
use storm_shared::types::analysis::{
    AnalysisTemplateSpec, MetricProvider, PrometheusMetric, TemplateArg,
};
use storm_shared::types::stormservice::{AnalysisArg, AnalysisTemplateRef};

fn now() -> Timestamp {
    Timestamp::from_second(1_700_000_000).unwrap()
}

fn prom_metric(name: &str, query: &str) -> Metric {
    Metric {
        name: name.into(),
        provider: MetricProvider {
            prometheus: Some(PrometheusMetric {
                address: "http://prometheus:9090".into(),
                query: query.into(),
                timeout: None,
            }),
            ..MetricProvider::default()
        },
        success_condition: Some("result < 0.05".into()),
        ..Metric::default()
    }
}

fn template(args: Vec<TemplateArg>, metrics: Vec<Metric>) -> AnalysisTemplate {
    AnalysisTemplate::new("success-rate", AnalysisTemplateSpec { args, metrics })
}

fn analysis(args: &[(&str, &str)]) -> AnalysisRef {
    AnalysisRef {
        templates: vec![AnalysisTemplateRef {
            name: "success-rate".into(),
            namespace: None,
        }],
        args: args
            .iter()
            .map(|(n, v)| AnalysisArg {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
    }
}

#[test]
fn template_metrics_are_named_and_substituted() {
    let t = template(
        vec![TemplateArg {
            name: "svc".into(),
            value: None,
        }],
        vec![
            prom_metric("errors", "rate(e{svc=\"{{args.svc}}\"}[1m])"),
            prom_metric("latency", "p99{svc=\"{{args.svc}}\"}"),
        ],
    );
    let planned = template_metrics("success-rate", &t, &analysis(&[("svc", "llm")])).unwrap();
    let names: Vec<_> = planned.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["success-rate/errors", "success-rate/latency"]);
    assert_eq!(
        planned[0]
            .metric
            .provider
            .prometheus
            .as_ref()
            .unwrap()
            .query,
        "rate(e{svc=\"llm\"}[1m])"
    );
    assert!(planned.iter().all(|p| p.purpose == Purpose::Gate));
}

#[test]
fn a_missing_argument_is_fatal_and_names_template_and_argument() {
    let t = template(
        vec![TemplateArg {
            name: "svc".into(),
            value: None,
        }],
        vec![prom_metric("errors", "e{svc=\"{{args.svc}}\"}")],
    );
    let PlanError::Fatal(msg) = template_metrics("success-rate", &t, &analysis(&[])).unwrap_err()
    else {
        panic!("not fatal")
    };
    assert!(msg.contains("AnalysisTemplate success-rate"), "{msg}");
    assert!(msg.contains("\"svc\""), "{msg}");
    assert!(msg.contains("analysis args"), "{msg}");
}

#[test]
fn error_rate_fails_above_the_threshold_and_keeps_its_own_condition() {
    let m = prom_metric("rate", "x");
    let effective = error_rate_metric(&m, 5.0).unwrap();
    assert_eq!(effective.failure_condition.as_deref(), Some("result > 5.0"));
    let fail = |v| condition::judge(&effective, &json!(v)).unwrap();
    assert_eq!(fail(7.5), AnalysisPhase::Failed);
    // successCondition "result < 0.05" is the metric's own; 1.0 is under the threshold but misses it.
    assert_eq!(fail(1.0), AnalysisPhase::Inconclusive);
    assert_eq!(fail(0.01), AnalysisPhase::Successful);

    let own = Metric {
        success_condition: None,
        failure_condition: Some("result < 0".into()),
        ..m
    };
    let effective = error_rate_metric(&own, 0.5).unwrap();
    assert_eq!(
        effective.failure_condition.as_deref(),
        Some("(result > 0.5) || (result < 0)")
    );
    assert_eq!(
        condition::judge(&effective, &json!(0.2)).unwrap(),
        AnalysisPhase::Successful
    );
    assert_eq!(
        condition::judge(&effective, &json!(-1)).unwrap(),
        AnalysisPhase::Failed
    );
}

#[test]
fn judged_turns_answers_into_measurements() {
    let m = prom_metric("m", "x");
    let ok = judged(&m, Ok(json!(0.01)), now());
    assert_eq!(ok.phase, AnalysisPhase::Successful);
    assert_eq!(ok.value.as_deref(), Some("0.01"));
    assert_eq!(ok.finished_at, Some(Time(now())));
    let empty = judged(&m, Ok(Json::Null), now());
    assert_eq!(empty.phase, AnalysisPhase::Inconclusive);
    assert_eq!(empty.value, None);
    let err = judged(
        &m,
        Err(MeasureError::Timeout {
            url: "http://p".into(),
            timeout: Duration::from_secs(10),
        }),
        now(),
    );
    assert_eq!(err.phase, AnalysisPhase::Error);
    assert!(err.message.unwrap().contains("timed out"));
    let mismatch = judged(&m, Ok(json!([0.1, 0.2])), now());
    assert_eq!(mismatch.phase, AnalysisPhase::Error);
    assert_eq!(mismatch.value.as_deref(), Some("[0.1,0.2]"));
}

#[test]
fn statuses_follow_the_plan_and_keep_their_counts() {
    let planned = |names: &[&str]| -> Vec<Planned> {
        names
            .iter()
            .map(|n| Planned {
                name: (*n).into(),
                metric: Metric::default(),
                purpose: Purpose::Gate,
            })
            .collect()
    };
    let mut run = AnalysisRunStatus {
        name: "step-1".into(),
        metrics: vec![
            MetricStatus {
                name: "t/gone".into(),
                ..MetricStatus::default()
            },
            MetricStatus {
                name: "t/b".into(),
                count: 2,
                ..MetricStatus::default()
            },
        ],
        ..AnalysisRunStatus::default()
    };
    sync_statuses(&mut run, &planned(&["t/a", "t/b"]));
    let names: Vec<_> = run.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["t/a", "t/b"]);
    assert_eq!(run.metrics[1].count, 2);
}

#[test]
fn api_errors_split_into_fatal_and_transient() {
    let status = |code: u16| {
        kube::Error::Api(
            kube::core::Status::failure("nope", "Reason")
                .with_code(code)
                .boxed(),
        )
    };
    assert!(matches!(
        api_error("Secret ns/dd", &status(403)),
        PlanError::Fatal(m) if m.contains("forbidden") && m.contains("Secret ns/dd")
    ));
    assert!(matches!(
        api_error("x", &status(500)),
        PlanError::Transient(_)
    ));
    assert!(matches!(
        api_error("x", &status(429)),
        PlanError::Transient(_)
    ));
}

/// The reconcile loop runs on a multi-threaded runtime: `advance` must be `Send`, and the runner
/// shareable.
#[test]
fn advance_is_send_and_the_runner_is_shareable() {
    fn shareable<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    shareable::<Runner>();
    // Compiled, never run: only the future's type matters.
    let _ = |runner: &Runner, client: &kube::Client, run: &mut AnalysisRunStatus| {
        let analysis = AnalysisRef::default();
        let fut = runner.advance(client, "ns", Source::Templates(&analysis), run, now());
        send(&fut);
    };
}

/// A client whose every request fails: for runs that must not reach the API server.
fn offline_client() -> kube::Client {
    let service = tower::service_fn(|_: ::http::Request<kube::client::Body>| async {
        Err::<::http::Response<kube::client::Body>, _>(std::io::Error::other(
            "no API server in unit tests",
        ))
    });
    kube::Client::new(service, "default")
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() + seconds).unwrap()
}

/// An error-rate run measured once at `now()`, every minute: the next measurement is due at +60s.
fn measured_error_rate_run() -> AnalysisRunStatus {
    AnalysisRunStatus {
        name: "error-rate".into(),
        phase: AnalysisPhase::Running,
        started_at: Some(Time(now())),
        metrics: vec![MetricStatus {
            name: ERROR_RATE_METRIC.into(),
            phase: AnalysisPhase::Running,
            count: 1,
            successful: 1,
            measurements: vec![limits::measurement(
                AnalysisPhase::Successful,
                Some("0.01".into()),
                None,
                now(),
            )],
            ..MetricStatus::default()
        }],
        ..AnalysisRunStatus::default()
    }
}

/// The run's message flows into the rollout status: a countdown in it would make every reconcile
/// write the status again although nothing happened.
#[tokio::test]
async fn a_run_with_nothing_due_is_left_unchanged_by_later_reconciles() {
    let runner = Runner::new(loopback_allowed()).unwrap();
    let client = offline_client();
    let metric = Metric {
        interval: Some("1m".into()),
        ..prom_metric("rate", "x")
    };
    let source = Source::ErrorRate {
        metric: &metric,
        threshold: 5.0,
    };
    let mut run = measured_error_rate_run();
    let first = runner.advance(&client, "ns", source, &mut run, at(5)).await;
    let after_first = serde_json::to_string(&run).unwrap();
    let second = runner
        .advance(&client, "ns", source, &mut run, at(17))
        .await;
    assert_eq!(serde_json::to_string(&run).unwrap(), after_first);
    assert_eq!(first, Some(Duration::from_secs(55)));
    assert_eq!(second, Some(Duration::from_secs(43)));
    assert_eq!(
        run.message.as_deref(),
        Some("measuring: 0 of 1 metrics decided; next measurement at 2023-11-14T22:14:20Z")
    );
}

/// The controller reads templates with cluster-wide rights: a StormService must not run another
/// namespace's (with that namespace's Secrets), even one stored before admission refused it.
#[tokio::test]
async fn a_template_in_another_namespace_ends_the_run_without_reading_it() {
    let runner = Runner::new(loopback_allowed()).unwrap();
    let mut analysis = analysis(&[]);
    analysis.templates.insert(
        0,
        AnalysisTemplateRef {
            name: "own".into(),
            namespace: Some("team-a".into()),
        },
    );
    analysis.templates[1].namespace = Some("team-b".into());
    let mut run = AnalysisRunStatus {
        name: "step-1".into(),
        phase: AnalysisPhase::Running,
        ..AnalysisRunStatus::default()
    };
    let next = runner
        .advance(
            &offline_client(),
            "team-a",
            Source::Templates(&analysis),
            &mut run,
            now(),
        )
        .await;
    assert_eq!(next, None);
    assert_eq!(run.phase, AnalysisPhase::Error);
    assert_eq!(
        run.message.as_deref(),
        Some(
            "analysis templates[1].namespace is \"team-b\" but the StormService is in \"team-a\": AnalysisTemplates are read from the StormService's own namespace; remove namespace or copy the template"
        )
    );
}

// --- Templates from the cache, and a measurement prepared only when one is due ---

use kube::core::{ObjectMeta as Meta, PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use storm_shared::types::analysis::{DatadogMetric, SecretRef};

/// Requests a fake API server saw (method and path).
type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// A client whose API server answers only `GET /api/v1/namespaces/ns/secrets/dd`, with a Secret
/// holding Datadog keys at the resourceVersion in `version`, and records every request.
fn recording_client(version: Arc<std::sync::Mutex<String>>) -> (kube::Client, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let service = tower::service_fn(move |req: ::http::Request<kube::client::Body>| {
        let (log, version) = (log.clone(), version.clone());
        async move {
            let path = req.uri().path().to_string();
            log.lock().unwrap().push(format!("{} {path}", req.method()));
            if req.method() != ::http::Method::GET || path != "/api/v1/namespaces/ns/secrets/dd" {
                return Err(std::io::Error::other("not served in unit tests"));
            }
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "dd", "namespace": "ns",
                             "resourceVersion": version.lock().unwrap().clone()},
                // base64 of "api-value", "app-value" and "http://127.0.0.1:9"
                "data": {"api-key": "YXBpLXZhbHVl", "app-key": "YXBwLXZhbHVl",
                         "address": "aHR0cDovLzEyNy4wLjAuMTo5"}
            });
            Ok(::http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(secret.to_string().into_bytes()))
                .unwrap())
        }
    });
    (kube::Client::new(service, "default"), seen)
}

/// A client that records every request and fails it.
fn recording_offline_client() -> (kube::Client, Seen) {
    recording_client(Arc::default())
}

/// Caches listed with `templates` (in namespace ns) and Secrets `(name, resourceVersion)`; the
/// writers update them. `secrets: None` leaves the Secret cache unlisted.
fn caches(
    templates: Vec<AnalysisTemplate>,
    secrets: Option<&[(&str, &str)]>,
) -> (
    Caches,
    Writer<AnalysisTemplate>,
    Writer<PartialObjectMeta<Secret>>,
) {
    let (template_store, mut template_writer) = reflector::store::<AnalysisTemplate>();
    template_writer.apply_watcher_event(&Event::Init);
    for t in templates {
        template_writer.apply_watcher_event(&Event::InitApply(in_ns(t)));
    }
    template_writer.apply_watcher_event(&Event::InitDone);
    let (secret_store, mut secret_writer) = reflector::store::<PartialObjectMeta<Secret>>();
    if let Some(secrets) = secrets {
        secret_writer.apply_watcher_event(&Event::Init);
        for (name, version) in secrets {
            secret_writer.apply_watcher_event(&Event::InitApply(secret_meta(name, version)));
        }
        secret_writer.apply_watcher_event(&Event::InitDone);
    }
    (
        Caches::new(template_store, secret_store),
        template_writer,
        secret_writer,
    )
}

fn in_ns(mut t: AnalysisTemplate) -> AnalysisTemplate {
    t.metadata.namespace = Some("ns".into());
    t
}

fn secret_meta(name: &str, version: &str) -> PartialObjectMeta<Secret> {
    Meta {
        name: Some(name.into()),
        namespace: Some("ns".into()),
        resource_version: Some(version.into()),
        ..Meta::default()
    }
    .into_response_partial()
}

/// A metric first measured a minute after the run starts (nothing is measured before).
fn delayed(name: &str) -> Metric {
    Metric {
        initial_delay: Some("1m".into()),
        ..prom_metric(name, "x")
    }
}

fn new_step_run() -> AnalysisRunStatus {
    AnalysisRunStatus {
        name: "step-1".into(),
        revision: "abc".into(),
        phase: AnalysisPhase::Running,
        started_at: Some(Time(now())),
        ..AnalysisRunStatus::default()
    }
}

#[tokio::test]
async fn templates_are_read_from_the_cache_not_the_api_server() {
    let (caches, _tw, _sw) = caches(vec![template(vec![], vec![delayed("errors")])], None);
    let runner = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    assert!(runner.caches_ready());
    let (client, seen) = recording_offline_client();
    let analysis = analysis(&[]);
    let mut run = new_step_run();
    let next = runner
        .advance(&client, "ns", Source::Templates(&analysis), &mut run, now())
        .await;
    assert_eq!(next, Some(Duration::from_secs(60)), "{run:#?}");
    assert_eq!(run.phase, AnalysisPhase::Running);
    let names: Vec<_> = run.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["success-rate/errors"]);
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn nothing_is_planned_while_no_measurement_is_due() {
    let (caches, _tw, _sw) = caches(vec![template(vec![], vec![delayed("errors")])], None);
    let runner = Runner::new(loopback_allowed())
        .unwrap()
        .with_caches(caches.clone());
    let (client, seen) = recording_offline_client();
    let analysis = analysis(&[]);
    let source = Source::Templates(&analysis);
    let mut run = new_step_run();
    runner.advance(&client, "ns", source, &mut run, now()).await;
    assert_eq!(runner.plans.load(Ordering::Relaxed), 1);
    let planned = serde_json::to_string(&run).unwrap();

    // Within the initial delay: the wait from the recorded status, no plan, the status unchanged.
    for (at_s, wait) in [(1, 59), (30, 30), (59, 1)] {
        let next = runner
            .advance(&client, "ns", source, &mut run, at(at_s))
            .await;
        assert_eq!(next, Some(Duration::from_secs(wait)));
        assert_eq!(serde_json::to_string(&run).unwrap(), planned);
    }
    assert_eq!(runner.plans.load(Ordering::Relaxed), 1);
    // The same answer a runner that plans gives.
    let fresh = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    let mut again = run.clone();
    let next = fresh
        .advance(&client, "ns", source, &mut again, at(30))
        .await;
    assert_eq!(next, Some(Duration::from_secs(30)));
    assert_eq!(again, run);
    assert_eq!(fresh.plans.load(Ordering::Relaxed), 1);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_due_measurement_plans_and_measures() {
    let unreachable = Metric {
        provider: MetricProvider {
            prometheus: Some(PrometheusMetric {
                address: "http://127.0.0.1:9".into(),
                query: "x".into(),
                timeout: Some("1s".into()),
            }),
            ..MetricProvider::default()
        },
        ..delayed("errors")
    };
    let (caches, _tw, _sw) = caches(vec![template(vec![], vec![unreachable])], None);
    let runner = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    let (client, seen) = recording_offline_client();
    let analysis = analysis(&[]);
    let source = Source::Templates(&analysis);
    let mut run = new_step_run();
    runner.advance(&client, "ns", source, &mut run, now()).await;
    runner
        .advance(&client, "ns", source, &mut run, at(30))
        .await;
    assert_eq!(runner.plans.load(Ordering::Relaxed), 1);
    let next = runner
        .advance(&client, "ns", source, &mut run, at(60))
        .await;
    assert_eq!(runner.plans.load(Ordering::Relaxed), 2);
    assert_eq!(run.metrics[0].count, 1, "{run:#?}");
    assert_eq!(run.metrics[0].measurements[0].phase, AnalysisPhase::Error);
    // Retried after 10s (no interval); nothing planned until then.
    assert_eq!(next, Some(Duration::from_secs(10)));
    runner
        .advance(&client, "ns", source, &mut run, at(65))
        .await;
    assert_eq!(runner.plans.load(Ordering::Relaxed), 2);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_changed_template_is_planned_again_at_the_next_reconcile() {
    let (caches, mut tw, _sw) = caches(vec![template(vec![], vec![delayed("errors")])], None);
    let runner = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    let (client, _) = recording_offline_client();
    let analysis = analysis(&[]);
    let source = Source::Templates(&analysis);
    let mut run = new_step_run();
    runner.advance(&client, "ns", source, &mut run, now()).await;

    tw.apply_watcher_event(&Event::Apply(in_ns(template(
        vec![],
        vec![delayed("errors"), delayed("latency")],
    ))));
    let next = runner
        .advance(&client, "ns", source, &mut run, at(30))
        .await;
    assert_eq!(next, Some(Duration::from_secs(30)));
    assert_eq!(runner.plans.load(Ordering::Relaxed), 2);
    let names: Vec<_> = run.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["success-rate/errors", "success-rate/latency"]);

    // Other arguments are other inputs too.
    let other = AnalysisRef {
        args: vec![AnalysisArg {
            name: "unused".into(),
            value: "1".into(),
        }],
        ..analysis.clone()
    };
    runner
        .advance(&client, "ns", Source::Templates(&other), &mut run, at(31))
        .await;
    assert_eq!(runner.plans.load(Ordering::Relaxed), 3);
}

const MISSING_TEMPLATE: &str = "AnalysisTemplate ns/success-rate not found: create it, or fix the template name in the StormService's analysis";

#[tokio::test]
async fn a_template_missing_from_the_cache_ends_the_run_error() {
    let (caches, _tw, _sw) = caches(vec![], None);
    let runner = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    let (client, seen) = recording_offline_client();
    let analysis = analysis(&[]);
    let mut run = new_step_run();
    let next = runner
        .advance(&client, "ns", Source::Templates(&analysis), &mut run, now())
        .await;
    assert_eq!(next, None);
    assert_eq!(run.phase, AnalysisPhase::Error);
    assert_eq!(run.message.as_deref(), Some(MISSING_TEMPLATE));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_template_deleted_mid_run_ends_it_even_when_nothing_is_due() {
    let t = template(vec![], vec![delayed("errors")]);
    let (caches, mut tw, _sw) = caches(vec![t.clone()], None);
    let runner = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    let (client, _) = recording_offline_client();
    let analysis = analysis(&[]);
    let source = Source::Templates(&analysis);
    let mut run = new_step_run();
    runner.advance(&client, "ns", source, &mut run, now()).await;
    assert_eq!(runner.schedules.len(), 1);
    tw.apply_watcher_event(&Event::Delete(in_ns(t)));
    let next = runner
        .advance(&client, "ns", source, &mut run, at(30))
        .await;
    assert_eq!(next, None);
    assert_eq!(run.phase, AnalysisPhase::Error);
    assert_eq!(run.message.as_deref(), Some(MISSING_TEMPLATE));
    // A decided run is forgotten.
    assert_eq!(runner.schedules.len(), 0);
}

/// A Datadog metric measured 3 times, a minute apart, against an address that refuses (named by
/// the Secret: the metric's own `address` may only be one of Datadog's sites).
fn datadog_template() -> AnalysisTemplate {
    template(
        vec![],
        vec![Metric {
            name: "errors".into(),
            provider: MetricProvider {
                datadog: Some(DatadogMetric {
                    query: "avg:errors{*}".into(),
                    interval: None,
                    address: None,
                    secret_ref: SecretRef { name: "dd".into() },
                }),
                ..MetricProvider::default()
            },
            success_condition: Some("result < 1".into()),
            count: Some(3),
            interval: Some("1m".into()),
            ..Metric::default()
        }],
    )
}

const SECRET_GET: &str = "GET /api/v1/namespaces/ns/secrets/dd";

#[tokio::test]
async fn datadog_keys_are_read_when_due_and_again_only_when_the_secret_changed() {
    let (caches, _tw, mut sw) = caches(vec![datadog_template()], Some(&[("dd", "1")]));
    let runner = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    let version = Arc::new(std::sync::Mutex::new("1".to_string()));
    let (client, seen) = recording_client(version.clone());
    let analysis = analysis(&[]);
    let source = Source::Templates(&analysis);
    let mut run = new_step_run();
    let gets = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|r| *r == SECRET_GET)
            .count()
    };

    runner.advance(&client, "ns", source, &mut run, now()).await;
    assert_eq!(gets(), 1);
    assert_eq!(run.metrics[0].count, 1, "{run:#?}");
    // Not due: no read.
    runner
        .advance(&client, "ns", source, &mut run, at(30))
        .await;
    assert_eq!(gets(), 1);
    // Due, the Secret unchanged: the keys read at resourceVersion 1 are used again.
    runner
        .advance(&client, "ns", source, &mut run, at(60))
        .await;
    assert_eq!(run.metrics[0].count, 2, "{run:#?}");
    assert_eq!(gets(), 1);
    // The Secret changed: read again.
    *version.lock().unwrap() = "2".into();
    sw.apply_watcher_event(&Event::Apply(secret_meta("dd", "2")));
    runner
        .advance(&client, "ns", source, &mut run, at(120))
        .await;
    assert_eq!(run.metrics[0].count, 3, "{run:#?}");
    assert_eq!(gets(), 2);
    assert_eq!(seen.lock().unwrap().len(), 2, "{:?}", seen.lock().unwrap());
    let status = serde_json::to_string(&run).unwrap();
    assert!(
        !status.contains("api-value") && !status.contains("app-value"),
        "{status}"
    );
}

#[tokio::test]
async fn a_datadog_secret_missing_from_the_cache_ends_the_run_without_a_read() {
    let (caches, _tw, _sw) = caches(vec![datadog_template()], Some(&[]));
    let runner = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    let (client, seen) = recording_offline_client();
    let analysis = analysis(&[]);
    let mut run = new_step_run();
    let next = runner
        .advance(&client, "ns", Source::Templates(&analysis), &mut run, now())
        .await;
    assert_eq!(next, None);
    assert_eq!(run.phase, AnalysisPhase::Error);
    assert_eq!(
        run.message.as_deref(),
        Some(
            "metric success-rate/errors: Secret ns/dd not found: create it with the keys api-key and app-key (kubectl create secret generic dd -n ns --from-literal=api-key=... --from-literal=app-key=...)"
        )
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn until_the_secret_cache_has_listed_the_secret_is_read_every_time() {
    let (caches, _tw, _sw) = caches(vec![datadog_template()], None);
    let runner = Runner::new(loopback_allowed()).unwrap().with_caches(caches);
    let (client, seen) = recording_client(Arc::new(std::sync::Mutex::new("1".into())));
    let analysis = analysis(&[]);
    let source = Source::Templates(&analysis);
    let mut run = new_step_run();
    runner.advance(&client, "ns", source, &mut run, now()).await;
    runner
        .advance(&client, "ns", source, &mut run, at(60))
        .await;
    assert_eq!(run.metrics[0].count, 2, "{run:#?}");
    assert_eq!(seen.lock().unwrap().as_slice(), [SECRET_GET, SECRET_GET]);
}

/// The egress policy of tests whose providers are local stand-ins on loopback.
fn loopback_allowed() -> egress::EgressPolicy {
    egress::EgressPolicy::new(&["127.0.0.1".into(), "localhost".into()], None).unwrap()
}
