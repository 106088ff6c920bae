//! `kubectl storm history NAME` and `kubectl storm undo NAME [--to-revision N]`: the revisions the
//! controller keeps as ControllerRevisions (one per template, named by its hash), and going back
//! to one of them. Undo only writes the template: the controller rolls it out like any other
//! change, through the StormService's strategy (canary steps, blue-green preview), with its
//! analyses and automatic rollback.

use crate::error::Error;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use std::fmt::Write;
use storm_shared::StormService;
use storm_shared::keys::{LABEL_NAME, LABEL_REVISION};
use storm_shared::types::stormservice::RoleSetTemplateSpec;

/// One stored revision.
#[derive(Debug, Clone)]
pub struct Revision {
    /// The ControllerRevision's number: 1 for the first template, growing with each new one.
    pub number: i64,
    /// The template's hash: the revision's name in `status.currentRevision` and on RoleSets.
    pub hash: String,
    /// When it was stored.
    pub created: Option<Timestamp>,
    /// The template (`None` when the stored data does not parse).
    pub template: Option<RoleSetTemplateSpec>,
}

impl Revision {
    /// `role/container=image` of every container, in template order.
    pub fn images(&self) -> Vec<String> {
        let roles = self
            .template
            .as_ref()
            .map(RoleSetTemplateSpec::roles)
            .unwrap_or_default();
        roles
            .iter()
            .flat_map(|role| {
                let containers = role.containers();
                containers.iter().map(move |c| {
                    format!(
                        "{}/{}={}",
                        role.name,
                        c.name,
                        c.image.as_deref().unwrap_or("?")
                    )
                })
            })
            .collect()
    }
}

/// The StormService and its stored revisions, oldest first.
pub async fn load(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<(StormService, Vec<Revision>), Error> {
    let api: Api<StormService> = Api::namespaced(client.clone(), ns);
    let obj = api
        .get_opt(name)
        .await
        .map_err(|source| Error::ReadStormService {
            name: name.into(),
            source,
        })?
        .ok_or_else(|| Error::StormServiceNotFound {
            name: name.into(),
            namespace: ns.into(),
        })?;
    let crs: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let listed = crs
        .list(&ListParams::default().labels(&format!("{LABEL_NAME}={name}")))
        .await
        .map_err(|source| Error::ListRevisions { source })?;
    let uid = obj.uid();
    Ok((obj, revisions(listed.items, uid.as_deref())))
}

/// The revisions among `crs` that the StormService with `uid` owns, oldest first.
pub fn revisions(crs: Vec<ControllerRevision>, uid: Option<&str>) -> Vec<Revision> {
    let mut out: Vec<Revision> = crs
        .into_iter()
        .filter(|cr| {
            cr.owner_references()
                .iter()
                .any(|o| Some(o.uid.as_str()) == uid)
        })
        .map(|cr| Revision {
            number: cr.revision,
            hash: cr.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
            created: cr.creation_timestamp().map(|t| t.0),
            template: cr
                .data
                .and_then(|d| serde_json::from_value::<RoleSetTemplateSpec>(d.0).ok()),
        })
        .collect();
    out.sort_by_key(|r| r.number);
    out
}

/// What each revision is to the StormService now.
fn role_of(obj: &StormService, hash: &str) -> &'static str {
    let status = obj.status.as_ref();
    let current = status.and_then(|s| s.current_revision.as_deref());
    let update = status.and_then(|s| s.update_revision.as_deref());
    match (Some(hash) == current, Some(hash) == update) {
        (true, true) => "stable",
        (true, false) => "stable (being replaced)",
        (false, true) => "rolling out",
        _ => "",
    }
}

/// The `history` table.
pub fn render(obj: &StormService, revs: &[Revision]) -> String {
    let mut out = String::new();
    if revs.is_empty() {
        let _ = writeln!(
            out,
            "StormService {} has no stored revisions yet (the controller stores one per template)",
            obj.name_any()
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{:<9} {:<12} {:>5}  {:<24} IMAGES",
        "REVISION", "HASH", "AGE", "STATUS"
    );
    for r in revs {
        let images = r.images();
        let _ = writeln!(
            out,
            "{:<9} {:<12} {:>5}  {:<24} {}",
            r.number,
            r.hash,
            crate::status::age(r.created),
            role_of(obj, &r.hash),
            if images.is_empty() {
                "?".to_string()
            } else {
                images.join(", ")
            }
        );
    }
    out
}

/// The template `undo` writes, and the revision it comes from: `--to-revision N`, or else the
/// newest revision other than the one of the current template. The roles keep their current
/// `replicas` (undo changes what runs, not how much of it; a role the current template lacks keeps
/// the stored count).
pub fn undo_template<'a>(
    obj: &StormService,
    revs: &'a [Revision],
    to: Option<i64>,
) -> Result<(RoleSetTemplateSpec, &'a Revision), Error> {
    let name = obj.name_any();
    let current = obj
        .status
        .as_ref()
        .and_then(|s| s.update_revision.clone())
        .unwrap_or_default();
    let known = || revs.iter().map(|r| r.number).collect::<Vec<_>>();
    let target = match to {
        Some(n) => revs
            .iter()
            .find(|r| r.number == n)
            .ok_or_else(|| Error::RevisionNotFound {
                name: name.clone(),
                revision: n,
                known: known(),
            })?,
        None => revs
            .iter()
            .rev()
            .find(|r| r.hash != current)
            .ok_or_else(|| Error::NoEarlierRevision {
                name: name.clone(),
                known: known(),
            })?,
    };
    if target.hash == current {
        return Err(Error::AlreadyAtRevision {
            name,
            revision: target.number,
        });
    }
    let mut template = target
        .template
        .clone()
        .ok_or_else(|| Error::RevisionUnreadable {
            name: name.clone(),
            revision: target.number,
        })?;
    let now = obj.spec.template.roles();
    for role in template.spec.iter_mut().flat_map(|s| s.roles.iter_mut()) {
        if let Some(live) = now.iter().find(|r| r.name == role.name) {
            role.replicas = live.replicas;
        }
    }
    Ok((template, target))
}

