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
    // Paths are made only for a problem: most fields are fine.
    let tpl_path = || path.child("template");
    let rs_path = || tpl_path().child("spec");
    if let Some(rs) = &spec.template.spec {
        if let Some(s) = &rs.scheduling_strategy {
            check_scheduling(s, &rs_path().child("schedulingStrategy"), report);
        }
        for (i, role) in rs.roles.iter().enumerate() {
            if let Some(s) = &role.scheduling_strategy {
                check_scheduling(
                    s,
                    &rs_path()
                        .child("roles")
                        .index(i)
                        .child("schedulingStrategy"),
                    report,
                );
            }
        }
    }
    let no_labels = BTreeMap::new();
    let labels: &BTreeMap<String, String> = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .unwrap_or(&no_labels);
    if let Some(selector) = &spec.selector {
        // Labels alone (the usual selector) are matched in place; expressions go through
        // kube's Selector, which parses their operators.
        let equality_only = selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty);
        let match_labels = selector.match_labels.as_ref().filter(|m| !m.is_empty());
        if equality_only && let Some(wanted) = match_labels {
            if !wanted.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                report.error(FieldError::invalid(
                    tpl_path().child("metadata").child("labels"),
                    labels,
                    "`selector` does not match template `labels`",
                ));
            }
        } else {
            check_selector(selector, labels, path, &tpl_path, report);
        }
    }
    if let Some(us) = &spec.update_strategy {
        let us_path = || path.child("updateStrategy");
        if let Some(v) = &us.max_surge {
            check_budget(v, || us_path().child("maxSurge"), report);
        }
        if let Some(v) = &us.max_unavailable {
            check_budget(v, || us_path().child("maxUnavailable"), report);
        }
    }
    let roles_path = || rs_path().child("roles");
    let roles = spec.template.roles();
    if roles.is_empty() {
        report.error(FieldError::required(
            roles_path(),
            "a StormService needs at least one role, each with a name and a Pod template",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, role) in roles.iter().enumerate() {
        let rp = || roles_path().index(i);
        if role.name.is_empty() {
            report.error(FieldError::required(
                rp().child("name"),
                "every role needs a name, e.g. prefill",
            ));
        } else if let Some(why) = names::dns1123_label(&role.name) {
            report.error(FieldError::invalid(rp().child("name"), &role.name, why));
        } else if !seen.insert(role.name.as_str()) {
            report.error(FieldError::duplicate(
                rp().child("name"),
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
                rp().child("template").child("spec").child("containers"),
                "the role's Pod template needs at least one container",
            ));
        }
        check_group(spec, role, &rp, report);
        if let Some(us) = &role.update_strategy {
            let up = rp().child("updateStrategy");
            if let Some(t) = &us.type_
                && !ROLE_UPDATE_TYPES.contains(&t.as_str())
            {
                report.warn(
                    up.child("type"),
                    format!("\"{t}\" is not a known role update type (known: Recreate, InPlaceIfPossible); Pods will be recreated"),
                );
            }
            if let Some(v) = &us.max_surge {
                check_budget(v, || up.child("maxSurge"), report);
            }
            if let Some(v) = &us.max_unavailable {
                check_budget(v, || up.child("maxUnavailable"), report);
            }
        }
    }
}

/// What a role's `podGroupSize` can and cannot be combined with. A Pod is in one PodGroup: a
/// group role with its own `schedulingStrategy` (a PodGroup per group) inside a RoleSet with one
/// (a PodGroup for the whole RoleSet) would put each Pod in two, and the scheduler would wait for
/// a gang that can never form. Combinations that only do nothing are warnings.
fn check_group(
    spec: &StormServiceSpec,
    role: &crate::types::roleset::RoleSpec,
    rp: &dyn Fn() -> FieldPath,
    report: &mut Report,
) {
    let group = role.pod_group_size.is_some_and(|n| n > 1);
    let roleset_gang = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_strategy.as_ref());
    match (&role.scheduling_strategy, group) {
        (Some(own), true) if roleset_gang.is_some_and(|rs| rs.keys().any(|k| own.contains_key(k))) => {
            report.error(FieldError::forbidden(
                rp().child("schedulingStrategy"),
                "a Pod can be in one PodGroup of a scheduler only, and spec.template.spec.schedulingStrategy names the same scheduler for every Pod of the RoleSet (the Pod's PodGroup label would name one, and the other PodGroup would wait for members that never come); keep this one (a PodGroup per group of podGroupSize Pods) or the RoleSet's, not both",
            ))
        }
        (Some(_), true) if roleset_gang.is_some() => report.warn(
            rp().child("schedulingStrategy"),
            "names another scheduler than spec.template.spec.schedulingStrategy: each Pod is marked for both PodGroups, and only the scheduler in the Pod's schedulerName acts on its own",
        ),
        (Some(_), false) => report.warn(
            rp().child("schedulingStrategy"),
            "has no effect on a role without podGroupSize > 1 (only groups get a PodGroup of their own); to gang-schedule the whole RoleSet, set spec.template.spec.schedulingStrategy",
        ),
        _ => {}
    }
    let in_place = role
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        == Some("InPlaceIfPossible");
    if group && in_place {
        report.warn(
            rp().child("updateStrategy").child("type"),
            "InPlaceIfPossible does not apply to a role with podGroupSize > 1: a changed group is replaced whole (its PodSet and Pods made again), as AIBrix does",
        );
    }
}

fn selector_text(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

/// A selector with expressions: parsed by kube's Selector, then matched against the labels.
fn check_selector(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
    path: &FieldPath,
    tpl_path: &dyn Fn() -> FieldPath,
    report: &mut Report,
) {
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
        Ok(sel) if !sel.matches(labels) => report.error(FieldError::invalid(
            tpl_path().child("metadata").child("labels"),
            labels,
            "`selector` does not match template `labels`",
        )),
        Ok(_) => {}
    }
}
