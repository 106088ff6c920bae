//! RolloutPolicy evaluation: what cluster admins enforce on StormServices and, for analysis, on
//! AnalysisTemplates.

pub mod analysis;

use crate::errors::{FieldError, FieldPath, Report, Warning};
use crate::rules::routing_routers;
use crate::types::analysis::AnalysisTemplate;
use crate::types::policy::{PolicyMode, RolloutPolicy, RouterKind};
use crate::types::stormservice::{RolloutStrategy, RolloutStrategyType, StormService};
use crate::units::{format_duration, parse_duration};
use kube::core::{Selector, SelectorExt};
use std::collections::BTreeMap;

/// Default `autoRollback.onTimeout` when the object sets none (see `defaults`).
const DEFAULT_ON_TIMEOUT: &str = "30m";

/// One rule of one policy that an object breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Name of the RolloutPolicy.
    pub policy: String,
    /// What the policy does about it.
    pub mode: PolicyMode,
    /// The field that breaks the rule.
    pub path: FieldPath,
    /// The rule and how to satisfy it.
    pub message: String,
}

/// Whether a policy applies in a namespace with these labels.
pub fn applies_to(policy: &RolloutPolicy, namespace_labels: &BTreeMap<String, String>) -> bool {
    match &policy.spec.namespace_selector {
        None => true,
        // A selector that doesn't parse was refused on admission; if one slips through, apply the
        // policy everywhere rather than silently nowhere.
        Some(sel) => Selector::try_from(sel.clone())
            .map(|s| s.matches(namespace_labels))
            .unwrap_or(true),
    }
}

/// Every rule of `policy` that `obj` breaks. `reference_problems` are the findings of the cluster
/// lookups (see `references`); a policy with `requireReferencedObjects` turns them into violations.
pub fn evaluate(
    policy: &RolloutPolicy,
    obj: &StormService,
    reference_problems: &[Warning],
) -> Vec<Violation> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mode = policy.spec.mode.unwrap_or_default();
    let mut out = Vec::new();
    let mut violate = |path: FieldPath, message: String| {
        out.push(Violation {
            policy: name.clone(),
            mode,
            path,
            message,
        });
    };
    let p = &policy.spec;
    let rs_path = FieldPath::new("spec").child("rolloutStrategy");
    let Some(strategy) = &obj.spec.rollout_strategy else {
        if p.require_rollout_strategy == Some(true) {
            violate(
                rs_path,
                "a rolloutStrategy (Canary or BlueGreen) is required".into(),
            );
        }
        return out;
    };
    if let Some(allowed) = &p.allowed_strategies
        && !allowed.contains(&strategy.type_)
    {
        violate(
            rs_path.child("type"),
            format!(
                "strategy {:?} is not allowed; allowed: {}",
                strategy.type_,
                join_debug(allowed)
            ),
        );
    }
    if let Some(allowed) = &p.allowed_routers {
        let used = routers_of(strategy);
        for r in used.iter().filter(|r| !allowed.contains(r)) {
            let path = if *r == RouterKind::Service {
                rs_path.child("canary").child("trafficRouting")
            } else {
                rs_path
                    .child("canary")
                    .child("trafficRouting")
                    .child(r.as_str())
            };
            let allowed_list: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
            violate(
                path,
                format!(
                    "router {} is not allowed; allowed: {}",
                    r.as_str(),
                    allowed_list.join(", ")
                ),
            );
        }
    }
    check_auto_rollback(p, strategy, &rs_path, &mut violate);
    check_error_rate_metric(p, strategy, &rs_path, &mut violate);
    match strategy.type_ {
        RolloutStrategyType::Canary => check_canary(p, strategy, &rs_path, &mut violate),
        RolloutStrategyType::BlueGreen => check_blue_green(p, strategy, &rs_path, &mut violate),
    }
    if p.require_referenced_objects == Some(true) {
        for w in reference_problems {
            violate(
                w.path.clone(),
                format!("{} (referenced objects must exist)", w.message),
            );
        }
    }
    out
}

