//! Defaulting: what admission fills in, and that doing it twice changes nothing.

mod common;

use common::*;
use serde_json::json;
use storm_shared::defaults::{apply_defaults, default_storm_service};

#[test]
fn absent_auto_rollback_gets_the_full_default() {
    let mut v = canary();
    let warnings = apply_defaults(&mut v).expect("patch applies");
    assert!(warnings.is_empty());
    assert_eq!(
        v["spec"]["rolloutStrategy"]["autoRollback"],
        json!({"enabled": true, "onFailure": {"analysisFailure": true, "healthCheckFailure": true}, "onTimeout": "30m"})
    );
}

#[test]
fn missing_sub_fields_are_filled_and_given_ones_kept() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        json!({"enabled": false, "onFailure": {"errorThreshold": "5%"}}),
    );
    apply_defaults(&mut v).expect("patch applies");
    assert_eq!(
        v["spec"]["rolloutStrategy"]["autoRollback"],
        json!({
            "enabled": false,
            "onFailure": {"errorThreshold": "5%", "analysisFailure": true, "healthCheckFailure": true},
            "onTimeout": "30m"
        })
    );
}

#[test]
fn explicit_false_is_not_overwritten() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        json!({"enabled": true, "onFailure": {"analysisFailure": false, "healthCheckFailure": false}, "onTimeout": "1h"}),
    );
    let d = default_storm_service(&v);
    assert!(
        d.patch
            .iter()
            .all(|op| !op.path().to_string().contains("autoRollback")),
        "{:?}",
        d.patch
    );
}

#[test]
fn drain_delays_default_with_a_router_and_stay_unset_without_one() {
    let routed = canary();
    assert!(
        routed
            .pointer("/spec/rolloutStrategy/canary/trafficRouting")
            .is_some()
    );
    let mut v = routed.clone();
    apply_defaults(&mut v).expect("patch applies");
    let c = &v["spec"]["rolloutStrategy"]["canary"];
    assert_eq!(
        (
            &c["scaleDownDelaySeconds"],
            &c["abortScaleDownDelaySeconds"]
        ),
        (&json!(60), &json!(30))
    );
    // Given values are kept, 0 included.
    let mut v = routed.clone();
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/scaleDownDelaySeconds",
        json!(0),
    );
    apply_defaults(&mut v).expect("patch applies");
    assert_eq!(
        v["spec"]["rolloutStrategy"]["canary"]["scaleDownDelaySeconds"],
        json!(0)
    );
    // Without a router: nothing added (adding a router later gets the defaults).
    let mut v = routed;
    v["spec"]["rolloutStrategy"]["canary"]
        .as_object_mut()
        .expect("canary")
        .remove("trafficRouting");
    apply_defaults(&mut v).expect("patch applies");
    let c = &v["spec"]["rolloutStrategy"]["canary"];
    assert!(
        c.get("scaleDownDelaySeconds").is_none() && c.get("abortScaleDownDelaySeconds").is_none()
    );
}

#[test]
fn legacy_auto_rollback_is_moved_with_a_warning() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/autoRollback",
        json!({"enabled": true, "onFailure": {"healthCheckFailure": true}}),
    );
    let warnings = apply_defaults(&mut v).expect("patch applies");
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        warnings[0].path.as_str(),
        "spec.rolloutStrategy.canary.autoRollback"
    );
    assert!(
        v["spec"]["rolloutStrategy"]["canary"]
            .get("autoRollback")
            .is_none()
    );
    assert_eq!(
        v["spec"]["rolloutStrategy"]["autoRollback"],
        json!({"enabled": true, "onFailure": {"healthCheckFailure": true, "analysisFailure": true}, "onTimeout": "30m"})
    );
    accepts(&v);
}

#[test]
fn identical_duplicate_is_removed_different_one_left_for_validation() {
    let ar = json!({"enabled": true});
    let mut v = canary();
    set(&mut v, "/spec/rolloutStrategy/autoRollback", ar.clone());
    set(&mut v, "/spec/rolloutStrategy/canary/autoRollback", ar);
    let w = apply_defaults(&mut v).expect("applies");
    assert_eq!(w.len(), 1);
    assert!(
        v["spec"]["rolloutStrategy"]["canary"]
            .get("autoRollback")
            .is_none()
    );

    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        json!({"enabled": true}),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/autoRollback",
        json!({"enabled": false}),
    );
    apply_defaults(&mut v).expect("applies");
    assert_eq!(
        v["spec"]["rolloutStrategy"]["canary"]["autoRollback"],
        json!({"enabled": false})
    );
    rejects(&v, &["spec.rolloutStrategy.canary.autoRollback"]);
}

#[test]
fn blue_green_defaults() {
    let mut v = blue_green();
    apply_defaults(&mut v).expect("applies");
    assert_eq!(
        v["spec"]["rolloutStrategy"]["blueGreen"]["scaleDownDelaySeconds"],
        json!(30)
    );
    assert_eq!(
        v["spec"]["rolloutStrategy"]["blueGreen"]["autoPromotionEnabled"],
        json!(false)
    );
    let mut v = blue_green();
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/scaleDownDelaySeconds",
        json!(600),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/autoPromotionEnabled",
        json!(true),
    );
    apply_defaults(&mut v).expect("applies");
    assert_eq!(
        v["spec"]["rolloutStrategy"]["blueGreen"]["scaleDownDelaySeconds"],
        json!(600)
    );
    assert_eq!(
        v["spec"]["rolloutStrategy"]["blueGreen"]["autoPromotionEnabled"],
        json!(true)
    );
}

#[test]
fn no_strategy_no_defaults() {
    let mut v = canary();
    remove(&mut v, "/spec/rolloutStrategy");
    assert!(default_storm_service(&v).patch.is_empty());
}

#[test]
fn null_counts_as_unset() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        json!({"enabled": null, "onTimeout": null}),
    );
    apply_defaults(&mut v).expect("applies");
    assert_eq!(
        v["spec"]["rolloutStrategy"]["autoRollback"]["enabled"],
        json!(true)
    );
    assert_eq!(
        v["spec"]["rolloutStrategy"]["autoRollback"]["onTimeout"],
        json!("30m")
    );
}

#[test]
fn patch_is_json_patch_with_pointer_paths() {
    let d = default_storm_service(&canary());
    let rendered = serde_json::to_value(&d.patch).expect("serializes");
    assert_eq!(rendered[0]["op"], "add");
    assert_eq!(rendered[0]["path"], "/spec/rolloutStrategy/autoRollback");
}
