//! What a PromQL expression reads, checked against what the binaries export: every metric it
//! selects, every label it matches, groups or joins on, and every label a template names.
//!
//! Expressions are parsed with `promql-parser` (the Prometheus grammar); a metric page is read in
//! the Prometheus/OpenMetrics text format the binaries serve.

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use std::collections::{BTreeMap, BTreeSet};

/// Labels Prometheus adds to every scraped series (target labels): never on a metric page.
pub const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// What the binaries export: every sample name (`_total`, `_bucket`, `_sum`, `_count` included),
/// with the values seen for each of its labels.
#[derive(Debug, Default, Clone)]
pub struct Exported {
    /// Sample name → label name → values seen.
    pub metrics: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exported {
    /// Adds the samples of one metric page (text exposition or OpenMetrics).
    pub fn add_page(&mut self, page: &str) -> Result<(), String> {
        for (n, line) in page.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels) =
                sample(line).map_err(|e| format!("line {}: {e}: {line}", n + 1))?;
            let entry = self.metrics.entry(name).or_default();
            for (label, value) in labels {
                entry.entry(label).or_default().insert(value);
            }
        }
        Ok(())
    }

    /// The sample names.
    pub fn names(&self) -> BTreeSet<&str> {
        self.metrics.keys().map(String::as_str).collect()
    }

    /// The labels a series of `metric` carries once scraped (its own and the target's).
    fn labels(&self, metric: &str) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        if let Some(labels) = self.metrics.get(metric) {
            out.extend(labels.keys().cloned());
        }
        out
    }
}

/// One sample line: its name and labels (the value and timestamp are not needed).
fn sample(line: &str) -> Result<(String, Vec<(String, String)>), String> {
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = Vec::new();
    let rest = &line[end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.chars();
        loop {
            let mut label = String::new();
            for c in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' if label.trim().is_empty() => return Ok((name.into(), labels)),
                    c => label.push(c),
                }
            }
            let label = label.trim().trim_start_matches(',').trim().to_string();
            if chars.next() != Some('"') {
                return Err(format!("label {label} without a quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")? {
                    '\\' => match chars.next().ok_or("unterminated escape")? {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((label, value));
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                other => return Err(format!("unexpected {other:?} after a label")),
            }
        }
    }
    Ok((name.into(), labels))
}

/// Values for Grafana's variables, so a panel's query is plain PromQL.
pub fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${namespace:regex}", ".*")
        .replace("$namespace", ".*")
}

/// Everything `expr` reads that `exported` lacks (empty when all is there), and the labels its
/// result carries (None where that cannot be known, such as after `label_replace`).
pub fn check(expr: &str, exported: &Exported) -> (Vec<String>, Option<BTreeSet<String>>) {
    let ast = match parser::parse(expr) {
        Ok(ast) => ast,
        Err(e) => return (vec![format!("does not parse: {e}")], None),
    };
    let mut problems = Vec::new();
    let labels = walk(&ast, exported, &mut problems);
    (problems, labels)
}

/// The metric names `expr` selects.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let ast = parser::parse(expr)?;
    let mut names = BTreeSet::new();
    selected(&ast, &mut names);
    Ok(names)
}

fn selected(expr: &Expr, out: &mut BTreeSet<String>) {
    match expr {
        Expr::VectorSelector(vs) => out.extend(name_of(vs)),
        Expr::MatrixSelector(ms) => out.extend(name_of(&ms.vs)),
        _ => children(expr).into_iter().for_each(|c| selected(c, out)),
    }
}

fn children(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::Aggregate(a) => [Some(&*a.expr), a.param.as_deref()]
            .into_iter()
            .flatten()
            .collect(),
        Expr::Unary(u) => vec![&u.expr],
        Expr::Binary(b) => vec![&b.lhs, &b.rhs],
        Expr::Paren(p) => vec![&p.expr],
        Expr::Subquery(s) => vec![&s.expr],
        Expr::Call(c) => c.args.args.iter().map(|a| &**a).collect(),
        Expr::Extension(_) => Vec::new(),
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_) => Vec::new(),
    }
}

/// The metric a selector names, as `name{...}` or `{__name__="name"}`.
fn name_of(vs: &VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
            .map(|m| m.value.clone())
    })
}