fn join_debug<T: std::fmt::Debug>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The routers a strategy uses; `service` when the canary has no traffic routing.
fn routers_of(strategy: &RolloutStrategy) -> Vec<RouterKind> {
    match (
        &strategy.type_,
        strategy
            .canary
            .as_ref()
            .and_then(|c| c.traffic_routing.as_ref()),
    ) {
        (RolloutStrategyType::Canary, Some(tr)) => routing_routers(tr),
        _ => vec![RouterKind::Service],
    }
}

fn check_auto_rollback(
    p: &crate::types::policy::RolloutPolicySpec,
    strategy: &RolloutStrategy,
    rs_path: &FieldPath,
    violate: &mut impl FnMut(FieldPath, String),
) {
    let ar = strategy.auto_rollback.as_ref();
    let ar_path = rs_path.child("autoRollback");
    if p.require_auto_rollback == Some(true) && ar.and_then(|a| a.enabled) == Some(false) {
        violate(
            ar_path.child("enabled"),
            "automatic rollback is required: set enabled: true".into(),
        );
    }
    let timeout_text = ar
        .and_then(|a| a.on_timeout.as_deref())
        .unwrap_or(DEFAULT_ON_TIMEOUT);
    let Ok(timeout) = parse_duration(timeout_text) else {
        return;
    };
    let bound = |t: &Option<String>| t.as_deref().and_then(|t| parse_duration(t).ok());
    if let Some(min) = bound(&p.min_on_timeout)
        && timeout < min
    {
        violate(
            ar_path.child("onTimeout"),
            format!(
                "onTimeout {timeout_text} is shorter than the minimum {}",
                format_duration(min)
            ),
        );
    }
    if let Some(max) = bound(&p.max_on_timeout)
        && timeout > max
    {
        violate(
            ar_path.child("onTimeout"),
            format!(
                "onTimeout {timeout_text} is longer than the maximum {}",
                format_duration(max)
            ),
        );
    }
}

/// The inline `autoRollback.onFailure.errorRate` metric (where admission puts it, or under `canary`
/// where defaulting has not moved it yet) against the policy's analysis rules.
fn check_error_rate_metric(
    p: &crate::types::policy::RolloutPolicySpec,
    strategy: &RolloutStrategy,
    rs_path: &FieldPath,
    violate: &mut impl FnMut(FieldPath, String),
) {
    let legacy = strategy
        .canary
        .as_ref()
        .and_then(|c| c.auto_rollback.as_ref());
    let (ar, ar_path) = match (&strategy.auto_rollback, legacy) {
        (Some(ar), _) => (ar, rs_path.child("autoRollback")),
        (None, Some(ar)) => (ar, rs_path.child("canary").child("autoRollback")),
        (None, None) => return,
    };
    if let Some(metric) = ar.on_failure.as_ref().and_then(|f| f.error_rate.as_ref()) {
        analysis::check_metric(
            p,
            metric,
            &ar_path.child("onFailure").child("errorRate"),
            violate,
        );
    }
}

