//! Every admission rule: an object it accepts and one it rejects, with the exact field path.

mod common;

use common::*;
use serde_json::{Value, json};
use storm_shared::StormService;
use storm_shared::rules::{AnalysisBounds, parse, validate_storm_service};

const RS: &str = "/spec/rolloutStrategy";
const CANARY: &str = "/spec/rolloutStrategy/canary";

#[test]
fn valid_canary_and_blue_green_are_accepted() {
    accepts(&canary());
    accepts(&blue_green());
}

#[test]
fn strategy_type_needs_its_own_block_only() {
    let mut v = canary();
    set(&mut v, &format!("{RS}/type"), json!("BlueGreen"));
    rejects(
        &v,
        &[
            "spec.rolloutStrategy.blueGreen",
            "spec.rolloutStrategy.canary",
        ],
    );

    let mut v = canary();
    set(
        &mut v,
        &format!("{RS}/blueGreen"),
        json!({"activeService": "a", "previewService": "b"}),
    );
    rejects(&v, &["spec.rolloutStrategy.blueGreen"]);

    let mut v = blue_green();
    set(&mut v, &format!("{RS}/type"), json!("Canary"));
    rejects(
        &v,
        &[
            "spec.rolloutStrategy.canary",
            "spec.rolloutStrategy.blueGreen",
        ],
    );
}

#[test]
fn canary_needs_steps() {
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps"), json!([]));
    rejects(&v, &["spec.rolloutStrategy.canary.steps"]);
}

#[test]
fn a_step_needs_content() {
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/2"), json!({}));
    rejects(&v, &["spec.rolloutStrategy.canary.steps[2]"]);
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/2"),
        json!({"analysis": {"templates": [{"name": "t"}]}}),
    );
    accepts(&v);
}

#[test]
fn weight_between_0_and_100() {
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/3/weight"), json!(150));
    let r = rejects(&v, &["spec.rolloutStrategy.canary.steps[3].weight"]);
    assert_eq!(
        r.errors[0].to_string(),
        "spec.rolloutStrategy.canary.steps[3].weight: Invalid value: 150: must be between 0 and 100"
    );
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/0/weight"), json!(-1));
    rejects(&v, &["spec.rolloutStrategy.canary.steps[0].weight"]);
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/0/weight"), json!(0));
    accepts(&v);
}

#[test]
fn weights_do_not_decrease() {
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/2/weight"), json!(20));
    rejects(&v, &["spec.rolloutStrategy.canary.steps[2].weight"]);
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/2/weight"), json!(25));
    accepts(&v);
}

#[test]
fn replica_steps_fit_the_service() {
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/2"), json!({"replicas": 5}));
    rejects(&v, &["spec.rolloutStrategy.canary.steps[2].replicas"]);
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/2"), json!({"replicas": 4}));
    accepts(&v);
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/2"),
        json!({"replicas": 2, "weight": 50}),
    );
    rejects(&v, &["spec.rolloutStrategy.canary.steps[2].replicas"]);
}

#[test]
fn pause_has_exactly_one_of_duration_and_approval() {
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/0/pause"),
        json!({"duration": "5m", "untilApproval": true}),
    );
    rejects(&v, &["spec.rolloutStrategy.canary.steps[0].pause"]);
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/0/pause"), json!({}));
    rejects(&v, &["spec.rolloutStrategy.canary.steps[0].pause"]);
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/0/pause"),
        json!({"untilApproval": false}),
    );
    rejects(&v, &["spec.rolloutStrategy.canary.steps[0].pause"]);
}

#[test]
fn pause_durations_parse_and_are_sane() {
    for bad in ["soon", "0s", "-5m", "200h", ""] {
        let mut v = canary();
        set(
            &mut v,
            &format!("{CANARY}/steps/0/pause/duration"),
            json!(bad),
        );
        rejects(&v, &["spec.rolloutStrategy.canary.steps[0].pause.duration"]);
    }
    for good in ["30s", "1h30m", "90", "168h"] {
        let mut v = canary();
        set(
            &mut v,
            &format!("{CANARY}/steps/0/pause/duration"),
            json!(good),
        );
        accepts(&v);
    }
}

#[test]
fn analysis_template_names_are_present_and_unique() {
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/1/analysis/templates"),
        json!([{"name": "a"}, {"name": "a"}]),
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.canary.steps[1].analysis.templates[1].name"],
    );
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/1/analysis/templates"),
        json!([{"name": ""}]),
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.canary.steps[1].analysis.templates[0].name"],
    );
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/1/analysis/templates"),
        json!([]),
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.canary.steps[1].analysis.templates"],
    );
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/1/analysis/args"),
        json!([{"name": "x", "value": "1"}, {"name": "x", "value": "2"}]),
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.canary.steps[1].analysis.args[1].name"],
    );
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/1/analysis/templates"),
        json!([{"name": "a"}, {"name": "a", "namespace": "default"}]),
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.canary.steps[1].analysis.templates[1].name"],
    );
}

