//! The working state of one decision: what the strategies read and write while deciding, and how
//! it becomes a [`Plan`].

use super::gates;
use super::plan::{self, Input, Plan, set_condition};
use super::revision;
use super::settings;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;
use storm_shared::status::{ConditionType as Cond, Reason};
use storm_shared::types::stormservice::{
    BlueGreenStatus, BlueGreenStrategy, CanaryStatus, RoleSetTemplateSpec, RolloutPhase,
    RolloutStatus, RolloutStrategyType, StormServiceStatus,
};

/// Look again this often even when nothing happens (pauses requeue at their exact end).
pub const RESYNC: Duration = Duration::from_secs(300);

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
    pub rollback: Option<Reason>,
    pub retemplate: Vec<String>,
    pub now: Timestamp,
}

impl<'a> Machine<'a> {
    pub(super) fn new(input: &'a Input<'a>) -> Self {
        let status = input.status.cloned().unwrap_or_default();
        let rs = status.rollout_status.clone().unwrap_or_default();
        Self {
            input,
            replicas: input.spec.replicas.unwrap_or(1).max(0),
            update: input.update.to_string(),
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
            retemplate: Vec::new(),
            now: input.now,
        }
    }

    pub fn note(&mut self, warning: bool, reason: Reason, message: impl Into<String>) {
        self.notes.push(plan::Note {
            warning,
            reason,
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

    pub fn cond(&mut self, type_: Cond, status: bool, reason: Reason, message: &str) {
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

    /// The canary strategy, when the rollout strategy is a canary.
    pub fn canary(&self) -> Option<&'a storm_shared::types::stormservice::CanaryStrategy> {
        self.input
            .spec
            .rollout_strategy
            .as_ref()
            .filter(|s| s.type_ == RolloutStrategyType::Canary)
            .and_then(|s| s.canary.as_ref())
    }

    /// Whether a canary traffic router (nginx, Istio, SMI, Gateway API) is configured.
    pub fn has_router(&self) -> bool {
        self.canary().is_some_and(|c| c.traffic_routing.is_some())
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
    pub(super) fn start_if_new(&mut self, stable: &str) {
        let previous = self.input.status.and_then(|s| s.update_revision.as_deref());
        if previous == Some(self.update.as_str()) && self.rs.phase.is_some() {
            return;
        }
        self.rs.current_step_index = Some(0);
        self.rs.current_step_hash = None;
        self.rs.pause_start_time = None;
        self.rs.approved_step = None;
        self.rs.promote_full = None;
        // A new rollout ends every drain: its plan decides what stays.
        self.rs.scale_downs.clear();
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
                promoting: None,
            });
        }
        let msg = format!("rolling out revision {} (stable {stable})", self.update);
        self.set_phase(RolloutPhase::Progressing, msg.clone());
        self.cond(Cond::Progressing, true, Reason::Started, &msg);
        self.cond(Cond::Paused, false, Reason::NotPaused, "not paused");
        self.cond(Cond::Degraded, false, Reason::NotDegraded, "no failure");
        self.status_weight = Some(0);
        self.note(false, Reason::Started, msg);
    }

    /// The last word on capacity, whatever the strategy planned: ready RoleSets go only as far as
    /// `replicas − maxUnavailable` allows, counted over every revision (a Deployment's rule across
    /// its ReplicaSets). A revision planned below its ready RoleSets keeps as many of them as the
    /// others cannot make up for: a canary the template moved on from mid-rollout, or reverted
    /// away from, may be what serves until stable is back.
    fn keep_availability(&mut self) {
        let obs = self.input.observed;
        let (_, unavailable) = settings::budgets(self.input.spec, self.canary(), self.replicas);
        // RoleSets being retemplated count as the update revision's (roleset_changes).
        let ready_of = |rev: &str| -> i32 {
            let n = obs
                .rolesets
                .iter()
                .filter(|r| r.ready && r.revision == rev && !self.retemplate.contains(&r.name))
                .count();
            i32::try_from(n).unwrap_or(i32::MAX)
        };
        let revisions = obs.revisions();
        let ready_total: i32 = revisions.iter().map(|r| ready_of(r)).sum();
        let floor = ready_total.min(self.replicas - unavailable);
        let kept: i32 = revisions
            .iter()
            .map(|r| ready_of(r).min(self.scale.get(r).copied().unwrap_or(0)))
            .sum();
        let mut deficit = floor - kept;
        for rev in revisions {
            if deficit <= 0 {
                break;
            }
            let want = self.scale.get(&rev).copied().unwrap_or(0);
            let extra = (ready_of(&rev) - want).min(deficit);
            if extra > 0 {
                self.scale.insert(rev, want + extra);
                deficit -= extra;
            }
        }
    }

    /// The budget's resource, with `rolloutStrategy.capacityBudget`.
    fn budget(&self) -> Option<&'a storm_shared::types::stormservice::CapacityBudget> {
        self.input.spec.capacity_budget()
    }

