//! AnalysisTemplate rules.

mod common;

use common::*;
use serde_json::{Value, json};
use storm_shared::AnalysisTemplate;
use storm_shared::rules::analysis::validate_analysis_template;
use storm_shared::rules::{AnalysisBounds, parse};

fn template() -> Value {
    json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "success-rate"},
        "spec": {
            "args": [{"name": "service-name"}],
            "metrics": [{
                "name": "success-rate",
                "interval": "1m",
                "count": 5,
                "failureLimit": 1,
                "successCondition": "result >= 0.99",
                "provider": {"prometheus": {
                    "address": "http://prometheus:9090",
                    "query": "sum(rate(ok{service=\"{{args.service-name}}\"}[5m])) / sum(rate(all{service=\"{{args.service-name}}\"}[5m]))"
                }}
            }]
        }
    })
}

fn errors(v: &Value) -> Vec<String> {
    let t: AnalysisTemplate = parse(v).expect("parses");
    let mut p = error_paths(&validate_analysis_template(&t, &AnalysisBounds::default()));
    p.sort();
    p
}

#[test]
fn valid_template() {
    assert!(errors(&template()).is_empty());
    let mut v = template();
    set(
        &mut v,
        "/spec/metrics/0/provider",
        json!({"web": {"url": "http://svc/metrics", "jsonPath": "{$.rate}"}}),
    );
    assert!(errors(&v).is_empty());
    set(
        &mut v,
        "/spec/metrics/0/provider",
        json!({"datadog": {"query": "avg:errors{*}", "secretRef": {"name": "dd"}}}),
    );
    assert!(errors(&v).is_empty());
}

#[test]
fn exactly_one_provider() {
    let mut v = template();
    set(
        &mut v,
        "/spec/metrics/0/provider/web",
        json!({"url": "http://x"}),
    );
    assert_eq!(errors(&v), vec!["spec.metrics[0].provider"]);
    set(&mut v, "/spec/metrics/0/provider", json!({}));
    assert_eq!(errors(&v), vec!["spec.metrics[0].provider"]);
}

#[test]
fn cel_conditions_must_compile() {
    let mut v = template();
    set(
        &mut v,
        "/spec/metrics/0/successCondition",
        json!("result >= "),
    );
    assert_eq!(errors(&v), vec!["spec.metrics[0].successCondition"]);
    set(
        &mut v,
        "/spec/metrics/0/successCondition",
        json!("result[0] >= 0.99 && result[0] < 2.0"),
    );
    assert!(errors(&v).is_empty());
    remove(&mut v, "/spec/metrics/0/successCondition");
    assert_eq!(errors(&v), vec!["spec.metrics[0].successCondition"]);
    set(
        &mut v,
        "/spec/metrics/0/failureCondition",
        json!("result > 0.05"),
    );
    assert!(errors(&v).is_empty());
}

#[test]
fn count_interval_and_limits_are_consistent() {
    let mut v = template();
    remove(&mut v, "/spec/metrics/0/interval");
    assert_eq!(errors(&v), vec!["spec.metrics[0].interval"]);
    let mut v = template();
    set(&mut v, "/spec/metrics/0/count", json!(0));
    assert_eq!(errors(&v), vec!["spec.metrics[0].count"]);
    let mut v = template();
    set(&mut v, "/spec/metrics/0/failureLimit", json!(-2));
    assert_eq!(errors(&v), vec!["spec.metrics[0].failureLimit"]);
    let mut v = template();
    set(&mut v, "/spec/metrics/0/failureLimit", json!(-1));
    assert!(errors(&v).is_empty());
    let mut v = template();
    set(&mut v, "/spec/metrics/0/failureLimit", json!(5));
    let t: AnalysisTemplate = parse(&v).expect("parses");
    let r = validate_analysis_template(&t, &AnalysisBounds::default());
    assert!(r.is_valid());
    assert_eq!(warning_paths(&r), vec!["spec.metrics[0].failureLimit"]);
    let mut v = template();
    set(&mut v, "/spec/metrics/0/interval", json!("often"));
    set(&mut v, "/spec/metrics/0/initialDelay", json!("later"));
    set(&mut v, "/spec/metrics/0/consecutiveErrorLimit", json!(-1));
    assert_eq!(
        errors(&v),
        vec![
            "spec.metrics[0].consecutiveErrorLimit",
            "spec.metrics[0].initialDelay",
            "spec.metrics[0].interval"
        ]
    );
}

#[test]
fn arguments_are_declared_before_use() {
    let mut v = template();
    set(&mut v, "/spec/args", json!([]));
    assert_eq!(
        errors(&v),
        vec!["spec.metrics[0].provider.prometheus.query"]
    );
    let mut v = template();
    set(
        &mut v,
        "/spec/args",
        json!([{"name": "service-name"}, {"name": "service-name"}]),
    );
    assert_eq!(errors(&v), vec!["spec.args[1].name"]);
}

#[test]
fn provider_fields() {
    let mut v = template();
    set(
        &mut v,
        "/spec/metrics/0/provider/prometheus/address",
        json!("prometheus:9090"),
    );
    set(
        &mut v,
        "/spec/metrics/0/provider/prometheus/query",
        json!(""),
    );
    assert_eq!(
        errors(&v),
        vec![
            "spec.metrics[0].provider.prometheus.address",
            "spec.metrics[0].provider.prometheus.query"
        ]
    );
    let mut v = template();
    set(
        &mut v,
        "/spec/metrics/0/provider",
        json!({"web": {"url": "http://x", "jsonPath": "data.rate"}}),
    );
    assert_eq!(errors(&v), vec!["spec.metrics[0].provider.web.jsonPath"]);
    set(
        &mut v,
        "/spec/metrics/0/provider",
        json!({"datadog": {"query": "q", "secretRef": {"name": ""}}}),
    );
    assert_eq!(
        errors(&v),
        vec!["spec.metrics[0].provider.datadog.secretRef.name"]
    );
}

#[test]
fn metrics_are_present_and_uniquely_named() {
    let mut v = template();
    set(&mut v, "/spec/metrics", json!([]));
    assert_eq!(errors(&v), vec!["spec.metrics"]);
    let mut v = template();
    let m = v["spec"]["metrics"][0].clone();
    set(&mut v, "/spec/metrics", json!([m.clone(), m]));
    assert_eq!(errors(&v), vec!["spec.metrics[1].name"]);
}

#[test]
fn error_rate_metric_in_auto_rollback_is_checked() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback/onFailure",
        json!({"errorThreshold": "5%", "errorRate": {"name": "errors", "provider": {}, "successCondition": "result <"}}),
    );
    rejects(
        &v,
        &[
            "spec.rolloutStrategy.autoRollback.onFailure.errorRate.provider",
            "spec.rolloutStrategy.autoRollback.onFailure.errorRate.successCondition",
        ],
    );
}