#[test]
fn traffic_routing_names_exactly_one_router_with_its_fields() {
    let tr = format!("{CANARY}/trafficRouting");
    let mut v = canary();
    set(
        &mut v,
        &format!("{tr}/istio"),
        json!({"virtualService": "vs"}),
    );
    rejects(&v, &["spec.rolloutStrategy.canary.trafficRouting"]);
    let mut v = canary();
    set(&mut v, &tr, json!({}));
    rejects(&v, &["spec.rolloutStrategy.canary.trafficRouting"]);
    let mut v = canary();
    set(&mut v, &format!("{tr}/nginx/ingress"), json!(""));
    rejects(
        &v,
        &["spec.rolloutStrategy.canary.trafficRouting.nginx.ingress"],
    );
    for (router, body, path) in [
        (
            "istio",
            json!({"virtualService": ""}),
            "spec.rolloutStrategy.canary.trafficRouting.istio.virtualService",
        ),
        (
            "smi",
            json!({"trafficSplit": "Bad_Name"}),
            "spec.rolloutStrategy.canary.trafficRouting.smi.trafficSplit",
        ),
        (
            "gatewayAPI",
            json!({"httpRoute": ""}),
            "spec.rolloutStrategy.canary.trafficRouting.gatewayAPI.httpRoute",
        ),
    ] {
        let mut v = canary();
        set(&mut v, &tr, json!({ router: body }));
        rejects(&v, &[path]);
    }
    for (router, body) in [
        (
            "istio",
            json!({"virtualService": "vs", "destinationRule": "dr"}),
        ),
        ("smi", json!({"trafficSplit": "split"})),
        ("gatewayAPI", json!({"httpRoute": "route"})),
    ] {
        let mut v = canary();
        set(&mut v, &tr, json!({ router: body }));
        accepts(&v);
    }
}

#[test]
fn service_port_in_range() {
    for bad in [0, 65536, 70000] {
        let mut v = canary();
        set(
            &mut v,
            &format!("{CANARY}/trafficRouting/nginx/servicePort"),
            json!(bad),
        );
        rejects(
            &v,
            &["spec.rolloutStrategy.canary.trafficRouting.nginx.servicePort"],
        );
    }
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/trafficRouting/nginx/servicePort"),
        json!(65535),
    );
    accepts(&v);
}

#[test]
fn traffic_routing_needs_both_services() {
    let mut v = canary();
    remove(&mut v, &format!("{CANARY}/canaryService"));
    rejects(&v, &["spec.rolloutStrategy.canary.canaryService"]);
    let mut v = canary();
    remove(&mut v, &format!("{CANARY}/stableService"));
    remove(&mut v, &format!("{CANARY}/canaryService"));
    rejects(
        &v,
        &[
            "spec.rolloutStrategy.canary.stableService",
            "spec.rolloutStrategy.canary.canaryService",
        ],
    );
    // Without a router the Services are optional.
    remove(&mut v, &format!("{CANARY}/trafficRouting"));
    accepts(&v);
}

#[test]
fn stable_and_canary_services_differ() {
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/canaryService"),
        json!("my-app-stable"),
    );
    rejects(&v, &["spec.rolloutStrategy.canary.canaryService"]);
}

#[test]
fn active_and_preview_services_differ() {
    let mut v = blue_green();
    set(
        &mut v,
        &format!("{RS}/blueGreen/previewService"),
        json!("my-app-active"),
    );
    rejects(&v, &["spec.rolloutStrategy.blueGreen.previewService"]);
    let mut v = blue_green();
    set(&mut v, &format!("{RS}/blueGreen/activeService"), json!(""));
    rejects(&v, &["spec.rolloutStrategy.blueGreen.activeService"]);
}

#[test]
fn service_names_are_dns_1035_labels() {
    for bad in ["My-App", "1app", "app_stable", "app-"] {
        let mut v = canary();
        set(&mut v, &format!("{CANARY}/stableService"), json!(bad));
        rejects(&v, &["spec.rolloutStrategy.canary.stableService"]);
        let mut v = blue_green();
        set(
            &mut v,
            &format!("{RS}/blueGreen/previewService"),
            json!(bad),
        );
        rejects(&v, &["spec.rolloutStrategy.blueGreen.previewService"]);
    }
}

#[test]
fn blue_green_scale_down_delay_is_bounded() {
    let mut v = blue_green();
    set(
        &mut v,
        &format!("{RS}/blueGreen/scaleDownDelaySeconds"),
        json!(100_000),
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.blueGreen.scaleDownDelaySeconds"],
    );
    set(
        &mut v,
        &format!("{RS}/blueGreen/scaleDownDelaySeconds"),
        json!(600),
    );
    accepts(&v);
}

