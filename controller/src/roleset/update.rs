//! Pods whose role template changed: which are replaced, which are updated in place, and when.
//! Pure, like the rest of the plan.
//!
//! A Pod is *outdated* when its `role-template-hash` label differs from the hash of its role's
//! current template (a Pod without the label, made before the label existed, counts as current: it
//! cannot be told apart, and replacing every such Pod at once after an upgrade would be an outage).
//!
//! - **Budget.** Per role, at most `updateStrategy.maxUnavailable` Pods (default 1; a percentage of
//!   the role's replicas, rounded down, at least 1) are unavailable at once: Pods already missing or
//!   not Ready count first. `maxSurge` is not used: Pods have fixed names per slot, so a Pod is
//!   replaced by deleting it and creating it again once it is gone (AIBrix's default, surge 0).
//! - **In place.** With `updateStrategy.type: InPlaceIfPossible`, a Pod whose template differs
//!   from the current one only in its containers' images is patched (same name and UID; the kubelet
//!   restarts the changed containers). Anything else, or a Pod made before we recorded what it was
//!   made from, is replaced.
//! - **Order.** The RoleSet's `updateStrategy`: `Parallel` updates every role at once; `Sequential`
//!   (the default) one role at a time by `upgradeOrder` (then spec order), the next only once the
//!   previous is updated and Ready; `Interleave` moves every role in lockstep waves of its own
//!   step (`maxSurge + maxUnavailable`, at least 1, as AIBrix counts it): no role starts its wave
//!   `k + 1` until every role still updating has `k` waves updated and Ready.

use super::plan::{desired_replicas, is_ready, is_terminating, unique_roles};
use crate::cache::CachedPod;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use storm_shared::keys::AIBRIX_LABEL_ROLE_TEMPLATE_HASH;
use storm_shared::types::roleset::{RoleSet, RoleSetUpdateStrategyType, RoleSpec};
use storm_shared::units::scaled_value;

/// Annotation on our Pods: the hash of the role template they were made from, with the
/// containers' images left out. Equal on a Pod and the current template: only images changed.
pub const ANNOTATION_SHAPE_HASH: &str = "stormservice.aibrix.ai/template-shape-hash";

/// The role type that updates images in place.
pub const IN_PLACE_IF_POSSIBLE: &str = "InPlaceIfPossible";

fn hash10(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hash of a role's Pod template: 10 hex characters of its SHA-256 (AIBrix's
/// `role-template-hash` label and `ROLE_TEMPLATE_HASH`).
pub fn role_template_hash(role: &RoleSpec) -> String {
    hash10(&serde_json::to_vec(&role.template).unwrap_or_default())
}

/// The hash of a role's Pod template without its containers' images.
pub fn shape_hash(template: &PodTemplateSpec) -> String {
    let mut shape = template.clone();
    if let Some(spec) = shape.spec.as_mut() {
        for c in &mut spec.containers {
            c.image = None;
        }
    }
    hash10(&serde_json::to_vec(&shape).unwrap_or_default())
}

/// Whether a Pod (or PodSet) was made from another template of its role than `current_hash`.
/// Only one we made (it carries our template-shape annotation) can tell: a Pod made by AIBrix's controllers
/// carries AIBrix's hash, which no template of ours reproduces, so it counts as current until it
/// is adopted (the StormService controller stamps our hashes on it).
pub fn is_outdated<K: kube::Resource>(obj: &K, current_hash: &str) -> bool {
    obj.annotations().contains_key(ANNOTATION_SHAPE_HASH)
        && is_outdated_labels(obj.labels(), current_hash)
}

/// Whether an object with these labels was made from another role template than `current_hash`.
pub fn is_outdated_labels(labels: &BTreeMap<String, String>, current_hash: &str) -> bool {
    labels
        .get(AIBRIX_LABEL_ROLE_TEMPLATE_HASH)
        .is_some_and(|h| h != current_hash)
}

/// A Pod updated in place: its containers' new images, and the labels it then carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlace {
    /// The Pod's name.
    pub name: String,
    /// Its UID as observed (a precondition of the patch).
    pub uid: Option<String>,
    /// Container name → new image.
    pub images: BTreeMap<String, String>,
    /// The role's current template hash, for the `role-template-hash` label.
    pub hash: String,
    /// The role's revision labels of the RoleSet now (`role-revision`, `role-revision-name`).
    pub revision_labels: BTreeMap<String, String>,
}

/// What updating the outdated Pods means now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Updates {
    /// Outdated Pods to delete (they are recreated from the current template once gone).
    pub replace: Vec<(String, Option<String>)>,
    /// Outdated Pods to patch in place.
    pub in_place: Vec<InPlace>,
}

/// The most Pods of `role` that may be unavailable during an update.
pub fn max_unavailable(role: &RoleSpec) -> i32 {
    let desired = desired_replicas(role);
    let strategy = role.update_strategy.as_ref();
    let unavailable = strategy
        .and_then(|s| s.max_unavailable.as_ref())
        .and_then(|v| scaled_value(v, desired, false).ok());
    let surge = strategy
        .and_then(|s| s.max_surge.as_ref())
        .and_then(|v| scaled_value(v, desired, true).ok());
    match (unavailable, surge) {
        (Some(u), _) if u > 0 => u,
        // 0/0 (or unavailable 0) becomes 1, as a Deployment's fenceposts do; surge is not used.
        _ => 1,
    }
    .max(1)
    .min(desired.max(1))
}

