//! Property tests: random controls, failures and time against the invariants of DESIGN.md §3.

use super::*;
use proptest::prelude::*;
use storm_shared::status::Reason;

/// Puts the canary of `s` behind an nginx router, with `dynamicStableScale` when `dynamic`.
fn route(s: &mut StormServiceSpec, dynamic: bool) {
    let canary = canary_of(s);
    canary.traffic_routing = Some(
        serde_json::from_value(serde_json::json!({"nginx": {"ingress": "i", "servicePort": 80}}))
            .expect("tr"),
    );
    if dynamic {
        canary.dynamic_stable_scale = Some(true);
    }
}

#[derive(Debug, Clone)]
enum Event {
    Tick,
    Wait(i64),
    Approve,
    Abort,
    Retry,
    Pause,
    Resume,
    Fail,
    Heal,
    /// The traffic router stops (or resumes) applying weights.
    RouterLag,
    /// A RoleSet (of any revision, chosen by position) is unready for the next decision: a lost
    /// node, a Pod restarting.
    Lose(usize),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Tick),
        2 => (1i64..400).prop_map(Event::Wait),
        2 => Just(Event::Approve),
        1 => Just(Event::Abort),
        1 => Just(Event::Retry),
        1 => Just(Event::Pause),
        1 => Just(Event::Resume),
        1 => Just(Event::Fail),
        1 => Just(Event::Heal),
        1 => Just(Event::RouterLag),
        2 => (0usize..16).prop_map(Event::Lose),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(
        events in prop::collection::vec(event(), 1..60),
        replicas in 1i32..7,
        router in any::<bool>(),
        dynamic in any::<bool>(),
    ) {
        let mut s = spec(seed_steps(), replicas, "app:v1");
        let dynamic = router && dynamic;
        if router {
            route(&mut s, dynamic);
        }
        let mut sim = Sim::new(s);
        if router {
            sim.router = Some(0);
        }
        sim.settle(3);
        let v1 = sim.revision();
        sim.set_image("app:v2");
        let v2 = sim.revision();
        let (_, unavailable) = settings::budgets(&sim.spec, sim.spec.rollout_strategy.as_ref().and_then(|r| r.canary.as_ref()), replicas);
        let mut approvals_given = 0usize;
        for e in events {
            match e {
                Event::Tick => {}
                Event::Wait(s) => sim.advance(s),
                Event::Approve => { sim.annotate(APPROVAL); approvals_given += 1; }
                Event::Abort => sim.annotate(ABORT),
                Event::Retry => sim.annotate(RETRY),
                Event::Pause => sim.annotate(PAUSE),
                Event::Resume => sim.annotate(RESUME),
                Event::Fail => { sim.failing.insert(v2.clone()); }
                Event::Heal => { sim.failing.remove(&v2); }
                Event::RouterLag => sim.router_frozen = !sim.router_frozen,
                Event::Lose(k) => {
                    let n = sim.rolesets.len();
                    if n > 0 {
                        sim.rolesets[k % n].ready = false;
                    }
                }
            }
            let before: Vec<(String, String, bool)> = sim
                .rolesets
                .iter()
                .map(|r| (r.name.clone(), r.revision.clone(), r.ready))
                .collect();
            let router_before = sim.router;
            let canary_before = i32::try_from(sim.count(&v2)).unwrap_or(0);
            let canary_ready_before: i32 =
                sim.rolesets.iter().filter(|r| r.ready && r.revision == v2).count().try_into().unwrap_or(0);
            let stable_before = sim.stable();
            let stable_ready_before =
                sim.rolesets.iter().filter(|r| r.ready && r.revision == v1).count();
            let plan = sim.tick();
            let rs = plan.status.rollout_status.clone().unwrap_or_default();
            // The plan names which RoleSets go: of a revision, never a ready one while an unready
            // one of the same revision stays.
            for (name, rev, ready) in &before {
                if *ready && plan.delete.contains(name) {
                    let unready_kept = before
                        .iter()
                        .any(|(n, r, ok)| r == rev && !ok && !plan.delete.contains(n));
                    prop_assert!(!unready_kept, "ready {name} deleted while an unready RoleSet of {rev} stays");
                }
            }
            // Availability: deletions never take the ready RoleSets below what the rollout may lose.
            let ready_before = before.iter().filter(|(_, _, ok)| *ok).count();
            let ready_deleted = before.iter().filter(|(n, _, ok)| *ok && plan.delete.contains(n)).count();
            let floor = ready_before.min(usize::try_from(replicas - unavailable).unwrap_or(0));
            prop_assert!(
                ready_before - ready_deleted >= floor,
                "{ready_deleted} of {ready_before} ready RoleSets deleted (floor {floor})"
            );
            // The weight never exceeds the current step's. With dynamicStableScale a weight above
            // it (a retry restarting at a lower step) comes down only as stable grows: it may stay
            // where the router has it, never rise.
            if let Some(idx) = rs.current_step_index.and_then(|i| usize::try_from(i).ok()) {
                let steps = &sim.spec.rollout_strategy.as_ref().expect("rs").canary.as_ref().expect("c").steps;
                let t = canary::target(steps, idx, replicas, router);
                let held = if dynamic { router_before.unwrap_or(0) } else { 0 };
                prop_assert!(plan.weight <= t.weight.max(held).max(if rs.phase == Some(RolloutPhase::Completed) { 100 } else { 0 }),
                    "weight {} over step {idx}'s {}", plan.weight, t.weight);
            }
            // Aborted or rolled back: all traffic on stable, Services pinned to stable. With a
            // router, a stable that has nothing ready (a promotion had removed it) gets the
            // traffic back only once it has capacity again.
            if matches!(rs.phase, Some(RolloutPhase::Aborted)) || plan.rollback.is_some() {
                let stable_ready_before = i32::try_from(stable_ready_before).unwrap_or(0);
                if dynamic {
                    // Shrunk with the canary's traffic: stable takes it back as its RoleSets are ready.
                    prop_assert!(
                        plan.weight <= 100 - dynamic::stable_share(stable_ready_before, replicas),
                        "weight {} with {stable_ready_before} of {replicas} stable RoleSets ready", plan.weight
                    );
                } else if !(router && stable_ready_before == 0) {
                    prop_assert_eq!(plan.weight, 0);
                }
                prop_assert!(plan.services.iter().all(|(_, r)| *r == v1));
                prop_assert_eq!(plan.scale.get(&v1).copied(), Some(replicas));
            }
            // With a router, an abort or rollback takes the canary's capacity only once the router
            // reports all traffic on stable.
            // With dynamicStableScale it shrinks as the traffic leaves it, keeping what the traffic
            // the router reports on it needs.
            if router
                && sim.stable() == Some(v1.clone())
                && matches!(rs.phase, Some(RolloutPhase::Aborted | RolloutPhase::Degraded))
                && plan.scale.get(&v2).copied().unwrap_or(0) < canary_before
            {
                if dynamic {
                    let planned = plan.scale.get(&v2).copied().unwrap_or(0);
                    let on_canary = router_before.unwrap_or(100).max(plan.weight);
                    prop_assert!(
                        planned >= dynamic::canary_needed(replicas, on_canary).min(canary_before),
                        "canary scaled to {planned} while the router sends it {on_canary}%"
                    );
                } else {
                    prop_assert_eq!(router_before, Some(0), "canary scaled down while the router still sent it traffic");
                }
            }
            // Capacity: stable is only scaled down as far as ready canary RoleSets make up for it,
            // so ready RoleSets never drop below replicas − maxUnavailable.
            if stable_before == Some(v1.clone()) && sim.stable() == Some(v1.clone()) {
                let stable_planned = plan.scale.get(&v1).copied().unwrap_or(0);
                prop_assert!(
                    stable_planned + canary_ready_before >= replicas - unavailable,
                    "stable planned {stable_planned} + canary ready {canary_ready_before} < {}", replicas - unavailable
                );
            }
            let promoting = rs.current_step_index.is_some_and(|i| i >= 4);
            if router && !dynamic && !promoting && rs.phase != Some(RolloutPhase::Completed) && sim.stable() == Some(v1.clone()) {
                prop_assert_eq!(plan.scale.get(&v1).copied().unwrap_or(0), replicas, "with a router stable keeps full size");
            }
            // dynamicStableScale: stable's ready RoleSets are deleted only down to what the traffic
            // the router reports on it, and the traffic the plan's weight puts on it, needs; and
            // traffic goes back to stable only as far as its ready RoleSets carry it.
            if dynamic && stable_before == Some(v1.clone()) && sim.stable() == Some(v1.clone()) {
                let on_stable = 100 - router_before.unwrap_or(0).min(plan.weight);
                let stable_ready_kept = before
                    .iter()
                    .filter(|(n, r, ok)| *ok && *r == v1 && !plan.delete.contains(n))
                    .count();
                let needed = usize::try_from(dynamic::needed(replicas, on_stable)).unwrap_or(0);
                prop_assert!(
                    stable_ready_kept >= needed.min(stable_ready_before),
                    "{stable_ready_kept} ready stable RoleSets kept for {on_stable}% of the traffic"
                );
                if plan.weight < router_before.unwrap_or(0) {
                    prop_assert!(
                        i32::try_from(stable_ready_before).unwrap_or(0) * 100 >= replicas * (100 - plan.weight),
                        "weight lowered to {} with {stable_ready_before} of {replicas} stable RoleSets ready", plan.weight
                    );
                }
            }
            // A draining revision gets no traffic: no Service selects it, and after an abort the
            // router sends it nothing.
            for d in &rs.scale_downs {
                prop_assert!(plan.services.iter().all(|(_, r)| *r != d.revision), "a Service on draining {}", d.revision);
                if router && d.revision == v2 {
                    prop_assert_eq!(plan.weight, 0, "traffic to the draining canary");
                }
            }
            // Every approval acts at most once.
            let approved = sim.notes.iter().filter(|n| n.reason == Reason::Approved).count();
            prop_assert!(approved <= approvals_given);
        }
        // Whatever happened, an abort brings everything back to stable.
        sim.failing.clear();
        sim.router_frozen = false;
        sim.annotate(ABORT);
        sim.settle(6);
        // Past any drain delay (30 s after an abort with a router).
        sim.advance(31);
        sim.settle(2);
        if sim.stable() == Some(v1.clone()) {
            prop_assert_eq!(sim.count(&v1), usize::try_from(replicas).expect("r"));
            prop_assert_eq!(sim.count(&v2), 0);
            prop_assert_eq!(sim.last.as_ref().expect("plan").weight, 0);
        }
    }
}