/// `undo`: writes the chosen revision's template (a replace, so a concurrent change fails instead
/// of being overwritten) and says what happens next.
pub async fn undo(
    client: &kube::Client,
    ns: &str,
    name: &str,
    to: Option<i64>,
) -> Result<String, Error> {
    let (mut obj, revs) = load(client, ns, name).await?;
    let (template, target) = undo_template(&obj, &revs, to)?;
    let (number, hash, images) = (target.number, target.hash.clone(), target.images());
    obj.spec.template = template;
    let api: Api<StormService> = Api::namespaced(client.clone(), ns);
    api.replace(name, &PostParams::default(), &obj)
        .await
        .map_err(|source| Error::UpdateStormService {
            name: name.into(),
            source,
        })?;
    let strategy = obj
        .spec
        .rollout_strategy
        .as_ref()
        .map_or("rolling update".to_string(), |s| {
            format!("{:?} rollout", s.type_)
        });
    Ok(format!(
        "stormservice.orchestration.aibrix.ai/{name} template set to revision {number} ({hash}: {}); a {strategy} to it starts",
        images.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(image: &str, replicas: i32) -> serde_json::Value {
        json!({"metadata": {"labels": {"app": "a"}}, "spec": {"roles": [{
            "name": "server", "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}]}})
    }

    fn cr(number: i64, hash: &str, image: &str, uid: &str) -> ControllerRevision {
        serde_json::from_value(json!({
            "metadata": {"name": format!("app-{hash}"), "labels": {LABEL_REVISION: hash},
                "ownerReferences": [{"apiVersion": "v1", "kind": "StormService", "name": "app", "uid": uid, "controller": true}]},
            "revision": number,
            "data": template(image, 1),
        }))
        .unwrap()
    }

    fn storm(image: &str, replicas: i32, current: &str, update: &str) -> StormService {
        serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
            "metadata": {"name": "app", "uid": "u1"},
            "spec": {"template": template(image, replicas)},
            "status": {"currentRevision": current, "updateRevision": update},
        }))
        .unwrap()
    }

    fn revs() -> Vec<Revision> {
        revisions(
            vec![
                cr(3, "ccc", "app:v3", "u1"),
                cr(1, "aaa", "app:v1", "u1"),
                cr(2, "bbb", "app:v2", "u1"),
                // Another StormService's of the same name, before a re-creation: not ours.
                cr(9, "zzz", "app:v9", "old-uid"),
            ],
            Some("u1"),
        )
    }

    #[test]
    fn history_lists_owned_revisions_oldest_first_with_their_roles() {
        let r = revs();
        assert_eq!(r.iter().map(|r| r.number).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(r[1].images(), ["server/c=app:v2"]);
        let obj = storm("app:v3", 4, "bbb", "ccc");
        let table = render(&obj, &r);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("REVISION"), "{table}");
        assert!(lines[2].contains("bbb") && lines[2].contains("stable (being replaced)"));
        assert!(lines[3].contains("ccc") && lines[3].contains("rolling out"));
        assert!(lines[1].contains("server/c=app:v1") && !lines[1].contains("stable"));
    }

    #[test]
    fn undo_goes_to_the_previous_revision_or_the_one_named_keeping_replicas() {
        let r = revs();
        let obj = storm("app:v3", 4, "ccc", "ccc");
        let (t, from) = undo_template(&obj, &r, None).unwrap();
        assert_eq!(from.number, 2);
        let role = &t.spec.as_ref().unwrap().roles[0];
        assert_eq!(role.replicas, Some(4), "the live replica count is kept");
        assert_eq!(
            role.template.spec.as_ref().unwrap().containers[0]
                .image
                .as_deref(),
            Some("app:v2")
        );
        let (_, from) = undo_template(&obj, &r, Some(1)).unwrap();
        assert_eq!(from.number, 1);
    }

    #[test]
    fn undo_refuses_what_it_cannot_do_and_says_why() {
        let r = revs();
        let obj = storm("app:v3", 4, "ccc", "ccc");
        let e = undo_template(&obj, &r, Some(7)).unwrap_err().to_string();
        assert!(e.contains("revision 7") && e.contains("1, 2, 3"), "{e}");
        let e = undo_template(&obj, &r, Some(3)).unwrap_err().to_string();
        assert!(e.contains("already"), "{e}");
        let only = revisions(vec![cr(1, "ccc", "app:v3", "u1")], Some("u1"));
        let e = undo_template(&obj, &only, None).unwrap_err().to_string();
        assert!(e.contains("no earlier revision"), "{e}");
    }
}
