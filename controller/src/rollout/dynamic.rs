//! `canary.dynamicStableScale`: with a traffic router, stable shrinks as the canary's share of the
//! traffic grows, so the StormService holds about `replicas` plus the surge budget through the
//! rollout instead of stable at full size plus the canary.
//!
//! Traffic moves before capacity goes, both ways:
//! - stable keeps the RoleSets for the larger of the traffic the router reports on it and the
//!   traffic the next weight puts on it;
//! - the canary gets a share of the traffic only as its ready RoleSets can carry it, and keeps the
//!   RoleSets for the larger of the traffic the router reports on it and the next weight;
//! - traffic goes back to stable (a lower weight, an abort) only as far as stable's ready RoleSets
//!   can carry it.
//!
//! A revision's RoleSets carry equal shares: `n` of `replicas` carry `100 * n / replicas` percent.
//! Weights are whole percents, so a share is rounded: stable's up (it never carries more than its
//! RoleSets), the canary's up as well (by less than one percent of the traffic), so that the two
//! together never need more than `replicas` RoleSets and the canary can always grow.

/// The RoleSets (of `replicas`) that carry `percent` of the traffic: rounded up.
pub fn needed(replicas: i32, percent: i32) -> i32 {
    let (r, p) = (i64::from(replicas.max(0)), i64::from(percent.clamp(0, 100)));
    i32::try_from((r * p + 99) / 100).unwrap_or(replicas)
}

/// The canary RoleSets (of `replicas`) that carry `percent` of the traffic: the fewest whose
/// [`canary_share`] reaches it (so one RoleSet of three carries 34%, as it was given).
pub fn canary_needed(replicas: i32, percent: i32) -> i32 {
    let (r, p) = (i64::from(replicas.max(0)), i64::from(percent.clamp(0, 100)));
    if p == 0 {
        return 0;
    }
    i32::try_from((r * (p - 1) / 100 + 1).min(r)).unwrap_or(replicas)
}

/// The share of the traffic (percent) that `ready` RoleSets of `replicas` may take on as the
/// canary: rounded up, so `needed(replicas, 100 - share)` never exceeds `replicas - ready`.
pub fn canary_share(ready: i32, replicas: i32) -> i32 {
    if replicas <= 0 {
        return 100;
    }
    let (n, r) = (i64::from(ready.clamp(0, replicas)), i64::from(replicas));
    i32::try_from((100 * n + r - 1) / r).unwrap_or(100)
}

/// The most traffic (percent) stable's `ready` RoleSets of `replicas` carry: rounded down, so it
/// is never more than they can take.
pub fn stable_share(ready: i32, replicas: i32) -> i32 {
    if replicas <= 0 {
        return 100;
    }
    let (n, r) = (i64::from(ready.clamp(0, replicas)), i64::from(replicas));
    i32::try_from(100 * n / r).unwrap_or(100)
}

/// What the rollout stands on at one decision.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub replicas: i32,
    /// The weight this step wants on the canary (100 when promoting).
    pub target_weight: i32,
    /// The canary RoleSets this step wants.
    pub target_canary: i32,
    pub canary_existing: i32,
    pub canary_ready: i32,
    pub stable_existing: i32,
    pub stable_ready: i32,
    /// RoleSets of other revisions still there (a canary the template moved on from).
    pub others_existing: i32,
    /// The weight the router reports on the canary; `None` before it reports.
    pub reported: Option<i32>,
    /// The surge budget (at least 1: the canary must be able to grow before stable shrinks).
    pub surge: i32,
    /// The most RoleSets that may be unavailable.
    pub unavailable: i32,
}

/// The canary's weight for this decision: the step's once its RoleSets are ready, before that the
/// share its ready RoleSets carry; lowered (below what the router reports) only as far as
/// stable's ready RoleSets can take the traffic back.
pub fn weight(n: &Now) -> i32 {
    let mut w = wanted(n);
    let reported = n.reported.unwrap_or(0);
    if w < reported {
        let stable_cannot_take = 100 - stable_share(n.stable_ready, n.replicas);
        w = w.max(stable_cannot_take.min(reported));
    }
    w.clamp(0, 100)
}

/// The weight the canary would have if stable could take any traffic back: the step's once its
/// RoleSets are ready, before that the share its ready RoleSets carry.
fn wanted(n: &Now) -> i32 {
    if n.canary_ready >= n.target_canary {
        n.target_weight
    } else {
        n.target_weight
            .min(canary_share(n.canary_ready, n.replicas))
    }
}

/// The RoleSets each revision should have: (canary, stable).
pub fn capacity(n: &Now, weight: i32) -> (i32, i32) {
    let r = n.replicas;
    // Before the router reports, all traffic may still be on stable.
    let reported = n.reported.unwrap_or(0);
    // Stable carries what the router sends it, and grows for the traffic it should take back.
    let stable = needed(r, 100 - reported.min(weight).min(wanted(n))).clamp(0, r);
    // The canary grows within the surge budget, and keeps what its traffic needs.
    let room = r + n.surge.max(1) - n.stable_existing - n.others_existing;
    let grow = n.target_canary.min(n.canary_existing.max(room));
    let keep = canary_needed(r, reported.max(weight)).min(n.canary_existing);
    let canary = grow.max(keep);
    // Availability first: a canary RoleSet that is not ready (lost, restarting) is made up for by
    // stable, whose traffic share then follows its ready RoleSets back ([`weight`]).
    let available = r - n.unavailable - n.canary_ready.min(canary);
    (canary, stable.max(available).clamp(0, r))
}

