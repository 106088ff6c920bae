//! Switching from AIBrix's controllers: RoleSets (and their Pods and PodSets) that AIBrix's
//! StormService controller made are adopted in place, so nothing that serves is deleted or
//! restarted.
//!
//! A RoleSet is AIBrix's when the StormService controls it (owner reference with its UID) and it
//! lacks our revision label. Each is adopted into a revision of ours:
//! - the StormService's current revision when it runs AIBrix's update revision (its
//!   `storm-service-revision` names the status's `updateRevision`) or the current template;
//! - otherwise (AIBrix left an update half done) the revision of the template it runs, recorded
//!   as a ControllerRevision so its RoleSets can be made again. The status's `currentRevision`
//!   is then read as that revision ([`adopted_as`]), and the update goes on from where AIBrix left
//!   it, as ours: nothing is recreated that already runs the new template.
//!
//! Inside each RoleSet, its Pods and PodSets are stamped with our template hashes. A member AIBrix
//! made from an older template of its role (an in-place update left half done) is stamped as
//! outdated instead, and the RoleSet controller updates it within the role's budget: one whose
//! containers' images differ from the template's, one whose AIBrix hash differs from the role's
//! newest member's (AIBrix makes new members from the current template only), or every member
//! when the RoleSet's status counts none of the role's as updated. Then the RoleSet gets our
//! labels and a slot of its own (`roleset-index`).

use super::observe::{Caches, roleset_index};
use super::revisions;
use crate::error::Error;
use crate::roleset::update::{ANNOTATION_SHAPE_HASH, role_template_hash, shape_hash};
use crate::rollout;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use storm_shared::keys::{
    AIBRIX_ANNOTATION_ROLESET_INDEX, AIBRIX_LABEL_ROLE_NAME, AIBRIX_LABEL_ROLE_TEMPLATE_HASH,
    AIBRIX_LABEL_ROLESET_NAME, AIBRIX_LABEL_STORM_SERVICE_REVISION, LABEL_NAME, LABEL_REVISION,
};
use storm_shared::types::podset::PodSet;
use storm_shared::types::roleset::{RoleSetSpec, RoleSpec};
use storm_shared::types::stormservice::RoleSetTemplateSpec;
use storm_shared::{RoleSet, StormService};
use tracing::info;

/// What adoption found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// No RoleSet of AIBrix's.
    Nothing,
    /// These RoleSets were adopted.
    Adopted(usize),
}

/// The StormService's RoleSets that AIBrix made and we have not adopted.
pub fn foreign(caches: &Caches, obj: &StormService) -> Vec<Arc<RoleSet>> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let mut out: Vec<Arc<RoleSet>> = caches
        .rolesets
        .owned_by(&ns, &name)
        .into_iter()
        .filter(|r| {
            !r.labels().contains_key(LABEL_REVISION)
                && r.meta().deletion_timestamp.is_none()
                && crate::cache::controlled_by(r.as_ref(), obj)
        })
        .collect();
    out.sort_by_key(|r| r.name_any());
    out
}

/// Whether the status names a revision that is not ours: AIBrix's ControllerRevision names,
/// which no RoleSet of ours carries.
pub fn foreign_revision(caches: &Caches, obj: &StormService, rev: &str) -> bool {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let ours = caches
        .rolesets
        .owned_by(&ns, &name)
        .iter()
        .any(|r| r.labels().get(LABEL_REVISION).map(String::as_str) == Some(rev));
    let recorded = caches
        .revisions
        .get(&ns, &super::revisions::revision_name(&name, rev))
        .is_some();
    !ours && !recorded
}

