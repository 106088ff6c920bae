//! RolloutPolicy evaluation: each rule accepts and rejects, Warn and Enforce, namespace selection.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use storm_shared::errors::{FieldPath, Warning};
use storm_shared::rules::parse;
use storm_shared::{RolloutPolicy, StormService, defaults, policy};

fn policy(spec: serde_json::Value) -> RolloutPolicy {
    parse(
        &json!({"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RolloutPolicy",
                  "metadata": {"name": "strict"}, "spec": spec}),
    )
    .expect("policy parses")
}

fn obj(v: &serde_json::Value) -> StormService {
    let mut v = v.clone();
    defaults::apply_defaults(&mut v).expect("defaults");
    parse(&v).expect("parses")
}

fn violations(p: &RolloutPolicy, v: &serde_json::Value) -> Vec<String> {
    policy::evaluate(p, &obj(v), &[])
        .into_iter()
        .map(|v| v.path.to_string())
        .collect()
}

#[test]
fn max_first_step_weight() {
    let p = policy(json!({"maxFirstStepWeight": 5}));
    assert_eq!(
        violations(&p, &canary()),
        vec!["spec.rolloutStrategy.canary.steps[0].weight"]
    );
    let p = policy(json!({"maxFirstStepWeight": 10}));
    assert!(violations(&p, &canary()).is_empty());
}

#[test]
fn max_weight_increase() {
    let p = policy(json!({"maxWeightIncrease": 30}));
    // 10 → 25 → 50 → 100: the last jump is 50.
    assert_eq!(
        violations(&p, &canary()),
        vec!["spec.rolloutStrategy.canary.steps[3].weight"]
    );
    let p = policy(json!({"maxWeightIncrease": 50}));
    assert!(violations(&p, &canary()).is_empty());
}

#[test]
fn analysis_required_above_weight() {
    let p = policy(json!({"requireAnalysisAboveWeight": 20}));
    // Step 1 (25%) has analysis itself: fine. Steps 2 and 3 come after it: fine.
    assert!(violations(&p, &canary()).is_empty());
    let p = policy(json!({"requireAnalysisAboveWeight": 5}));
    assert_eq!(
        violations(&p, &canary()),
        vec!["spec.rolloutStrategy.canary.steps[0].weight"]
    );
    // No analysis anywhere, every weight under the limit: promotion itself needs one.
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/steps",
        json!([{"weight": 10, "pause": {"duration": "1m"}}]),
    );
    let p = policy(json!({"requireAnalysisAboveWeight": 50}));
    assert_eq!(
        violations(&p, &v),
        vec!["spec.rolloutStrategy.canary.steps"]
    );
    // Blue-green needs pre-promotion analysis.
    assert_eq!(
        violations(&p, &blue_green()),
        vec!["spec.rolloutStrategy.blueGreen.prePromotionAnalysis"]
    );
}

#[test]
fn approval_required_before_promotion() {
    let p = policy(json!({"requireApprovalBeforePromotion": true}));
    assert!(violations(&p, &canary()).is_empty());
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/steps/1/pause",
        json!({"duration": "1m"}),
    );
    assert_eq!(
        violations(&p, &v),
        vec!["spec.rolloutStrategy.canary.steps"]
    );
    let mut v = blue_green();
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/autoPromotionEnabled",
        json!(true),
    );
    assert_eq!(
        violations(&p, &v),
        vec!["spec.rolloutStrategy.blueGreen.autoPromotionEnabled"]
    );
    assert!(violations(&p, &blue_green()).is_empty());
}

#[test]
fn auto_rollback_required() {
    let p = policy(json!({"requireAutoRollback": true}));
    assert!(
        violations(&p, &canary()).is_empty(),
        "defaulted objects roll back automatically"
    );
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        json!({"enabled": false}),
    );
    assert_eq!(
        violations(&p, &v),
        vec!["spec.rolloutStrategy.autoRollback.enabled"]
    );
}

#[test]
fn on_timeout_bounds() {
    let p = policy(json!({"minOnTimeout": "10m", "maxOnTimeout": "1h"}));
    assert!(
        violations(&p, &canary()).is_empty(),
        "the 30m default is inside"
    );
    for t in ["5m", "2h"] {
        let mut v = canary();
        set(
            &mut v,
            "/spec/rolloutStrategy/autoRollback",
            json!({"onTimeout": t}),
        );
        assert_eq!(
            violations(&p, &v),
            vec!["spec.rolloutStrategy.autoRollback.onTimeout"]
        );
    }
}

