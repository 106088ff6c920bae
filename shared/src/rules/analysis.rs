//! Rules for AnalysisTemplates and the metrics they hold.

use super::egress_rules::AnalysisBounds;
use super::{check_wait, metric_limits, names};
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::analysis::{AnalysisTemplate, Metric};
use std::collections::BTreeSet;

/// Validates an AnalysisTemplate. `bounds` are the webhook's limits on timeouts and intervals
/// (`AnalysisBounds::default()` where no webhook setting applies, as in `lint`).
pub fn validate_analysis_template(t: &AnalysisTemplate, bounds: &AnalysisBounds) -> Report {
    let mut report = Report::default();
    let path = FieldPath::new("spec");
    let mut declared = BTreeSet::new();
    for (i, arg) in t.spec.args.iter().enumerate() {
        let p = path.child("args").index(i).child("name");
        if arg.name.trim().is_empty() {
            report.error(FieldError::required(p, "an argument needs a name"));
        } else if !declared.insert(arg.name.clone()) {
            report.error(FieldError::duplicate(
                p,
                &arg.name,
                "argument names must be unique",
            ));
        }
    }
    if t.spec.metrics.is_empty() {
        report.error(FieldError::required(
            path.child("metrics"),
            "a template needs at least one metric",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, m) in t.spec.metrics.iter().enumerate() {
        let mp = path.child("metrics").index(i);
        if !m.name.is_empty() && !seen.insert(m.name.as_str()) {
            report.error(FieldError::duplicate(
                mp.child("name"),
                &m.name,
                "metric names must be unique",
            ));
        }
        check_metric(m, &mp, Some(&declared), bounds, &mut report);
    }
    report
}

/// The `{{args.NAME}}` placeholders in a text.
pub fn arg_references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end].trim();
        if let Some(name) = inner.strip_prefix("args.") {
            out.push(name.trim().to_string());
        }
        rest = &after[end + 2..];
    }
    out
}

/// Checks one metric. `declared` holds the template's argument names (None where no template applies).
pub fn check_metric(
    m: &Metric,
    path: &FieldPath,
    declared: Option<&BTreeSet<String>>,
    bounds: &AnalysisBounds,
    report: &mut Report,
) {
    check_metric_with(m, path, declared, bounds, report, true);
}

/// The `autoRollback.onFailure.errorRate` metric: like a template metric, but `errorThreshold` is
/// its condition (a measurement above it fails), so its own conditions are optional when a threshold
/// is set, as the controller measures it.
pub fn check_error_rate_metric(
    m: &Metric,
    path: &FieldPath,
    threshold_set: bool,
    bounds: &AnalysisBounds,
    report: &mut Report,
) {
    check_metric_with(m, path, None, bounds, report, !threshold_set);
}