/// Adopts the StormService's AIBrix RoleSets, as above, into revision `update`.
pub async fn adopt(
    client: &Client,
    caches: &Caches,
    obj: &StormService,
    update: &str,
) -> Result<Adoption, Error> {
    let foreign = foreign(caches, obj);
    if foreign.is_empty() {
        return Ok(Adoption::Nothing);
    }
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let status = obj.status.as_ref();
    let aibrix_update = status.and_then(|s| s.update_revision.as_deref());
    let joins: Vec<(Arc<RoleSet>, String, Option<RoleSetTemplateSpec>)> = foreign
        .iter()
        .map(|rs| {
            let (rev, template) = revision_for(rs, obj, update, aibrix_update);
            (rs.clone(), rev, template)
        })
        .collect();
    // Older revisions first, in the order AIBrix made them (its RoleSets' creation), so their
    // numbers come before the current one's.
    let mut older: Vec<&(Arc<RoleSet>, String, Option<RoleSetTemplateSpec>)> =
        joins.iter().filter(|(_, _, t)| t.is_some()).collect();
    older.sort_by_key(|(rs, _, _)| rs.creation_timestamp().map(|t| t.0));
    let mut number = 0;
    let mut recorded = BTreeSet::new();
    for (rs, rev, template) in older {
        if let Some(template) = template
            && recorded.insert(rev.clone())
        {
            number = revisions::record_template(client, caches, obj, rev, template, number + 1)
                .await?
                .max(number);
            info!(namespace = %ns, name = %name, roleset = %rs.name_any(), revision = %rev, "AIBrix left an update half done: this RoleSet keeps the revision it runs");
        }
    }
    // Slots: ours keep theirs; adopted RoleSets take the free ones in name order.
    let used: BTreeSet<i32> = caches
        .rolesets
        .owned_by(&ns, &name)
        .iter()
        .filter(|r| r.labels().contains_key(LABEL_REVISION))
        .filter_map(|r| roleset_index(r))
        .collect();
    let mut free = (0..).filter(|i| !used.contains(i));
    let rolesets: Api<RoleSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let podsets: Api<PodSet> = Api::namespaced(client.clone(), &ns);
    for (rs, rev, _) in &joins {
        let rs_name = rs.name_any();
        stamp_members(rs, &pods, &podsets).await?;
        let slot = free.next().unwrap_or(0);
        let body = json!({"metadata": {
            "resourceVersion": rs.resource_version(),
            "labels": {LABEL_NAME: name, LABEL_REVISION: rev},
            "annotations": {AIBRIX_ANNOTATION_ROLESET_INDEX: slot.to_string()},
        }});
        match rolesets
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {}
            // Changed since the cache saw it (its status, by the RoleSet controller): once the
            // cache has the new version, adoption goes on from where it is (stamping is
            // idempotent).
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(Error::Adopt(format!("RoleSet {rs_name}"), e)),
        }
        info!(namespace = %ns, name = %name, roleset = %rs_name, slot, revision = %rev, "adopted AIBrix's RoleSet");
    }
    Ok(Adoption::Adopted(joins.len()))
}

/// The revision of ours a RoleSet of AIBrix's joins, and the template to record for it when it is
/// not the current one.
fn revision_for(
    rs: &RoleSet,
    obj: &StormService,
    update: &str,
    aibrix_update: Option<&str>,
) -> (String, Option<RoleSetTemplateSpec>) {
    let label = rs
        .labels()
        .get(AIBRIX_LABEL_STORM_SERVICE_REVISION)
        .map(String::as_str);
    let spec_only = |spec: Option<&RoleSetSpec>| {
        rollout::revision::of_template(&RoleSetTemplateSpec {
            metadata: None,
            spec: spec.cloned(),
        })
    };
    if (label.is_some() && label == aibrix_update)
        || spec_only(Some(&rs.spec)) == spec_only(obj.spec.template.spec.as_ref())
    {
        return (update.to_string(), None);
    }
    let template = revisions::template_from_roleset(rs, &obj.spec.template);
    (rollout::revision::of_template(&template), Some(template))
}

/// The revision of ours that AIBrix's revision `aibrix` (a ControllerRevision name in a status
/// AIBrix wrote) became when its RoleSets were adopted.
pub fn adopted_as(caches: &Caches, obj: &StormService, aibrix: &str) -> Option<String> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    caches.rolesets.owned_by(&ns, &name).iter().find_map(|r| {
        (r.labels()
            .get(AIBRIX_LABEL_STORM_SERVICE_REVISION)
            .map(String::as_str)
            == Some(aibrix))
        .then(|| r.labels().get(LABEL_REVISION).cloned())
        .flatten()
    })
}

/// A Pod or PodSet of one role, as adoption reads it.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    /// AIBrix's `role-template-hash`.
    hash: Option<String>,
    created: Option<k8s_openapi::jiff::Timestamp>,
    /// Container name → image.
    images: BTreeMap<String, String>,
}

fn images_of(spec: Option<&PodSpec>) -> BTreeMap<String, String> {
    spec.iter()
        .flat_map(|s| &s.containers)
        .filter_map(|c| Some((c.name.clone(), c.image.clone()?)))
        .collect()
}

/// Which members of `role` run an older template than the role's (see the module's text).
fn outdated_members(role: &RoleSpec, members: &[Member], none_updated: bool) -> BTreeSet<String> {
    if none_updated {
        return members.iter().map(|m| m.name.clone()).collect();
    }
    let wanted = images_of(role.template.spec.as_ref());
    let newest = members
        .iter()
        .filter(|m| m.hash.is_some())
        .max_by_key(|m| m.created)
        .and_then(|m| m.hash.clone());
    members
        .iter()
        .filter(|m| {
            wanted
                .iter()
                .any(|(c, image)| m.images.get(c) != Some(image))
                || (m.hash.is_some() && newest.is_some() && m.hash != newest)
        })
        .map(|m| m.name.clone())
        .collect()
}