/// The labels of the series of a subtree (None: unknown), with problems added on the way.
fn walk(expr: &Expr, exported: &Exported, problems: &mut Vec<String>) -> Option<BTreeSet<String>> {
    match expr {
        Expr::VectorSelector(vs) => selector(vs, exported, problems),
        Expr::MatrixSelector(ms) => selector(&ms.vs, exported, problems),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Some(BTreeSet::new()),
        Expr::Unary(u) => walk(&u.expr, exported, problems),
        Expr::Paren(p) => walk(&p.expr, exported, problems),
        Expr::Subquery(s) => walk(&s.expr, exported, problems),
        Expr::Extension(_) => None,
        Expr::Aggregate(a) => {
            if let Some(param) = &a.param {
                walk(param, exported, problems);
            }
            let inner = walk(&a.expr, exported, problems);
            let grouping = a.modifier.as_ref().map(LabelModifier::labels);
            if let (Some(inner), Some(grouping)) = (&inner, grouping) {
                for label in &grouping.labels {
                    if !inner.contains(label) {
                        problems.push(format!(
                            "{} by/without label {label:?}: not a label of {}",
                            a.op, a.expr
                        ));
                    }
                }
            }
            match (a.op.to_string().as_str(), &a.modifier) {
                ("topk" | "bottomk" | "limitk", _) => inner,
                (_, Some(LabelModifier::Include(by))) => Some(by.labels.iter().cloned().collect()),
                (_, Some(LabelModifier::Exclude(without))) => inner.map(|mut l| {
                    for label in &without.labels {
                        l.remove(label);
                    }
                    l
                }),
                (_, None) => Some(BTreeSet::new()),
            }
        }
        Expr::Binary(b) => {
            let lhs = walk(&b.lhs, exported, problems);
            let rhs = walk(&b.rhs, exported, problems);
            let joined = b.modifier.as_ref().into_iter().flat_map(|m| {
                let on = m.matching.as_ref().map(LabelModifier::labels);
                on.into_iter()
                    .chain(m.card.labels())
                    .flat_map(|l| l.labels.iter())
            });
            for label in joined {
                let known = [&lhs, &rhs]
                    .iter()
                    .any(|side| side.as_ref().is_none_or(|s| s.contains(label)));
                if !known {
                    problems.push(format!(
                        "{} joins on label {label:?}, which neither side has",
                        b.op
                    ));
                }
            }
            let vector = |e: &Expr| e.value_type() == ValueType::Vector;
            match (vector(&b.lhs), vector(&b.rhs)) {
                (true, _) => lhs,
                (false, true) => rhs,
                (false, false) => Some(BTreeSet::new()),
            }
        }
        Expr::Call(c) => {
            let args: Vec<_> = c
                .args
                .args
                .iter()
                .map(|a| walk(a, exported, problems))
                .collect();
            match c.func.name {
                "histogram_quantile" => args.get(1).cloned().flatten().map(|mut l| {
                    if !l.remove("le") {
                        problems.push(format!(
                            "histogram_quantile over series without `le`: {}",
                            c.args
                        ));
                    }
                    l
                }),
                "label_replace" | "label_join" | "absent" | "absent_over_time" => None,
                "scalar" | "time" | "vector" | "pi" => Some(BTreeSet::new()),
                _ => c
                    .args
                    .args
                    .iter()
                    .zip(args)
                    .find(|(a, _)| matches!(a.value_type(), ValueType::Vector | ValueType::Matrix))
                    .and_then(|(_, l)| l),
            }
        }
    }
}

fn selector(
    vs: &VectorSelector,
    exported: &Exported,
    problems: &mut Vec<String>,
) -> Option<BTreeSet<String>> {
    let Some(name) = name_of(vs) else {
        problems.push(format!("{vs}: selects no metric by name"));
        return None;
    };
    let Some(labels) = exported.metrics.get(&name) else {
        problems.push(format!("metric {name} is not exported"));
        return None;
    };
    let matchers = vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten());
    for m in matchers.filter(|m| m.name != "__name__") {
        if TARGET_LABELS.contains(&m.name.as_str()) {
            continue;
        }
        match labels.get(&m.name) {
            None => problems.push(format!("{name} has no label {:?}", m.name)),
            Some(values) if !values.iter().any(|v| selects(m, v)) => problems.push(format!(
                "{name}{{{}{}{:?}}} matches none of the values exported: {values:?}",
                m.name, m.op, m.value
            )),
            Some(_) => {}
        }
    }
    Some(exported.labels(&name))
}

/// Whether the matcher does something with `value`: a positive matcher selects it, a negative one
/// leaves it out (a negative matcher that leaves nothing out is as wrong as one that selects
/// nothing: its value is misspelled).
fn selects(m: &Matcher, value: &str) -> bool {
    match m.op {
        MatchOp::Equal | MatchOp::Re(_) => m.is_match(value),
        MatchOp::NotEqual | MatchOp::NotRe(_) => !m.is_match(value),
    }
}

