//! Defaulting: what the mutating webhook fills in, as JSON Patch operations.
//!
//! Works on the raw JSON the API server sends, so fields this version doesn't know survive untouched.
//! Idempotent: defaulting a defaulted object returns no operations.

use crate::errors::{FieldPath, Warning};
use json_patch::{
    AddOperation, MoveOperation, PatchOperation, RemoveOperation, jsonptr::PointerBuf,
};
use serde_json::{Value, json};

/// Default `autoRollback.onTimeout`.
pub const DEFAULT_ON_TIMEOUT: &str = "30m";
/// Default `blueGreen.scaleDownDelaySeconds`.
pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i64 = 30;
/// Default `canary.scaleDownDelaySeconds` with a traffic router: the old stable served all the
/// traffic until the last weight moved, so the longest streaming responses are still in flight.
pub const DEFAULT_CANARY_SCALE_DOWN_DELAY_SECONDS: i64 = 60;
/// Default `abortScaleDownDelaySeconds` (blue-green, and canary with a traffic router).
pub const DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS: i64 = 30;

/// The operations that default an object, and what the user should hear about them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Defaulted {
    /// JSON Patch operations, applied in order.
    pub patch: Vec<PatchOperation>,
    /// Warnings, e.g. that `autoRollback` was moved.
    pub warnings: Vec<Warning>,
}

fn pointer(parts: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(parts.iter().copied())
}

fn add(out: &mut Defaulted, doc: &mut Value, parts: &[&str], value: Value) {
    out.patch.push(PatchOperation::Add(AddOperation {
        path: pointer(parts),
        value: value.clone(),
    }));
    // Keep the working copy in step so later decisions see earlier operations.
    let (last, parents) = parts.split_last().expect("pointer has at least one token");
    let mut cur = doc;
    for p in parents {
        cur = &mut cur[*p];
    }
    if let Some(map) = cur.as_object_mut() {
        map.insert((*last).to_string(), value);
    }
}

fn is_object(v: Option<&Value>) -> bool {
    v.is_some_and(Value::is_object)
}

/// Missing or explicitly null: both mean "not set" to the API.
fn unset(map: &serde_json::Map<String, Value>, key: &str) -> bool {
    map.get(key).is_none_or(Value::is_null)
}

/// Defaults a StormService given as JSON.
pub fn default_storm_service(obj: &Value) -> Defaulted {
    let mut out = Defaulted::default();
    let mut doc = obj.clone();
    if !is_object(doc.pointer("/spec/rolloutStrategy")) {
        return out;
    }
    let rs = ["spec", "rolloutStrategy"];
    let legacy_path = FieldPath::new("spec")
        .child("rolloutStrategy")
        .child("canary")
        .child("autoRollback");
    if let Some(legacy) = doc
        .pointer("/spec/rolloutStrategy/canary/autoRollback")
        .filter(|v| !v.is_null())
        .cloned()
    {
        match doc
            .pointer("/spec/rolloutStrategy/autoRollback")
            .filter(|v| !v.is_null())
        {
            None => {
                out.patch.push(PatchOperation::Move(MoveOperation {
                    from: pointer(&["spec", "rolloutStrategy", "canary", "autoRollback"]),
                    path: pointer(&["spec", "rolloutStrategy", "autoRollback"]),
                }));
                if let Some(canary) = doc
                    .pointer_mut("/spec/rolloutStrategy/canary")
                    .and_then(Value::as_object_mut)
                {
                    canary.remove("autoRollback");
                }
                if let Some(strategy) = doc
                    .pointer_mut("/spec/rolloutStrategy")
                    .and_then(Value::as_object_mut)
                {
                    strategy.insert("autoRollback".into(), legacy);
                }
                out.warnings.push(Warning::new(
                    legacy_path,
                    "autoRollback belongs at spec.rolloutStrategy.autoRollback: moved it there; please update your manifest",
                ));
            }
            Some(canonical) if *canonical == legacy => {
                out.patch.push(PatchOperation::Remove(RemoveOperation {
                    path: pointer(&["spec", "rolloutStrategy", "canary", "autoRollback"]),
                }));
                if let Some(canary) = doc
                    .pointer_mut("/spec/rolloutStrategy/canary")
                    .and_then(Value::as_object_mut)
                {
                    canary.remove("autoRollback");
                }
                out.warnings.push(Warning::new(
                    legacy_path,
                    "duplicate of spec.rolloutStrategy.autoRollback: removed it; please update your manifest",
                ));
            }
            // Two different blocks: validation denies it; don't guess which one the user meant.
            Some(_) => {}
        }
    }
    default_auto_rollback(&mut out, &mut doc, &rs);
    if is_object(doc.pointer("/spec/rolloutStrategy/blueGreen")) {
        let bg = doc
            .pointer("/spec/rolloutStrategy/blueGreen")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        default_fields(
            &mut out,
            &mut doc,
            "blueGreen",
            &bg,
            &[
                (
                    "scaleDownDelaySeconds",
                    json!(DEFAULT_SCALE_DOWN_DELAY_SECONDS),
                ),
                (
                    "abortScaleDownDelaySeconds",
                    json!(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS),
                ),
                ("autoPromotionEnabled", json!(false)),
            ],
        );
    }
    // The drain delays of a canary behind a traffic router (without one they are 0, and stay
    // unset so that adding a router later gets these defaults).
    let canary = doc
        .pointer("/spec/rolloutStrategy/canary")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if canary.get("trafficRouting").is_some_and(|r| !r.is_null()) {
        default_fields(
            &mut out,
            &mut doc,
            "canary",
            &canary,
            &[
                (
                    "scaleDownDelaySeconds",
                    json!(DEFAULT_CANARY_SCALE_DOWN_DELAY_SECONDS),
                ),
                (
                    "abortScaleDownDelaySeconds",
                    json!(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS),
                ),
            ],
        );
    }
    out
}