/// Whether the RoleSet's status (as AIBrix wrote it, for its current spec) counts no member of
/// `role` as made from the current template although it has some.
fn none_updated(rs: &RoleSet, role: &str) -> bool {
    let Some(status) = rs.status.as_ref() else {
        return false;
    };
    let fresh = status
        .observed_generation
        .is_none_or(|g| Some(g) == rs.metadata.generation);
    fresh
        && status
            .roles
            .iter()
            .any(|r| r.name == role && r.replicas > 0 && r.updated_replicas == 0)
}

/// The stamp of a member: our hashes when it runs its role's template, a mark that makes it
/// outdated (updated by the RoleSet controller, never in place) when it does not.
fn stamp(role: &RoleSpec, outdated: bool, aibrix_hash: Option<&String>) -> serde_json::Value {
    let theirs = aibrix_hash
        .cloned()
        .unwrap_or_else(|| "adopted".to_string());
    if outdated {
        json!({"metadata": {
            "labels": {AIBRIX_LABEL_ROLE_TEMPLATE_HASH: theirs},
            "annotations": {ANNOTATION_SHAPE_HASH: OUTDATED_SHAPE, ANNOTATION_AIBRIX_HASH: theirs},
        }})
    } else {
        json!({"metadata": {
            "labels": {AIBRIX_LABEL_ROLE_TEMPLATE_HASH: role_template_hash(role)},
            "annotations": {ANNOTATION_SHAPE_HASH: shape_hash(&role.template), ANNOTATION_AIBRIX_HASH: theirs},
        }})
    }
}

/// The `role-template-hash` AIBrix gave an adopted member (kept when stamping replaces the label,
/// so a second pass classifies the members as the first did).
const ANNOTATION_AIBRIX_HASH: &str = "stormservice.aibrix.ai/aibrix-template-hash";

/// The template-shape mark of an adopted member that runs an older template: equal to no shape,
/// so it is replaced, not updated in place.
const OUTDATED_SHAPE: &str = "adopted-outdated";