#[test]
fn error_threshold_is_a_percentage_in_range() {
    let p = format!("{RS}/autoRollback/onFailure/errorThreshold");
    for bad in [
        json!("150%"),
        json!("0%"),
        json!("five"),
        json!(0),
        json!(101),
    ] {
        let mut v = canary();
        set(&mut v, &p, bad);
        rejects(
            &v,
            &["spec.rolloutStrategy.autoRollback.onFailure.errorThreshold"],
        );
    }
    for good in [json!("5%"), json!("0.5%"), json!(5), json!("100%")] {
        let mut v = canary();
        set(&mut v, &p, good);
        accepts(&v);
    }
}

#[test]
fn on_timeout_parses() {
    let mut v = canary();
    set(
        &mut v,
        &format!("{RS}/autoRollback/onTimeout"),
        json!("half an hour"),
    );
    rejects(&v, &["spec.rolloutStrategy.autoRollback.onTimeout"]);
    set(
        &mut v,
        &format!("{RS}/autoRollback/onTimeout"),
        json!("30m"),
    );
    accepts(&v);
}

#[test]
fn auto_rollback_given_twice_differently_is_denied() {
    let mut v = canary();
    set(
        &mut v,
        &format!("{RS}/autoRollback"),
        json!({"enabled": true}),
    );
    set(
        &mut v,
        &format!("{CANARY}/autoRollback"),
        json!({"enabled": false}),
    );
    rejects(&v, &["spec.rolloutStrategy.canary.autoRollback"]);
    // Only in the legacy place: valid, with a warning (admission moves it).
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/autoRollback"),
        json!({"enabled": true}),
    );
    let r = accepts(&v);
    assert!(warning_paths(&r).contains(&"spec.rolloutStrategy.canary.autoRollback".to_string()));
}

#[test]
fn control_annotations_must_be_true() {
    let mut v = canary();
    set(
        &mut v,
        "/metadata/annotations",
        json!({"stormservice.aibrix.ai/rollout-pause": "yes"}),
    );
    let r = rejects(
        &v,
        &["metadata.annotations[stormservice.aibrix.ai/rollout-pause]"],
    );
    assert!(r.errors[0].to_string().contains("must be \"true\""));
    set(
        &mut v,
        "/metadata/annotations",
        json!({"stormservice.aibrix.ai/rollout-pause": "true"}),
    );
    accepts(&v);
}

#[test]
fn unknown_control_annotation_is_a_typo() {
    let mut v = canary();
    set(
        &mut v,
        "/metadata/annotations",
        json!({"stormservice.aibrix.ai/rollout-promote": "true"}),
    );
    let r = rejects(
        &v,
        &["metadata.annotations[stormservice.aibrix.ai/rollout-promote]"],
    );
    assert!(r.errors[0].to_string().contains("supported values"));
}

#[test]
fn abort_excludes_resume_and_approval() {
    let mut v = canary();
    set(
        &mut v,
        "/metadata/annotations",
        json!({
            "stormservice.aibrix.ai/rollout-abort": "true",
            "stormservice.aibrix.ai/rollout-resume": "true",
            "stormservice.aibrix.ai/rollout-approval": "true"
        }),
    );
    rejects(
        &v,
        &[
            "metadata.annotations[stormservice.aibrix.ai/rollout-resume]",
            "metadata.annotations[stormservice.aibrix.ai/rollout-approval]",
        ],
    );
    let mut v = canary();
    set(
        &mut v,
        "/metadata/annotations",
        json!({"stormservice.aibrix.ai/rollout-pause": "true", "stormservice.aibrix.ai/rollout-resume": "true"}),
    );
    rejects(
        &v,
        &["metadata.annotations[stormservice.aibrix.ai/rollout-resume]"],
    );
    let mut v = canary();
    set(
        &mut v,
        "/metadata/annotations",
        json!({"stormservice.aibrix.ai/rollout-abort": "true"}),
    );
    accepts(&v);
}

#[test]
fn approval_warns_when_nothing_waits() {
    let mut v = canary();
    set(
        &mut v,
        "/metadata/annotations",
        json!({"stormservice.aibrix.ai/rollout-approval": "true"}),
    );
    let r = accepts(&v);
    assert_eq!(
        warning_paths(&r),
        vec!["metadata.annotations[stormservice.aibrix.ai/rollout-approval]"]
    );
    // Paused at the approval step, but the controller has not said it waits (e.g. its analysis
    // is what the step waits for): still a warning.
    set(
        &mut v,
        "/status",
        json!({"rolloutStatus": {"phase": "Paused", "currentStepIndex": 1}}),
    );
    assert_eq!(warning_paths(&accepts(&v)).len(), 1);
    // The controller's condition says it waits: no warning.
    set(
        &mut v,
        "/status/rolloutStatus/conditions",
        json!([{"type": "Paused", "status": "True", "reason": "WaitingForApproval"}]),
    );
    assert!(accepts(&v).warnings.is_empty());
    // A condition that is no longer true does not count.
    set(
        &mut v,
        "/status/rolloutStatus/conditions",
        json!([{"type": "Paused", "status": "False", "reason": "WaitingForApproval"}]),
    );
    assert_eq!(warning_paths(&accepts(&v)).len(), 1);
}

