//! Updates without a `rolloutStrategy`: a rolling update replaces RoleSets within the surge and
//! unavailability budgets, like a Deployment; `updateStrategy.type: InPlaceUpdate` (AIBrix's)
//! keeps the RoleSets and gives them the new template, and the RoleSet controller replaces (or
//! patches) the changed roles' Pods within each role's `maxUnavailable`.

use super::Machine;
use super::controls::Controls;
use super::settings::budgets;
use storm_shared::status::{ConditionType as Cond, Reason};
use storm_shared::types::stormservice::{RolloutPhase, UpdateStrategyType};

pub(crate) fn run(m: &mut Machine, stable: &str, controls: Controls) {
    controls.ignore_all(
        m,
        "manual controls apply to rollouts with a rolloutStrategy",
    );
    let in_place = m.input.spec.update_strategy.as_ref().and_then(|u| u.type_)
        == Some(UpdateStrategyType::InPlaceUpdate);
    if in_place {
        in_place_update(m, stable);
        return;
    }
    let obs = m.input.observed;
    let replicas = m.replicas;
    let update = m.update.clone();
    let (surge, unavailable) = budgets(m.input.spec, None, replicas);
    let min_available = replicas - unavailable;
    let new_existing = obs.existing(&update);
    let new_ready = obs.ready(&update);
    let olds: Vec<String> = obs
        .revisions()
        .into_iter()
        .filter(|r| *r != update)
        .collect();
    let old_existing: i32 = olds.iter().map(|r| obs.existing(r)).sum();
    let old_ready: i32 = olds.iter().map(|r| obs.ready(r)).sum();

    let new_target = replicas.min(new_existing.max(replicas + surge - old_existing));
    // Old RoleSets may go as long as enough RoleSets stay ready. Unready ones serve nobody and go
    // first, as a Deployment cleans up unhealthy old replicas.
    let mut removable = (old_ready + new_ready - min_available).max(0);
    for rev in &olds {
        let ready = obs.ready(rev);
        let remove_ready = ready.min(removable);
        removable -= remove_ready;
        m.scale.insert(rev.clone(), ready - remove_ready);
    }
    m.scale.insert(update.clone(), new_target);
    if new_ready >= replicas && old_existing == 0 {
        m.stable = Some(update.clone());
        let msg = format!("rolling update to {update} completed");
        m.set_phase(RolloutPhase::Completed, msg.clone());
        m.cond(Cond::Progressing, false, Reason::Completed, &msg);
        m.note(false, Reason::Completed, msg);
    } else {
        let msg = format!(
            "rolling update from {stable} to {update}: {new_ready} of {replicas} new RoleSets ready"
        );
        m.set_phase(RolloutPhase::Progressing, msg.clone());
        m.cond(Cond::Progressing, true, Reason::StepProgressing, &msg);
    }
}

/// `InPlaceUpdate`: RoleSets of another revision take the new template in place (same name, same
/// slot, same Pods where a role did not change); RoleSets are neither added nor removed for the
/// update. AIBrix gives every RoleSet the new template at once; here at most the StormService's
/// `maxUnavailable` RoleSets (at least one) are updating at a time, counting those of the new
/// template that are not Ready yet, so a pool of RoleSets never loses more than that many to the
/// update. Unready ones go first (they serve nobody). Complete once every RoleSet runs the new
/// template with all its Pods Ready and current.
fn in_place_update(m: &mut Machine, stable: &str) {
    let obs = m.input.observed;
    let update = m.update.clone();
    let replicas = m.replicas;
    let (_, unavailable) = budgets(m.input.spec, None, replicas);
    let updating = obs
        .rolesets
        .iter()
        .filter(|r| r.revision == update && !r.ready)
        .count();
    let budget = usize::try_from(unavailable.max(1))
        .unwrap_or(1)
        .saturating_sub(updating);
    let (unready, mut ready): (Vec<_>, Vec<_>) = obs
        .rolesets
        .iter()
        .filter(|r| r.revision != update)
        .partition(|r| !r.ready);
    // Unready ones cost nothing; of the ready ones, the highest slots first.
    ready.sort_by_key(|r| std::cmp::Reverse(r.index));
    m.retemplate = unready
        .into_iter()
        .chain(ready.into_iter().take(budget))
        .map(|r| r.name.clone())
        .collect();
    // The RoleSets not updated yet stay as they are (fewer if `replicas` went down); the update
    // revision holds the rest, retemplated ones included.
    let mut room = replicas;
    for rev in obs.revisions().into_iter().filter(|r| *r != update) {
        let stays = obs
            .rolesets
            .iter()
            .filter(|r| r.revision == rev && !m.retemplate.contains(&r.name))
            .count();
        let stays = i32::try_from(stays).unwrap_or(i32::MAX).min(room);
        room -= stays;
        m.scale.insert(rev, stays);
    }
    m.scale.insert(update.clone(), room);
    let ready = obs.ready(&update);
    let waiting = obs.rolesets.iter().any(|r| r.revision != update);
    if !waiting && ready >= replicas && obs.existing(&update) == replicas {
        m.stable = Some(update.clone());
        let msg = format!("in-place update to {update} completed");
        m.set_phase(RolloutPhase::Completed, msg.clone());
        m.cond(Cond::Progressing, false, Reason::Completed, &msg);
        m.note(false, Reason::Completed, msg);
    } else {
        let msg = format!(
            "updating in place from {stable} to {update}: {ready} of {replicas} RoleSets updated and ready"
        );
        m.set_phase(RolloutPhase::Progressing, msg.clone());
        m.cond(Cond::Progressing, true, Reason::StepProgressing, &msg);
    }
}
