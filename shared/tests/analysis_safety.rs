//! What a metric may ask of the controller (#17): headers, Datadog sites, timeout and interval
//! bounds, expression caps, and the RolloutPolicy's allowed analysis providers and hosts.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use storm_shared::errors::Report;
use storm_shared::rules::analysis::validate_analysis_template;
use storm_shared::rules::policy_spec::validate_rollout_policy;
use storm_shared::rules::{
    AnalysisBounds, MAX_CONDITION_LEN, MAX_EXPRESSION_DEPTH, MAX_JSON_PATH_LEN, parse,
    validate_storm_service,
};
use storm_shared::{AnalysisTemplate, RolloutPolicy, StormService, defaults, policy};

fn template(provider: Value) -> Value {
    json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "t", "namespace": "team-a"},
        "spec": {"metrics": [{
            "name": "m",
            "successCondition": "result < 0.05",
            "provider": provider,
        }]}
    })
}

fn web(extra: Value) -> Value {
    let mut w = json!({"url": "https://metrics.example.com/q", "jsonPath": "{$.rate}"});
    for (k, v) in extra.as_object().expect("object") {
        w[k] = v.clone();
    }
    template(json!({"web": w}))
}

fn check_with(v: &Value, bounds: &AnalysisBounds) -> Report {
    let t: AnalysisTemplate = parse(v).expect("parses");
    validate_analysis_template(&t, bounds)
}

fn check(v: &Value) -> Report {
    check_with(v, &AnalysisBounds::default())
}

/// The one error of a report, as `path: message`.
#[track_caller]
fn only_error(r: &Report) -> String {
    let all: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 1, "{all:#?}");
    all[0].clone()
}

#[track_caller]
fn valid(r: &Report) {
    let all: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
    assert!(all.is_empty(), "{all:#?}");
}

#[test]
fn refused_headers_are_denied_with_the_reason() {
    let e = only_error(&check(&web(
        json!({"headers": [{"key": "Host", "value": "internal.example"}]}),
    )));
    assert!(
        e.starts_with("spec.metrics[0].provider.web.headers[0].key: Forbidden"),
        "{e}"
    );
    assert!(e.contains("put the host in the URL"), "{e}");
    let e = only_error(&check(&web(json!({"headers": [
        {"key": "Authorization", "value": "Bearer x"},
        {"key": "Metadata-Flavor", "value": "Google"}
    ]}))));
    assert!(
        e.starts_with("spec.metrics[0].provider.web.headers[1].key: Forbidden"),
        "{e}"
    );
    assert!(e.contains("metadata"), "{e}");
    let e = only_error(&check(&web(
        json!({"headers": [{"key": "Proxy-Authorization", "value": "x"}]}),
    )));
    assert!(e.contains("proxy headers are refused"), "{e}");
}

#[test]
fn header_names_are_http_tokens() {
    let e = only_error(&check(&web(
        json!({"headers": [{"key": "X Bad: name", "value": "1"}]}),
    )));
    assert!(
        e.starts_with("spec.metrics[0].provider.web.headers[0].key: Invalid value"),
        "{e}"
    );
    valid(&check(&web(
        json!({"headers": [{"key": "X-Scope-OrgID", "value": "team-a"}]}),
    )));
}

#[test]
fn a_header_has_value_or_value_from() {
    let secret = json!({"secretKeyRef": {"name": "metrics-token", "key": "token"}});
    valid(&check(&web(
        json!({"headers": [{"key": "Authorization", "valueFrom": secret}]}),
    )));
    let e = only_error(&check(&web(
        json!({"headers": [{"key": "Authorization", "value": "x", "valueFrom": secret}]}),
    )));
    assert!(
        e.starts_with("spec.metrics[0].provider.web.headers[0].valueFrom: Forbidden"),
        "{e}"
    );
    assert!(e.contains("not both"), "{e}");
    let e = only_error(&check(&web(json!({"headers": [{"key": "Authorization"}]}))));
    assert!(
        e.starts_with("spec.metrics[0].provider.web.headers[0].value: Required value"),
        "{e}"
    );
    assert!(e.contains("valueFrom.secretKeyRef"), "{e}");
}