#[test]
fn retry_warns_unless_aborted_or_degraded() {
    let mut v = canary();
    set(
        &mut v,
        "/metadata/annotations",
        json!({"stormservice.aibrix.ai/rollout-retry": "true"}),
    );
    assert_eq!(
        warning_paths(&accepts(&v)),
        vec!["metadata.annotations[stormservice.aibrix.ai/rollout-retry]"]
    );
    set(
        &mut v,
        "/status",
        json!({"rolloutStatus": {"phase": "Aborted"}}),
    );
    assert!(accepts(&v).warnings.is_empty());
}

#[test]
fn selector_must_match_template_labels() {
    // The canary sample with `selector` replaced; its template is labelled app: my-app.
    let with_selector = |selector: Value| {
        let mut v = canary();
        set(&mut v, "/spec/selector", selector);
        v
    };
    rejects(
        &with_selector(json!({"matchLabels": {"app": "other"}})),
        &["spec.template.metadata.labels"],
    );
    accepts(&with_selector(
        json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["my-app"]}]}),
    ));
    rejects(&with_selector(json!({})), &["spec.selector"]);
    // Labels alone: every one must be on the template, with its value; the template may have more.
    let mut v = with_selector(json!({"matchLabels": {"app": "my-app"}}));
    set(&mut v, "/spec/template/metadata/labels/tier", json!("gpu"));
    accepts(&v);
    set(
        &mut v,
        "/spec/selector",
        json!({"matchLabels": {"app": "my-app", "zone": "a"}}),
    );
    rejects(&v, &["spec.template.metadata.labels"]);
    // Labels and expressions together: both must hold.
    rejects(
        &with_selector(json!({"matchLabels": {"app": "my-app"},
               "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["my-app"]}]})),
        &["spec.template.metadata.labels"],
    );
    // An operator kube does not know is a broken selector, even beside labels that match.
    rejects(
        &with_selector(json!({"matchLabels": {"app": "my-app"},
               "matchExpressions": [{"key": "app", "operator": "Near", "values": ["x"]}]})),
        &["spec.selector"],
    );
}

#[test]
fn roles_are_named_unique_and_have_containers() {
    let roles = "/spec/template/spec/roles";
    let mut v = canary();
    set(&mut v, roles, json!([]));
    rejects(&v, &["spec.template.spec.roles"]);
    let role = json!({"name": "server", "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}});
    let mut v = canary();
    set(&mut v, roles, json!([role.clone(), role.clone()]));
    rejects(&v, &["spec.template.spec.roles[1].name"]);
    let mut v = canary();
    set(
        &mut v,
        roles,
        json!([{"name": "Server_1", "template": {"spec": {"containers": []}}}]),
    );
    rejects(
        &v,
        &[
            "spec.template.spec.roles[0].name",
            "spec.template.spec.roles[0].template.spec.containers",
        ],
    );
}

#[test]
fn budgets_are_integers_or_percentages() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/updateStrategy",
        json!({"maxSurge": "lots", "maxUnavailable": -1}),
    );
    rejects(
        &v,
        &[
            "spec.updateStrategy.maxSurge",
            "spec.updateStrategy.maxUnavailable",
        ],
    );
    set(
        &mut v,
        "/spec/updateStrategy",
        json!({"maxSurge": "25%", "maxUnavailable": 1}),
    );
    accepts(&v);
}

#[test]
fn warns_about_coarse_split_without_router() {
    let mut v = canary();
    remove(&mut v, &format!("{CANARY}/trafficRouting"));
    set(&mut v, "/spec/replicas", json!(3));
    let r = accepts(&v);
    // 10% of 3 RoleSets is one RoleSet, a third of capacity; 25% and 50% also round.
    assert!(warning_paths(&r).contains(&"spec.rolloutStrategy.canary.steps[0].weight".to_string()));
    set(&mut v, "/spec/replicas", json!(10));
    set(&mut v, &format!("{CANARY}/steps/1/weight"), json!(30));
    assert!(accepts(&v).warnings.is_empty());
}

#[test]
fn unknown_role_update_type_warns() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/template/spec/roles/0/updateStrategy",
        json!({"type": "Sideways"}),
    );
    assert_eq!(
        warning_paths(&accepts(&v)),
        vec!["spec.template.spec.roles[0].updateStrategy.type"]
    );
}