#[derive(Debug, Clone)]
enum Change {
    Tick,
    Wait(i64),
    Approve,
    /// The template moves on mid-rollout: image `app:v<n>` (n = 1 reverts to stable).
    Image(u8),
    Lose(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A template that moves on mid-rollout leaves a canary revision that may carry the service
    /// (after a step where stable shrank): its ready RoleSets go only as others make up for them.
    /// Without a router stable shrinks by RoleSets, so this is where it matters.
    #[test]
    fn a_template_changed_mid_rollout_never_drops_availability(
        changes in prop::collection::vec(prop_oneof![
            4 => Just(Change::Tick),
            2 => (1i64..30).prop_map(Change::Wait),
            3 => Just(Change::Approve),
            2 => (1u8..5).prop_map(Change::Image),
            2 => (0usize..16).prop_map(Change::Lose),
        ], 1..60),
        replicas in 1i32..6,
        dynamic in any::<bool>(),
    ) {
        let mut s = spec(seed_steps(), replicas, "app:v1");
        // With a router and dynamicStableScale, stable shrinks with the canary's traffic too.
        if dynamic {
            route(&mut s, true);
        }
        let mut sim = Sim::new(s);
        if dynamic {
            sim.router = Some(0);
        }
        sim.settle(3);
        let v1 = sim.revision();
        sim.set_image("app:v2");
        let (_, unavailable) = settings::budgets(&sim.spec, sim.spec.rollout_strategy.as_ref().and_then(|r| r.canary.as_ref()), replicas);
        for c in changes {
            match c {
                Change::Tick => {}
                Change::Wait(s) => sim.advance(s),
                Change::Approve => sim.annotate(APPROVAL),
                Change::Image(n) => sim.set_image(&format!("app:v{n}")),
                Change::Lose(k) => {
                    let n = sim.rolesets.len();
                    if n > 0 {
                        sim.rolesets[k % n].ready = false;
                    }
                }
            }
            let before: Vec<(String, bool)> =
                sim.rolesets.iter().map(|r| (r.name.clone(), r.ready)).collect();
            let stable_ready: Vec<String> = sim
                .rolesets
                .iter()
                .filter(|r| r.ready && r.revision == v1)
                .map(|r| r.name.clone())
                .collect();
            let router_before = sim.router;
            let stable_before = sim.stable();
            let plan = sim.tick();
            if dynamic && stable_before == Some(v1.clone()) && sim.stable() == Some(v1.clone()) {
                let on_stable = 100 - router_before.unwrap_or(0).min(plan.weight);
                let kept = stable_ready.iter().filter(|n| !plan.delete.contains(n)).count();
                let needed = usize::try_from(dynamic::needed(replicas, on_stable)).unwrap_or(0);
                prop_assert!(
                    kept >= needed.min(stable_ready.len()),
                    "{kept} ready stable RoleSets kept for {on_stable}% of the traffic"
                );
            }
            let ready_before = before.iter().filter(|(_, ok)| *ok).count();
            let ready_deleted = before.iter().filter(|(n, ok)| *ok && plan.delete.contains(n)).count();
            let floor = ready_before.min(usize::try_from(replicas - unavailable).unwrap_or(0));
            prop_assert!(
                ready_before - ready_deleted >= floor,
                "{ready_deleted} of {ready_before} ready RoleSets deleted (floor {floor}): {before:?} -> delete {:?}",
                plan.delete
            );
        }
    }
}

#[derive(Debug, Clone)]
enum Budgeted {
    Tick,
    Wait(i64),
    Approve,
    Abort,
    Retry,
    Fail,
    Heal,
    RouterLag,
    /// The template moves on mid-rollout: image `app:v<n>` (n = 1 reverts to stable).
    Image(u8),
    Lose(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// With a capacity budget no decision makes RoleSets that would take what the StormService
    /// holds above steady state plus `maxExtra`: through steps, aborts, retries, rollbacks and
    /// template changes, with or without a router, with or without dynamicStableScale; and an
    /// abort still brings everything back to stable.
    #[test]
    fn a_capacity_budget_is_never_exceeded(
        events in prop::collection::vec(prop_oneof![
            5 => Just(Budgeted::Tick),
            2 => (1i64..400).prop_map(Budgeted::Wait),
            3 => Just(Budgeted::Approve),
            1 => Just(Budgeted::Abort),
            1 => Just(Budgeted::Retry),
            1 => Just(Budgeted::Fail),
            1 => Just(Budgeted::Heal),
            1 => Just(Budgeted::RouterLag),
            1 => (1u8..4).prop_map(Budgeted::Image),
            2 => (0usize..16).prop_map(Budgeted::Lose),
        ], 1..60),
        replicas in 1i32..6,
        gpus in 1i64..4,
        shape in 0u8..3,
        extra_roles in 1i64..3,
    ) {
        let mut s = spec(seed_steps(), replicas, "app:v1");
        if let Some(roles) = s.template.spec.as_mut() {
            let c = &mut std::sync::Arc::make_mut(&mut roles.roles[0].template).spec.as_mut().expect("pod spec").containers[0];
            c.resources = Some(serde_json::from_value(serde_json::json!({"limits": {"nvidia.com/gpu": gpus.to_string()}})).expect("resources"));
        }
        // 0: no router (maxUnavailable 25% lets stable shrink first, where it is at least one);
        // 1: a router with dynamicStableScale; 2: a router alone (stable stays whole: the
        // budget must hold a whole second revision).
        let router = shape > 0;
        if router {
            route(&mut s, shape == 1);
        }
        let strategy = s.rollout_strategy.clone().expect("strategy");
        let obj = storm_shared::StormService::new("svc", s.clone());
        let (need, _) = storm_shared::rules::budget_need(&obj, &strategy, gpus);
        // The smallest budget admission takes, or a little more.
        let max_extra = need + (extra_roles - 1) * gpus;
        s.rollout_strategy.as_mut().expect("strategy").capacity_budget =
            Some(serde_json::from_value(serde_json::json!({"resource": "nvidia.com/gpu", "maxExtra": max_extra})).expect("budget"));
        let mut sim = Sim::new(s);
        if router {
            sim.router = Some(0);
        }
        sim.settle(3);
        let v1 = sim.revision();
        sim.set_image("app:v2");
        let limit = i64::from(replicas) * gpus + max_extra;
        for e in events {
            match e {
                Budgeted::Tick => {}
                Budgeted::Wait(s) => sim.advance(s),
                Budgeted::Approve => sim.annotate(APPROVAL),
                Budgeted::Abort => sim.annotate(ABORT),
                Budgeted::Retry => sim.annotate(RETRY),
                Budgeted::Fail => { let v = sim.revision(); sim.failing.insert(v); }
                Budgeted::Heal => sim.failing.clear(),
                Budgeted::RouterLag => sim.router_frozen = !sim.router_frozen,
                Budgeted::Image(n) => sim.set_image(&format!("app:v{n}")),
                Budgeted::Lose(k) => {
                    let n = sim.rolesets.len();
                    if n > 0 {
                        sim.rolesets[k % n].ready = false;
                    }
                }
            }
            let held: i64 = sim.rolesets.iter().map(|r| r.holds).sum();
            let plan = sim.tick();
            let made = i64::try_from(plan.create.len()).unwrap_or(i64::MAX) * gpus;
            prop_assert!(
                held + made <= limit.max(held),
                "{held} held + {made} made > {limit} ({} RoleSets of {gpus}, maxExtra {max_extra})",
                replicas
            );
            let capacity = plan.status.rollout_status.as_ref().and_then(|r| r.capacity.clone()).expect("capacity status");
            prop_assert_eq!(capacity.in_use, held);
            prop_assert_eq!(capacity.left, limit - held);
        }
        // Whatever happened, an abort brings everything back to stable within the budget.
        sim.failing.clear();
        sim.router_frozen = false;
        sim.set_image("app:v2");
        // An abort that comes with a template change is addressed to the rollout it replaces.
        let held: i64 = sim.rolesets.iter().map(|r| r.holds).sum();
        let plan = sim.tick();
        let made = i64::try_from(plan.create.len()).unwrap_or(i64::MAX) * gpus;
        prop_assert!(held + made <= limit.max(held), "{held} + {made} > {limit} at the new rollout");
        sim.annotate(ABORT);
        for _ in 0..20 {
            let held: i64 = sim.rolesets.iter().map(|r| r.holds).sum();
            let plan = sim.tick();
            let made = i64::try_from(plan.create.len()).unwrap_or(i64::MAX) * gpus;
            prop_assert!(held + made <= limit.max(held), "{held} + {made} > {limit} after the abort");
            sim.advance(31);
        }
        let stable = sim.stable().expect("a stable revision");
        prop_assert_eq!(sim.count(&stable), usize::try_from(replicas).expect("r"), "stable whole again");
        if stable != sim.revision() {
            prop_assert_eq!(sim.count(&sim.revision()), 0, "the aborted revision gone");
        }
        let _ = v1;
    }
}
