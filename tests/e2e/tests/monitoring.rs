//! The monitoring of `manifests/monitoring` against the real binaries: the controller (scoped to
//! this test's namespace, as the other suites run it) and the shared webhook drive rollouts to an
//! abort, a progress deadline, a failed analysis, a reconcile error and a denial; both `/metrics`
//! pages are then read, and every metric and label the Grafana dashboard and the alert rules use
//! must be on them. The rules are checked with the real `promtool` and loaded into a real
//! Prometheus scraping both binaries, where the alerts of those events must fire.
//!
//! Run: `cargo test -p storm-e2e --test monitoring`.

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{ResourceQuota, Service};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use serde_yaml_ng::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use storm_e2e::canary_storm_service;
use storm_shared::StormService;
use storm_shared::types::analysis::AnalysisTemplate;
use storm_shared::types::stormservice::RolloutPhase;
use storm_test_support::process::{Controller, free_port};
use storm_test_support::prometheus::{Alert, Prometheus, ScrapeJob, promtool};
use storm_test_support::{TestNamespace, repo_root, wait_for};

mod promql;
use promql::{Exported, check, grafana_to_promql, metric_names, template_labels};

const TIMEOUT: Duration = Duration::from_secs(120);

fn monitoring_dir() -> PathBuf {
    repo_root().join("manifests").join("monitoring")
}

fn read_yaml(path: &Path) -> Result<Yaml> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// One alerting or recording rule of `alerts.yaml`.
#[derive(Debug)]
struct Rule {
    name: String,
    expr: String,
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn strings(v: &Yaml) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
        .collect()
}

fn rules(doc: &Yaml) -> Result<Vec<Rule>> {
    let mut out = Vec::new();
    let groups = doc["groups"].as_sequence().context("no groups")?;
    for group in groups {
        for rule in group["rules"]
            .as_sequence()
            .context("group without rules")?
        {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .context("a rule that is neither an alert nor a record")?;
            out.push(Rule {
                name: name.to_string(),
                expr: rule["expr"]
                    .as_str()
                    .with_context(|| format!("{name}: no expr"))?
                    .to_string(),
                for_: rule["for"].as_str().map(str::to_string),
                labels: strings(&rule["labels"]),
                annotations: strings(&rule["annotations"]),
            });
        }
    }
    Ok(out)
}

/// One query of the dashboard: a panel target, or a `label_values` variable.
#[derive(Debug)]
struct Query {
    panel: String,
    expr: String,
    legend: Option<String>,
}

/// A `label_values(SELECTOR, LABEL)` variable of the dashboard.
#[derive(Debug)]
struct Variable {
    selector: String,
    label: String,
}

fn dashboard() -> Result<Value> {
    let path = monitoring_dir().join("grafana-dashboard.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn panel_queries(panels: &Value, out: &mut Vec<Query>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Query {
                    panel: title.to_string(),
                    expr: expr.to_string(),
                    legend: target["legendFormat"].as_str().map(str::to_string),
                });
            }
        }
        // Rows hold their panels when collapsed.
        panel_queries(&panel["panels"], out);
    }
}

/// Every panel query, and every variable.
fn dashboard_queries(dash: &Value) -> Result<(Vec<Query>, Vec<Variable>)> {
    let mut queries = Vec::new();
    panel_queries(&dash["panels"], &mut queries);
    let mut variables = Vec::new();
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .context("a query variable without a query")?;
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .with_context(|| format!("variable query {query:?} is not label_values(...)"))?;
        let (selector, label) = inner
            .rsplit_once(',')
            .with_context(|| format!("{query:?}: label_values without a label"))?;
        variables.push(Variable {
            selector: selector.trim().to_string(),
            label: label.trim().to_string(),
        });
    }
    Ok((queries, variables))
}