fn in_progress(v: &serde_json::Value, phase: &str) -> StormService {
    let mut old = v.clone();
    set(
        &mut old,
        "/status",
        json!({"rolloutStatus": {"phase": phase, "currentStepIndex": 1}}),
    );
    parse(&old).expect("parses")
}

#[test]
fn strategy_type_is_fixed_while_a_rollout_runs() {
    let old = in_progress(&canary(), "Progressing");
    let new: StormService = parse(&blue_green()).expect("parses");
    let r = validate_storm_service(&new, Some(&old), &AnalysisBounds::default());
    assert_eq!(error_paths(&r), vec!["spec.rolloutStrategy.type"]);
    // Completed: free to change.
    let old = in_progress(&canary(), "Completed");
    assert!(validate_storm_service(&new, Some(&old), &AnalysisBounds::default()).is_valid());
}

#[test]
fn router_is_fixed_while_a_rollout_runs() {
    let old = in_progress(&canary(), "Paused");
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/trafficRouting"),
        json!({"istio": {"virtualService": "vs"}}),
    );
    let new: StormService = parse(&v).expect("parses");
    let r = validate_storm_service(&new, Some(&old), &AnalysisBounds::default());
    assert_eq!(
        error_paths(&r),
        vec!["spec.rolloutStrategy.canary.trafficRouting"]
    );
    // Other edits (a step's pause) are fine while paused.
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/0/pause/duration"),
        json!("1m"),
    );
    let new: StormService = parse(&v).expect("parses");
    assert!(validate_storm_service(&new, Some(&old), &AnalysisBounds::default()).is_valid());
    // Removing the strategy mid-rollout is refused too.
    let mut v = canary();
    remove(&mut v, RS);
    let new: StormService = parse(&v).expect("parses");
    assert_eq!(
        error_paths(&validate_storm_service(
            &new,
            Some(&old),
            &AnalysisBounds::default()
        )),
        vec!["spec.rolloutStrategy"]
    );
}

#[test]
fn one_object_with_many_faults_reports_all_of_them() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/invalid/many-faults.yaml"
    ))
    .expect("fixture");
    let doc: serde_json::Value =
        serde_yaml_ng::from_str(text.split("\n---\n").next().expect("doc")).expect("yaml");
    let r = validate(&doc);
    let paths = error_paths(&r);
    for want in [
        "spec.template.metadata.labels",
        "spec.rolloutStrategy.canary.steps[1].weight",
        "spec.rolloutStrategy.canary.steps[2].weight",
        "spec.rolloutStrategy.canary.steps[2].pause",
        "spec.rolloutStrategy.canary.steps[3]",
        "spec.rolloutStrategy.canary.steps[4].replicas",
        "spec.rolloutStrategy.canary.steps[5].pause.duration",
        "spec.rolloutStrategy.canary.stableService",
        "spec.rolloutStrategy.canary.canaryService",
        "spec.rolloutStrategy.canary.trafficRouting",
        "spec.rolloutStrategy.canary.trafficRouting.nginx.servicePort",
        "spec.rolloutStrategy.autoRollback.onTimeout",
        "spec.rolloutStrategy.autoRollback.onFailure.errorThreshold",
        "metadata.annotations[stormservice.aibrix.ai/rollout-resume]",
    ] {
        assert!(
            paths.contains(&want.to_string()),
            "missing {want} in {paths:#?}"
        );
    }
    assert!(r.errors.len() >= 16, "{}", r.errors.len());
}

#[test]
fn type_errors_name_the_field() {
    let mut v = canary();
    set(&mut v, &format!("{CANARY}/steps/1/weight"), json!("ten"));
    let e = parse::<StormService>(&v).expect_err("a string weight must not parse");
    assert_eq!(
        e.path.as_str(),
        "spec.rolloutStrategy.canary.steps[1].weight"
    );
}

