//! `spec.rolloutStrategy.capacityBudget`: the most of an extended resource a rollout may hold
//! above steady state. A rollout whose shape cannot fit in it is denied, with the arithmetic.
//!
//! With `r` RoleSets holding `g` each (the template's [`crate::capacity::roleset_use`]), what each
//! shape needs above steady state at its peak, with the controller planning every step within the
//! budget:
//! - a canary without a router: one RoleSet (`g`), or nothing when `maxUnavailable` lets stable
//!   shrink first;
//! - a canary with a router and `dynamicStableScale`: one RoleSet (`g`);
//! - a canary with a router otherwise: `r × g` (stable stays whole until the router reports 100%);
//! - blue-green: `r × g` (both revisions are whole at the switch).

use crate::capacity::roleset_use;
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::stormservice::{
    CapacityBudget, RolloutStrategy, RolloutStrategyType, StormService,
};
use crate::units::scaled_value;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What a rollout of `obj` needs above steady state when one RoleSet holds `g`, and why:
/// (need, explanation).
pub fn need(obj: &StormService, strategy: &RolloutStrategy, g: i64) -> (i64, String) {
    let r = i64::from(obj.spec.replicas.unwrap_or(1).max(0));
    let full = r.saturating_mul(g);
    match strategy.type_ {
        RolloutStrategyType::BlueGreen => (
            full,
            format!(
                "a blue-green switch needs both revisions at full size: {r} RoleSets × {g} = {full} above steady state"
            ),
        ),
        RolloutStrategyType::Canary => {
            let canary = strategy.canary.as_ref();
            let routed = canary.is_some_and(|c| c.traffic_routing.is_some());
            let dynamic = canary.is_some_and(|c| c.dynamic_stable_scale == Some(true));
            if routed && !dynamic {
                (
                    full,
                    format!(
                        "a routed canary keeps stable at full size until the router reports 100%, when the canary is whole too: {r} RoleSets × {g} = {full} above steady state; set canary.dynamicStableScale: true (then one RoleSet, {g}, is enough) or raise maxExtra to {full}"
                    ),
                )
            } else if routed {
                (
                    g,
                    format!(
                        "a routed canary with dynamicStableScale adds one RoleSet before stable shrinks behind the traffic: 1 RoleSet × {g} = {g}"
                    ),
                )
            } else {
                let quarter = IntOrString::String("25%".into());
                let us = obj.spec.update_strategy.as_ref();
                let unavailable = canary
                    .and_then(|c| c.max_unavailable.as_ref())
                    .or(us.and_then(|u| u.max_unavailable.as_ref()))
                    .unwrap_or(&quarter);
                let replicas = obj.spec.replicas.unwrap_or(1);
                let unavailable = scaled_value(unavailable, replicas, false).unwrap_or(0);
                if unavailable >= 1 {
                    (0, String::new())
                } else {
                    (
                        g,
                        format!(
                            "a canary without a router and with maxUnavailable 0 adds one RoleSet before stable shrinks: 1 RoleSet × {g} = {g}; raise maxExtra to {g} or allow maxUnavailable: 1"
                        ),
                    )
                }
            }
        }
    }
}

pub(super) fn check(
    obj: &StormService,
    budget: &CapacityBudget,
    strategy: &RolloutStrategy,
    path: &FieldPath,
    report: &mut Report,
) {
    if !is_extended_resource(&budget.resource) {
        report.error(FieldError::invalid(
            path.child("resource"),
            &budget.resource,
            "must be an extended resource counted in whole units, with a domain (for example nvidia.com/gpu); cpu, memory and other kubernetes.io resources are not budgeted",
        ));
        return;
    }
    if budget.max_extra < 0 {
        report.error(FieldError::invalid(
            path.child("maxExtra"),
            budget.max_extra,
            "must be 0 or more",
        ));
        return;
    }
    let roles = obj.spec.template.roles();
    let g = match roleset_use(roles, &budget.resource) {
        Ok(g) => g,
        Err(e) => {
            report.error(FieldError::invalid(
                path.child("resource"),
                &budget.resource,
                e.to_string(),
            ));
            return;
        }
    };
    if g == 0 {
        report.warn(
            path.clone(),
            format!(
                "no Pod of the template requests {}: the budget limits nothing",
                budget.resource
            ),
        );
        return;
    }
    let (need, why) = need(obj, strategy, g);
    if need > budget.max_extra {
        report.error(FieldError::invalid(
            path.child("maxExtra"),
            budget.max_extra,
            format!(
                "too small for this rollout: one RoleSet holds {g} {} ({}), and {why}",
                budget.resource,
                per_role(roles, &budget.resource)
            ),
        ));
    }
}

/// What each role adds to a RoleSet's use, for the message: `prefill 2 × 1 + decode 1 × 2`.
fn per_role(roles: &[crate::types::roleset::RoleSpec], resource: &str) -> String {
    roles
        .iter()
        .enumerate()
        .filter_map(|(i, role)| {
            let pods = role.replicas.unwrap_or(1).max(0) * role.pod_group_size.unwrap_or(1).max(1);
            let per_pod = role
                .template
                .spec
                .as_ref()
                .and_then(|s| crate::capacity::pod_use(s, resource, i).ok())
                .unwrap_or(0);
            (per_pod > 0).then(|| format!("{} {pods} Pods × {per_pod}", role.name))
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Whether `name` is an extended resource: a domain-prefixed name outside `kubernetes.io`.
pub fn is_extended_resource(name: &str) -> bool {
    let Some((domain, rest)) = name.split_once('/') else {
        return false;
    };
    !rest.is_empty()
        && domain.contains('.')
        && !domain.ends_with("kubernetes.io")
        && !name.starts_with("requests.")
}