/// The rules of `alerts.yaml` pass the real promtool, and `prometheusrule.yaml` wraps the very
/// same groups for the prometheus-operator.
#[test]
fn alert_rules_pass_promtool_and_the_prometheus_rule_holds_the_same_groups() -> Result<()> {
    let alerts = monitoring_dir().join("alerts.yaml");
    let out = Command::new(promtool()?)
        .args(["check", "rules"])
        .arg(&alerts)
        .output()
        .context("running promtool")?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "promtool check rules failed:\n{text}");
    let doc = read_yaml(&alerts)?;
    let all = rules(&doc)?;
    ensure!(
        text.contains(&format!("SUCCESS: {} rules found", all.len())),
        "promtool saw another number of rules than {}:\n{text}",
        all.len()
    );

    // promtool does fail a broken file (so the check above can fail).
    let broken = std::env::temp_dir().join(storm_test_support::unique_name("broken-rules"));
    std::fs::write(
        &broken,
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: sum(rate(x[5m])\n",
    )?;
    let out = Command::new(promtool()?)
        .args(["check", "rules"])
        .arg(&broken)
        .output()?;
    let _ = std::fs::remove_file(&broken);
    ensure!(
        !out.status.success(),
        "promtool accepted an unbalanced expression"
    );

    let operator = read_yaml(&monitoring_dir().join("prometheusrule.yaml"))?;
    ensure!(operator["apiVersion"] == Yaml::from("monitoring.coreos.com/v1"));
    ensure!(operator["kind"] == Yaml::from("PrometheusRule"));
    ensure!(
        operator["spec"]["groups"] == doc["groups"],
        "prometheusrule.yaml's spec.groups differ from alerts.yaml's groups: copy them over"
    );

    // Every alert is routable and says what it is about.
    let mut names = BTreeSet::new();
    for rule in &all {
        ensure!(names.insert(&rule.name), "{} twice", rule.name);
        ensure!(rule.for_.is_some(), "{}: no `for:`", rule.name);
        let severity = rule.labels.get("severity").map(String::as_str);
        ensure!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{}: severity {severity:?}",
            rule.name
        );
        for key in ["summary", "description"] {
            ensure!(
                rule.annotations
                    .get(key)
                    .is_some_and(|a| !a.trim().is_empty()),
                "{}: no {key}",
                rule.name
            );
        }
    }
    Ok(())
}

/// Everything the dashboard and the rules read, checked against `exported`: a list of problems.
fn problems(exported: &Exported) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for rule in rules(&read_yaml(&monitoring_dir().join("alerts.yaml"))?)? {
        let (found, labels) = check(&rule.expr, exported);
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("alert {}: {p}", rule.name)),
        );
        // A label an annotation names must be on the alert, or it renders as `<no value>`.
        if let Some(labels) = labels {
            for text in rule.annotations.values() {
                for label in template_labels(text) {
                    if !labels.contains(&label) && !rule.labels.contains_key(&label) {
                        problems.push(format!(
                            "alert {}: annotations name label {label:?}, which the alert lacks ({labels:?})",
                            rule.name
                        ));
                    }
                }
            }
        }
    }
    let (queries, variables) = dashboard_queries(&dashboard()?)?;
    ensure!(!queries.is_empty(), "the dashboard has no queries");
    for q in &queries {
        let (found, labels) = check(&grafana_to_promql(&q.expr), exported);
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("panel {:?}: {p}", q.panel)),
        );
        if let (Some(labels), Some(legend)) = (labels, &q.legend) {
            for label in template_labels(legend) {
                if !labels.contains(&label) {
                    problems.push(format!(
                        "panel {:?}: legend names label {label:?}, which {} lacks",
                        q.panel, q.expr
                    ));
                }
            }
        }
    }
    for Variable { selector, label } in variables {
        let (found, labels) = check(&selector, exported);
        problems.extend(found.into_iter().map(|p| format!("variable {label}: {p}")));
        if labels.is_some_and(|l| !l.contains(&label)) {
            problems.push(format!("variable: {selector} has no label {label}"));
        }
    }
    Ok(problems)
}