/// The controller reads templates with cluster-wide rights: a StormService may only use its own
/// namespace's.
#[test]
fn analysis_templates_come_from_the_storm_services_own_namespace() {
    let mut v = canary();
    set(
        &mut v,
        &format!("{CANARY}/steps/1/analysis/templates"),
        json!([{"name": "a", "namespace": "default"}, {"name": "b", "namespace": "team-b"}]),
    );
    let r = rejects(
        &v,
        &["spec.rolloutStrategy.canary.steps[1].analysis.templates[1].namespace"],
    );
    assert_eq!(
        r.errors[0].to_string(),
        "spec.rolloutStrategy.canary.steps[1].analysis.templates[1].namespace: Forbidden: AnalysisTemplates are read from the StormService's own namespace; remove namespace or copy the template"
    );

    let mut v = blue_green();
    for field in ["prePromotionAnalysis", "postPromotionAnalysis"] {
        set(
            &mut v,
            &format!("{RS}/blueGreen/{field}"),
            json!({"templates": [{"name": "smoke", "namespace": "team-b"}]}),
        );
    }
    rejects(
        &v,
        &[
            "spec.rolloutStrategy.blueGreen.prePromotionAnalysis.templates[0].namespace",
            "spec.rolloutStrategy.blueGreen.postPromotionAnalysis.templates[0].namespace",
        ],
    );

    // Without a namespace of its own (a manifest to lint), a named namespace cannot be shown to match.
    let mut v = canary();
    v["metadata"].as_object_mut().unwrap().remove("namespace");
    set(
        &mut v,
        &format!("{CANARY}/steps/1/analysis/templates"),
        json!([{"name": "a", "namespace": "default"}, {"name": "b", "namespace": ""}]),
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.canary.steps[1].analysis.templates[0].namespace"],
    );
}

#[test]
fn names_the_controller_derives_must_stay_valid() {
    // 48 characters is the most: RoleSets are <name>-<revision>-<index>, a 63-character label value.
    let mut v = canary();
    set(&mut v, "/metadata/name", json!("a".repeat(48)));
    accepts(&v);
    set(&mut v, "/metadata/name", json!("a".repeat(49)));
    rejects(&v, &["metadata.name"]);
    // A stateful role's Pods use their name as hostname: name + role must fit 63 with the suffixes.
    let mut v = canary();
    set(&mut v, "/metadata/name", json!("a".repeat(30)));
    set(&mut v, "/spec/template/spec/roles/0/stateful", json!(true));
    set(
        &mut v,
        "/spec/template/spec/roles/0/name",
        json!("r".repeat(13)),
    );
    accepts(&v);
    set(
        &mut v,
        "/spec/template/spec/roles/0/name",
        json!("r".repeat(14)),
    );
    rejects(&v, &["spec.template.spec.roles[0].name"]);
    // A stateless role's Pods have no hostname: no limit beyond the role name's own.
    set(&mut v, "/spec/template/spec/roles/0/stateful", json!(false));
    accepts(&v);
}

#[test]
fn a_name_that_cannot_name_the_headless_service_is_a_warning() {
    let mut v = canary();
    set(&mut v, "/metadata/name", json!("1p1d"));
    let obj: StormService = serde_json::from_value(v).expect("object");
    let report = validate_storm_service(&obj, None, &AnalysisBounds::default());
    assert!(report.is_valid());
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.path.as_str() == "metadata.name" && w.message.contains("headless Service")),
        "{:?}",
        report.warnings
    );
}

#[test]
fn a_scheduling_strategy_names_one_known_scheduler() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/template/spec/schedulingStrategy",
        json!({"coschedulingSchedulingStrategy": {"minMember": 2}}),
    );
    accepts(&v);
    set(
        &mut v,
        "/spec/template/spec/roles/0/schedulingStrategy",
        json!({"kueueSchedulingStrategy": {}}),
    );
    rejects(
        &v,
        &["spec.template.spec.roles[0].schedulingStrategy.kueueSchedulingStrategy"],
    );
    let mut v = canary();
    set(
        &mut v,
        "/spec/template/spec/schedulingStrategy",
        json!({"coschedulingSchedulingStrategy": {}, "volcanoSchedulingStrategy": {}}),
    );
    rejects(&v, &["spec.template.spec.schedulingStrategy"]);
}

#[test]
fn an_error_rate_metric_needs_no_condition_of_its_own_when_a_threshold_is_set() {
    // errorThreshold is its condition: the controller fails a measurement above it. Admission used
    // to demand successCondition/failureCondition and denied what the controller runs.
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        json!({"enabled": true, "onFailure": {"errorThreshold": "5%", "errorRate": {
            "name": "errors",
            "provider": {"prometheus": {"address": "http://prom:9090", "query": "errors"}},
            "interval": "30s"
        }}}),
    );
    accepts(&v);
    // Without a threshold the metric decides by its own conditions, so one is needed.
    remove(
        &mut v,
        "/spec/rolloutStrategy/autoRollback/onFailure/errorThreshold",
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.autoRollback.onFailure.errorRate.successCondition"],
    );
}