    /// `canary.dynamicStableScale` with a traffic router.
    pub fn dynamic_stable_scale(&self) -> bool {
        self.canary()
            .is_some_and(storm_shared::types::stormservice::CanaryStrategy::dynamic_stable_scale)
    }

    /// The last word on growth, with a capacity budget: whatever the strategy planned, new
    /// RoleSets are made only while what every RoleSet holds (those being deleted too: their Pods
    /// hold the resource until they are gone) stays within steady state plus `maxExtra`. Stable
    /// grows first (an abort, a rollback), then the others. Deletions are never held back, so a
    /// plan that waits here frees room for the next decision. Writes `rolloutStatus.capacity`.
    fn keep_within_budget(&mut self) {
        let Some(budget) = self.budget() else {
            self.rs.capacity = None;
            return;
        };
        let obs = self.input.observed;
        let update_holds =
            storm_shared::capacity::roleset_use(self.input.spec.template.roles(), &budget.resource)
                .unwrap_or(0);
        let holds = |rev: &str| -> i64 {
            obs.rolesets
                .iter()
                .find(|r| r.revision == rev)
                .map_or(update_holds, |r| r.holds)
        };
        let stable = self.stable.clone().unwrap_or_else(|| self.update.clone());
        let steady = i64::from(self.replicas).saturating_mul(holds(&stable));
        let limit = steady.saturating_add(budget.max_extra);
        let in_use: i64 =
            obs.rolesets.iter().map(|r| r.holds).sum::<i64>() + obs.held_by_terminating;
        let mut room = limit - in_use;
        let mut growing: Vec<String> = self
            .scale
            .iter()
            .filter(|(rev, want)| **want > obs.existing(rev))
            .map(|(rev, _)| rev.clone())
            .collect();
        growing.sort_by_key(|rev| *rev != stable);
        for rev in growing {
            let existing = obs.existing(&rev);
            let want = self.scale.get(&rev).copied().unwrap_or(0);
            let each = holds(&rev);
            let fits = if each <= 0 {
                want - existing
            } else {
                i32::try_from((room.max(0) / each).min(i64::from(want - existing))).unwrap_or(0)
            };
            room -= i64::from(fits) * each.max(0);
            if fits < want - existing {
                self.scale.insert(rev.clone(), existing + fits);
            }
        }
        let mut revisions: Vec<storm_shared::types::stormservice::RevisionCapacity> = obs
            .revisions()
            .into_iter()
            .map(|rev| {
                let n = obs.existing(&rev);
                let each = holds(&rev);
                storm_shared::types::stormservice::RevisionCapacity {
                    in_use: i64::from(n) * each,
                    per_role_set: each,
                    role_sets: n,
                    revision: rev,
                }
            })
            .collect();
        revisions.sort_by_key(|r| r.revision != stable);
        self.rs.capacity = Some(storm_shared::types::stormservice::CapacityStatus {
            resource: budget.resource.clone(),
            steady_state: steady,
            in_use,
            left: limit - in_use,
            revisions,
        });
    }

