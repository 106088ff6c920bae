//! Plain rolling updates (no `rolloutStrategy`): replace RoleSets within the surge and
//! unavailability budgets, like a Deployment.

use super::Machine;
use super::controls::Controls;
use super::settings::budgets;
use storm_shared::status::{ConditionType as Cond, Reason};
use storm_shared::types::stormservice::RolloutPhase;

pub(crate) fn run(m: &mut Machine, stable: &str, controls: Controls) {
    controls.ignore_all(
        m,
        "manual controls apply to rollouts with a rolloutStrategy",
    );
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