#[test]
fn a_group_roles_own_gang_excludes_the_roleset_gang() {
    // One PodGroup per group of podGroupSize Pods, or one for the RoleSet: a Pod in both would
    // wait for a gang that never forms.
    let mut v = canary();
    set(&mut v, "/spec/template/spec/roles/0/podGroupSize", json!(2));
    set(
        &mut v,
        "/spec/template/spec/roles/0/schedulingStrategy",
        json!({"coschedulingSchedulingStrategy": {"minMember": 2}}),
    );
    accepts(&v);
    set(
        &mut v,
        "/spec/template/spec/schedulingStrategy",
        json!({"coschedulingSchedulingStrategy": {"minMember": 4}}),
    );
    let r = rejects(&v, &["spec.template.spec.roles[0].schedulingStrategy"]);
    assert!(
        r.errors[0]
            .detail
            .contains("one PodGroup of a scheduler only"),
        "{:?}",
        r.errors[0]
    );
    // Two schedulers: marked for both, admitted with a warning.
    set(
        &mut v,
        "/spec/template/spec/schedulingStrategy",
        json!({"volcanoSchedulingStrategy": {"minMember": 4}}),
    );
    let r = accepts(&v);
    assert_eq!(
        warning_paths(&r),
        ["spec.template.spec.roles[0].schedulingStrategy"]
    );
    // A role's own gang without groups does nothing: a warning, not a denial (AIBrix accepts it).
    let mut v = canary();
    set(
        &mut v,
        "/spec/template/spec/roles/0/schedulingStrategy",
        json!({"coschedulingSchedulingStrategy": {}}),
    );
    let r = accepts(&v);
    assert_eq!(
        warning_paths(&r),
        ["spec.template.spec.roles[0].schedulingStrategy"]
    );
    // In-place updates do not apply to groups: warned, replaced whole.
    let mut v = canary();
    set(&mut v, "/spec/template/spec/roles/0/podGroupSize", json!(2));
    set(
        &mut v,
        "/spec/template/spec/roles/0/updateStrategy",
        json!({"type": "InPlaceIfPossible"}),
    );
    let r = accepts(&v);
    assert_eq!(
        warning_paths(&r),
        ["spec.template.spec.roles[0].updateStrategy.type"]
    );
}

#[test]
fn a_grace_period_shorter_than_the_startup_window_warns_with_the_numbers() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/template/spec/roles/0/template/spec/containers/0/startupProbe",
        serde_json::json!({"httpGet": {"path": "/health", "port": 8000},
            "initialDelaySeconds": 60, "periodSeconds": 30, "failureThreshold": 40}),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/autoRollback",
        serde_json::json!({"onFailure": {"healthCheckGracePeriod": "5m"}}),
    );
    let r = validate(&v);
    assert!(r.errors.is_empty(), "{r:?}");
    let path = "spec.rolloutStrategy.autoRollback.onFailure.healthCheckGracePeriod";
    let w = r
        .warnings
        .iter()
        .find(|w| w.path.as_str() == path)
        .unwrap_or_else(|| panic!("a warning at {path}: {r:?}"));
    // 60 + 30 x 40 seconds (no readiness probe to add).
    assert!(
        w.message.contains("role server container app (21m:")
            && w.message.contains("set at least 21m or"),
        "{}",
        w.message
    );
    // Long enough, or left to its default: no warning.
    for grace in [serde_json::json!("30m"), serde_json::Value::Null] {
        set(
            &mut v,
            "/spec/rolloutStrategy/autoRollback/onFailure/healthCheckGracePeriod",
            grace,
        );
        assert!(!warning_paths(&validate(&v)).contains(&path.to_string()));
    }
}

#[test]
fn drain_delays_are_between_zero_and_a_day_in_both_strategies() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/scaleDownDelaySeconds",
        json!(86401),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/abortScaleDownDelaySeconds",
        json!(-1),
    );
    let r = rejects(
        &v,
        &[
            "spec.rolloutStrategy.canary.scaleDownDelaySeconds",
            "spec.rolloutStrategy.canary.abortScaleDownDelaySeconds",
        ],
    );
    assert!(
        r.errors
            .iter()
            .any(|e| e.to_string().contains("between 0 and 86400"))
    );
    let mut v = blue_green();
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/abortScaleDownDelaySeconds",
        json!(90000),
    );
    rejects(
        &v,
        &["spec.rolloutStrategy.blueGreen.abortScaleDownDelaySeconds"],
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/abortScaleDownDelaySeconds",
        json!(600),
    );
    accepts(&v);
}

#[test]
fn preview_replica_count_is_between_one_and_replicas_and_auto_promotion_seconds_a_day() {
    let mut v = blue_green();
    let replicas = v["spec"]["replicas"].as_i64().unwrap_or(1);
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/previewReplicaCount",
        json!(replicas + 1),
    );
    let r = rejects(&v, &["spec.rolloutStrategy.blueGreen.previewReplicaCount"]);
    assert!(
        r.errors.iter().any(|e| e
            .to_string()
            .contains(&format!("between 1 and spec.replicas ({replicas})"))),
        "{r:?}"
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/previewReplicaCount",
        json!(1),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/autoPromotionSeconds",
        json!(86401),
    );
    rejects(&v, &["spec.rolloutStrategy.blueGreen.autoPromotionSeconds"]);
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/autoPromotionSeconds",
        json!(600),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/blueGreen/autoPromotionEnabled",
        json!(true),
    );
    let r = accepts(&v);
    assert!(
        warning_paths(&r)
            .contains(&"spec.rolloutStrategy.blueGreen.autoPromotionSeconds".to_string()),
        "{r:?}"
    );
}

