//! Admission rules: every check that can be decided from the object (and the old object on update).
//!
//! The same functions run in the webhook, in `kubectl storm lint` and in the controller. Each returns
//! every problem at once, with the field path, so a user fixes everything in one go.

pub mod analysis;
mod autorollback;
mod bluegreen;
mod budget;
mod canary;
mod controls;
mod egress_rules;
pub mod metric_limits;
pub mod names;
pub mod policy_spec;
mod routing;
mod template;
mod update;

use crate::errors::{FieldError, FieldPath, Report};
use crate::types::stormservice::{RolloutStrategy, RolloutStrategyType, StormService};

pub use budget::{is_extended_resource, need as budget_need};
pub use egress_rules::{
    AnalysisBounds, DATADOG_SITES, MAX_CONDITION_LEN, MAX_EXPRESSION_DEPTH, MAX_JSON_PATH_LEN,
    datadog_site, refused_header,
};
pub use routing::routers as routing_routers;

/// Validates a StormService. `old` is the stored object on update, `None` on create. `bounds` are
/// the webhook's limits on the `autoRollback.onFailure.errorRate` metric's timeout and interval
/// (`AnalysisBounds::default()` where no webhook setting applies, as in `lint`).
pub fn validate_storm_service(
    obj: &StormService,
    old: Option<&StormService>,
    bounds: &AnalysisBounds,
) -> Report {
    let mut report = Report::default();
    let spec_path = FieldPath::new("spec");
    template::check(&obj.spec, &spec_path, &mut report);
    names::check_derived(obj, &mut report);
    if let Some(strategy) = &obj.spec.rollout_strategy {
        check_strategy(
            obj,
            strategy,
            &spec_path.child("rolloutStrategy"),
            bounds,
            &mut report,
        );
    }
    controls::check(obj, &mut report);
    if let Some(old) = old {
        update::check(obj, old, &mut report);
    }
    report
}

fn check_strategy(
    obj: &StormService,
    strategy: &RolloutStrategy,
    path: &FieldPath,
    bounds: &AnalysisBounds,
    report: &mut Report,
) {
    let replicas = obj.spec.replicas.unwrap_or(1);
    match strategy.type_ {
        RolloutStrategyType::Canary => {
            if strategy.blue_green.is_some() {
                report.error(FieldError::forbidden(
                    path.child("blueGreen"),
                    "must not be set when type is Canary; remove it or set type: BlueGreen",
                ));
            }
            match &strategy.canary {
                Some(canary) => canary::check(canary, replicas, &|| path.child("canary"), report),
                None => report.error(FieldError::required(
                    path.child("canary"),
                    "type Canary needs a canary block with steps",
                )),
            }
        }
        RolloutStrategyType::BlueGreen => {
            if strategy.canary.is_some() {
                report.error(FieldError::forbidden(
                    path.child("canary"),
                    "must not be set when type is BlueGreen; remove it or set type: Canary",
                ));
            }
            match &strategy.blue_green {
                Some(bg) => bluegreen::check(bg, replicas, &path.child("blueGreen"), report),
                None => report.error(FieldError::required(
                    path.child("blueGreen"),
                    "type BlueGreen needs a blueGreen block with activeService and previewService",
                )),
            }
        }
    }
    if let Some(budget) = &strategy.capacity_budget {
        budget::check(obj, budget, strategy, &path.child("capacityBudget"), report);
    }
    autorollback::check_placement(strategy, path, bounds, report);
    if let Some(ar) = &strategy.auto_rollback {
        let ar_path = || path.child("autoRollback");
        autorollback::check(ar, &ar_path, bounds, report);
        autorollback::check_grace_against_startup(&obj.spec, ar, &ar_path, report);
    }
    check_template_namespaces(obj, strategy, path, report);
}

/// Why an analysis may not name an AnalysisTemplate in another namespace: the controller would run
/// it with its cluster-wide rights for whoever may edit this StormService (sending that namespace's
/// header Secrets to a URL built from this one's args, say).
pub const FOREIGN_TEMPLATE: &str = "AnalysisTemplates are read from the StormService's own namespace; remove namespace or copy the template";

/// Whether `template` names a namespace other than `own`, the StormService's. An empty namespace is
/// unset. When the StormService's namespace is unknown (a manifest without one), any namespace
/// counts: it cannot be shown to be the same, and removing it loses nothing.
pub fn names_foreign_namespace(
    template: &crate::types::stormservice::AnalysisTemplateRef,
    own: Option<&str>,
) -> bool {
    match template.namespace.as_deref() {
        None | Some("") => false,
        Some(ns) => own != Some(ns),
    }
}

