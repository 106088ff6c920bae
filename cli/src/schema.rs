//! The CRDs' OpenAPI schemas as Draft 4 JSON Schemas, so `lint` rejects offline what the API server's
//! schema validation (with kubectl's strict field validation) would reject.

use crate::error::Error;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

/// A compiled schema for one kind, with the field paths of its complaints in Kubernetes style.
pub struct KindSchema {
    validator: jsonschema::Validator,
}

/// One schema complaint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Field path, `spec.rolloutStrategy.canary.steps[0].weight`.
    pub path: String,
    /// What the schema says.
    pub message: String,
}

impl KindSchema {
    /// Compiles the schema of a CRD's first served version.
    pub fn from_crd(crd: &CustomResourceDefinition) -> Result<Self, Error> {
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .ok_or_else(|| Error::CrdWithoutSchema {
                crd: crd.metadata.name.clone().unwrap_or_else(|| "?".into()),
            })?;
        let mut schema =
            serde_json::to_value(schema).map_err(|source| Error::CrdSchemaToJson { source })?;
        to_draft4(&mut schema);
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props
                .entry("apiVersion")
                .or_insert(json!({"type": "string"}));
            props.entry("kind").or_insert(json!({"type": "string"}));
            props.entry("metadata").or_insert(json!({"type": "object"}));
        }
        let validator = jsonschema::draft4::new(&schema).map_err(|e| Error::CompileCrdSchema {
            source: Box::new(e),
        })?;
        Ok(Self { validator })
    }

    /// Every complaint about `doc`.
    pub fn check(&self, doc: &Value) -> Vec<SchemaError> {
        let mut out = Vec::new();
        for e in self.validator.iter_errors(doc) {
            let path = pointer_to_path(e.instance_path().as_str());
            if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                e.kind()
            {
                for field in unexpected {
                    let path = if path == "<root>" {
                        field.clone()
                    } else {
                        format!("{path}.{field}")
                    };
                    out.push(SchemaError {
                        path,
                        message: "Unknown field: not in the schema (check the spelling; the API server rejects it under strict field validation)".into(),
                    });
                }
                continue;
            }
            let value = serde_json::to_string(e.instance().as_ref()).unwrap_or_default();
            out.push(SchemaError {
                path,
                message: format!("Invalid value: {value}: {e}"),
            });
        }
        out
    }
}

/// Rewrites Kubernetes' OpenAPI dialect into Draft 4: `nullable` becomes a `null` type, int-or-string
/// becomes `["integer", "string"]`, and objects with declared properties refuse unknown fields
/// unless they preserve them (kubectl's strict field validation).
fn to_draft4(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    let nullable = map
        .remove("nullable")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if map
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        map.insert("type".into(), json!(["integer", "string"]));
    }
    if nullable {
        match map.get("type").cloned() {
            Some(Value::String(t)) => {
                map.insert("type".into(), json!([t, "null"]));
            }
            Some(Value::Array(mut ts)) => {
                ts.push(json!("null"));
                map.insert("type".into(), Value::Array(ts));
            }
            _ => {}
        }
    }
    let preserve = map
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    if map.contains_key("properties") && !preserve && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), json!(false));
    }
    for key in ["properties", "patternProperties"] {
        if let Some(props) = map.get_mut(key).and_then(Value::as_object_mut) {
            props.values_mut().for_each(to_draft4);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = map.get_mut(key)
            && sub.is_object()
        {
            to_draft4(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = map.get_mut(key).and_then(Value::as_array_mut) {
            list.iter_mut().for_each(to_draft4);
        }
    }
}

/// `/spec/steps/1/weight` → `spec.steps[1].weight`.
fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for raw in pointer.split('/').skip(1) {
        let part = raw.replace("~1", "/").replace("~0", "~");
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        }
    }
    if out.is_empty() { "<root>".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_become_field_paths() {
        assert_eq!(
            pointer_to_path("/spec/steps/1/weight"),
            "spec.steps[1].weight"
        );
        assert_eq!(pointer_to_path(""), "<root>");
        assert_eq!(
            pointer_to_path("/metadata/annotations/a~1b"),
            "metadata.annotations.a/b"
        );
    }

    #[test]
    fn nullable_and_int_or_string() {
        let mut s = json!({"type": "object", "properties": {
            "a": {"type": "integer", "nullable": true},
            "b": {"x-kubernetes-int-or-string": true, "nullable": true},
            "c": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {}}
        }});
        to_draft4(&mut s);
        assert_eq!(s["properties"]["a"]["type"], json!(["integer", "null"]));
        assert_eq!(
            s["properties"]["b"]["type"],
            json!(["integer", "string", "null"])
        );
        assert_eq!(s["additionalProperties"], json!(false));
        assert!(s["properties"]["c"].get("additionalProperties").is_none());
    }
}