#[test]
fn secret_key_refs_name_a_secret_and_a_key() {
    let r = check(&web(json!({"headers": [{"key": "Authorization",
        "valueFrom": {"secretKeyRef": {"name": "Bad_Name", "key": "a/b"}}}]})));
    let mut paths = error_paths(&r);
    paths.sort();
    assert_eq!(
        paths,
        [
            "spec.metrics[0].provider.web.headers[0].valueFrom.secretKeyRef.key",
            "spec.metrics[0].provider.web.headers[0].valueFrom.secretKeyRef.name",
        ]
    );
    let all = r.errors.iter().map(ToString::to_string).collect::<String>();
    assert!(all.contains("RFC 1123 subdomain"), "{all}");
    assert!(all.contains("Secret data key"), "{all}");
}

#[test]
fn datadog_address_is_a_datadog_site() {
    let dd = |address: &str| {
        template(
            json!({"datadog": {"query": "avg:errors{*}", "address": address,
                                    "secretRef": {"name": "dd"}}}),
        )
    };
    valid(&check(&dd("https://api.datadoghq.eu")));
    let e = only_error(&check(&dd("http://127.0.0.1:8126")));
    assert!(
        e.starts_with("spec.metrics[0].provider.datadog.address: Invalid value"),
        "{e}"
    );
    assert!(e.contains("https://api.datadoghq.com"), "{e}");
    assert!(e.contains("key `address` of the Secret"), "{e}");
    // Without address: Datadog's default site.
    valid(&check(&template(
        json!({"datadog": {"query": "q", "secretRef": {"name": "dd"}}}),
    )));
}

#[test]
fn timeouts_above_the_bound_are_denied() {
    let prom = |timeout: &str| {
        template(
            json!({"prometheus": {"address": "http://prom:9090", "query": "up",
                                        "timeout": timeout}}),
        )
    };
    valid(&check(&prom("30s")));
    let e = only_error(&check(&prom("60s")));
    assert!(
        e.starts_with("spec.metrics[0].provider.prometheus.timeout: Invalid value: \"60s\""),
        "{e}"
    );
    assert!(
        e.contains("30s") && e.contains("--analysis-max-timeout"),
        "{e}"
    );
    let e = only_error(&check(&web(json!({"timeout": "2m"}))));
    assert!(
        e.starts_with("spec.metrics[0].provider.web.timeout: Invalid value"),
        "{e}"
    );
    // The webhook's setting decides.
    let generous = AnalysisBounds {
        max_timeout: Duration::from_secs(120),
        ..AnalysisBounds::default()
    };
    valid(&check_with(&prom("60s"), &generous));
}

#[test]
fn intervals_below_the_floor_are_denied() {
    let mut v = template(json!({"prometheus": {"address": "http://prom:9090", "query": "up"}}));
    set(&mut v, "/spec/metrics/0/interval", json!("2s"));
    set(&mut v, "/spec/metrics/0/count", json!(3));
    let e = only_error(&check(&v));
    assert!(
        e.starts_with("spec.metrics[0].interval: Invalid value: \"2s\""),
        "{e}"
    );
    assert!(
        e.contains("10s") && e.contains("--analysis-min-interval"),
        "{e}"
    );
    let fast = AnalysisBounds {
        min_interval: Duration::from_secs(1),
        ..AnalysisBounds::default()
    };
    valid(&check_with(&v, &fast));
    set(&mut v, "/spec/metrics/0/interval", json!("10s"));
    valid(&check(&v));
}

#[test]
fn the_error_rate_metric_is_bounded_too() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        json!({"enabled": true, "onFailure": {"errorThreshold": "5%", "errorRate": {
            "name": "errors", "interval": "1s",
            "provider": {"prometheus": {"address": "http://prom:9090", "query": "up", "timeout": "1m"}}
        }}}),
    );
    rejects(
        &v,
        &[
            "spec.rolloutStrategy.autoRollback.onFailure.errorRate.interval",
            "spec.rolloutStrategy.autoRollback.onFailure.errorRate.provider.prometheus.timeout",
        ],
    );
    let obj: StormService = parse(&v).expect("parses");
    let wide = AnalysisBounds {
        max_timeout: Duration::from_secs(60),
        min_interval: Duration::from_secs(1),
    };
    valid(&validate_storm_service(&obj, None, &wide));
}

