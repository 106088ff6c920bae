//! Our CRDs accept every object AIBrix's own CRDs accept.
//!
//! For each CRD in `../shared/fixtures/aibrix/crds/` (AIBrix's, beside the checkout; never copied into
//! the repository) this finds our CRD of the same group and kind, as `kubectl-storm crds` generates it
//! from the Rust types, and walks AIBrix's `openAPIV3Schema` of every served version field by field.
//! It fails, naming every offending field path, where ours would prune a field AIBrix keeps (absent
//! from our schema with no `x-kubernetes-preserve-unknown-fields` where it would be) or reject a value
//! AIBrix accepts (another type, a narrower enum, a field only we require, a narrower pattern,
//! format, bound or list type, an extra validation).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// AIBrix's CRDs, read where CI has them: `../shared` beside the checkout.
fn aibrix_crds_dir() -> PathBuf {
    repo().join("../shared/fixtures/aibrix/crds")
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Our CRDs, generated from the Rust types by the binary users install them with.
fn our_crds() -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-storm"))
        .arg("crds")
        .output()
        .expect("kubectl-storm runs");
    assert!(
        out.status.success(),
        "kubectl-storm crds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&out.stdout))
}

/// AIBrix's CRDs with the file each came from.
fn aibrix_crds() -> Vec<(String, Value)> {
    let dir = aibrix_crds_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (AIBrix's CRDs belong in ../shared beside the checkout)",
                dir.display()
            )
        })
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable CRD");
        let name = f
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        for doc in yaml_documents(&text) {
            if doc["kind"] == "CustomResourceDefinition" {
                out.push((name.clone(), doc));
            }
        }
    }
    out
}

/// What one comparison found: `field path: problem` lines.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
}

impl Findings {
    fn add(&mut self, at: &str, path: &str, what: impl std::fmt::Display) {
        let path = if path.is_empty() { "<root>" } else { path };
        self.problems.push(format!("{at}: {path}: {what}"));
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// The JSON types a schema node admits; `None` is any value (no type, unknown fields preserved).
fn admitted_types(schema: &Value) -> Option<BTreeSet<&'static str>> {
    let mut types = BTreeSet::new();
    if flag(schema, "x-kubernetes-int-or-string") {
        types.extend(["integer", "string"]);
    } else {
        let admitted: &[&'static str] = match schema.get("type").and_then(Value::as_str)? {
            "object" => &["object"],
            "array" => &["array"],
            "string" => &["string"],
            // Every integer is a number.
            "number" => &["number", "integer"],
            "integer" => &["integer"],
            "boolean" => &["boolean"],
            other => panic!("unexpected schema type {other}"),
        };
        types.extend(admitted);
    }
    if flag(schema, "nullable") {
        types.insert("null");
    }
    Some(types)
}

/// Whether `ours` accepts every value `theirs` accepts, by type.
fn compare_types(theirs: &Value, ours: &Value, at: &str, path: &str, out: &mut Findings) {
    let Some(our_types) = admitted_types(ours) else {
        return;
    };
    match admitted_types(theirs) {
        None => out.add(at, path, "AIBrix accepts any value here, ours has a type"),
        Some(their_types) => {
            let missing: Vec<&&str> = their_types.difference(&our_types).collect();
            if !missing.is_empty() {
                out.add(
                    at,
                    path,
                    format!("type: AIBrix accepts {their_types:?}, ours rejects {missing:?}"),
                );
            }
        }
    }
}

/// Bounds: ours may be looser than AIBrix's, never tighter.
fn compare_bounds(theirs: &Value, ours: &Value, at: &str, path: &str, out: &mut Findings) {
    let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_f64);
    for key in ["minimum", "minLength", "minItems", "minProperties"] {
        if let Some(o) = num(ours, key) {
            match num(theirs, key) {
                Some(t) if t >= o => {}
                t => out.add(at, path, format!("{key}: ours {o}, AIBrix {}", bound(t))),
            }
        }
    }
    for key in ["maximum", "maxLength", "maxItems", "maxProperties"] {
        if let Some(o) = num(ours, key) {
            match num(theirs, key) {
                Some(t) if t <= o => {}
                t => out.add(at, path, format!("{key}: ours {o}, AIBrix {}", bound(t))),
            }
        }
    }
    for key in ["exclusiveMinimum", "exclusiveMaximum"] {
        if flag(ours, key) && !flag(theirs, key) {
            out.add(at, path, format!("{key}: ours only"));
        }
    }
}

