//! Rules for the workload itself: selector, RoleSet template, roles.

use super::{check_budget, names};
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::stormservice::StormServiceSpec;
use kube::core::{Selector, SelectorExt};
use std::collections::{BTreeMap, BTreeSet};

/// Role update types AIBrix documents.
const ROLE_UPDATE_TYPES: [&str; 2] = ["Recreate", "InPlaceIfPossible"];

/// The schedulers a `schedulingStrategy` may name (one of them).
const SCHEDULERS: [&str; 3] = [
    "coschedulingSchedulingStrategy",
    "volcanoSchedulingStrategy",
    "godelSchedulingStrategy",
];

/// A `schedulingStrategy` names exactly one scheduler the controller knows how to make a PodGroup
/// for, with an object of settings.
fn check_scheduling(
    strategy: &serde_json::Map<String, serde_json::Value>,
    path: &FieldPath,
    report: &mut Report,
) {
    let keys: Vec<&String> = strategy.keys().collect();
    for key in &keys {
        if !SCHEDULERS.contains(&key.as_str()) {
            report.error(FieldError::not_supported(path.child(key), key, &SCHEDULERS));
        } else if !strategy[key.as_str()].is_object() {
            report.error(FieldError::invalid(
                path.child(key),
                &strategy[key.as_str()],
                "must be an object of the scheduler's PodGroup settings (for example minMember)",
            ));
        }
    }
    if keys.len() > 1 {
        report.error(FieldError::invalid(
            path.clone(),
            keys,
            "must name exactly one scheduler: keep one of coschedulingSchedulingStrategy, volcanoSchedulingStrategy, godelSchedulingStrategy",
        ));
    }
}

pub(super) fn check(spec: &StormServiceSpec, path: &FieldPath, report: &mut Report) {
    let tpl_path = path.child("template");
    if let Some(rs) = &spec.template.spec {
        let rs_path = tpl_path.child("spec");
        if let Some(s) = &rs.scheduling_strategy {
            check_scheduling(s, &rs_path.child("schedulingStrategy"), report);
        }
        for (i, role) in rs.roles.iter().enumerate() {
            if let Some(s) = &role.scheduling_strategy {
                check_scheduling(
                    s,
                    &rs_path.child("roles").index(i).child("schedulingStrategy"),
                    report,
                );
            }
        }
    }
    let labels: BTreeMap<String, String> = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if let Some(selector) = &spec.selector {
        match Selector::try_from(selector.clone()) {
            Err(e) => report.error(FieldError::invalid(
                path.child("selector"),
                selector_text(selector),
                format!("not a valid label selector: {e}"),
            )),
            Ok(sel) if sel.selects_all() => report.error(FieldError::invalid(
                path.child("selector"),
                selector_text(selector),
                "empty selector is invalid for a StormService; select the template's labels",
            )),
            Ok(sel) if !sel.matches(&labels) => report.error(FieldError::invalid(
                tpl_path.child("metadata").child("labels"),
                &labels,
                "`selector` does not match template `labels`",
            )),
            Ok(_) => {}
        }
    }
    if let Some(us) = &spec.update_strategy {
        let us_path = path.child("updateStrategy");
        if let Some(v) = &us.max_surge {
            check_budget(v, us_path.child("maxSurge"), report);
        }
        if let Some(v) = &us.max_unavailable {
            check_budget(v, us_path.child("maxUnavailable"), report);
        }
    }
    let roles_path = tpl_path.child("spec").child("roles");
    let roles = spec
        .template
        .spec
        .as_ref()
        .map(|s| s.roles.as_slice())
        .unwrap_or_default();
    if roles.is_empty() {
        report.error(FieldError::required(
            roles_path.clone(),
            "a StormService needs at least one role, each with a name and a Pod template",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, role) in roles.iter().enumerate() {
        let rp = roles_path.index(i);
        if role.name.is_empty() {
            report.error(FieldError::required(
                rp.child("name"),
                "every role needs a name, e.g. prefill",
            ));
        } else if let Some(why) = names::dns1123_label(&role.name) {
            report.error(FieldError::invalid(rp.child("name"), &role.name, why));
        } else if !seen.insert(role.name.as_str()) {
            report.error(FieldError::duplicate(
                rp.child("name"),
                &role.name,
                "role names must be unique",
            ));
        }
        let containers = role
            .template
            .spec
            .as_ref()
            .map(|s| s.containers.len())
            .unwrap_or(0);
        if containers == 0 {
            report.error(FieldError::required(
                rp.child("template").child("spec").child("containers"),
                "the role's Pod template needs at least one container",
            ));
        }
        if let Some(us) = &role.update_strategy {
            let up = rp.child("updateStrategy");
            if let Some(t) = &us.type_
                && !ROLE_UPDATE_TYPES.contains(&t.as_str())
            {
                report.warn(
                    up.child("type"),
                    format!("\"{t}\" is not a known role update type (known: Recreate, InPlaceIfPossible); Pods will be recreated"),
                );
            }
            if let Some(v) = &us.max_surge {
                check_budget(v, up.child("maxSurge"), report);
            }
            if let Some(v) = &us.max_unavailable {
                check_budget(v, up.child("maxUnavailable"), report);
            }
        }
    }
}

fn selector_text(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}
