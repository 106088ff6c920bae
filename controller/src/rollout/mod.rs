//! The rollout state machine: a pure function from (spec, status, observed world, now) to a plan.
//!
//! No I/O and no clock here: `stormservice.rs` observes, calls [`decide`], and applies the plan.
//! Deciding again on the status it returned, with the same observation, returns the same plan, so a
//! controller restart at any point resumes at the same step.

mod bluegreen;
mod canary;
mod controls;
mod drain;
mod dynamic;
pub mod gates;
pub mod health;
mod lifecycle;
mod machine;
pub mod plan;
pub mod revision;
mod rolling;
mod settings;

use machine::Machine;
pub use machine::RESYNC;
pub use plan::{Input, Measured, Note, Observed, ObservedPod, ObservedRoleSet, Plan, RouterWrite};
use std::time::Duration;
use storm_shared::status::{ConditionType as Cond, Reason};
use storm_shared::types::stormservice::{RolloutPhase, RolloutStrategyType};

/// Decides what to do for one StormService.
pub fn decide(input: &Input) -> Plan {
    let mut m = Machine::new(input);
    let controls = controls::take(&mut m);
    gates::drop_orphans(&mut m);
    if input.spec.paused == Some(true) {
        // `spec.paused` freezes everything as it is (AIBrix semantics).
        for rev in input.observed.revisions() {
            m.scale.insert(rev.clone(), input.observed.existing(&rev));
        }
        controls.ignore_all(&mut m, "spec.paused is true");
        // The routers keep the weight they have.
        let current = input
            .observed
            .router_weight
            .or_else(|| m.rs.canary_status.as_ref().map(|c| c.current_weight))
            .unwrap_or(0);
        m.weight = current;
        return m.finish();
    }
    match m.stable.clone() {
        None => first_deployment(&mut m, controls),
        Some(stable) if stable == m.update => at_rest(&mut m, &stable, controls),
        Some(stable) => {
            m.start_if_new(&stable);
            let strategy = input.spec.rollout_strategy.as_ref();
            match strategy.map(|s| (s.type_, s)) {
                None => rolling::run(&mut m, &stable, controls),
                Some((RolloutStrategyType::Canary, s)) => match &s.canary {
                    Some(c) => canary::run(&mut m, &stable, c, controls),
                    None => rolling::run(&mut m, &stable, controls),
                },
                Some((RolloutStrategyType::BlueGreen, s)) => match &s.blue_green {
                    Some(bg) => bluegreen::run(&mut m, &stable, bg, controls),
                    None => rolling::run(&mut m, &stable, controls),
                },
            }
        }
    }
    m.finish()
}

fn first_deployment(m: &mut Machine, controls: controls::Controls) {
    let update = m.update.clone();
    m.scale.insert(update.clone(), m.replicas);
    m.pin_services(&update, &update);
    controls.ignore_all(m, "no rollout is in progress (first deployment)");
    let ready = m.input.observed.ready(&update);
    if ready >= m.replicas && m.input.observed.existing(&update) == m.replicas {
        m.stable = Some(update.clone());
        let msg = format!(
            "revision {update} is serving with all {} RoleSets ready",
            m.replicas
        );
        m.set_phase(RolloutPhase::Healthy, msg.clone());
        m.cond(Cond::Progressing, false, Reason::AllRoleSetsReady, &msg);
        m.note(false, Reason::AllRoleSetsReady, msg);
    } else {
        let msg = format!(
            "creating revision {update}: {ready} of {} RoleSets ready",
            m.replicas
        );
        m.set_phase(RolloutPhase::Progressing, msg.clone());
        m.cond(Cond::Progressing, true, Reason::Creating, &msg);
    }
}

fn at_rest(m: &mut Machine, stable: &str, controls: controls::Controls) {
    m.scale.insert(stable.to_string(), m.replicas);
    bluegreen::keep_old_for_scale_down_delay(m, stable);
    drain::keep_due(m, stable);
    // A router still sending traffic away from stable (a template reverted mid-rollout): the
    // other revisions keep their RoleSets until it reports 0.
    if m.has_router() && m.input.observed.router_weight.is_some_and(|w| w != 0) {
        let obs = m.input.observed;
        for rev in obs.revisions().into_iter().filter(|r| r != stable) {
            m.scale.insert(rev.clone(), obs.existing(&rev));
        }
        // A stable shrunk by `dynamicStableScale` takes the traffic back as its RoleSets are ready.
        if m.dynamic_stable_scale() {
            let current = obs.router_weight.unwrap_or(0);
            m.weight = dynamic::abort_weight(current, obs.ready(stable), m.replicas);
        }
        m.requeue_in(Duration::from_secs(1));
    }
    m.pin_services(stable, stable);
    controls.ignore_all(m, "no rollout is in progress");
    match m.phase() {
        Some(
            RolloutPhase::Progressing
            | RolloutPhase::Paused
            | RolloutPhase::Degraded
            | RolloutPhase::Aborted,
        ) => {
            // The template went back to the stable revision: that is a rollback too.
            let msg = format!("template is back at the stable revision {stable}");
            m.set_phase(RolloutPhase::Healthy, msg.clone());
            m.cond(Cond::Progressing, false, Reason::Reverted, &msg);
            m.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
            m.cond(Cond::Degraded, false, Reason::NotDegraded, "no failure");
            m.rs.current_step_index = None;
            m.rs.current_step_hash = None;
            m.rs.pause_start_time = None;
            m.rs.step_start_time = None;
            m.rs.approved_step = None;
            m.status_weight = Some(0);
            gates::stop_all(m);
            if let Some(b) = m.rs.blue_green_status.as_mut() {
                b.active_selector = Some(stable.to_string());
                b.preview_selector = Some(stable.to_string());
                b.scale_down_delay_start_time = None;
            }
            m.note(false, Reason::Reverted, msg);
        }
        None => m.set_phase(
            RolloutPhase::Healthy,
            format!("revision {stable} is serving"),
        ),
        _ => {}
    }
    if m.weight != 0 {
        m.status_weight = Some(m.weight);
    }
}

#[cfg(test)]
mod tests;