#[test]
fn dynamic_stable_scale_needs_a_traffic_router() {
    let mut v = canary();
    remove(&mut v, "/spec/rolloutStrategy/canary/trafficRouting");
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/dynamicStableScale",
        json!(true),
    );
    let r = rejects(&v, &["spec.rolloutStrategy.canary.dynamicStableScale"]);
    assert!(
        r.errors
            .iter()
            .any(|e| e.to_string().contains("needs trafficRouting")),
        "{r:?}"
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/dynamicStableScale",
        json!(false),
    );
    accepts(&v);
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/trafficRouting",
        json!({"nginx": {"ingress": "my-app-ingress", "servicePort": 80}}),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/dynamicStableScale",
        json!(true),
    );
    accepts(&v);
}

#[test]
fn a_capacity_budget_a_rollout_cannot_fit_is_denied_with_the_arithmetic() {
    let mut v = canary();
    set(
        &mut v,
        "/spec/template/spec/roles/0/template/spec/containers/0/resources",
        json!({"limits": {"nvidia.com/gpu": "2"}}),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/capacityBudget",
        json!({"resource": "nvidia.com/gpu", "maxExtra": 2}),
    );
    // A routed canary keeps stable whole until the promotion: 4 RoleSets × 2 GPUs above steady state.
    let r = rejects(&v, &["spec.rolloutStrategy.capacityBudget.maxExtra"]);
    let msg = r.errors[0].to_string();
    assert!(
        msg.contains("one RoleSet holds 2 nvidia.com/gpu (server 1 Pods × 2)")
            && msg.contains("4 RoleSets × 2 = 8 above steady state")
            && msg.contains("set canary.dynamicStableScale: true"),
        "{msg}"
    );
    // With dynamicStableScale one RoleSet (2) is enough.
    set(
        &mut v,
        "/spec/rolloutStrategy/canary/dynamicStableScale",
        json!(true),
    );
    accepts(&v);
    set(
        &mut v,
        "/spec/rolloutStrategy/capacityBudget/maxExtra",
        json!(1),
    );
    let r = rejects(&v, &["spec.rolloutStrategy.capacityBudget.maxExtra"]);
    assert!(
        r.errors[0].to_string().contains("1 RoleSet × 2 = 2"),
        "{r:?}"
    );

    // Only extended resources, in whole units.
    set(
        &mut v,
        "/spec/rolloutStrategy/capacityBudget",
        json!({"resource": "cpu", "maxExtra": 2}),
    );
    rejects(&v, &["spec.rolloutStrategy.capacityBudget.resource"]);
    set(
        &mut v,
        "/spec/rolloutStrategy/capacityBudget",
        json!({"resource": "nvidia.com/gpu", "maxExtra": 2}),
    );
    set(
        &mut v,
        "/spec/template/spec/roles/0/template/spec/containers/0/resources",
        json!({"limits": {"nvidia.com/gpu": "500m"}}),
    );
    let r = rejects(&v, &["spec.rolloutStrategy.capacityBudget.resource"]);
    assert!(
        r.errors[0]
            .to_string()
            .contains("containers[0].resources: nvidia.com/gpu is \"500m\", not a whole number"),
        "{r:?}"
    );
    // A template that requests none of it: the budget limits nothing, and says so.
    remove(
        &mut v,
        "/spec/template/spec/roles/0/template/spec/containers/0/resources",
    );
    let r = accepts(&v);
    assert!(
        warning_paths(&r).contains(&"spec.rolloutStrategy.capacityBudget".to_string()),
        "{r:?}"
    );
}

#[test]
fn a_blue_green_needs_a_whole_second_revision_in_its_budget() {
    let mut v = blue_green();
    let replicas = v["spec"]["replicas"].as_i64().unwrap_or(1);
    set(
        &mut v,
        "/spec/template/spec/roles/0/template/spec/containers/0/resources",
        json!({"limits": {"nvidia.com/gpu": "1"}}),
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/capacityBudget",
        json!({"resource": "nvidia.com/gpu", "maxExtra": replicas - 1}),
    );
    let r = rejects(&v, &["spec.rolloutStrategy.capacityBudget.maxExtra"]);
    assert!(
        r.errors[0].to_string().contains(&format!(
            "{replicas} RoleSets × 1 = {replicas} above steady state"
        )),
        "{r:?}"
    );
    set(
        &mut v,
        "/spec/rolloutStrategy/capacityBudget/maxExtra",
        json!(replicas),
    );
    accepts(&v);
}