/// The images of a template's containers, by container name.
fn images(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter_map(|c| Some((c.name.clone(), c.image.clone()?)))
        .collect()
}

/// Where a role is in an `Interleave` update.
struct Wave {
    /// Pods per wave: `maxSurge + maxUnavailable`, at least 1.
    step: usize,
    /// Slots holding a current Pod (Ready or not).
    updated: usize,
    /// Waves whose Pods are all current and Ready.
    finished: usize,
    /// Every slot holds a current, Ready Pod.
    done: bool,
}

fn interleave_wave(role: &RoleSpec, slots: &[(i32, &CachedPod)]) -> Wave {
    let hash = role_template_hash(role);
    let desired = usize::try_from(desired_replicas(role)).unwrap_or(0);
    let surge = role
        .update_strategy
        .as_ref()
        .and_then(|s| s.max_surge.as_ref())
        .and_then(|v| scaled_value(v, desired_replicas(role), true).ok())
        .unwrap_or(0);
    let step = usize::try_from(max_unavailable(role) + surge.max(0))
        .unwrap_or(1)
        .max(1);
    let current: Vec<&CachedPod> = slots
        .iter()
        .map(|(_, p)| *p)
        .filter(|p| !is_terminating(p) && !is_outdated(*p, &hash))
        .collect();
    let ready = current.iter().filter(|p| is_ready(p)).count();
    Wave {
        step,
        updated: current.len(),
        finished: ready / step,
        done: ready >= desired,
    }
}

/// Plans the update of `roleset`'s outdated Pods (those it owns, terminating ones included).
pub fn plan_updates(roleset: &RoleSet, owned: &[&CachedPod]) -> Updates {
    let mut roles: Vec<(usize, &RoleSpec)> =
        unique_roles(roleset).into_iter().enumerate().collect();
    roles.sort_by_key(|(i, r)| (r.upgrade_order.unwrap_or(i32::MAX), *i));
    let order = roleset.spec.update_strategy.as_ref();
    let sequential = !matches!(
        order,
        Some(RoleSetUpdateStrategyType::Parallel | RoleSetUpdateStrategyType::Interleave)
    );
    let interleave = matches!(order, Some(RoleSetUpdateStrategyType::Interleave));
    let assigned = super::plan::assign_slots(roleset, owned);
    let roles: Vec<&RoleSpec> = roles
        .into_iter()
        .map(|(_, r)| r)
        // A grouped role's replicas are PodSets, updated by `groups`.
        .filter(|r| !super::groups::is_group(r))
        .collect();
    let role_slots = |role: &RoleSpec| -> Vec<(i32, &CachedPod)> {
        let desired = desired_replicas(role);
        let mut slots: Vec<(i32, &CachedPod)> = owned
            .iter()
            .filter_map(|p| {
                let (r, i) = assigned.get(&p.name_any())?;
                (*r == role.name).then_some((*i, *p))
            })
            .filter(|(i, _)| *i < desired)
            .collect();
        slots.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        slots
    };
    // Interleave: the wave every role still updating has finished (updated and Ready).
    let wave = interleave.then(|| {
        roles
            .iter()
            .filter_map(|role| {
                let w = interleave_wave(role, &role_slots(role));
                (!w.done).then_some(w.finished)
            })
            .min()
            .unwrap_or(0)
    });
    let mut out = Updates::default();
    for role in roles {
        let hash = role_template_hash(role);
        let desired = desired_replicas(role);
        let slots = role_slots(role);
        let available = slots
            .iter()
            .filter(|(_, p)| !is_terminating(p) && is_ready(p))
            .count();
        let unavailable = usize::try_from(desired)
            .unwrap_or(0)
            .saturating_sub(available);
        let outdated: Vec<&CachedPod> = slots
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| !is_terminating(p) && is_outdated(*p, &hash))
            .collect();
        let done = outdated.is_empty() && unavailable == 0;
        let mut budget = usize::try_from(max_unavailable(role))
            .unwrap_or(1)
            .saturating_sub(unavailable);
        if let Some(wave) = wave {
            // Not past the end of the wave after the one every role has finished.
            let w = interleave_wave(role, &slots);
            let end = (wave + 1).saturating_mul(w.step);
            budget = budget.min(end.saturating_sub(w.updated));
        }
        // Unready outdated Pods serve nobody: they go first and use no budget of their own.
        let (unready, ready): (Vec<&CachedPod>, Vec<&CachedPod>) =
            outdated.into_iter().partition(|p| !is_ready(p));
        let in_place_ok = role
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            == Some(IN_PLACE_IF_POSSIBLE);
        let shape = shape_hash(&role.template);
        let wanted_images = images(&role.template);
        for pod in unready.into_iter().chain(ready) {
            if is_ready(pod) {
                if budget == 0 {
                    break;
                }
                budget -= 1;
            }
            let same_shape = pod
                .annotations()
                .get(ANNOTATION_SHAPE_HASH)
                .map(String::as_str)
                == Some(&shape);
            if in_place_ok && same_shape {
                out.in_place.push(InPlace {
                    name: pod.name_any(),
                    uid: pod.uid(),
                    images: wanted_images.clone(),
                    hash: hash.clone(),
                    revision_labels: super::plan::role_revision_labels(roleset, role),
                });
            } else {
                out.replace.push((pod.name_any(), pod.uid()));
            }
        }
        if sequential && !done {
            // The next role waits until this one is updated and Ready.
            break;
        }
    }
    out
}

#[cfg(test)]
#[path = "update_tests.rs"]
mod tests;
