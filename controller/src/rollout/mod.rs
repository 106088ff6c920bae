//! The rollout state machine: a pure function from (spec, status, observed world, now) to a plan.
//!
//! No I/O and no clock here: `stormservice.rs` observes, calls [`decide`], and applies the plan.
//! Deciding again on the status it returned, with the same observation, returns the same plan, so a
//! controller restart at any point resumes at the same step.

mod bluegreen;
mod canary;
mod controls;
pub mod gates;
pub mod health;
pub mod plan;
pub mod revision;
mod rolling;
mod settings;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
pub use plan::{Input, Note, Observed, ObservedPod, ObservedRoleSet, Plan};
use plan::{cond, reason, set_condition};
use std::collections::BTreeMap;
use std::time::Duration;
use storm_shared::types::stormservice::{
    BlueGreenStatus, BlueGreenStrategy, CanaryStatus, RolloutPhase, RolloutStatus,
    RolloutStrategyType, StormServiceStatus,
};

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

/// Working state of one decision.
pub(crate) struct Machine<'a> {
    pub input: &'a Input<'a>,
    pub replicas: i32,
    pub update: String,
    pub stable: Option<String>,
    pub status: StormServiceStatus,
    pub rs: RolloutStatus,
    pub scale: BTreeMap<String, i32>,
    pub services: Vec<(String, String)>,
    pub weight: i32,
    pub status_weight: Option<i32>,
    pub notes: Vec<plan::Note>,
    pub remove: Vec<String>,
    pub requeue: Option<Duration>,
    pub rollback: Option<String>,
    pub now: Timestamp,
}

impl<'a> Machine<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        let status = input.status.cloned().unwrap_or_default();
        let rs = status.rollout_status.clone().unwrap_or_default();
        Self {
            input,
            replicas: input.spec.replicas.unwrap_or(1).max(0),
            update: revision::of_template(&input.spec.template),
            stable: status.current_revision.clone(),
            status,
            rs,
            scale: BTreeMap::new(),
            services: Vec::new(),
            weight: 0,
            status_weight: None,
            notes: Vec::new(),
            remove: Vec::new(),
            requeue: None,
            rollback: None,
            now: input.now,
        }
    }

    pub fn note(&mut self, warning: bool, reason: &str, message: impl Into<String>) {
        self.notes.push(plan::Note {
            warning,
            reason: reason.into(),
            message: message.into(),
        });
    }

    pub fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    pub fn set_phase(&mut self, phase: RolloutPhase, message: impl Into<String>) {
        self.rs.phase = Some(phase);
        self.rs.message = Some(message.into());
    }

    pub fn cond(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        set_condition(
            &mut self.rs.conditions,
            type_,
            status,
            reason,
            message,
            self.now,
        );
    }

    pub fn phase(&self) -> Option<RolloutPhase> {
        self.rs.phase
    }

    pub fn since(&self, t: &Option<Time>) -> SignedDuration {
        t.as_ref()
            .map_or(SignedDuration::ZERO, |t| self.now.duration_since(t.0))
    }

    /// Whether a canary traffic router (nginx, Istio, SMI, Gateway API) is configured.
    pub fn has_router(&self) -> bool {
        self.input
            .spec
            .rollout_strategy
            .as_ref()
            .filter(|s| s.type_ == RolloutStrategyType::Canary)
            .and_then(|s| s.canary.as_ref())
            .is_some_and(|c| c.traffic_routing.is_some())
    }

    /// Whether the rollout strategy is blue-green.
    pub fn blue_green(&self) -> Option<&'a BlueGreenStrategy> {
        self.input
            .spec
            .rollout_strategy
            .as_ref()
            .filter(|s| s.type_ == RolloutStrategyType::BlueGreen)
            .and_then(|s| s.blue_green.as_ref())
    }

    /// Pins the rollout's Services: stable to the stable revision, canary (or preview) to `canary_rev`.
    pub fn pin_services(&mut self, stable_rev: &str, canary_rev: &str) {
        let Some(strategy) = &self.input.spec.rollout_strategy else {
            return;
        };
        if let Some(c) = &strategy.canary {
            if let Some(s) = &c.stable_service {
                self.services.push((s.clone(), stable_rev.to_string()));
            }
            if let Some(s) = &c.canary_service {
                self.services.push((s.clone(), canary_rev.to_string()));
            }
        }
        if let Some(bg) = &strategy.blue_green {
            self.services
                .push((bg.active_service.clone(), stable_rev.to_string()));
            self.services
                .push((bg.preview_service.clone(), canary_rev.to_string()));
        }
    }

    /// Starts a rollout when the template moved to a revision that is not being rolled out yet.
    fn start_if_new(&mut self, stable: &str) {
        let previous = self.input.status.and_then(|s| s.update_revision.as_deref());
        if previous == Some(self.update.as_str()) && self.rs.phase.is_some() {
            return;
        }
        self.rs.current_step_index = Some(0);
        self.rs.current_step_hash = None;
        self.rs.pause_start_time = None;
        self.rs.approved_step = None;
        self.rs.step_start_time = Some(Time(self.now));
        let update = self.update.clone();
        gates::keep_revision(self, &update);
        if self.blue_green().is_some() {
            self.rs.current_step_index = None;
            self.rs.blue_green_status = Some(BlueGreenStatus {
                active_selector: Some(stable.to_string()),
                preview_selector: Some(update),
                scale_down_delay_start_time: None,
                preview_expose_time: None,
            });
        }
        let msg = format!("rolling out revision {} (stable {stable})", self.update);
        self.set_phase(RolloutPhase::Progressing, msg.clone());
        self.cond(cond::PROGRESSING, true, reason::STARTED, &msg);
        self.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
        self.cond(cond::DEGRADED, false, reason::NOT_DEGRADED, "no failure");
        self.status_weight = Some(0);
        self.note(false, reason::STARTED, msg);
    }

    fn finish(mut self) -> Plan {
        let obs = self.input.observed;
        let name = self.input.name;
        let has_router = self.has_router();
        let blue_green = self.blue_green().is_some();
        let mut st = self.status;
        st.observed_generation = self.input.generation;
        st.update_revision = Some(self.update.clone());
        st.current_revision = self.stable.clone();
        st.replicas = i32::try_from(obs.rolesets.len()).unwrap_or(i32::MAX);
        st.ready_replicas = obs
            .rolesets
            .iter()
            .filter(|r| r.ready)
            .count()
            .try_into()
            .unwrap_or(i32::MAX);
        st.not_ready_replicas = Some(st.replicas - st.ready_replicas);
        st.current_replicas = self.stable.as_deref().map(|s| obs.existing(s));
        st.updated_replicas = Some(obs.existing(&self.update));
        st.updated_ready_replicas = Some(obs.ready(&self.update));
        st.scaling_target_selector = Some(format!("{}={name}", storm_shared::keys::LABEL_NAME));
        let ready = st.ready_replicas >= self.replicas;
        let (r, m) = if ready {
            (
                "AllRoleSetsReady",
                format!("{} of {} RoleSets ready", st.ready_replicas, self.replicas),
            )
        } else {
            (
                "RoleSetsNotReady",
                format!("{} of {} RoleSets ready", st.ready_replicas, self.replicas),
            )
        };
        set_condition(&mut st.conditions, "Ready", ready, r, &m, self.now);
        self.rs.router_weight = if has_router { obs.router_weight } else { None };
        if let Some(stable) = self.stable.as_ref().filter(|_| !blue_green) {
            let weight = self.status_weight.unwrap_or_else(|| {
                self.rs
                    .canary_status
                    .as_ref()
                    .map_or(0, |c| c.current_weight)
            });
            let in_rollout = *stable != self.update;
            let previous_canary = self
                .rs
                .canary_status
                .as_ref()
                .and_then(|c| c.canary_rs.clone());
            self.rs.canary_status = Some(CanaryStatus {
                current_weight: weight,
                stable_rs: Some(format!("{name}-{stable}")),
                canary_rs: if in_rollout {
                    Some(format!("{name}-{}", self.update))
                } else {
                    previous_canary
                },
            });
        }
        st.rollout_status = Some(self.rs);
        Plan {
            scale: self.scale,
            services: self.services,
            weight: self.weight,
            status: st,
            notes: self.notes,
            remove_annotations: self.remove,
            requeue_after: self.requeue,
            rollback: self.rollback,
        }
    }
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
        m.cond(cond::PROGRESSING, false, reason::HEALTHY, &msg);
        m.note(false, reason::HEALTHY, msg);
    } else {
        let msg = format!(
            "creating revision {update}: {ready} of {} RoleSets ready",
            m.replicas
        );
        m.set_phase(RolloutPhase::Progressing, msg.clone());
        m.cond(cond::PROGRESSING, true, reason::CREATING, &msg);
    }
}