#[test]
fn allowed_strategies_and_routers() {
    let p = policy(json!({"allowedStrategies": ["Canary"]}));
    assert!(violations(&p, &canary()).is_empty());
    assert_eq!(
        violations(&p, &blue_green()),
        vec!["spec.rolloutStrategy.type"]
    );
    let p = policy(json!({"allowedRouters": ["istio", "service"]}));
    assert_eq!(
        violations(&p, &canary()),
        vec!["spec.rolloutStrategy.canary.trafficRouting.nginx"]
    );
    let mut v = canary();
    remove(&mut v, "/spec/rolloutStrategy/canary/trafficRouting");
    assert!(violations(&p, &v).is_empty());
    let p = policy(json!({"allowedRouters": ["nginx"]}));
    assert_eq!(
        violations(&p, &v),
        vec!["spec.rolloutStrategy.canary.trafficRouting"]
    );
}

#[test]
fn rollout_strategy_required() {
    let p = policy(json!({"requireRolloutStrategy": true}));
    let mut v = canary();
    remove(&mut v, "/spec/rolloutStrategy");
    assert_eq!(violations(&p, &v), vec!["spec.rolloutStrategy"]);
    assert!(violations(&p, &canary()).is_empty());
}

#[test]
fn enforce_denies_and_warn_warns() {
    let enforce = policy(json!({"maxFirstStepWeight": 5}));
    let r = policy::apply(
        std::slice::from_ref(&enforce),
        &BTreeMap::new(),
        &obj(&canary()),
        &[],
    );
    assert_eq!(
        error_paths(&r),
        vec!["spec.rolloutStrategy.canary.steps[0].weight"]
    );
    assert!(
        r.errors[0]
            .to_string()
            .contains("violates RolloutPolicy strict")
    );
    let warn = policy(json!({"mode": "Warn", "maxFirstStepWeight": 5}));
    let r = policy::apply(&[warn], &BTreeMap::new(), &obj(&canary()), &[]);
    assert!(r.errors.is_empty());
    assert_eq!(
        warning_paths(&r),
        vec!["spec.rolloutStrategy.canary.steps[0].weight"]
    );
}

#[test]
fn namespace_selector_limits_the_policy() {
    let p = policy(
        json!({"maxFirstStepWeight": 5, "namespaceSelector": {"matchLabels": {"env": "prod"}}}),
    );
    let prod: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
    let dev: BTreeMap<String, String> = [("env".to_string(), "dev".to_string())].into();
    assert!(!policy::apply(std::slice::from_ref(&p), &prod, &obj(&canary()), &[]).is_valid());
    assert!(policy::apply(std::slice::from_ref(&p), &dev, &obj(&canary()), &[]).is_valid());
    assert!(policy::apply(&[p], &BTreeMap::new(), &obj(&canary()), &[]).is_valid());
}

#[test]
fn referenced_objects_warn_unless_a_policy_requires_them() {
    let missing = vec![Warning::new(
        FieldPath::new("spec").child("x"),
        "Service \"a\" does not exist",
    )];
    let r = policy::apply(&[], &BTreeMap::new(), &obj(&canary()), &missing);
    assert!(r.is_valid());
    assert_eq!(r.warnings.len(), 1);
    let p = policy(json!({"requireReferencedObjects": true}));
    let r = policy::apply(&[p], &BTreeMap::new(), &obj(&canary()), &missing);
    assert_eq!(error_paths(&r), vec!["spec.x"]);
    assert!(r.warnings.is_empty());
    let p = policy(json!({"requireReferencedObjects": true, "mode": "Warn"}));
    let r = policy::apply(&[p], &BTreeMap::new(), &obj(&canary()), &missing);
    assert!(r.is_valid());
}

#[test]
fn policy_objects_are_validated() {
    use storm_shared::rules::policy_spec::validate_rollout_policy;
    assert!(validate_rollout_policy(&policy(json!({"maxFirstStepWeight": 10}))).is_valid());
    let r = validate_rollout_policy(&policy(json!({
        "minOnTimeout": "2h", "maxOnTimeout": "1h", "allowedStrategies": [], "allowedRouters": [],
        "maxWeightIncrease": 0,
        "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}
    })));
    let mut paths = error_paths(&r);
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "spec.allowedRouters",
            "spec.allowedStrategies",
            "spec.maxWeightIncrease",
            "spec.minOnTimeout",
            "spec.namespaceSelector"
        ]
    );
    let r = validate_rollout_policy(&policy(json!({"maxOnTimeout": "forever"})));
    assert_eq!(error_paths(&r), vec!["spec.maxOnTimeout"]);
}