fn check_metric_with(
    m: &Metric,
    path: &FieldPath,
    declared: Option<&BTreeSet<String>>,
    bounds: &AnalysisBounds,
    report: &mut Report,
    condition_required: bool,
) {
    if m.name.trim().is_empty() {
        report.error(FieldError::required(
            path.child("name"),
            "a metric needs a name",
        ));
    }
    let pp = path.child("provider");
    let providers: Vec<&str> = [
        m.provider.prometheus.as_ref().map(|_| "prometheus"),
        m.provider.web.as_ref().map(|_| "web"),
        m.provider.datadog.as_ref().map(|_| "datadog"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match providers.len() {
        0 => report.error(FieldError::required(
            pp.clone(),
            "set one provider: prometheus, web or datadog",
        )),
        1 => {}
        _ => report.error(FieldError::forbidden(
            pp.clone(),
            format!(
                "set exactly one provider, found {}",
                providers.join(" and ")
            ),
        )),
    }
    let mut texts: Vec<(FieldPath, &str)> = Vec::new();
    if let Some(p) = &m.provider.prometheus {
        let p_path = pp.child("prometheus");
        check_url(&p.address, p_path.child("address"), report);
        non_empty(&p.query, p_path.child("query"), "a PromQL query", report);
        if let Some(t) = &p.timeout
            && let Some(d) = check_wait(t, || p_path.child("timeout"), report)
        {
            metric_limits::check_timeout(t, d, bounds, p_path.child("timeout"), report);
        }
        texts.push((p_path.child("query"), &p.query));
    }
    if let Some(w) = &m.provider.web {
        let w_path = pp.child("web");
        check_url(&w.url, w_path.child("url"), report);
        if let Some(t) = &w.timeout
            && let Some(d) = check_wait(t, || w_path.child("timeout"), report)
        {
            metric_limits::check_timeout(t, d, bounds, w_path.child("timeout"), report);
        }
        if let Some(jp) = &w.json_path
            && metric_limits::check_json_path(jp, w_path.child("jsonPath"), report)
            && !jp.trim_start_matches('{').starts_with('$')
        {
            report.error(FieldError::invalid(
                w_path.child("jsonPath"),
                jp,
                "must be a JSONPath starting with $ (e.g. \"{$.data.errorRate}\")",
            ));
        }
        texts.push((w_path.child("url"), &w.url));
        if let Some(b) = &w.body {
            texts.push((w_path.child("body"), b));
        }
        metric_limits::check_headers(&w.headers, &w_path.child("headers"), report);
        for (i, h) in w.headers.iter().enumerate() {
            texts.push((w_path.child("headers").index(i).child("value"), &h.value));
        }
    }
    if let Some(d) = &m.provider.datadog {
        let d_path = pp.child("datadog");
        non_empty(
            &d.query,
            d_path.child("query"),
            "a Datadog metrics query",
            report,
        );
        if let Some(a) = &d.address
            && check_url(a, d_path.child("address"), report)
        {
            metric_limits::check_datadog_address(a, d_path.child("address"), report);
        }
        if let Some(i) = &d.interval {
            check_wait(i, || d_path.child("interval"), report);
        }
        let sp = d_path.child("secretRef").child("name");
        if d.secret_ref.name.is_empty() {
            report.error(FieldError::required(
                sp,
                "a Secret with the keys api-key and app-key",
            ));
        } else if let Some(why) = names::dns1123_subdomain(&d.secret_ref.name) {
            report.error(FieldError::invalid(sp, &d.secret_ref.name, why));
        }
        texts.push((d_path.child("query"), &d.query));
    }
    if let Some(declared) = declared {
        for (p, text) in texts {
            let names: BTreeSet<String> = arg_references(text).into_iter().collect();
            for name in names {
                if !declared.contains(&name) {
                    report.error(FieldError::invalid(
                        p.clone(),
                        text,
                        format!(
                            "uses {{{{args.{name}}}}} but spec.args declares no argument \"{name}\""
                        ),
                    ));
                }
            }
        }
    }
    check_conditions(m, path, report, condition_required);
    check_limits(m, path, bounds, report);
}

fn check_conditions(m: &Metric, path: &FieldPath, report: &mut Report, required: bool) {
    if required && m.success_condition.is_none() && m.failure_condition.is_none() {
        report.error(FieldError::required(
            path.child("successCondition"),
            "set successCondition or failureCondition (CEL over `result`, e.g. \"result < 0.05\")",
        ));
    }
    for (field, cond) in [
        ("successCondition", &m.success_condition),
        ("failureCondition", &m.failure_condition),
    ] {
        let Some(expr) = cond else { continue };
        if expr.trim().is_empty() {
            report.error(FieldError::required(
                path.child(field),
                "a CEL expression over `result`",
            ));
            continue;
        }
        // An expression past the caps never reaches the parser: deep nesting is what would make
        // parsing itself expensive.
        if !metric_limits::check_condition(expr, path.child(field), report) {
            continue;
        }
        if let Err(e) = cel::Program::compile(expr) {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("syntax error").to_string();
            report.error(FieldError::invalid(
                path.child(field),
                expr,
                format!("not a valid CEL expression: {first}"),
            ));
        }
    }
}

fn check_limits(m: &Metric, path: &FieldPath, bounds: &AnalysisBounds, report: &mut Report) {
    if let Some(i) = &m.interval
        && let Some(d) = check_wait(i, || path.child("interval"), report)
    {
        metric_limits::check_interval(i, d, bounds, path.child("interval"), report);
    }
    if let Some(d) = &m.initial_delay
        && let Err(e) = crate::units::parse_duration(d)
    {
        report.error(FieldError::invalid(
            path.child("initialDelay"),
            d,
            e.to_string(),
        ));
    }
    if let Some(c) = m.count {
        if c < 1 {
            report.error(FieldError::invalid(
                path.child("count"),
                c,
                "must be at least 1",
            ));
        } else if c > 1 && m.interval.is_none() {
            report.error(FieldError::required(
                path.child("interval"),
                format!("count is {c}: set the time between measurements (e.g. 1m)"),
            ));
        }
    }
    if let Some(f) = m.failure_limit {
        if f < -1 {
            report.error(FieldError::invalid(
                path.child("failureLimit"),
                f,
                "must be -1 (no limit) or greater than or equal to 0",
            ));
        } else if f >= 0
            && let Some(c) = m.count
            && f >= c
        {
            report.warn(
                path.child("failureLimit"),
                format!("failureLimit {f} is not below count {c}: this metric can never fail; use -1 to say so"),
            );
        }
    }
    for (field, v) in [
        ("inconclusiveLimit", m.inconclusive_limit),
        ("consecutiveErrorLimit", m.consecutive_error_limit),
    ] {
        if let Some(v) = v
            && v < 0
        {
            report.error(FieldError::invalid(
                path.child(field),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn non_empty(value: &str, path: FieldPath, what: &str, report: &mut Report) {
    if value.trim().is_empty() {
        report.error(FieldError::required(path, what.to_string()));
    }
}

/// Checks that `value` is an http(s) URL; true when it is.
fn check_url(value: &str, path: FieldPath, report: &mut Report) -> bool {
    if value.trim().is_empty() {
        report.error(FieldError::required(path, "an http:// or https:// URL"));
        false
    } else if !(value.starts_with("http://") || value.starts_with("https://")) {
        report.error(FieldError::invalid(
            path,
            value,
            "must be an http:// or https:// URL",
        ));
        false
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_argument_references() {
        assert_eq!(
            arg_references("rate{svc=\"{{args.service-name}}\"}[{{ args.window }}]"),
            vec!["service-name", "window"]
        );
        assert!(arg_references("no placeholders {{ here").is_empty());
    }
}