/// Blue-green: the revisions other than `stable` keep their RoleSets until `scaleDownDelaySeconds`
/// after the promotion, for a quick switch back.
fn keep_old_for_scale_down_delay(m: &mut Machine, stable: &str) {
    let Some(bg) = m.blue_green() else {
        return;
    };
    let Some(start) =
        m.rs.blue_green_status
            .as_ref()
            .and_then(|b| b.scale_down_delay_start_time.clone())
    else {
        return;
    };
    let delay = SignedDuration::from_secs(
        bg.scale_down_delay_seconds
            .map_or(
                storm_shared::defaults::DEFAULT_SCALE_DOWN_DELAY_SECONDS,
                i64::from,
            )
            .max(0),
    );
    let left = delay - m.now.duration_since(start.0);
    if left <= SignedDuration::ZERO {
        return;
    }
    let obs = m.input.observed;
    for rev in obs.revisions().into_iter().filter(|r| r != stable) {
        m.scale.insert(rev.clone(), obs.existing(&rev));
    }
    m.requeue_in(Duration::try_from(left).unwrap_or_default());
}

fn at_rest(m: &mut Machine, stable: &str, controls: controls::Controls) {
    m.scale.insert(stable.to_string(), m.replicas);
    keep_old_for_scale_down_delay(m, stable);
    // A router still sending traffic away from stable (a template reverted mid-rollout): the
    // other revisions keep their RoleSets until it reports 0.
    if m.has_router() && m.input.observed.router_weight.is_some_and(|w| w != 0) {
        let obs = m.input.observed;
        for rev in obs.revisions().into_iter().filter(|r| r != stable) {
            m.scale.insert(rev.clone(), obs.existing(&rev));
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
            m.cond(cond::PROGRESSING, false, reason::REVERTED, &msg);
            m.cond(cond::PAUSED, false, reason::NOT_PAUSED, "not paused");
            m.cond(cond::DEGRADED, false, reason::NOT_DEGRADED, "no failure");
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
            m.note(false, reason::REVERTED, msg);
        }
        None => m.set_phase(
            RolloutPhase::Healthy,
            format!("revision {stable} is serving"),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