/// Constraints whose values must match exactly when ours has them: a different pattern, string format,
/// set-or-map list type or validation rule may reject what AIBrix accepts.
fn compare_exact(theirs: &Value, ours: &Value, at: &str, path: &str, out: &mut Findings) {
    for key in [
        "pattern",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "x-kubernetes-validations",
        "x-kubernetes-list-map-keys",
    ] {
        if let Some(o) = ours.get(key)
            && theirs.get(key) != Some(o)
        {
            out.add(
                at,
                path,
                format!("{key}: ours {o}, AIBrix {:?}", theirs.get(key)),
            );
        }
    }
    let is_string = ours.get("type").and_then(Value::as_str) == Some("string");
    if is_string
        && let Some(o) = ours.get("format")
        && theirs.get("format") != Some(o)
    {
        out.add(
            at,
            path,
            format!("format: ours {o}, AIBrix {:?}", theirs.get("format")),
        );
    }
    if let Some(o) = ours.get("x-kubernetes-list-type").and_then(Value::as_str)
        && o != "atomic"
        && theirs.get("x-kubernetes-list-type").and_then(Value::as_str) != Some(o)
    {
        out.add(
            at,
            path,
            format!("x-kubernetes-list-type: ours {o} rejects duplicates AIBrix accepts"),
        );
    }
}