/// The metric names the dashboard and the rules read, whatever is exported.
fn names_read() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for rule in rules(&read_yaml(&monitoring_dir().join("alerts.yaml"))?)? {
        names.extend(metric_names(&rule.expr).map_err(anyhow::Error::msg)?);
    }
    let (queries, variables) = dashboard_queries(&dashboard()?)?;
    for q in queries {
        names.extend(metric_names(&grafana_to_promql(&q.expr)).map_err(anyhow::Error::msg)?);
    }
    for v in variables {
        names.extend(metric_names(&v.selector).map_err(anyhow::Error::msg)?);
    }
    Ok(names)
}

/// Without the binaries behind it, the check finds every metric missing: it can fail, and it
/// fails on a misspelled name in the real files as well.
#[test]
fn the_check_fails_on_what_is_not_exported() -> Result<()> {
    let names = names_read()?;
    ensure!(names.len() >= 10, "{names:?}");
    let found = problems(&Exported::default())?;
    for name in &names {
        ensure!(
            found
                .iter()
                .any(|p| p.contains(&format!("metric {name} is not exported"))),
            "no problem reported for {name}: {found:#?}"
        );
    }
    // Everything exported but one name, as if the rules misspelled it.
    let mut exported = Exported::default();
    for name in &names {
        exported.metrics.insert(name.clone(), BTreeMap::new());
    }
    exported.metrics.remove("storm_rollout_degraded");
    let found = problems(&exported)?;
    ensure!(
        found
            .iter()
            .any(|p| p.contains("metric storm_rollout_degraded is not exported")),
        "{found:#?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Against the binaries.

/// A StormService `name` with one role of `replicas` RoleSets, its Services and a canary.
fn storm_service(name: &str, replicas: i32, steps: Value, auto_rollback: Option<Value>) -> Value {
    let mut obj = canary_storm_service(name, i64::from(replicas), 1, steps);
    if let Some(ar) = auto_rollback {
        obj["spec"]["rolloutStrategy"]["canary"]["autoRollback"] = ar;
    }
    obj
}

async fn create(ns: &TestNamespace, obj: Value) -> Result<()> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let services: Api<Service> = ns.api();
    for suffix in ["stable", "canary"] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-{suffix}")},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))?;
        services.create(&PostParams::default(), &svc).await?;
    }
    let obj: StormService = serde_json::from_value(obj)?;
    ns.api::<StormService>()
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating StormService {name}"))?;
    Ok(())
}

