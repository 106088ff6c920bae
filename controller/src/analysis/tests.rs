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
    let runner = Runner::new().unwrap();
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
    let runner = Runner::new().unwrap();
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
