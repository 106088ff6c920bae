//! The status a RoleSet should show for the Pods it owns. Pure, like the plan: the reconcile writes
//! the result only when it differs from what is stored, so an unchanged world causes no write (and
//! no watch event, and no further reconcile).

use super::plan::{desired_replicas, is_ready, is_terminating, unique_roles};
use super::update::{is_outdated, role_template_hash};
use crate::cache::CachedPod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::ResourceExt;
use storm_shared::status::{ConditionType, Reason};
use storm_shared::types::Condition;
use storm_shared::types::podset::PodSet;
use storm_shared::types::roleset::{RoleSet, RoleSetStatus, RoleStatus};

/// Computes the status of `roleset` from the Pods it owns, keeping the condition's timestamps
/// from the stored status when nothing about the condition changed.
pub fn compute_status(
    roleset: &RoleSet,
    owned: &[&CachedPod],
    podsets: &[&PodSet],
    now: Timestamp,
) -> RoleSetStatus {
    // Whole seconds: what the API server would keep anyway, so a stored time compares equal.
    let now = now.round(Unit::Second).unwrap_or(now);
    let live: Vec<&CachedPod> = owned
        .iter()
        .copied()
        .filter(|p| !is_terminating(p))
        .collect();

    let slots = super::plan::assign_slots(roleset, owned);
    let mut roles = Vec::new();
    let mut desired_total = 0;
    let mut ready_desired_total = 0;
    let mut lagging = Vec::new();
    for role in unique_roles(roleset) {
        let desired = desired_replicas(role);
        if super::groups::is_group(role) {
            let (status, ready_in_slots) = super::groups::group_role_status(roleset, role, podsets);
            ready_desired_total += ready_in_slots;
            if ready_in_slots < desired {
                lagging.push(format!("{}: {ready_in_slots}/{desired} groups", role.name));
            }
            desired_total += desired;
            roles.push(status);
            continue;
        }
        let mut existing = 0;
        let mut ready = 0;
        let mut ready_in_slots = 0;
        let mut updated = 0;
        let mut updated_ready = 0;
        let hash = role_template_hash(role);
        for pod in &live {
            let Some((_, index)) = slots
                .get(&pod.name_any())
                .filter(|(r, _)| *r == role.name)
                .cloned()
            else {
                continue;
            };
            existing += 1;
            let current = !is_outdated(*pod, &hash);
            if current {
                updated += 1;
            }
            if is_ready(pod) {
                ready += 1;
                if current {
                    updated_ready += 1;
                }
                if index < desired {
                    ready_in_slots += 1;
                }
            }
        }
        ready_desired_total += ready_in_slots;
        if ready_in_slots < desired {
            lagging.push(format!("{}: {ready_in_slots}/{desired}", role.name));
        }
        desired_total += desired;
        roles.push(RoleStatus {
            name: role.name.clone(),
            replicas: existing,
            ready_replicas: ready,
            not_ready_replicas: existing - ready,
            // Made from the role's current template (or updated in place to it).
            updated_replicas: updated,
            updated_ready_replicas: updated_ready,
        });
    }
    let ready_total: i32 = roles.iter().map(|r| r.ready_replicas).sum();
    let all_ready = lagging.is_empty();
    let message = if all_ready {
        format!("{ready_desired_total}/{desired_total} Pods ready")
    } else {
        format!(
            "{ready_desired_total}/{desired_total} Pods ready; waiting for {}",
            lagging.join(", ")
        )
    };
    let previous = roleset.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Ready.as_str())
    });
    let ready = ready_condition(all_ready, message, previous, now);

    RoleSetStatus {
        replicas: desired_total,
        ready_replicas: ready_total,
        roles,
        conditions: vec![ready],
        observed_generation: roleset.metadata.generation,
    }
}

fn ready_condition(
    all_ready: bool,
    message: String,
    previous: Option<&Condition>,
    now: Timestamp,
) -> Condition {
    let status = if all_ready { "True" } else { "False" };
    let reason = if all_ready {
        Reason::AllPodsReady
    } else {
        Reason::PodsNotReady
    }
    .as_str();
    let same_status = previous.is_some_and(|p| p.status == status);
    let unchanged = same_status
        && previous.is_some_and(|p| {
            p.reason.as_deref() == Some(reason) && p.message.as_deref() == Some(message.as_str())
        });
    let now_time = || Some(Time(now));
    Condition {
        type_: ConditionType::Ready.as_str().to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_update_time: if unchanged {
            previous
                .and_then(|p| p.last_update_time.clone())
                .or_else(now_time)
        } else {
            now_time()
        },
        last_transition_time: if same_status {
            previous
                .and_then(|p| p.last_transition_time.clone())
                .or_else(now_time)
        } else {
            now_time()
        },
        last_update_micro_time: None,
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