/// Patches the role's Pod template: a new image, and labels for kwok.
async fn change_template(ns: &TestNamespace, name: &str, labels: Value) -> Result<()> {
    let mut pod_labels = json!({"app": name});
    if let (Some(all), Some(extra)) = (pod_labels.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    let body = json!({"spec": {"template": {"spec": {"roles": [{"name": "server", "replicas": 1, "template": {
        "metadata": {"labels": pod_labels},
        "spec": {"containers": [{"name": "server", "image": "app:v2"}]}
    }}]}}}});
    ns.api::<StormService>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .with_context(|| format!("changing the template of {name}"))?;
    Ok(())
}

/// (phase, reason of a True Degraded condition) of StormService `name`.
async fn phase(ns: &TestNamespace, name: &str) -> Result<(Option<RolloutPhase>, Option<String>)> {
    let obj = ns.api::<StormService>().get(name).await?;
    let rs = obj
        .status
        .and_then(|s| s.rollout_status)
        .unwrap_or_default();
    let degraded = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .and_then(|c| c.reason.clone());
    Ok((rs.phase, degraded))
}

async fn wait_phase(
    ns: &TestNamespace,
    controller: &Controller,
    name: &str,
    want: RolloutPhase,
    reason: Option<&str>,
) -> Result<()> {
    wait_for(&format!("{name} {want:?} {reason:?}"), TIMEOUT, || async {
        let (p, r) = phase(ns, name).await?;
        Ok((p == Some(want) && (reason.is_none() || r.as_deref() == reason)).then_some(()))
    })
    .await
    .with_context(|| format!("controller log:\n{}", controller.process.log_tail(40)))
}

/// The webhook's `/metrics` over HTTPS, trusting its CA.
fn webhook_page(webhook: &storm_test_support::webhook::Webhook) -> Result<String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", "--cacert"])
        .arg(&webhook.ca)
        .arg(format!("{}/metrics", webhook.url))
        .output()
        .context("running curl")?;
    ensure!(
        out.status.success(),
        "GET {}/metrics: {}",
        webhook.url,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `alerts.yaml` with every `for:` cut to 1s, written to a file of its own. The shipped durations
/// (up to 15 minutes) would keep the alerts pending far longer than a test should wait; the
/// expressions, labels and annotations are loaded exactly as shipped.
fn rules_for_the_test() -> Result<PathBuf> {
    let mut doc = read_yaml(&monitoring_dir().join("alerts.yaml"))?;
    for group in doc["groups"].as_sequence_mut().context("no groups")? {
        for rule in group["rules"].as_sequence_mut().context("no rules")? {
            if let Some(map) = rule.as_mapping_mut()
                && map.contains_key("for")
            {
                map.insert("for".into(), "1s".into());
            }
        }
    }
    let path = std::env::temp_dir().join(storm_test_support::unique_name("storm-alerts") + ".yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&doc)?)?;
    Ok(path)
}

/// The alerts firing now (not those still pending).
fn firing(prometheus: &Prometheus) -> Result<Vec<Alert>> {
    Ok(prometheus
        .alerts()?
        .into_iter()
        .filter(|a| a.state == "firing")
        .collect())
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_read_what_the_binaries_export_and_fire() -> Result<()> {
    let ns = TestNamespace::new("monitoring").await?;
    ns.cluster().install_crds()?;
    let webhook = storm_test_support::webhook::running()?;
    let controller = Controller::start(ns.cluster(), ns.name())?;
    let rules_path = rules_for_the_test()?;
    let webhook_target = webhook
        .url
        .strip_prefix("https://")
        .context("the webhook is not on https")?
        .to_string();
    // Scraping from before the rollouts start, so counters are seen as they rise.
    let prometheus = Prometheus::start_with(
        &[
            ScrapeJob::http(
                "storm-controller",
                &[format!("127.0.0.1:{}", controller.http_port)],
            ),
            ScrapeJob::https("storm-webhook", &[webhook_target], &webhook.ca),
        ],
        std::slice::from_ref(&rules_path),
    )?;
    let _ = std::fs::remove_file(&rules_path);

    // A RoleSet controller error that persists: Pods with resource requests are over a quota of 0.
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-burstable-pods"},
        "spec": {"hard": {"pods": "0"}, "scopes": ["NotBestEffort"]}
    }))?;
    ns.api::<ResourceQuota>()
        .create(&PostParams::default(), &quota)
        .await?;
    // An analysis provider that refuses every connection: a port nothing listens on.
    let refused = format!("http://127.0.0.1:{}/error-rate", free_port()?);
    let template: AnalysisTemplate = serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "unreachable"},
        "spec": {"metrics": [{
            "name": "error-rate",
            "provider": {"web": {"url": refused, "jsonPath": "{$.rate}", "timeout": "2s"}},
            "successCondition": "double(result) < 5.0",
            "interval": "1s",
            "consecutiveErrorLimit": 5
        }]}
    }))?;
    ns.api::<AnalysisTemplate>()
        .create(&PostParams::default(), &template)
        .await?;

    let gate = json!([{"weight": 25, "pause": {"untilApproval": true}}, {"weight": 100}]);
    create(&ns, storm_service("aborted", 2, gate.clone(), None)).await?;
    let deadline = json!({"onTimeout": "6s", "onFailure": {"healthCheckGracePeriod": "10m"}});
    create(&ns, storm_service("deadline", 2, gate, Some(deadline))).await?;
    let analysed = json!([{"weight": 50, "analysis": {"templates": [{"name": "unreachable"}]}}]);
    create(&ns, storm_service("analysis", 2, analysed, None)).await?;
    let mut over_quota = storm_service("quota", 1, json!([{"weight": 100}]), None);
    over_quota["spec"]["template"]["spec"]["roles"][0]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "100m"}});
    create(&ns, over_quota).await?;
    // A StormService the webhook denies (a weight over 100).
    let denied = ns
        .api::<StormService>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(storm_service("denied", 1, json!([{"weight": 150}]), None))?,
        )
        .await;
    match denied {
        Err(kube::Error::Api(e)) if e.message.contains("denied the request") => {}
        other => bail!("the webhook should have denied a weight of 150: {other:?}"),
    }

    for name in ["aborted", "deadline", "analysis"] {
        wait_phase(&ns, &controller, name, RolloutPhase::Healthy, None).await?;
    }
    change_template(&ns, "aborted", json!({})).await?;
    change_template(&ns, "deadline", json!({"storm.test/never-ready": "true"})).await?;
    change_template(&ns, "analysis", json!({})).await?;
    wait_phase(&ns, &controller, "aborted", RolloutPhase::Paused, None).await?;
    let body =
        json!({"metadata": {"annotations": {"stormservice.aibrix.ai/rollout-abort": "true"}}});
    ns.api::<StormService>()
        .patch("aborted", &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    let aborted_at = Instant::now();
    let aborted_wall = k8s_openapi::jiff::Timestamp::now();
    wait_phase(&ns, &controller, "aborted", RolloutPhase::Aborted, None).await?;
    let deadline_reason = Some("ProgressDeadlineExceeded");
    wait_phase(
        &ns,
        &controller,
        "deadline",
        RolloutPhase::Degraded,
        deadline_reason,
    )
    .await?;
    let analysis_reason = Some("AnalysisFailed");
    wait_phase(
        &ns,
        &controller,
        "analysis",
        RolloutPhase::Degraded,
        analysis_reason,
    )
    .await?;
    // The page is read once everything it is checked for has happened: the quota's errors, and
    // both Degraded triggers (published when their status is stored, an instant after the watch
    // above may see it).
    let degraded = |name: &str, reason: &str| {
        format!(
            "storm_rollout_degraded{{namespace=\"{}\",name=\"{name}\",reason=\"{reason}\"}} 1",
            ns.name()
        )
    };
    let awaited = [
        "storm_reconcile_errors_total{kind=\"RoleSet\",error=\"create_pod\"}".to_string(),
        degraded("deadline", "ProgressDeadlineExceeded"),
        degraded("analysis", "AnalysisFailed"),
    ];
    wait_for(
        "the quota's reconcile errors and both Degraded triggers on the page",
        TIMEOUT,
        || async {
            let (_, page) = controller.http_get("/metrics")?;
            Ok(awaited
                .iter()
                .all(|s| page.contains(s.as_str()))
                .then_some(()))
        },
    )
    .await?;

    // Both pages, as the binaries serve them now.
    let (code, controller_page) = controller.http_get("/metrics")?;
    ensure!(code == 200, "controller /metrics: HTTP {code}");
    let webhook_page = webhook_page(webhook)?;
    let mut exported = Exported::default();
    exported
        .add_page(&controller_page)
        .map_err(|e| anyhow::anyhow!("controller /metrics: {e}"))?;
    exported
        .add_page(&webhook_page)
        .map_err(|e| anyhow::anyhow!("webhook /metrics: {e}"))?;
    let found = problems(&exported)?;
    ensure!(
        found.is_empty(),
        "the dashboard and the rules read what the binaries do not export:\n{}\n\nexported: {:#?}",
        found.join("\n"),
        exported.names()
    );
    let read = names_read()?;
    let unread: Vec<&str> = exported
        .names()
        .into_iter()
        .filter(|n| !read.contains(*n))
        .collect();
    eprintln!(
        "monitoring: {} metric names read by the dashboard and the rules, all among the {} \
         exported; not read: {unread:?}",
        read.len(),
        exported.names().len()
    );

    // The real Prometheus evaluates every rule without error, and the alerts of what happened fire.
    let ns_name = ns.name().to_string();
    let expected: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "StormRolloutAborted",
            vec![("namespace", &ns_name), ("name", "aborted")],
        ),
        (
            "StormRolloutProgressDeadlineExceeded",
            vec![("namespace", &ns_name), ("name", "deadline")],
        ),
        (
            "StormRolloutRolledBack",
            vec![
                ("namespace", &ns_name),
                ("name", "analysis"),
                ("reason", "AnalysisFailed"),
            ],
        ),
        (
            "StormReconcileErrors",
            vec![("kind", "RoleSet"), ("error", "create_pod")],
        ),
        ("StormAnalysisErrors", vec![("provider", "web")]),
    ];
    let matches = |a: &Alert, name: &str, labels: &[(&str, &str)]| {
        a.name() == name
            && labels
                .iter()
                .all(|(k, v)| a.labels.get(*k).map(String::as_str) == Some(*v))
    };
    let mut first_seen: BTreeMap<&str, Duration> = BTreeMap::new();
    let give_up = Instant::now() + TIMEOUT;
    let alerts = loop {
        let alerts = firing(&prometheus)?;
        for (name, labels) in &expected {
            if alerts.iter().any(|a| matches(a, name, labels)) {
                first_seen.entry(name).or_insert(aborted_at.elapsed());
            }
        }
        if first_seen.len() == expected.len() {
            break alerts;
        }
        if Instant::now() > give_up {
            bail!(
                "not every alert fired within {TIMEOUT:?}; first seen: {first_seen:?}; \
                 pending or firing: {:#?}",
                prometheus.alerts()?
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (name, labels) in &expected {
        let alert = alerts
            .iter()
            .find(|a| matches(a, name, labels))
            .context("gone")?;
        for (key, text) in &alert.annotations {
            ensure!(
                !text.contains("<no value>"),
                "{name} {key} names a label the alert lacks: {text}"
            );
        }
        if let Some((_, service)) = labels.iter().find(|(k, _)| *k == "name") {
            let summary = alert.annotations.get("summary").context("summary")?;
            ensure!(
                summary.contains(&format!("{ns_name}/{service}")),
                "{name}: {summary}"
            );
        }
    }
    // When each expression first held (`activeAt`; firing follows 1s later), from the abort on.
    let active: BTreeMap<&str, String> = expected
        .iter()
        .filter_map(|(name, labels)| {
            let alert = alerts.iter().find(|a| matches(a, name, labels))?;
            let at: k8s_openapi::jiff::Timestamp = alert.active_at.parse().ok()?;
            let held = at.duration_since(aborted_wall).as_secs_f64();
            Some((*name, format!("{held:+.1}s")))
        })
        .collect();
    eprintln!(
        "monitoring: expressions held (activeAt) at {active:?} from the abort; all seen firing \
         {first_seen:?} after it"
    );

    let rules = prometheus.rules()?;
    let mut evaluated = 0;
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            evaluated += 1;
            ensure!(
                rule["health"] == "ok",
                "rule {} does not evaluate: {}",
                rule["name"],
                rule["lastError"]
            );
        }
    }
    let shipped = self::rules(&read_yaml(&monitoring_dir().join("alerts.yaml"))?)?;
    ensure!(
        evaluated == shipped.len(),
        "{evaluated} rules loaded of {}",
        shipped.len()
    );

    // Every panel shows something on the real Prometheus now.
    let (queries, _) = dashboard_queries(&dashboard()?)?;
    wait_for(
        "every panel to have data",
        Duration::from_secs(60),
        || async {
            let mut empty = Vec::new();
            for q in &queries {
                if prometheus.query(&grafana_to_promql(&q.expr))?.is_empty() {
                    empty.push(format!("{}: {}", q.panel, q.expr));
                }
            }
            if !empty.is_empty() {
                eprintln!("monitoring: panels without data yet: {empty:#?}");
            }
            Ok(empty.is_empty().then_some(()))
        },
    )
    .await?;

    drop(prometheus);
    ns.cleanup().await
}