/// Adds each of `fields` that `block` (`spec.rolloutStrategy.<strategy>`) leaves unset.
fn default_fields(
    out: &mut Defaulted,
    doc: &mut Value,
    strategy: &str,
    block: &serde_json::Map<String, Value>,
    fields: &[(&str, Value)],
) {
    for (field, value) in fields {
        if unset(block, field) {
            add(
                out,
                doc,
                &["spec", "rolloutStrategy", strategy, field],
                value.clone(),
            );
        }
    }
}

fn default_auto_rollback(out: &mut Defaulted, doc: &mut Value, rs: &[&str]) {
    let ar_parts = [rs[0], rs[1], "autoRollback"];
    let Some(ar) = doc
        .pointer("/spec/rolloutStrategy/autoRollback")
        .filter(|v| !v.is_null())
        .cloned()
    else {
        add(
            out,
            doc,
            &ar_parts,
            json!({
                "enabled": true,
                "onFailure": {"analysisFailure": true, "healthCheckFailure": true},
                "onTimeout": DEFAULT_ON_TIMEOUT,
            }),
        );
        return;
    };
    // A non-object here is a type error the API server's schema reports; leave it alone.
    let Some(ar) = ar.as_object() else { return };
    if unset(ar, "enabled") {
        add(
            out,
            doc,
            &[rs[0], rs[1], "autoRollback", "enabled"],
            json!(true),
        );
    }
    match ar.get("onFailure").filter(|v| !v.is_null()) {
        None => add(
            out,
            doc,
            &[rs[0], rs[1], "autoRollback", "onFailure"],
            json!({"analysisFailure": true, "healthCheckFailure": true}),
        ),
        Some(Value::Object(of)) => {
            for key in ["analysisFailure", "healthCheckFailure"] {
                if unset(of, key) {
                    add(
                        out,
                        doc,
                        &[rs[0], rs[1], "autoRollback", "onFailure", key],
                        json!(true),
                    );
                }
            }
        }
        Some(_) => {}
    }
    if unset(ar, "onTimeout") {
        add(
            out,
            doc,
            &[rs[0], rs[1], "autoRollback", "onTimeout"],
            json!(DEFAULT_ON_TIMEOUT),
        );
    }
}

/// Applies defaulting to a JSON object in place, returning the warnings. Used by `lint` and tests to
/// see the object as the API server will store it.
pub fn apply_defaults(obj: &mut Value) -> Result<Vec<Warning>, json_patch::PatchError> {
    let d = default_storm_service(obj);
    json_patch::patch(obj, &d.patch)?;
    Ok(d.warnings)
}