/// The values of a list keyword (`enum`, `required`), strings unquoted.
fn strings(schema: &Value, key: &str) -> BTreeSet<String> {
    schema
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A bound for messages: `10`, or `none`.
fn bound(b: Option<f64>) -> String {
    b.map_or_else(|| "none".to_string(), |b| b.to_string())
}

/// Walks AIBrix's schema node `theirs` beside our node `ours` at `path`.
fn compare(theirs: &Value, ours: &Value, at: &str, path: &str, out: &mut Findings) {
    compare_types(theirs, ours, at, path, out);
    compare_bounds(theirs, ours, at, path, out);
    compare_exact(theirs, ours, at, path, out);
    if ours.get("enum").is_some() {
        let (t, o) = (strings(theirs, "enum"), strings(ours, "enum"));
        if theirs.get("enum").is_none() || !t.is_subset(&o) {
            out.add(at, path, format!("enum: ours {o:?}, AIBrix {t:?}"));
        }
    }
    let only_ours: Vec<String> = strings(ours, "required")
        .difference(&strings(theirs, "required"))
        .cloned()
        .collect();
    if !only_ours.is_empty() {
        out.add(
            at,
            path,
            format!("required by ours only: {}", only_ours.join(", ")),
        );
    }
    let our_preserve = flag(ours, "x-kubernetes-preserve-unknown-fields");
    if flag(theirs, "x-kubernetes-preserve-unknown-fields") && !our_preserve {
        out.add(
            at,
            path,
            "AIBrix keeps unknown fields here, ours prunes them",
        );
    }
    if flag(theirs, "x-kubernetes-embedded-resource")
        && !flag(ours, "x-kubernetes-embedded-resource")
    {
        out.add(at, path, "AIBrix embeds a resource here, ours does not");
    }
    let our_map = ours.get("additionalProperties").filter(|v| v.is_object());
    if let Some(props) = theirs.get("properties").and_then(Value::as_object) {
        for (name, their_field) in props {
            // apiVersion, kind and metadata of the object itself are the API server's, not the schema's.
            if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
                continue;
            }
            let field_path = join(path, name);
            match ours.pointer(&format!(
                "/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            )) {
                Some(our_field) => compare(their_field, our_field, at, &field_path, out),
                None => match our_map {
                    Some(m) => compare(their_field, m, at, &field_path, out),
                    None if our_preserve => {}
                    None => out.add(at, &field_path, "pruned: not in our schema"),
                },
            }
        }
    }
    if let Some(their_map) = theirs.get("additionalProperties").filter(|v| v.is_object()) {
        let map_path = format!("{path}[*]");
        match our_map {
            Some(m) => compare(their_map, m, at, &map_path, out),
            None if our_preserve => {}
            None => out.add(
                at,
                &map_path,
                "pruned: AIBrix accepts any key here, ours does not",
            ),
        }
    }
    if let Some(their_items) = theirs.get("items") {
        match ours.get("items") {
            Some(our_items) => compare(their_items, our_items, at, &format!("{path}[]"), out),
            None if admitted_types(ours).is_none() => {}
            None => out.add(at, &format!("{path}[]"), "AIBrix has items, ours none"),
        }
    }
}

/// Scope and names: how the API server serves the kind, besides its schema.
fn compare_crd(theirs: &Value, ours: &Value, at: &str, out: &mut Findings) {
    let text =
        |crd: &Value, key: &str| crd.pointer(key).and_then(Value::as_str).map(str::to_string);
    // listKind defaults to <kind>List on the API server.
    let list_kind = |crd: &Value| {
        text(crd, "/spec/names/listKind")
            .or_else(|| text(crd, "/spec/names/kind").map(|k| format!("{k}List")))
    };
    for key in ["/spec/scope", "/spec/names/plural", "/spec/names/singular"] {
        if text(theirs, key) != text(ours, key) {
            out.add(
                at,
                key,
                format!("ours {:?}, AIBrix {:?}", text(ours, key), text(theirs, key)),
            );
        }
    }
    if list_kind(theirs) != list_kind(ours) {
        out.add(
            at,
            "/spec/names/listKind",
            format!("ours {:?}, AIBrix {:?}", list_kind(ours), list_kind(theirs)),
        );
    }
    let missing: Vec<String> = strings(&theirs["spec"]["names"], "shortNames")
        .difference(&strings(&ours["spec"]["names"], "shortNames"))
        .cloned()
        .collect();
    if !missing.is_empty() {
        out.add(
            at,
            "/spec/names/shortNames",
            format!("ours lacks {missing:?}"),
        );
    }
}

/// The subresources AIBrix serves for a version, which ours must serve alike (the scale paths are
/// what `kubectl scale` and autoscalers use).
fn compare_subresources(theirs: &Value, ours: &Value, at: &str, out: &mut Findings) {
    for sub in ["status", "scale"] {
        let key = format!("/subresources/{sub}");
        let (t, o) = (theirs.pointer(&key), ours.pointer(&key));
        if t.is_some() && t != o {
            out.add(
                at,
                &format!("subresources.{sub}"),
                format!("AIBrix {t:?}, ours {o:?}"),
            );
        }
    }
}

fn served(crd: &Value) -> Vec<&Value> {
    crd["spec"]["versions"]
        .as_array()
        .map(|vs| vs.iter().filter(|v| v["served"] == true).collect())
        .unwrap_or_default()
}

/// Every problem of our CRDs against AIBrix's.
fn findings() -> Findings {
    let ours = our_crds();
    let mut out = Findings::default();
    let theirs = aibrix_crds();
    assert!(
        theirs.len() >= 3,
        "AIBrix's CRDs: {:?}",
        theirs.iter().map(|(f, _)| f).collect::<Vec<_>>()
    );
    for (file, their_crd) in &theirs {
        let group = their_crd["spec"]["group"].as_str().unwrap_or_default();
        let kind = their_crd["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or_default();
        let Some(our_crd) = ours
            .iter()
            .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind)
        else {
            out.add(
                &format!("{kind}.{group}"),
                "",
                format!("AIBrix has this CRD ({file}), we have none"),
            );
            continue;
        };
        compare_crd(their_crd, our_crd, &format!("{kind}.{group}"), &mut out);
        for version in served(their_crd) {
            let name = version["name"].as_str().unwrap_or_default();
            let at = format!("{kind} {name}");
            let Some(our_version) = served(our_crd).into_iter().find(|v| v["name"] == name) else {
                out.add(&at, "", format!("AIBrix serves {name}, we do not"));
                continue;
            };
            compare_subresources(version, our_version, &at, &mut out);
            compare(
                &version["schema"]["openAPIV3Schema"],
                &our_version["schema"]["openAPIV3Schema"],
                &at,
                "",
                &mut out,
            );
        }
    }
    out
}

/// Where ours is stricter than AIBrix's on purpose, and why. Each entry must still be found, so a
/// stale one fails the test too. docs/reference.md lists them for users.
const DELIBERATE: &[(&str, &str)] = &[
    (
        "StormService v1alpha1: <root>: required by ours only: spec",
        "an object without spec does nothing, and our Rust types (kube's derive) cannot read one: a single such object would fail the controller's list and watch",
    ),
    (
        "RoleSet v1alpha1: <root>: required by ours only: spec",
        "as for StormService",
    ),
    (
        "PodSet v1alpha1: <root>: required by ours only: spec",
        "as for StormService; AIBrix requires podGroupSize and template inside spec anyway",
    ),
    (
        "StormService v1alpha1: spec.replicas: minimum: ours 0, AIBrix none",
        "a negative count of RoleSets means nothing; the scale subresource refuses it too",
    ),
    (
        "StormService v1alpha1: spec.revisionHistoryLimit: minimum: ours 0, AIBrix none",
        "a negative number of revisions to keep means nothing",
    ),
    (
        "StormService v1alpha1: spec.template.spec.roles[].replicas: minimum: ours 0, AIBrix none",
        "a negative count of Pods means nothing",
    ),
    (
        "RoleSet v1alpha1: spec.roles[].replicas: minimum: ours 0, AIBrix none",
        "as for the StormService's roles",
    ),
];

#[test]
fn our_crds_accept_every_field_aibrix_accepts() {
    let found = findings();
    let unexpected: Vec<&String> = found
        .problems
        .iter()
        .filter(|p| !DELIBERATE.iter().any(|(d, _)| d == p))
        .collect();
    let stale: Vec<&str> = DELIBERATE
        .iter()
        .map(|(d, _)| *d)
        .filter(|d| !found.problems.iter().any(|p| p == d))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} field(s) of AIBrix's CRDs that ours would prune or reject:\n{}",
        unexpected.len(),
        unexpected
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        stale.is_empty(),
        "listed as deliberate but no longer found (remove them from DELIBERATE):\n{}",
        stale.join("\n")
    );
}