/// Every analysis of the strategy: `templates[].namespace` must be unset or the StormService's own.
fn check_template_namespaces(
    obj: &StormService,
    strategy: &RolloutStrategy,
    path: &FieldPath,
    report: &mut Report,
) {
    let mut analyses = Vec::new();
    if let Some(canary) = &strategy.canary {
        let steps = path.child("canary").child("steps");
        for (i, step) in canary.steps.iter().enumerate() {
            if let Some(a) = &step.analysis {
                analyses.push((steps.index(i).child("analysis"), a));
            }
        }
    }
    if let Some(bg) = &strategy.blue_green {
        let bp = path.child("blueGreen");
        for (field, a) in [
            ("prePromotionAnalysis", &bg.pre_promotion_analysis),
            ("postPromotionAnalysis", &bg.post_promotion_analysis),
        ] {
            if let Some(a) = a {
                analyses.push((bp.child(field), a));
            }
        }
    }
    let own = obj.metadata.namespace.as_deref();
    for (p, a) in analyses {
        for (i, t) in a.templates.iter().enumerate() {
            if names_foreign_namespace(t, own) {
                report.error(FieldError::forbidden(
                    p.child("templates").index(i).child("namespace"),
                    FOREIGN_TEMPLATE,
                ));
            }
        }
    }
}

/// Reads an object from JSON, reporting a type mismatch with the path and value of the offending field.
pub fn parse<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, FieldError> {
    use serde_path_to_error::Segment;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = FieldPath::default();
        let mut at = Some(value);
        for seg in e.path().iter() {
            match seg {
                Segment::Seq { index } => {
                    path = path.index(*index);
                    at = at.and_then(|v| v.get(*index));
                }
                Segment::Map { key } => {
                    path = path.child(key);
                    at = at.and_then(|v| v.get(key));
                }
                Segment::Enum { variant } => path = path.child(variant),
                Segment::Unknown => path = path.child("?"),
            }
        }
        let path = if path.as_str().is_empty() {
            FieldPath::new("<root>")
        } else {
            path
        };
        let shown = at.cloned().unwrap_or(serde_json::Value::Null);
        FieldError::invalid(path, shown, e.inner().to_string())
    })
}

/// Checks an analysis reference (`templates` and `args`) used by a step or a blue-green promotion.
pub(crate) fn check_analysis_ref(
    analysis: &crate::types::stormservice::AnalysisRef,
    path: &dyn Fn() -> FieldPath,
    report: &mut Report,
) {
    if analysis.templates.is_empty() {
        report.error(FieldError::required(
            path().child("templates"),
            "name at least one AnalysisTemplate, or remove the analysis block",
        ));
    }
    // Paths are made only for a problem: most references are fine.
    let mut seen = std::collections::BTreeSet::new();
    for (i, t) in analysis.templates.iter().enumerate() {
        let p = || path().child("templates").index(i).child("name");
        if t.name.trim().is_empty() {
            report.error(FieldError::required(p(), "the name of an AnalysisTemplate"));
            continue;
        }
        if let Some(why) = names::dns1123_subdomain(&t.name) {
            report.error(FieldError::invalid(p(), &t.name, why));
        }
        // Every template is read from the StormService's namespace (see FOREIGN_TEMPLATE): the
        // name alone says which.
        if !seen.insert(t.name.as_str()) {
            report.error(FieldError::duplicate(
                p(),
                &t.name,
                "each template may be named once",
            ));
        }
    }
    let mut args = std::collections::BTreeSet::new();
    for (i, a) in analysis.args.iter().enumerate() {
        let p = || path().child("args").index(i).child("name");
        if a.name.trim().is_empty() {
            report.error(FieldError::required(p(), "an argument needs a name"));
        } else if !args.insert(a.name.as_str()) {
            report.error(FieldError::duplicate(
                p(),
                &a.name,
                "each argument may be given once",
            ));
        }
    }
}

/// Checks a Go-style wait duration at `path` and reports why it is refused.
pub(crate) fn check_wait(
    text: &str,
    path: impl FnOnce() -> FieldPath,
    report: &mut Report,
) -> Option<std::time::Duration> {
    match crate::units::parse_wait(text) {
        Ok(d) => Some(d),
        Err(e) => {
            report.error(FieldError::invalid(path(), text, e.to_string()));
            None
        }
    }
}

/// Checks an int-or-string budget (`maxSurge`, `maxUnavailable`): a non-negative integer or a percentage.
pub(crate) fn check_budget(
    v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    path: impl FnOnce() -> FieldPath,
    report: &mut Report,
) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match v {
        IntOrString::Int(i) if *i < 0 => report.error(FieldError::invalid(
            path(),
            i,
            "must be greater than or equal to 0",
        )),
        IntOrString::Int(_) => {}
        IntOrString::String(s) => {
            let ok = s.trim().ends_with('%')
                && crate::units::parse_percent(s).is_ok_and(|p| (0.0..=100.0).contains(&p));
            if !ok {
                report.error(FieldError::invalid(
                    path(),
                    s,
                    "must be an integer or a percentage between 0% and 100% (e.g. 1 or \"25%\")",
                ));
            }
        }
    }
}