fn check_canary(
    p: &crate::types::policy::RolloutPolicySpec,
    strategy: &RolloutStrategy,
    rs_path: &FieldPath,
    violate: &mut impl FnMut(FieldPath, String),
) {
    let Some(canary) = &strategy.canary else {
        return;
    };
    let steps_path = rs_path.child("canary").child("steps");
    let mut previous: Option<i32> = None;
    let mut analysed = false;
    let mut approval = false;
    for (i, step) in canary.steps.iter().enumerate() {
        analysed |= step.analysis.is_some();
        approval |= step
            .pause
            .as_ref()
            .and_then(|x| x.until_approval)
            .unwrap_or(false);
        let Some(w) = step.weight else { continue };
        let wp = steps_path.index(i).child("weight");
        match previous {
            None => {
                if let Some(max) = p.max_first_step_weight
                    && w > max
                {
                    violate(
                        wp.clone(),
                        format!(
                            "the first weight step may send at most {max}% to the canary, not {w}%"
                        ),
                    );
                }
            }
            Some(prev) => {
                if let Some(max) = p.max_weight_increase
                    && w - prev > max
                {
                    violate(
                        wp.clone(),
                        format!(
                            "weight may rise by at most {max} per step, not {} (from {prev} to {w})",
                            w - prev
                        ),
                    );
                }
            }
        }
        if let Some(limit) = p.require_analysis_above_weight
            && w > limit
            && !analysed
        {
            violate(
                wp,
                format!(
                    "an analysis must run at or before any step above {limit}%; add analysis to this or an earlier step"
                ),
            );
        }
        previous = Some(w);
    }
    // Promotion after the last step sends 100%: it too must come after an analysis.
    if let Some(limit) = p.require_analysis_above_weight
        && limit < 100
        && !analysed
        && previous.is_none_or(|w| w <= limit)
    {
        violate(
            steps_path.clone(),
            format!(
                "promotion sends 100% to the new revision: an analysis must run before it (policy limit {limit}%)"
            ),
        );
    }
    if p.require_approval_before_promotion == Some(true) && !approval {
        violate(steps_path, "a manual approval is required before promotion: add a step with pause.untilApproval: true".into());
    }
}

fn check_blue_green(
    p: &crate::types::policy::RolloutPolicySpec,
    strategy: &RolloutStrategy,
    rs_path: &FieldPath,
    violate: &mut impl FnMut(FieldPath, String),
) {
    let Some(bg) = &strategy.blue_green else {
        return;
    };
    let bp = rs_path.child("blueGreen");
    if p.require_approval_before_promotion == Some(true) && bg.auto_promotion_enabled == Some(true)
    {
        violate(
            bp.child("autoPromotionEnabled"),
            "a manual approval is required before promotion: set autoPromotionEnabled: false"
                .into(),
        );
    }
    if let Some(limit) = p.require_analysis_above_weight
        && limit < 100
        && bg.pre_promotion_analysis.is_none()
    {
        violate(
            bp.child("prePromotionAnalysis"),
            "promotion sends 100% to the new revision: prePromotionAnalysis is required".into(),
        );
    }
}

/// Evaluates every applicable policy and sorts the violations into denials (`Enforce`) and warnings (`Warn`).
pub fn apply(
    policies: &[RolloutPolicy],
    namespace_labels: &BTreeMap<String, String>,
    obj: &StormService,
    reference_problems: &[Warning],
) -> Report {
    let mut report = Report::default();
    let mut policy_requires_refs = false;
    for policy in policies.iter().filter(|p| applies_to(p, namespace_labels)) {
        policy_requires_refs |= policy.spec.require_referenced_objects == Some(true)
            && policy.spec.mode.unwrap_or_default() == PolicyMode::Enforce;
        for v in evaluate(policy, obj, reference_problems) {
            record(&mut report, v);
        }
    }
    // Reference problems are warnings unless an enforcing policy already turned them into denials.
    if !policy_requires_refs {
        report.warnings.extend(reference_problems.iter().cloned());
    }
    report
}

/// Evaluates every policy that applies in the template's namespace (given by its labels) on an
/// AnalysisTemplate: `allowedAnalysisProviders` and `allowedAnalysisHosts`, denials for `Enforce`,
/// warnings for `Warn`.
pub fn apply_to_template(
    policies: &[RolloutPolicy],
    namespace_labels: &BTreeMap<String, String>,
    template: &AnalysisTemplate,
) -> Report {
    let mut report = Report::default();
    for policy in policies.iter().filter(|p| applies_to(p, namespace_labels)) {
        for v in analysis::evaluate_template(policy, template) {
            record(&mut report, v);
        }
    }
    report
}

/// A violation as a denial (`Enforce`) or a warning (`Warn`), naming the policy.
fn record(report: &mut Report, v: Violation) {
    let message = format!("violates RolloutPolicy {}: {}", v.policy, v.message);
    match v.mode {
        PolicyMode::Enforce => report.error(FieldError::forbidden(v.path, message)),
        PolicyMode::Warn => report.warn(v.path, message),
    }
}