/// The labels a Go template names as `$labels.NAME` or a Grafana legend as `{{NAME}}`.
pub fn template_labels(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let inner = rest[start + 2..start + end].trim();
        if let Some(label) = inner.strip_prefix("$labels.") {
            out.insert(label.split_whitespace().next().unwrap_or(label).to_string());
        } else if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.insert(inner.to_string());
        }
        rest = &rest[start + end + 2..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page like the controller's (OpenMetrics, as prometheus-client writes it).
    const PAGE: &str = r#"# HELP storm_rollbacks Rollbacks, by reason.
# TYPE storm_rollbacks counter
storm_rollbacks_total{reason="RolloutAborted"} 1
storm_rollbacks_total{reason="ProgressDeadlineExceeded"} 2
# TYPE storm_reconcile_duration_seconds histogram
storm_reconcile_duration_seconds_sum{kind="RoleSet"} 0.5
storm_reconcile_duration_seconds_count{kind="RoleSet"} 3
storm_reconcile_duration_seconds_bucket{le="0.001",kind="RoleSet"} 1
storm_reconcile_duration_seconds_bucket{le="+Inf",kind="RoleSet"} 3
storm_rollout_phase{namespace="ns",name="a \"quoted\" name",phase="Aborted"} 1
storm_webhook_ready 1
# EOF
"#;

    fn exported() -> Exported {
        let mut e = Exported::default();
        e.add_page(PAGE).unwrap();
        e
    }

    #[test]
    fn pages_are_read_with_every_suffix_and_label_value() {
        let e = exported();
        assert_eq!(
            e.names().into_iter().collect::<Vec<_>>(),
            [
                "storm_reconcile_duration_seconds_bucket",
                "storm_reconcile_duration_seconds_count",
                "storm_reconcile_duration_seconds_sum",
                "storm_rollbacks_total",
                "storm_rollout_phase",
                "storm_webhook_ready",
            ]
        );
        let names = &e.metrics["storm_rollout_phase"]["name"];
        assert!(names.contains("a \"quoted\" name"), "{names:?}");
        assert!(e.metrics["storm_webhook_ready"].is_empty());
        assert!(Exported::default().add_page("bad-name{} 1").is_err());
    }

    #[test]
    fn a_good_expression_passes_and_says_what_labels_it_yields() {
        let e = exported();
        let (problems, labels) = check(
            "max by (namespace, name) (storm_rollout_phase{phase=\"Aborted\", job=\"x\"}) == 1",
            &e,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(labels, Some(["name".into(), "namespace".into()].into()));
        let (problems, labels) = check(
            "histogram_quantile(0.99, sum by (le, kind) (rate(storm_reconcile_duration_seconds_bucket[5m]))) > 0.5",
            &e,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(labels, Some(["kind".into()].into()));
        let (problems, _) = check(
            "sum(increase(storm_rollbacks_total{reason!=\"RolloutAborted\"}[1h])) > 3",
            &e,
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    /// The check fails on each kind of slip it is there to catch.
    #[test]
    fn misspelled_metrics_labels_and_values_are_reported() {
        let e = exported();
        let cases = [
            (
                "sum(rate(storm_rollback_total[5m]))",
                "metric storm_rollback_total is not exported",
            ),
            (
                "rate(storm_reconcile_duration_seconds[5m])",
                "metric storm_reconcile_duration_seconds is not exported",
            ),
            (
                "storm_rollout_phase{phase=\"Aborted\", namspace=\"x\"}",
                "has no label \"namspace\"",
            ),
            (
                "storm_rollout_phase{phase=\"Abort\"}",
                "matches none of the values",
            ),
            (
                "storm_rollbacks_total{reason!=\"Aborted\"}",
                "matches none of the values",
            ),
            (
                "storm_rollout_phase{phase=~\"Fail.*\"}",
                "matches none of the values",
            ),
            (
                "sum by (resaon) (storm_rollbacks_total)",
                "label \"resaon\": not a label of",
            ),
            (
                "storm_rollout_phase / on (kind) storm_webhook_ready",
                "joins on label \"kind\"",
            ),
            (
                "histogram_quantile(0.9, sum by (kind) (rate(storm_reconcile_duration_seconds_bucket[5m])))",
                "without `le`",
            ),
            ("rate(storm_rollbacks_total[5m]", "does not parse"),
            ("{__name__=~\"storm_.*\"}", "selects no metric by name"),
        ];
        for (expr, want) in cases {
            let (problems, _) = check(expr, &e);
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{expr}: wanted {want:?}, got {problems:?}"
            );
        }
    }

    #[test]
    fn names_are_found_wherever_they_stand() {
        let names = metric_names(
            "sum by (p) (rate(a_total{x=\"1\"}[5m])) / on (p) group_left max(b) or vector(0) \
             + scalar(c) + max_over_time(d[5m:1m]) + {__name__=\"e\"} - -f",
        )
        .unwrap();
        assert_eq!(
            names,
            ["a_total", "b", "c", "d", "e", "f"]
                .map(String::from)
                .into()
        );
    }

    #[test]
    fn template_labels_are_read_from_alert_and_legend_templates() {
        assert_eq!(
            template_labels("{{ $labels.namespace }}/{{ $labels.name }}: {{ $value | humanize }}"),
            ["name".to_string(), "namespace".to_string()].into()
        );
        assert_eq!(
            template_labels("{{kind}} {{error}}"),
            ["error".to_string(), "kind".to_string()].into()
        );
    }

    #[test]
    fn grafana_variables_become_plain_promql() {
        let q = grafana_to_promql(
            "sum by (kind) (rate(x{namespace=~\"$namespace\"}[$__rate_interval]))",
        );
        assert_eq!(q, "sum by (kind) (rate(x{namespace=~\".*\"}[1m]))");
    }
}