#[test]
fn json_paths_are_capped() {
    let long = format!("{{$.{}}}", "a".repeat(MAX_JSON_PATH_LEN));
    let e = only_error(&check(&web(json!({"jsonPath": long}))));
    assert!(
        e.starts_with("spec.metrics[0].provider.web.jsonPath: Invalid value"),
        "{e}"
    );
    assert!(
        e.contains(&format!("at most {MAX_JSON_PATH_LEN} bytes")),
        "{e}"
    );
    let deep = format!(
        "{{$.a{}0{}}}",
        "[".repeat(MAX_EXPRESSION_DEPTH),
        "]".repeat(MAX_EXPRESSION_DEPTH)
    );
    let e = only_error(&check(&web(json!({"jsonPath": deep}))));
    assert!(
        e.contains(&format!("at most {MAX_EXPRESSION_DEPTH} deep")),
        "{e}"
    );
    valid(&check(&web(
        json!({"jsonPath": "{$.data.result[0].value[1]}"}),
    )));
}

#[test]
fn conditions_are_capped_before_they_are_parsed() {
    let mut v = template(json!({"prometheus": {"address": "http://prom:9090", "query": "up"}}));
    let long = format!(
        "result < 1 {}",
        "|| result == 2 ".repeat(MAX_CONDITION_LEN / 10)
    );
    set(&mut v, "/spec/metrics/0/successCondition", json!(long));
    let e = only_error(&check(&v));
    assert!(
        e.starts_with("spec.metrics[0].successCondition: Invalid value"),
        "{e}"
    );
    assert!(
        e.contains(&format!("at most {MAX_CONDITION_LEN} bytes")),
        "{e}"
    );
    // Nesting that could exhaust the parser's stack never reaches it.
    let deep = format!("{}result{} < 1", "(".repeat(1000), ")".repeat(1000));
    set(&mut v, "/spec/metrics/0/failureCondition", json!(deep));
    set(
        &mut v,
        "/spec/metrics/0/successCondition",
        json!("result < 1"),
    );
    let e = only_error(&check(&v));
    assert!(
        e.starts_with("spec.metrics[0].failureCondition: Invalid value"),
        "{e}"
    );
    assert!(e.contains("deep"), "{e}");
    let nested = format!(
        "{}result{} < 1",
        "(".repeat(MAX_EXPRESSION_DEPTH),
        ")".repeat(MAX_EXPRESSION_DEPTH)
    );
    set(&mut v, "/spec/metrics/0/failureCondition", json!(nested));
    // At the cap, CEL's parser needs more than a test thread's 2 MiB in a debug build: run it
    // with the stack the webhook gives its workers.
    let r = std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || check(&v))
        .expect("thread")
        .join()
        .expect("no overflow");
    valid(&r);
}

fn rollout_policy(spec: Value) -> RolloutPolicy {
    parse(
        &json!({"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RolloutPolicy",
                  "metadata": {"name": "analysis"}, "spec": spec}),
    )
    .expect("policy parses")
}

fn template_policy(p: &RolloutPolicy, v: &Value) -> Report {
    let t: AnalysisTemplate = parse(v).expect("parses");
    policy::apply_to_template(std::slice::from_ref(p), &BTreeMap::new(), &t)
}

#[test]
fn policies_allow_analysis_providers() {
    let p = rollout_policy(json!({"allowedAnalysisProviders": ["prometheus"]}));
    let e = only_error(&template_policy(&p, &web(json!({}))));
    assert!(
        e.starts_with("spec.metrics[0].provider.web: Forbidden: violates RolloutPolicy analysis"),
        "{e}"
    );
    assert!(e.contains("allowed: prometheus"), "{e}");
    valid(&template_policy(
        &p,
        &template(json!({"prometheus": {"address": "http://prom:9090", "query": "up"}})),
    ));
    // Warn mode admits with a warning.
    let warn = rollout_policy(json!({"mode": "Warn", "allowedAnalysisProviders": ["prometheus"]}));
    let r = template_policy(&warn, &web(json!({})));
    valid(&r);
    assert_eq!(warning_paths(&r), ["spec.metrics[0].provider.web"]);
    // A policy that selects other namespaces does not apply.
    let elsewhere = rollout_policy(json!({"allowedAnalysisProviders": ["prometheus"],
        "namespaceSelector": {"matchLabels": {"env": "prod"}}}));
    valid(&template_policy(&elsewhere, &web(json!({}))));
}