/// The traffic the canary may get back on an abort or a rollback: no more than it has, and no
/// less than stable's ready RoleSets cannot carry.
pub fn abort_weight(current: i32, stable_ready: i32, replicas: i32) -> i32 {
    current
        .min(100 - stable_share(stable_ready, replicas))
        .max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shares_round_so_that_both_revisions_fit_in_replicas() {
        assert_eq!(needed(4, 25), 1);
        assert_eq!(needed(4, 75), 3);
        assert_eq!(needed(3, 50), 2);
        assert_eq!(canary_share(1, 3), 34);
        assert_eq!(needed(3, 100 - 34), 2);
        assert_eq!(stable_share(2, 3), 66);
        assert_eq!(stable_share(0, 3), 0);
        assert_eq!(canary_needed(3, 34), 1);
        assert_eq!(canary_needed(3, 35), 2);
        assert_eq!(canary_needed(4, 25), 1);
        assert_eq!(canary_needed(4, 26), 2);
        assert_eq!(canary_needed(4, 100), 4);
        assert_eq!(canary_needed(4, 0), 0);
        for r in 1..20 {
            for n in 0..=r {
                assert_eq!(canary_needed(r, canary_share(n, r)), n, "{n} of {r}");
            }
        }
    }

    #[test]
    fn the_canary_gets_what_its_ready_rolesets_carry_until_the_step_is_ready() {
        let n = Now {
            replicas: 4,
            target_weight: 50,
            target_canary: 2,
            canary_existing: 2,
            canary_ready: 1,
            stable_existing: 3,
            stable_ready: 3,
            others_existing: 0,
            reported: Some(25),
            surge: 1,
            unavailable: 1,
        };
        assert_eq!(weight(&n), 25);
        // Stable keeps what the router still sends it.
        assert_eq!(capacity(&n, 25), (2, 3));
        let ready = Now {
            canary_ready: 2,
            ..n
        };
        assert_eq!(weight(&ready), 50);
        // Until the router reports 50, stable keeps three.
        assert_eq!(capacity(&ready, 50), (2, 3));
        let routed = Now {
            reported: Some(50),
            ..ready
        };
        assert_eq!(capacity(&routed, 50), (2, 2));
    }

    #[test]
    fn an_abort_sends_back_only_what_stable_can_carry() {
        assert_eq!(abort_weight(50, 2, 4), 50);
        assert_eq!(abort_weight(50, 3, 4), 25);
        assert_eq!(abort_weight(50, 4, 4), 0);
        assert_eq!(abort_weight(10, 0, 4), 10);
    }

    proptest! {
        /// Whatever the router reports and whatever is ready: stable keeps the RoleSets for the
        /// traffic it has and the traffic it gets; a weight below the reported one is one stable's
        /// ready RoleSets carry; the canary only grows within the surge budget and keeps what its
        /// traffic needs; and at rest the rollout always has a way forward.
        #[test]
        fn traffic_moves_before_capacity(
            replicas in 1i32..9,
            target_weight in 0i32..=100,
            canary_ready in 0i32..9,
            canary_extra in 0i32..3,
            stable_ready in 0i32..9,
            stable_extra in 0i32..3,
            others in 0i32..2,
            reported in proptest::option::of(0i32..=100),
            surge in 0i32..3,
            unavailable in 0i32..3,
        ) {
            let target_canary = needed(replicas, target_weight).max(i32::from(target_weight > 0));
            let n = Now {
                replicas,
                target_weight,
                target_canary,
                canary_existing: (canary_ready + canary_extra).min(replicas),
                canary_ready: canary_ready.min(replicas),
                stable_existing: (stable_ready + stable_extra).min(replicas),
                stable_ready: stable_ready.min(replicas),
                others_existing: others,
                reported,
                surge,
                unavailable: unavailable.min(replicas),
            };
            let w = weight(&n);
            let (canary, stable) = capacity(&n, w);
            let on_stable = 100 - reported.unwrap_or(0).min(w);
            prop_assert!(stable * 100 >= replicas * on_stable, "stable {stable} for {on_stable}%");
            if w < reported.unwrap_or(0) {
                prop_assert!(n.stable_ready * 100 >= replicas * (100 - w), "weight lowered to {w} past stable's ready RoleSets");
            }
            if w > reported.unwrap_or(0) {
                prop_assert!(
                    w <= canary_share(n.canary_ready, replicas).max(if n.canary_ready >= target_canary { target_weight } else { 0 }),
                    "weight {w} over what the ready canary carries"
                );
            }
            if canary > n.canary_existing {
                prop_assert!(canary + n.stable_existing + others <= replicas + surge.max(1), "canary grew past the surge budget");
            }
            prop_assert!(stable + n.canary_ready.min(canary) >= replicas - n.unavailable, "availability");
            let on_canary = reported.unwrap_or(0).max(w);
            prop_assert!(canary >= canary_needed(replicas, on_canary).min(n.canary_existing), "canary {canary} for {on_canary}%");
            // Settled at the previous decision's plan with everything ready and routed: the next
            // decision moves on (more canary, more weight or less stable), or the step is reached.
            let settled = Now {
                canary_existing: canary,
                canary_ready: canary,
                stable_existing: stable,
                stable_ready: stable,
                others_existing: 0,
                reported: Some(w),
                ..n
            };
            let w2 = weight(&settled);
            let (c2, s2) = capacity(&settled, w2);
            let reached = c2 == target_canary && canary == target_canary && w2 == w && w == target_weight && s2 == stable;
            prop_assert!(reached || c2 != canary || w2 != w || s2 != stable, "stuck at canary {canary}, stable {stable}, weight {w}");
        }
    }
}