/// The comparison itself: each kind of gap is caught, and what is not a gap is not reported.
#[test]
fn the_comparison_finds_each_kind_of_gap() {
    let theirs = serde_json::json!({"type": "object", "properties": {
        "spec": {"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "enum": ["X", "Y"]},
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "q": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true},
            "kept": {"type": "object", "properties": {"deep": {"type": "string"}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "list": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
            "gone": {"type": "boolean"}
        }}
    }});
    let ours = serde_json::json!({"type": "object", "properties": {
        "spec": {"type": "object", "required": ["a", "n"], "properties": {
            "a": {"type": "string", "enum": ["X"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 5},
            "q": {"type": "integer"},
            "kept": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "free": {"type": "object"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "tags": {"type": "object", "properties": {}},
            "list": {"type": "array", "items": {"type": "object", "properties": {}}}
        }}
    }});
    let mut out = Findings::default();
    compare(&theirs, &ours, "T", "", &mut out);
    let mut expected = [
        "T: spec: required by ours only: n",
        "T: spec.a: enum: ours {\"X\"}, AIBrix {\"X\", \"Y\"}",
        "T: spec.free: AIBrix keeps unknown fields here, ours prunes them",
        "T: spec.gone: pruned: not in our schema",
        "T: spec.list[].k: pruned: not in our schema",
        "T: spec.n: maximum: ours 5, AIBrix 10",
        "T: spec.q: type: AIBrix accepts {\"integer\", \"string\"}, ours rejects [\"string\"]",
        "T: spec.tags[*]: pruned: AIBrix accepts any key here, ours does not",
    ];
    expected.sort();
    let mut found = out.problems.clone();
    found.sort();
    assert_eq!(found, expected, "{found:#?}");
}
