//! Test fixtures: a valid canary StormService as JSON, and edits on it.
#![allow(dead_code)]

use serde_json::{Value, json};
use storm_shared::StormService;
use storm_shared::errors::Report;
use storm_shared::rules::{AnalysisBounds, parse, validate_storm_service};

/// A valid canary StormService with nginx routing.
pub fn canary() -> Value {
    json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "StormService",
        "metadata": {"name": "my-app", "namespace": "default"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "my-app"}},
            "template": {
                "metadata": {"labels": {"app": "my-app"}},
                "spec": {"roles": [{
                    "name": "server",
                    "replicas": 1,
                    "template": {"metadata": {"labels": {"app": "my-app"}},
                                 "spec": {"containers": [{"name": "app", "image": "my-app:v1"}]}}
                }]}
            },
            "rolloutStrategy": {
                "type": "Canary",
                "canary": {
                    "stableService": "my-app-stable",
                    "canaryService": "my-app-canary",
                    "steps": [
                        {"weight": 10, "pause": {"duration": "5m"}},
                        {"weight": 25, "pause": {"untilApproval": true},
                         "analysis": {"templates": [{"name": "success-rate-check"}]}},
                        {"weight": 50},
                        {"weight": 100}
                    ],
                    "trafficRouting": {"nginx": {"ingress": "my-app-ingress", "servicePort": 80}}
                }
            }
        }
    })
}

/// A valid blue-green StormService.
pub fn blue_green() -> Value {
    let mut v = canary();
    v["spec"]["rolloutStrategy"] = json!({
        "type": "BlueGreen",
        "blueGreen": {"activeService": "my-app-active", "previewService": "my-app-preview"}
    });
    v
}

/// Sets the value at a JSON pointer, creating objects on the way.
pub fn set(v: &mut Value, pointer: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        if let Ok(idx) = p.parse::<usize>()
            && cur.is_array()
        {
            if last {
                cur[idx] = value;
                return;
            }
            cur = &mut cur[idx];
        } else {
            if last {
                cur[*p] = value;
                return;
            }
            if cur.get(*p).is_none() {
                cur[*p] = json!({});
            }
            cur = &mut cur[*p];
        }
    }
}

/// Removes the value at a JSON pointer.
pub fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let p = v.pointer_mut(parent).expect("parent exists");
    if let Some(map) = p.as_object_mut() {
        map.remove(key);
    } else if let Some(arr) = p.as_array_mut() {
        arr.remove(key.parse::<usize>().expect("index"));
    }
}

/// Validates a JSON StormService (create).
pub fn validate(v: &Value) -> Report {
    let obj: StormService = parse(v).expect("fixture parses");
    validate_storm_service(&obj, None, &AnalysisBounds::default())
}

/// The error paths of a report, rendered.
pub fn error_paths(r: &Report) -> Vec<String> {
    r.errors.iter().map(|e| e.path.to_string()).collect()
}

/// The warning paths of a report, rendered.
pub fn warning_paths(r: &Report) -> Vec<String> {
    r.warnings.iter().map(|w| w.path.to_string()).collect()
}

/// Asserts that the object is rejected with exactly these error paths (in any order).
#[track_caller]
pub fn rejects(v: &Value, expected: &[&str]) -> Report {
    let r = validate(v);
    let mut got = error_paths(&r);
    got.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(
        got,
        want,
        "errors: {:#?}",
        r.errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    r
}

/// Asserts that the object is accepted.
#[track_caller]
pub fn accepts(v: &Value) -> Report {
    let r = validate(v);
    assert!(
        r.is_valid(),
        "unexpected errors: {:#?}",
        r.errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    r
}