    pub(super) fn finish(mut self) -> Plan {
        self.keep_availability();
        self.keep_within_budget();
        let obs = self.input.observed;
        let name = self.input.name;
        let has_router = self.has_router();
        let routed = self.router_services();
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
        st.role_statuses = role_statuses(obs);
        let ready = st.ready_replicas >= self.replicas;
        let (r, m) = if ready {
            (
                Reason::AllRoleSetsReady,
                format!("{} of {} RoleSets ready", st.ready_replicas, self.replicas),
            )
        } else {
            (
                Reason::RoleSetsNotReady,
                format!("{} of {} RoleSets ready", st.ready_replicas, self.replicas),
            )
        };
        set_condition(&mut st.conditions, Cond::Ready, ready, r, &m, self.now);
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
        // Router errors matter mid-rollout; at rest the user's objects may not exist yet.
        let input_stable = self
            .input
            .status
            .and_then(|s| s.current_revision.as_deref());
        let mid_rollout = input_stable.is_some_and(|s| s != self.update);
        st.rollout_status = Some(self.rs);
        let mut notes = Vec::new();
        if let Some(e) = obs.router_error.as_ref().filter(|_| routed && mid_rollout) {
            notes.push(plan::Note {
                warning: true,
                reason: Reason::TrafficRouterError,
                message: format!("reading the traffic routers: {e}"),
            });
        }
        notes.extend(self.input.measured.notes.iter().cloned());
        notes.append(&mut self.notes);
        // The routers are told the weight after this decision: read it back soon.
        let router_moving = routed && mid_rollout && obs.router_weight != Some(self.weight);
        let requeue = [
            self.requeue,
            self.input.measured.next_due,
            router_moving.then_some(Duration::from_secs(1)),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(RESYNC, |d| d.clamp(Duration::from_secs(1), RESYNC));
        let routers = routed.then(|| plan::RouterWrite {
            stable_revision: st
                .current_revision
                .clone()
                .unwrap_or_else(|| self.update.clone()),
            canary_revision: self.update.clone(),
            report_errors: mid_rollout,
        });
        let resize = resize(
            obs,
            &self.scale,
            &self.retemplate,
            &self.input.spec.template,
        );
        let (create, delete) = roleset_changes(obs, &self.scale, &self.retemplate, &self.update);
        Plan {
            scale: self.scale,
            resize,
            create,
            delete,
            retemplate: self.retemplate,
            services: self.services,
            weight: self.weight,
            routers,
            status: st,
            notes,
            remove_annotations: self.remove,
            requeue_after: requeue,
            rollback: self.rollback,
        }
    }

    /// Whether the canary is routed: a canary strategy with traffic routers and both Services.
    fn router_services(&self) -> bool {
        self.canary().is_some_and(|c| {
            c.traffic_routing.is_some() && c.stable_service.is_some() && c.canary_service.is_some()
        })
    }
}

/// The RoleSets that stay (their index is below their revision's planned count) and whose roles'
/// `replicas` differ from the template's: scaling a role resizes every revision in place.
fn resize(
    obs: &plan::Observed,
    scale: &BTreeMap<String, i32>,
    retemplate: &[String],
    template: &RoleSetTemplateSpec,
) -> BTreeMap<String, BTreeMap<String, i32>> {
    let wanted = revision::role_replicas(template);
    let mut out = BTreeMap::new();
    for rs in &obs.rolesets {
        // Retemplated RoleSets take the whole template, replicas included.
        if retemplate.contains(&rs.name) {
            continue;
        }
        let keeps = scale.get(&rs.revision).copied().unwrap_or(0);
        if rs.index.is_none_or(|i| i >= keeps) {
            continue;
        }
        let changes: BTreeMap<String, i32> = wanted
            .iter()
            .filter(|(role, want)| rs.roles.get(*role).is_some_and(|have| have != *want))
            .map(|(role, want)| (role.clone(), *want))
            .collect();
        if !changes.is_empty() {
            out.insert(rs.name.clone(), changes);
        }
    }
    out
}

/// Pod counts per role summed over the StormService's RoleSets, sorted by role name (as AIBrix
/// writes `status.roleStatuses`).
fn role_statuses(obs: &plan::Observed) -> Vec<storm_shared::types::roleset::RoleStatus> {
    let mut by_role: BTreeMap<String, storm_shared::types::roleset::RoleStatus> = BTreeMap::new();
    for r in obs.rolesets.iter().flat_map(|rs| &rs.role_status) {
        let sum = by_role.entry(r.name.clone()).or_insert_with(|| {
            storm_shared::types::roleset::RoleStatus {
                name: r.name.clone(),
                ..Default::default()
            }
        });
        sum.replicas += r.replicas;
        sum.ready_replicas += r.ready_replicas;
        sum.not_ready_replicas += r.not_ready_replicas;
        sum.updated_replicas += r.updated_replicas;
        sum.updated_ready_replicas += r.updated_ready_replicas;
    }
    by_role.into_values().collect()
}

/// The RoleSets to create and delete so that each revision has the count `scale` asks for
/// (revisions it does not name go to zero). RoleSets being retemplated count as `update`'s. Extra
/// RoleSets go unready first, then from the highest slot; new ones take the lowest free slots.
fn roleset_changes(
    obs: &plan::Observed,
    scale: &BTreeMap<String, i32>,
    retemplate: &[String],
    update: &str,
) -> (Vec<(String, i32)>, Vec<String>) {
    let revision_of = |r: &plan::ObservedRoleSet| {
        if retemplate.contains(&r.name) {
            update.to_string()
        } else {
            r.revision.clone()
        }
    };
    let revisions: std::collections::BTreeSet<String> = obs
        .rolesets
        .iter()
        .map(revision_of)
        .chain(scale.keys().cloned())
        .collect();
    let mut create = Vec::new();
    let mut delete = Vec::new();
    for rev in revisions {
        let want = usize::try_from(scale.get(&rev).copied().unwrap_or(0).max(0)).unwrap_or(0);
        let mut members: Vec<&plan::ObservedRoleSet> = obs
            .rolesets
            .iter()
            .filter(|r| revision_of(r) == rev)
            .collect();
        // A RoleSet without a slot, or two in one slot, is extra whatever the count.
        let mut seen = std::collections::BTreeSet::new();
        let (mut slotted, unslotted): (Vec<_>, Vec<_>) = members
            .drain(..)
            .partition(|r| r.index.is_some_and(|i| seen.insert(i)));
        delete.extend(unslotted.iter().map(|r| r.name.clone()));
        if slotted.len() > want {
            // Keep the ready ones, then the lowest slots.
            slotted.sort_by_key(|r| (!r.ready, r.index));
            delete.extend(slotted.drain(want..).map(|r| r.name.clone()));
        }
        let used: std::collections::BTreeSet<i32> =
            slotted.iter().filter_map(|r| r.index).collect();
        let missing = want.saturating_sub(slotted.len());
        create.extend(
            (0..)
                .filter(|i| !used.contains(i))
                .take(missing)
                .map(|i| (rev.clone(), i)),
        );
    }
    (create, delete)
}
