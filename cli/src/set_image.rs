//! `kubectl storm set image NAME ROLE[/CONTAINER]=IMAGE...`: what `kubectl set image` does for
//! Deployments, for a StormService's roles (kubectl's own command cannot reach into a custom
//! resource's templates).

use crate::error::Error;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use storm_shared::StormService;

/// One `ROLE[/CONTAINER]=IMAGE` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub role: String,
    pub container: Option<String>,
    pub image: String,
}

/// Parses `ROLE[/CONTAINER]=IMAGE`.
pub fn parse(arg: &str) -> Result<Assignment, Error> {
    let (target, image) = arg
        .split_once('=')
        .ok_or_else(|| Error::ImageAssignmentSyntax { arg: arg.into() })?;
    let (role, container) = match target.split_once('/') {
        Some((r, c)) => (r, Some(c.to_string())),
        None => (target, None),
    };
    if role.is_empty() || image.is_empty() || container.as_deref() == Some("") {
        return Err(Error::ImageAssignmentEmpty { arg: arg.into() });
    }
    Ok(Assignment {
        role: role.to_string(),
        container,
        image: image.to_string(),
    })
}

/// The JSON Patch that sets the images, and lines describing each change. The patch tests the role
/// and container names at their indexes, so a concurrent reorder fails instead of changing the
/// wrong container.
pub fn patch_for(
    obj: &StormService,
    assignments: &[Assignment],
) -> Result<(Vec<Value>, Vec<String>), Error> {
    let roles = obj.spec.template.roles();
    let mut ops = Vec::new();
    let mut changes = Vec::new();
    for a in assignments {
        let (ri, role) = roles
            .iter()
            .enumerate()
            .find(|(_, r)| r.name == a.role)
            .ok_or_else(|| Error::RoleNotFound {
                role: a.role.clone(),
                roles: roles.iter().map(|r| r.name.clone()).collect(),
            })?;
        let containers = role.containers();
        let names = || -> Vec<String> { containers.iter().map(|c| c.name.clone()).collect() };
        let (ci, container) = match (&a.container, containers) {
            (Some(name), _) => containers
                .iter()
                .enumerate()
                .find(|(_, c)| c.name == *name)
                .ok_or_else(|| Error::ContainerNotFound {
                    role: a.role.clone(),
                    container: name.clone(),
                    containers: names(),
                })?,
            (None, [only]) => (0, only),
            (None, _) => {
                return Err(Error::ContainerAmbiguous {
                    role: a.role.clone(),
                    containers: names(),
                });
            }
        };
        let base = format!("/spec/template/spec/roles/{ri}");
        let cpath = format!("{base}/template/spec/containers/{ci}");
        ops.push(json!({"op": "test", "path": format!("{base}/name"), "value": role.name}));
        ops.push(json!({"op": "test", "path": format!("{cpath}/name"), "value": container.name}));
        ops.push(json!({"op": "add", "path": format!("{cpath}/image"), "value": a.image}));
        let old = container.image.as_deref().unwrap_or("<none>");
        changes.push(format!(
            "role {} container {}: {old} -> {}",
            role.name, container.name, a.image
        ));
    }
    Ok((ops, changes))
}

/// Sets the images; returns what to tell the user.
pub async fn run(api: &Api<StormService>, name: &str, args: &[String]) -> Result<String, Error> {
    let assignments: Vec<Assignment> = args.iter().map(|a| parse(a)).collect::<Result<_, _>>()?;
    let obj = api
        .get(name)
        .await
        .map_err(|source| Error::ReadStormService {
            name: name.into(),
            source,
        })?;
    let (ops, changes) = patch_for(&obj, &assignments)?;
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
        .map_err(|source| Error::BuildImagePatch { source })?;
    let updated = api
        .patch(
            name,
            &PatchParams {
                field_manager: Some("kubectl-storm".into()),
                ..Default::default()
            },
            &Patch::<()>::Json(patch),
        )
        .await
        .map_err(|source| Error::UpdateStormService {
            name: name.into(),
            source,
        })?;
    let strategy = match updated.spec.rollout_strategy.as_ref().map(|s| s.type_) {
        Some(t) => format!("a {t:?} rollout starts"),
        None => "a rolling update starts".to_string(),
    };
    let unchanged = updated.metadata.generation == obj.metadata.generation;
    let tail = if unchanged {
        "no change".to_string()
    } else {
        strategy
    };
    Ok(format!(
        "stormservice/{} image updated ({tail}):\n  {}",
        updated.name_any(),
        changes.join("\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj() -> StormService {
        serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService", "metadata": {"name": "a"},
            "spec": {"template": {"spec": {"roles": [
                {"name": "prefill", "template": {"spec": {"containers": [{"name": "vllm", "image": "v:1"}]}}},
                {"name": "decode", "template": {"spec": {"containers": [{"name": "vllm", "image": "v:1"}, {"name": "sidecar", "image": "s:1"}]}}}
            ]}}}
        }))
        .expect("object")
    }

    #[test]
    fn parses_assignments() {
        assert_eq!(
            parse("prefill=v:2").ok(),
            Some(Assignment {
                role: "prefill".into(),
                container: None,
                image: "v:2".into()
            })
        );
        assert_eq!(
            parse("decode/vllm=reg.io/v:2").ok(),
            Some(Assignment {
                role: "decode".into(),
                container: Some("vllm".into()),
                image: "reg.io/v:2".into()
            })
        );
        assert!(matches!(
            parse("prefill"),
            Err(Error::ImageAssignmentSyntax { .. })
        ));
        assert!(matches!(
            parse("=v:2"),
            Err(Error::ImageAssignmentEmpty { .. })
        ));
        assert!(matches!(
            parse("decode/=v:2"),
            Err(Error::ImageAssignmentEmpty { .. })
        ));
    }

    #[test]
    fn patches_the_right_container() {
        let (ops, changes) =
            patch_for(&obj(), &[parse("decode/sidecar=s:2").expect("arg")]).expect("patch");
        assert_eq!(
            ops[2]["path"],
            "/spec/template/spec/roles/1/template/spec/containers/1/image"
        );
        assert_eq!(ops[1]["value"], "sidecar");
        assert_eq!(changes, vec!["role decode container sidecar: s:1 -> s:2"]);
        let (ops, _) = patch_for(&obj(), &[parse("prefill=v:2").expect("arg")]).expect("patch");
        assert_eq!(
            ops[2]["path"],
            "/spec/template/spec/roles/0/template/spec/containers/0/image"
        );
    }

    #[test]
    fn clear_errors() {
        let e = patch_for(&obj(), &[parse("router=x").expect("arg")])
            .expect_err("no such role")
            .to_string();
        assert!(e.contains("roles: prefill, decode"), "{e}");
        let e = patch_for(&obj(), &[parse("decode=x").expect("arg")])
            .expect_err("ambiguous")
            .to_string();
        assert!(e.contains("say which"), "{e}");
        let e = patch_for(&obj(), &[parse("decode/nope=x").expect("arg")])
            .expect_err("no such container")
            .to_string();
        assert!(e.contains("containers: vllm, sidecar"), "{e}");
    }
}
