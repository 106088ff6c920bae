//! `{{args.NAME}}` substitution: values from the StormService's analysis `args`, defaults from the
//! template's `args[].value`.

use std::collections::BTreeMap;
use storm_shared::types::analysis::{Metric, TemplateArg};
use storm_shared::types::stormservice::AnalysisArg;

/// Substituting arguments failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// A declared argument has neither a value in the StormService nor a default in the template.
    #[error(
        "argument \"{0}\" has no value: set it in the StormService's analysis args or give it a default value in the template's spec.args"
    )]
    NoValue(String),
    /// A text uses `{{args.NAME}}` for an argument the template does not declare and no value is given.
    #[error(
        "{{{{args.{0}}}}} is used but no value is given: declare it in the template's spec.args and set it in the StormService's analysis args"
    )]
    Undeclared(String),
}

/// The argument values for one template: the StormService's values override the template's defaults.
pub fn resolve(
    declared: &[TemplateArg],
    given: &[AnalysisArg],
) -> Result<BTreeMap<String, String>, ArgError> {
    let mut values = BTreeMap::new();
    for arg in declared {
        let value = given
            .iter()
            .rev()
            .find(|g| g.name == arg.name)
            .map(|g| g.value.clone())
            .or_else(|| arg.value.clone())
            .ok_or_else(|| ArgError::NoValue(arg.name.clone()))?;
        values.insert(arg.name.clone(), value);
    }
    // Values for arguments a template does not declare are still usable: the admission rules warn
    // about undeclared references, and refusing them here would only break a running rollout.
    for g in given {
        values
            .entry(g.name.clone())
            .or_insert_with(|| g.value.clone());
    }
    Ok(values)
}

/// Replaces every `{{args.NAME}}` (spaces inside the braces allowed) in `text`. Other `{{...}}`
/// placeholders are left as they are.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> Result<String, ArgError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end].trim();
        out.push_str(&rest[..start]);
        match inner.strip_prefix("args.") {
            Some(name) => {
                let name = name.trim();
                let value = values
                    .get(name)
                    .ok_or_else(|| ArgError::Undeclared(name.to_string()))?;
                out.push_str(value);
            }
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A copy of `metric` with the arguments substituted in every provider text that may use them:
/// Prometheus address and query, web URL, header values and body, Datadog query.
pub fn apply(metric: &Metric, values: &BTreeMap<String, String>) -> Result<Metric, ArgError> {
    let mut m = metric.clone();
    if let Some(p) = &mut m.provider.prometheus {
        p.address = substitute(&p.address, values)?;
        p.query = substitute(&p.query, values)?;
    }
    if let Some(w) = &mut m.provider.web {
        w.url = substitute(&w.url, values)?;
        for h in &mut w.headers {
            h.value = substitute(&h.value, values)?;
        }
        if let Some(b) = &mut w.body {
            *b = substitute(b, values)?;
        }
    }
    if let Some(d) = &mut m.provider.datadog {
        d.query = substitute(&d.query, values)?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use storm_shared::types::analysis::{
        DatadogMetric, MetricProvider, PrometheusMetric, WebHeader, WebMetric,
    };

    fn declared(name: &str, default: Option<&str>) -> TemplateArg {
        TemplateArg {
            name: name.into(),
            value: default.map(str::to_string),
        }
    }

    fn given(name: &str, value: &str) -> AnalysisArg {
        AnalysisArg {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn service_values_override_template_defaults() {
        let values = resolve(
            &[
                declared("service", Some("default-svc")),
                declared("window", Some("5m")),
            ],
            &[given("service", "llm")],
        )
        .unwrap();
        assert_eq!(values["service"], "llm");
        assert_eq!(values["window"], "5m");
    }

    #[test]
    fn an_argument_without_any_value_is_an_error_naming_it() {
        let err = resolve(&[declared("service", None)], &[]).unwrap_err();
        assert_eq!(err, ArgError::NoValue("service".into()));
        assert!(err.to_string().contains("\"service\""), "{err}");
        assert!(err.to_string().contains("analysis args"), "{err}");
    }

    #[test]
    fn substitutes_placeholders_with_and_without_spaces() {
        let values = resolve(
            &[declared("svc", None), declared("w", Some("1m"))],
            &[given("svc", "llm")],
        )
        .unwrap();
        assert_eq!(
            substitute(
                "rate(x{svc=\"{{args.svc}}\"}[{{ args.w }}]) {{other}} {{",
                &values
            )
            .unwrap(),
            "rate(x{svc=\"llm\"}[1m]) {{other}} {{"
        );
        assert_eq!(
            substitute("{{args.nope}}", &values).unwrap_err(),
            ArgError::Undeclared("nope".into())
        );
        assert_eq!(substitute("plain", &values).unwrap(), "plain");
    }

    #[test]
    fn apply_substitutes_every_provider_text() {
        let values = resolve(&[declared("a", Some("X"))], &[]).unwrap();
        let m = Metric {
            name: "m".into(),
            provider: MetricProvider {
                prometheus: Some(PrometheusMetric {
                    address: "http://{{args.a}}:9090".into(),
                    query: "q{{args.a}}".into(),
                    timeout: None,
                }),
                web: Some(WebMetric {
                    url: "http://h/{{args.a}}".into(),
                    headers: vec![WebHeader {
                        key: "k".into(),
                        value: "v-{{args.a}}".into(),
                        ..WebHeader::default()
                    }],
                    body: Some("{\"a\":\"{{args.a}}\"}".into()),
                    ..WebMetric::default()
                }),
                datadog: Some(DatadogMetric {
                    query: "avg:x{svc:{{args.a}}}".into(),
                    ..DatadogMetric::default()
                }),
            },
            ..Metric::default()
        };
        let m = apply(&m, &values).unwrap();
        let p = m.provider.prometheus.unwrap();
        assert_eq!(
            (p.address.as_str(), p.query.as_str()),
            ("http://X:9090", "qX")
        );
        let w = m.provider.web.unwrap();
        assert_eq!(w.url, "http://h/X");
        assert_eq!(w.headers[0].value, "v-X");
        assert_eq!(w.body.as_deref(), Some("{\"a\":\"X\"}"));
        assert_eq!(m.provider.datadog.unwrap().query, "avg:x{svc:X}");
    }
}
