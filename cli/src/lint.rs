//! `kubectl storm lint`: the webhook's rules, offline.

use crate::error::Error;
use crate::schema::KindSchema;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use storm_shared::errors::{FieldError, Report};
use storm_shared::rules::analysis::validate_analysis_template;
use storm_shared::rules::policy_spec::validate_rollout_policy;
use storm_shared::rules::{AnalysisBounds, parse, validate_storm_service};
use storm_shared::types::API_VERSION;
use storm_shared::{AnalysisTemplate, RolloutPolicy, StormService, defaults, policy};

/// What lint found in one input.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Lines to print, in order.
    pub lines: Vec<String>,
    /// Objects of ours that were checked.
    pub checked: usize,
    /// Errors found.
    pub errors: usize,
    /// Warnings found.
    pub warnings: usize,
}

/// The rules and schemas lint applies.
pub struct Linter {
    schemas: BTreeMap<String, KindSchema>,
    policies: Vec<RolloutPolicy>,
    bounds: AnalysisBounds,
}

impl Linter {
    /// A linter with the CRD schemas of this build, the given RolloutPolicies and the webhook's
    /// analysis bounds.
    pub fn new(mut policies: Vec<RolloutPolicy>, bounds: AnalysisBounds) -> Result<Self, Error> {
        // Offline there are no namespaces to select: every policy applies.
        for p in &mut policies {
            p.spec.namespace_selector = None;
        }
        let mut schemas = BTreeMap::new();
        for crd in crate::crds::all() {
            schemas.insert(crd.spec.names.kind.clone(), KindSchema::from_crd(&crd)?);
        }
        Ok(Self {
            schemas,
            policies,
            bounds,
        })
    }

    /// Lints every document of a YAML stream. `file` names it in the output.
    pub fn lint_text(&self, file: &str, text: &str) -> Result<Outcome, Error> {
        let mut out = Outcome::default();
        for doc in documents(file, text)? {
            self.lint_document(file, &doc, &mut out);
        }
        Ok(out)
    }

    fn lint_document(&self, file: &str, doc: &Value, out: &mut Outcome) {
        if doc.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
            return;
        }
        let Some(kind) = doc.get("kind").and_then(Value::as_str) else {
            return;
        };
        let Some(schema) = self.schemas.get(kind) else {
            return;
        };
        out.checked += 1;
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>");
        let prefix = format!("{file}: {kind}/{name}");
        // The API server defaults before it validates: lint sees the object as it will be stored.
        let mut doc = doc.clone();
        let mut report = Report::default();
        if kind == "StormService" {
            match defaults::apply_defaults(&mut doc) {
                Ok(w) => report.warnings.extend(w),
                Err(e) => report.error(FieldError::invalid(
                    storm_shared::errors::FieldPath::new("spec"),
                    "…",
                    format!("defaults could not be applied: {e}"),
                )),
            }
        }
        let schema_errors = schema.check(&doc);
        let parsed = match kind {
            "StormService" => parse::<StormService>(&doc).map(|obj| {
                report.merge(validate_storm_service(&obj, None, &self.bounds));
                report.merge(policy::apply(&self.policies, &BTreeMap::new(), &obj, &[]));
            }),
            "AnalysisTemplate" => parse::<AnalysisTemplate>(&doc).map(|obj| {
                report.merge(validate_analysis_template(&obj, &self.bounds));
                report.merge(policy::apply_to_template(
                    &self.policies,
                    &BTreeMap::new(),
                    &obj,
                ));
            }),
            "RolloutPolicy" => {
                parse::<RolloutPolicy>(&doc).map(|obj| report.merge(validate_rollout_policy(&obj)))
            }
            _ => Ok(()),
        };
        // A type error the schema already explains needs no second, terser message.
        if let Err(e) = parsed
            && schema_errors.is_empty()
        {
            report.error(e);
        }
        // Where a rule and the schema both name a field, the rule's message says more.
        for e in schema_errors
            .iter()
            .filter(|s| !report.errors.iter().any(|r| r.path.as_str() == s.path))
        {
            out.lines
                .push(format!("{prefix}: {}: {}", e.path, e.message));
            out.errors += 1;
        }
        for e in &report.errors {
            out.lines.push(format!("{prefix}: {e}"));
            out.errors += 1;
        }
        for w in &report.warnings {
            out.lines.push(format!("{prefix}: warning: {w}"));
            out.warnings += 1;
        }
    }
}

/// Splits a YAML stream into JSON documents, skipping empty ones.
pub fn documents(file: &str, text: &str) -> Result<Vec<Value>, Error> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(de).map_err(|source| Error::InvalidYaml {
            file: file.into(),
            source,
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &Path) -> Result<(String, String), Error> {
    let label = path.display().to_string();
    if label == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| Error::ReadInput {
                file: "<stdin>".into(),
                source,
            })?;
        return Ok(("<stdin>".into(), s));
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadInput {
        file: label.clone(),
        source,
    })?;
    Ok((label, text))
}

/// Reads the RolloutPolicies of a `--policy` file.
pub fn read_policies(path: &Path) -> Result<Vec<RolloutPolicy>, Error> {
    let (label, text) = read_input(path)?;
    let mut out = Vec::new();
    for doc in documents(&label, &text)? {
        if doc.get("kind").and_then(Value::as_str) != Some("RolloutPolicy") {
            continue;
        }
        let p: RolloutPolicy = parse(&doc).map_err(|error| Error::ParsePolicy {
            file: label.clone(),
            error,
        })?;
        let report = validate_rollout_policy(&p);
        if !report.is_valid() {
            return Err(Error::InvalidPolicy {
                file: label,
                name: p.metadata.name.clone().unwrap_or_default(),
                denial: report.denial_message(),
            });
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(Error::NoPolicy { file: label });
    }
    Ok(out)
}
