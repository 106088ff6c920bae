//! Property tests: defaulting is idempotent, a defaulted valid object stays valid, validation never panics.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use storm_shared::defaults::{apply_defaults, default_storm_service};
use storm_shared::rules::{AnalysisBounds, parse, validate_storm_service};
use storm_shared::{StormService, references, units};

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop_oneof![Just(None), s.prop_map(Some)].boxed()
}

fn duration() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("5m")),
        Just(json!("1h30m")),
        Just(json!("0s")),
        Just(json!("90")),
        Just(json!("soon")),
        Just(json!("")),
        Just(json!(null)),
        "[0-9]{1,4}(ms|s|m|h)".prop_map(Value::from),
    ]
}

fn step() -> impl Strategy<Value = Value> {
    (
        opt(-10i64..130),
        opt(-2i64..8),
        opt((opt(duration()), opt(any::<bool>()))),
        opt(prop::collection::vec("[a-z-]{0,6}", 0..3)),
    )
        .prop_map(|(weight, replicas, pause, analysis)| {
            let mut s = json!({});
            if let Some(w) = weight {
                s["weight"] = json!(w);
            }
            if let Some(r) = replicas {
                s["replicas"] = json!(r);
            }
            if let Some((d, a)) = pause {
                let mut p = json!({});
                if let Some(d) = d {
                    p["duration"] = d;
                }
                if let Some(a) = a {
                    p["untilApproval"] = json!(a);
                }
                s["pause"] = p;
            }
            if let Some(names) = analysis {
                s["analysis"] = json!({"templates": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()});
            }
            s
        })
}

fn auto_rollback() -> impl Strategy<Value = Value> {
    (
        opt(any::<bool>()),
        opt((
            opt(any::<bool>()),
            opt(any::<bool>()),
            opt(prop_oneof![
                Just(json!("5%")),
                Just(json!(150)),
                Just(json!("x"))
            ]),
        )),
        opt(duration()),
    )
        .prop_map(|(enabled, on_failure, timeout)| {
            let mut a = json!({});
            if let Some(e) = enabled {
                a["enabled"] = json!(e);
            }
            if let Some((af, hf, th)) = on_failure {
                let mut f = json!({});
                if let Some(v) = af {
                    f["analysisFailure"] = json!(v);
                }
                if let Some(v) = hf {
                    f["healthCheckFailure"] = json!(v);
                }
                if let Some(v) = th {
                    f["errorThreshold"] = v;
                }
                a["onFailure"] = f;
            }
            if let Some(t) = timeout {
                a["onTimeout"] = t;
            }
            a
        })
}

fn routing() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"nginx": {"ingress": "web", "servicePort": 80}})),
        Just(json!({"nginx": {"ingress": "", "servicePort": 0}})),
        Just(json!({"istio": {"virtualService": "vs"}, "smi": {"trafficSplit": "ts"}})),
        Just(json!({"gatewayAPI": {"httpRoute": "r"}})),
        Just(json!({})),
    ]
}

fn storm_service() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        prop::collection::vec(step(), 0..6),
        opt(routing()),
        opt(auto_rollback()),
        opt(auto_rollback()),
        opt(("[a-z-]{0,5}", "[a-z-]{0,5}")),
        opt(1i64..6),
        opt(prop::sample::select(vec!["true", "false", "yes"])),
    )
        .prop_map(|(blue_green, steps, tr, ar, legacy_ar, services, replicas, annotation)| {
            let mut v = canary();
            if let Some(r) = replicas {
                v["spec"]["replicas"] = json!(r);
            }
            if blue_green {
                v["spec"]["rolloutStrategy"] = json!({"type": "BlueGreen", "blueGreen": {
                    "activeService": services.as_ref().map_or("a".to_string(), |s| s.0.clone()),
                    "previewService": services.as_ref().map_or("b".to_string(), |s| s.1.clone()),
                }});
            } else {
                let c = &mut v["spec"]["rolloutStrategy"]["canary"];
                c["steps"] = json!(steps);
                match tr {
                    Some(tr) => c["trafficRouting"] = tr,
                    None => {
                        c.as_object_mut().expect("object").remove("trafficRouting");
                    }
                }
                if let Some((s, cs)) = services {
                    c["stableService"] = json!(s);
                    c["canaryService"] = json!(cs);
                }
                if let Some(l) = legacy_ar {
                    c["autoRollback"] = l;
                }
            }
            if let Some(a) = ar {
                v["spec"]["rolloutStrategy"]["autoRollback"] = a;
            }
            if let Some(a) = annotation {
                v["metadata"]["annotations"] = json!({"stormservice.aibrix.ai/rollout-approval": a});
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn defaulting_is_idempotent(v in storm_service()) {
        let mut once = v.clone();
        apply_defaults(&mut once).expect("first defaulting applies");
        let again = default_storm_service(&once);
        prop_assert!(again.patch.is_empty(), "second defaulting changed {:?}", again.patch);
    }

    #[test]
    fn defaulted_valid_objects_stay_valid(v in storm_service()) {
        let Ok(obj) = parse::<StormService>(&v) else { return Ok(()) };
        let before = validate_storm_service(&obj, None, &AnalysisBounds::default());
        let mut d = v.clone();
        apply_defaults(&mut d).expect("defaulting applies");
        let after: StormService = parse(&d).expect("defaulted object still parses");
        let after = validate_storm_service(&after, None, &AnalysisBounds::default());
        if before.is_valid() {
            prop_assert!(after.is_valid(), "defaulting broke a valid object: {:?}", after.errors);
        }
    }

    #[test]
    fn validation_never_panics(v in storm_service(), old in storm_service(), phase in prop::sample::select(vec!["Progressing", "Paused", "Completed"])) {
        if let (Ok(obj), Ok(mut old_obj)) = (parse::<StormService>(&v), parse::<StormService>(&old)) {
            old_obj.status = Some(storm_shared::types::stormservice::StormServiceStatus {
                rollout_status: Some(serde_json::from_value(json!({"phase": phase, "currentStepIndex": 7})).expect("status")),
                ..Default::default()
            });
            let _ = validate_storm_service(&obj, Some(&old_obj), &AnalysisBounds::default());
            let _ = storm_shared::policy::evaluate(&Default::default(), &obj, &[]);
            struct Nothing;
            impl references::ClusterLookup for Nothing {
                fn service(&self, _: &str, _: &str) -> references::Presence<references::ServiceInfo> { references::Presence::Missing }
                fn ingress(&self, _: &str, _: &str) -> references::Presence<references::RouteInfo> { references::Presence::Missing }
                fn virtual_service(&self, _: &str, _: &str) -> references::Presence<references::RouteInfo> { references::Presence::Missing }
                fn destination_rule(&self, _: &str, _: &str) -> references::Presence<()> { references::Presence::Missing }
                fn traffic_split(&self, _: &str, _: &str) -> references::Presence<references::RouteInfo> { references::Presence::Missing }
                fn http_route(&self, _: &str, _: &str) -> references::Presence<references::RouteInfo> { references::Presence::Missing }
                fn analysis_template(&self, _: &str, _: &str) -> references::Presence<()> { references::Presence::Missing }
            }
            let _ = references::check_references(&obj, &Nothing);
        }
    }

    #[test]
    fn duration_parsing_never_panics(s in "\\PC{0,12}") {
        let _ = units::parse_duration(&s);
        let _ = units::parse_percent(&s);
    }
}