/// Stamps the RoleSet's Pods and PodSets (read from the API server: adoption runs once and needs
/// their specs) with our hashes of the role template they run, so later template changes update
/// them like ours, and marks the ones an unfinished AIBrix update left on an older template.
async fn stamp_members(
    rs: &RoleSet,
    pod_api: &Api<Pod>,
    podsets: &Api<PodSet>,
) -> Result<(), Error> {
    let rs_name = rs.name_any();
    let selector = format!("{AIBRIX_LABEL_ROLESET_NAME}={rs_name}");
    let params = kube::api::ListParams::default().labels(&selector);
    let owned_pods = pod_api
        .list(&params)
        .await
        .map_err(|e| Error::Adopt(format!("Pods of {rs_name}"), e))?;
    let owned_podsets = podsets
        .list(&params)
        .await
        .map_err(|e| Error::Adopt(format!("PodSets of {rs_name}"), e))?;
    let pods: Vec<&Pod> = owned_pods
        .items
        .iter()
        .filter(|p| crate::cache::controlled_by(*p, rs))
        .collect();
    let sets: Vec<&PodSet> = owned_podsets
        .items
        .iter()
        .filter(|p| crate::cache::controlled_by(*p, rs))
        .collect();
    let stamped = |meta: &ObjectMeta| {
        meta.annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_SHAPE_HASH))
    };
    let member = |meta: &ObjectMeta, images: BTreeMap<String, String>| Member {
        name: meta.name.clone().unwrap_or_default(),
        hash: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_AIBRIX_HASH).cloned())
            .or_else(|| {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(AIBRIX_LABEL_ROLE_TEMPLATE_HASH).cloned())
            }),
        created: meta.creation_timestamp.as_ref().map(|t| t.0),
        images,
    };
    for role in &rs.spec.roles {
        let of_role = |meta: &ObjectMeta| {
            meta.labels
                .as_ref()
                .and_then(|l| l.get(AIBRIX_LABEL_ROLE_NAME))
                == Some(&role.name)
        };
        let role_pods: Vec<&&Pod> = pods.iter().filter(|p| of_role(&p.metadata)).collect();
        let role_sets: Vec<&&PodSet> = sets.iter().filter(|p| of_role(&p.metadata)).collect();
        let members: Vec<Member> = role_pods
            .iter()
            .map(|p| member(&p.metadata, images_of(p.spec.as_ref())))
            .chain(
                role_sets
                    .iter()
                    .map(|p| member(&p.metadata, images_of(p.spec.template.spec.as_ref()))),
            )
            .collect();
        let outdated = outdated_members(role, &members, none_updated(rs, &role.name));
        for pod in role_pods.into_iter().filter(|p| !stamped(&p.metadata)) {
            let name = pod.name_any();
            let body = stamp(
                role,
                outdated.contains(&name),
                pod.labels().get(AIBRIX_LABEL_ROLE_TEMPLATE_HASH),
            );
            pod_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map_err(|e| Error::Adopt(format!("Pod {name}"), e))?;
        }
        for ps in role_sets.into_iter().filter(|p| !stamped(&p.metadata)) {
            let name = ps.name_any();
            let body = stamp(
                role,
                outdated.contains(&name),
                ps.labels().get(AIBRIX_LABEL_ROLE_TEMPLATE_HASH),
            );
            podsets
                .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map_err(|e| Error::Adopt(format!("PodSet {name}"), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn role(image: &str) -> RoleSpec {
        serde_json::from_value(
            json!({"name": "decode", "template": {"spec": {"containers": [
            {"name": "engine", "image": image}, {"name": "sidecar", "image": "side:1"}]}}}),
        )
        .expect("role")
    }

    fn member(name: &str, hash: &str, second: i64, image: &str) -> Member {
        Member {
            name: name.into(),
            hash: Some(hash.into()),
            created: Some(Timestamp::from_second(1_800_000_000 + second).expect("ts")),
            images: BTreeMap::from([
                ("engine".into(), image.into()),
                ("sidecar".into(), "side:1".into()),
            ]),
        }
    }

    #[test]
    fn members_of_an_unfinished_in_place_update_are_told_apart() {
        // At rest: one hash, the template's images: nothing outdated.
        let at_rest = [member("a", "h1", 0, "e:2"), member("b", "h1", 1, "e:2")];
        assert!(outdated_members(&role("e:2"), &at_rest, false).is_empty());
        // Half done: the newest member carries the current hash; the others are outdated, also
        // when only something else than an image changed.
        let half = [
            member("a", "h1", 0, "e:1"),
            member("b", "h2", 5, "e:2"),
            member("c", "h1", 1, "e:1"),
        ];
        assert_eq!(
            outdated_members(&role("e:2"), &half, false),
            BTreeSet::from(["a".to_string(), "c".to_string()])
        );
        let env_only = [member("a", "h1", 0, "e:2"), member("b", "h2", 5, "e:2")];
        assert_eq!(
            outdated_members(&role("e:2"), &env_only, false),
            BTreeSet::from(["a".to_string()])
        );
        // Just begun: one hash and the old images.
        let begun = [member("a", "h1", 0, "e:1")];
        assert_eq!(outdated_members(&role("e:2"), &begun, false).len(), 1);
        // The RoleSet's status counts none updated: all of them, whatever their images.
        assert_eq!(outdated_members(&role("e:2"), &at_rest, true).len(), 2);
    }

    #[test]
    fn a_roleset_joins_the_revision_it_runs() {
        let obj: StormService = serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
            "metadata": {"name": "svc", "namespace": "ns", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "a"}}, "spec": {"roles": [
                {"name": "decode", "replicas": 2, "template": {"spec": {"containers": [{"name": "engine", "image": "e:2"}]}}}
            ]}}}
        }))
        .expect("object");
        let roleset = |rev: &str, image: &str, replicas: i32| -> RoleSet {
            serde_json::from_value(json!({
                "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RoleSet",
                "metadata": {"name": format!("svc-roleset-{rev}"), "namespace": "ns",
                    "labels": {"app": "a", "storm-service-name": "svc", "storm-service-revision": rev},
                    "annotations": {"stormservice.orchestration.aibrix.ai/roleset-index": "0"}},
                "spec": {"roles": [{"name": "decode", "replicas": replicas,
                    "template": {"spec": {"containers": [{"name": "engine", "image": image}]}}}]}
            }))
            .expect("roleset")
        };
        // AIBrix's update revision, or the current template (replicas aside): the current one.
        let (rev, t) = revision_for(&roleset("svc-new", "e:2", 1), &obj, "cur", Some("svc-new"));
        assert_eq!((rev.as_str(), t), ("cur", None));
        let (rev, t) = revision_for(&roleset("svc-x", "e:2", 5), &obj, "cur", None);
        assert_eq!((rev.as_str(), t), ("cur", None));
        // An older template: its own revision, the same for every RoleSet of it.
        let (a, ta) = revision_for(&roleset("svc-old", "e:1", 1), &obj, "cur", Some("svc-new"));
        let (b, _) = revision_for(&roleset("svc-old", "e:1", 1), &obj, "cur", Some("svc-new"));
        assert_eq!(a, b);
        assert_ne!(a, "cur");
        let ta = ta.expect("template to record");
        assert_eq!(rollout::revision::of_template(&ta), a);
        assert_eq!(
            ta.spec.expect("spec").roles[0].replicas,
            Some(2),
            "scaled like the current template"
        );
        assert_eq!(
            ta.metadata.and_then(|m| m.labels),
            Some(BTreeMap::from([("app".to_string(), "a".to_string())])),
            "without the controllers' labels"
        );
    }
}