#[test]
fn policies_allow_analysis_hosts() {
    let p = rollout_policy(json!({"allowedAnalysisHosts": [
        "prometheus.monitoring.svc", "*.example.com", "10.1.2.3", "api.datadoghq.com"
    ]}));
    let prom = |address: &str| template(json!({"prometheus": {"address": address, "query": "up"}}));
    valid(&template_policy(
        &p,
        &prom("http://Prometheus.Monitoring.svc:9090"),
    ));
    valid(&template_policy(&p, &prom("http://10.1.2.3:9090")));
    valid(&template_policy(&p, &web(json!({}))));
    let e = only_error(&template_policy(&p, &prom("http://evil.example:9090")));
    assert!(
        e.starts_with("spec.metrics[0].provider.prometheus.address: Forbidden"),
        "{e}"
    );
    assert!(
        e.contains("host evil.example") && e.contains("allowedAnalysisHosts"),
        "{e}"
    );
    let e = only_error(&template_policy(&p, &prom("http://{{args.host}}:9090")));
    assert!(
        e.contains("placeholder") && e.contains("cannot check"),
        "{e}"
    );
    // A Datadog metric without address goes to Datadog's default site.
    let dd = |address: Option<&str>| {
        let mut d = json!({"query": "q", "secretRef": {"name": "dd"}});
        if let Some(a) = address {
            d["address"] = json!(a);
        }
        template(json!({"datadog": d}))
    };
    valid(&template_policy(&p, &dd(None)));
    let e = only_error(&template_policy(&p, &dd(Some("https://api.datadoghq.eu"))));
    assert!(
        e.starts_with("spec.metrics[0].provider.datadog.address: Forbidden"),
        "{e}"
    );
    let eu_only = rollout_policy(json!({"allowedAnalysisHosts": ["api.datadoghq.eu"]}));
    let e = only_error(&template_policy(&eu_only, &dd(None)));
    assert!(e.contains("default site api.datadoghq.com"), "{e}");
}

#[test]
fn policies_apply_to_the_error_rate_metric() {
    let p = rollout_policy(json!({"allowedAnalysisProviders": ["prometheus"],
                                   "allowedAnalysisHosts": ["prometheus.monitoring.svc"]}));
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        json!({"enabled": true, "onFailure": {"errorThreshold": "5%", "errorRate": {
            "name": "errors",
            "provider": {"web": {"url": "http://errors.team-a.svc/rate"}}
        }}}),
    );
    defaults::apply_defaults(&mut v).expect("defaults");
    let obj: StormService = parse(&v).expect("parses");
    let mut paths: Vec<String> = policy::evaluate(&p, &obj, &[])
        .into_iter()
        .map(|v| v.path.to_string())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "spec.rolloutStrategy.autoRollback.onFailure.errorRate.provider.web",
            "spec.rolloutStrategy.autoRollback.onFailure.errorRate.provider.web.url",
        ]
    );
}

#[test]
fn policy_analysis_fields_are_validated() {
    let r = validate_rollout_policy(&rollout_policy(json!({
        "allowedAnalysisProviders": [],
        "allowedAnalysisHosts": ["prometheus.monitoring.svc", "", "http://x/", "*.10.1"]
    })));
    let mut paths = error_paths(&r);
    paths.sort();
    assert_eq!(
        paths,
        [
            "spec.allowedAnalysisHosts[1]",
            "spec.allowedAnalysisHosts[2]",
            "spec.allowedAnalysisHosts[3]",
            "spec.allowedAnalysisProviders",
        ]
    );
    let r = validate_rollout_policy(&rollout_policy(json!({"allowedAnalysisHosts": []})));
    assert_eq!(error_paths(&r), ["spec.allowedAnalysisHosts"]);
    valid(&validate_rollout_policy(&rollout_policy(json!({
        "allowedAnalysisProviders": ["prometheus", "datadog"],
        "allowedAnalysisHosts": ["*.example.com", "10.0.0.1", "fd00::1", "prom"]
    }))));
}
