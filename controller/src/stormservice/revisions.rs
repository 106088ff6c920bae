//! Revisions: each template the StormService had is kept as a ControllerRevision, so the RoleSets
//! of a revision can be made again after the template moved on (an abort, a rollback, a stable
//! RoleSet lost mid-rollout). Old ones are pruned beyond `spec.revisionHistoryLimit`.

use super::observe::Caches;
use crate::error::Error;
use crate::rollout::{self, Plan};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use storm_shared::keys::{
    AIBRIX_ANNOTATION_REVISION, AIBRIX_ANNOTATION_ROLESET_INDEX, AIBRIX_LABEL_STORM_SERVICE_NAME,
    AIBRIX_LABEL_STORM_SERVICE_REVISION, AIBRIX_ROLE_REVISION, AIBRIX_ROLE_REVISION_NAME,
    LABEL_NAME, LABEL_REVISION,
};
use storm_shared::types::API_VERSION;
use storm_shared::types::stormservice::{RoleSetTemplateSpec, TemplateMetadata};
use storm_shared::{RoleSet, StormService};
use tracing::info;

/// Revisions kept beside the stable and the rolled-out one when `revisionHistoryLimit` is unset.
const DEFAULT_REVISION_HISTORY: usize = 10;

/// Name of the ControllerRevision holding a revision's template.
pub fn revision_name(name: &str, rev: &str) -> String {
    format!("{name}-{rev}")
}

/// The owner reference of everything the StormService creates.
pub fn owner(obj: &StormService) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.into(),
        kind: "StormService".into(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The revision name of the current template. A revision is named by the hash of its template
/// without the roles' `replicas` ([`rollout::revision::of_template`]); a stored revision (the
/// stable or the one being rolled out) whose template is the same apart from `replicas` is kept
/// by name, whatever its name was computed from. So scaling a role is never a new revision, and
/// revisions named by earlier versions (whose hash included `replicas`) stay what they are.
pub fn update_revision(caches: &Caches, obj: &StormService) -> String {
    let id = rollout::revision::of_template(&obj.spec.template);
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let status = obj.status.as_ref();
    let known = status
        .and_then(|s| s.current_revision.as_deref())
        .into_iter()
        .chain(status.and_then(|s| s.update_revision.as_deref()));
    for rev in known {
        if rev == id {
            return id;
        }
        let stored = caches
            .revisions
            .get(&ns, &revision_name(&name, rev))
            .and_then(|cr| stored_template(&cr));
        if stored.is_some_and(|t| rollout::revision::of_template(&t) == id) {
            return rev.to_string();
        }
    }
    id
}

/// Stores the template of revision `update` as a ControllerRevision, once per revision.
pub async fn record(
    client: &Client,
    caches: &Caches,
    obj: &StormService,
    update: &str,
) -> Result<(), Error> {
    record_template(client, caches, obj, update, &obj.spec.template, 0)
        .await
        .map(|_| ())
}

/// Stores `template` as revision `rev` unless the cache has it, numbered after every stored one
/// and at least `at_least`; returns the number (0 when it was stored already).
pub async fn record_template(
    client: &Client,
    caches: &Caches,
    obj: &StormService,
    rev: &str,
    template: &RoleSetTemplateSpec,
    at_least: i64,
) -> Result<i64, Error> {
    let update = rev;
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let cr_name = revision_name(&name, update);
    if caches.revisions.get(&ns, &cr_name).is_some() {
        return Ok(0);
    }
    let number = (caches
        .revisions
        .owned_by(&ns, &name)
        .iter()
        .map(|r| r.revision)
        .max()
        .unwrap_or(0)
        + 1)
    .max(at_least);
    let mut cr = ControllerRevision {
        data: Some(RawExtension(
            serde_json::to_value(template).unwrap_or_default(),
        )),
        revision: number,
        ..Default::default()
    };
    cr.metadata.name = Some(cr_name.clone());
    cr.metadata.namespace = Some(ns.clone());
    cr.metadata.labels = Some(BTreeMap::from([
        (LABEL_NAME.to_string(), name.clone()),
        (LABEL_REVISION.to_string(), update.to_string()),
        // AIBrix's labels on its ControllerRevisions.
        ("name".to_string(), name.clone()),
        (
            "controller.kubernetes.io/hash".to_string(),
            update.to_string(),
        ),
    ]));
    cr.metadata.owner_references = Some(vec![owner(obj)]);
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => Ok(number),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(0),
        Err(e) => Err(Error::RecordRevision(cr_name, e)),
    }
}

/// The ControllerRevisions to delete: all but the `limit` newest, never the ones in `keep`.
/// `revisions` are (name, revision number, revision hash).
pub fn to_prune(
    mut revisions: Vec<(String, i64, String)>,
    limit: usize,
    keep: &[&str],
) -> Vec<String> {
    revisions.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mut kept = 0;
    let mut out = Vec::new();
    for (name, _, hash) in revisions {
        if keep.contains(&hash.as_str()) {
            continue;
        }
        if kept < limit {
            kept += 1;
        } else {
            out.push(name);
        }
    }
    out
}

/// Deletes ControllerRevisions beyond `spec.revisionHistoryLimit` (the stable and the rolled-out
/// revision always stay: their RoleSets may have to be recreated).
pub async fn prune(
    client: &Client,
    caches: &Caches,
    obj: &StormService,
    plan: &Plan,
) -> Result<(), Error> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let limit = obj
        .spec
        .revision_history_limit
        .map_or(DEFAULT_REVISION_HISTORY, |l| {
            usize::try_from(l).unwrap_or(0)
        });
    let mine: Vec<(String, i64, String)> = caches
        .revisions
        .owned_by(&ns, &name)
        .iter()
        .map(|r| {
            (
                r.name_any(),
                r.revision,
                r.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let stable = plan.status.current_revision.clone().unwrap_or_default();
    let update = plan.status.update_revision.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    for doomed in to_prune(mine, limit, &[&stable, &update]) {
        match api.delete(&doomed, &DeleteParams::default()).await {
            Ok(_) => info!(namespace = %ns, revision = %doomed, "old revision pruned"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::RecordRevision(doomed, e)),
        }
    }
    Ok(())
}

/// The template a ControllerRevision stores: its `data`, as the API serves it or as the cache
/// keeps it ([`crate::cache::slim_revision`]: the same JSON as one string).
pub fn stored_template(cr: &ControllerRevision) -> Option<RoleSetTemplateSpec> {
    match &cr.data.as_ref()?.0 {
        serde_json::Value::String(json) => serde_json::from_str(json).ok(),
        data => serde::Deserialize::deserialize(data).ok(),
    }
}

/// The index of a RoleSet named `<service>-<revision>-<index>`.
pub fn index_of(roleset: &str, prefix: &str) -> Option<i32> {
    roleset.strip_prefix(prefix)?.parse().ok()
}

/// The template of revision `rev`: the current one, its ControllerRevision, or a surviving
/// RoleSet's.
pub fn template_of(
    caches: &Caches,
    obj: &StormService,
    update: &str,
    rev: &str,
) -> Result<RoleSetTemplateSpec, Error> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    if rev == update {
        return Ok(obj.spec.template.clone());
    }
    if let Some(cr) = caches.revisions.get(&ns, &revision_name(&name, rev))
        && let Some(t) = stored_template(&cr)
    {
        return Ok(with_current_replicas(t, &obj.spec.template));
    }
    // The oldest surviving RoleSet of the revision (lowest index) that is not going away.
    let prefix = format!("{name}-{rev}-");
    let survivor = caches
        .rolesets
        .owned_by(&ns, &name)
        .into_iter()
        .filter(|r| {
            r.meta().deletion_timestamp.is_none()
                && r.labels().get(LABEL_REVISION).map(String::as_str) == Some(rev)
        })
        .min_by_key(|r| index_of(&r.name_any(), &prefix).unwrap_or(i32::MAX));
    match survivor {
        Some(r) => Ok(template_from_roleset(&r, &obj.spec.template)),
        None => Err(Error::UnknownRevision(rev.to_string())),
    }
}

/// The template a RoleSet was made from: its spec (with the roles' `replicas` of `current`), its
/// labels and annotations without the ones the controllers add.
pub fn template_from_roleset(r: &RoleSet, current: &RoleSetTemplateSpec) -> RoleSetTemplateSpec {
    let mut labels = r.labels().clone();
    let spec = with_current_replicas(
        RoleSetTemplateSpec {
            metadata: None,
            spec: Some(r.spec.clone()),
        },
        current,
    )
    .spec;
    labels.remove(LABEL_NAME);
    labels.remove(LABEL_REVISION);
    labels.remove(AIBRIX_LABEL_STORM_SERVICE_NAME);
    labels.remove(AIBRIX_LABEL_STORM_SERVICE_REVISION);
    let mut annotations = r.metadata.annotations.clone().unwrap_or_default();
    annotations.remove(AIBRIX_ANNOTATION_ROLESET_INDEX);
    annotations.remove(AIBRIX_ANNOTATION_REVISION);
    annotations.retain(|k, _| {
        !k.starts_with(&format!("{AIBRIX_ROLE_REVISION}."))
            && !k.starts_with(&format!("{AIBRIX_ROLE_REVISION_NAME}."))
    });
    RoleSetTemplateSpec {
        metadata: Some(TemplateMetadata {
            labels: Some(labels),
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            ..TemplateMetadata::default()
        }),
        spec,
    }
}

/// A stored revision's template with the roles' `replicas` of the current one: scaling applies to
/// every revision (roles the current template does not have keep theirs).
fn with_current_replicas(
    mut stored: RoleSetTemplateSpec,
    current: &RoleSetTemplateSpec,
) -> RoleSetTemplateSpec {
    let wanted = rollout::revision::role_replicas(current);
    if let Some(spec) = stored.spec.as_mut() {
        for role in &mut spec.roles {
            if let Some(want) = wanted.get(&role.name) {
                role.replicas = Some(*want);
            }
        }
    }
    stored
}

/// For each role of `template` (revision `rev`), the revision that introduced the role's Pod
/// template: the oldest stored revision with an identical template for a role of that name, as
/// its number and ControllerRevision name (AIBrix's `role-revision` and `role-revision-name`).
/// Unlike AIBrix, which compares with the current revision only at each update, this gives every
/// RoleSet and Pod of a role template the same answer.
pub fn role_revisions(
    caches: &Caches,
    obj: &StormService,
    template: &RoleSetTemplateSpec,
    rev: &str,
) -> BTreeMap<String, (i64, String)> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let mut stored: Vec<(i64, String, RoleSetTemplateSpec)> = caches
        .revisions
        .owned_by(&ns, &name)
        .iter()
        .filter_map(|r| {
            let t = stored_template(r)?;
            Some((r.revision, r.name_any(), t))
        })
        .collect();
    stored.sort_by_key(|(n, _, _)| *n);
    let own_name = revision_name(&name, rev);
    let own_number = stored
        .iter()
        .find(|(_, n, _)| *n == own_name)
        .map(|(n, _, _)| *n)
        .unwrap_or_else(|| stored.last().map_or(0, |(n, _, _)| *n) + 1);
    let roles = |t: &RoleSetTemplateSpec| -> BTreeMap<String, String> {
        t.spec
            .iter()
            .flat_map(|s| &s.roles)
            .map(|r| {
                (
                    r.name.clone(),
                    crate::roleset::update::role_template_hash(r),
                )
            })
            .collect()
    };
    let stored: Vec<(i64, String, BTreeMap<String, String>)> = stored
        .into_iter()
        .map(|(n, cr, t)| (n, cr, roles(&t)))
        .collect();
    roles(template)
        .into_iter()
        .map(|(role, hash)| {
            let first = stored
                .iter()
                .find(|(_, _, r)| r.get(&role) == Some(&hash))
                .map(|(n, cr, _)| (*n, cr.clone()))
                .unwrap_or_else(|| (own_number, own_name.clone()));
            (role, first)
        })
        .collect()
}

/// Writes [`role_revisions`] into a RoleSet's annotations (`role-revision.<role>`,
/// `role-revision-name.<role>`), which its Pods take as labels.
pub fn annotate_role_revisions(rs: &mut RoleSet, revisions: &BTreeMap<String, (i64, String)>) {
    let annotations = rs.annotations_mut();
    for (role, (number, cr)) in revisions {
        annotations.insert(format!("{AIBRIX_ROLE_REVISION}.{role}"), number.to_string());
        annotations.insert(format!("{AIBRIX_ROLE_REVISION_NAME}.{role}"), cr.clone());
    }
}

/// The RoleSet with index `i` of revision `rev`, made from that revision's template.
pub fn roleset_for(
    obj: &StormService,
    template: &RoleSetTemplateSpec,
    rev: &str,
    i: i32,
) -> RoleSet {
    let name = obj.name_any();
    let tpl_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = tpl_meta.labels.unwrap_or_default();
    labels.insert(LABEL_NAME.into(), name.clone());
    labels.insert(LABEL_REVISION.into(), rev.to_string());
    labels.insert(AIBRIX_LABEL_STORM_SERVICE_NAME.into(), name.clone());
    labels.insert(
        AIBRIX_LABEL_STORM_SERVICE_REVISION.into(),
        revision_name(&name, rev),
    );
    let mut annotations = tpl_meta.annotations.unwrap_or_default();
    annotations.insert(AIBRIX_ANNOTATION_ROLESET_INDEX.into(), i.to_string());
    annotations.insert(AIBRIX_ANNOTATION_REVISION.into(), revision_name(&name, rev));
    // The revision's own template, not the current one: a stable RoleSet recreated during an abort
    // must run the stable revision.
    let mut rs = RoleSet::new(
        &format!("{name}-{rev}-{i}"),
        template.spec.clone().unwrap_or_default(),
    );
    rs.metadata.namespace = obj.namespace();
    rs.metadata.labels = Some(labels);
    rs.metadata.annotations = Some(annotations);
    rs.metadata.owner_references = Some(vec![owner(obj)]);
    rs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owned::Owned;
    use serde_json::json;

    #[test]
    fn roleset_names_and_labels() {
        let obj: StormService = serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "StormService",
            "metadata": {"name": "svc", "namespace": "ns", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "a"}}, "spec": {"roles": [{"name": "r"}]}}}
        }))
        .expect("object");
        let rs = roleset_for(&obj, &obj.spec.template, "abc", 2);
        assert_eq!(rs.name_any(), "svc-abc-2");
        assert_eq!(rs.labels().get("app").map(String::as_str), Some("a"));
        assert_eq!(
            rs.labels().get(LABEL_REVISION).map(String::as_str),
            Some("abc")
        );
        // A RoleSet of another revision is made from that revision's template, whatever the
        // current one says.
        let mut old_template = obj.spec.template.clone();
        old_template.spec.as_mut().expect("spec").roles[0].name = "old-role".into();
        let old_rs = roleset_for(&obj, &old_template, "old", 0);
        assert_eq!(old_rs.spec.roles[0].name, "old-role");
        let owner = &rs.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
        assert_eq!(
            rs.annotations()
                .get(AIBRIX_ANNOTATION_ROLESET_INDEX)
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(
            rs.labels()
                .get(AIBRIX_LABEL_STORM_SERVICE_REVISION)
                .map(String::as_str),
            Some("svc-abc")
        );
        assert_eq!(index_of("svc-abc-12", "svc-abc-"), Some(12));
        assert_eq!(index_of("svc-abcd-1", "svc-abc-"), None);
    }

    #[test]
    fn old_revisions_are_pruned_beyond_the_limit_but_never_stable_or_update() {
        let revs: Vec<(String, i64, String)> = (1..=5)
            .map(|i| (format!("svc-r{i}"), i, format!("r{i}")))
            .collect();
        // Newest first: r5 (update) and r1 (stable) are kept whatever the limit; of the rest the
        // newest `limit` stay.
        assert_eq!(
            to_prune(revs.clone(), 1, &["r1", "r5"]),
            vec!["svc-r3", "svc-r2"]
        );
        assert_eq!(
            to_prune(revs.clone(), 0, &["r1", "r5"]),
            vec!["svc-r4", "svc-r3", "svc-r2"]
        );
        assert!(to_prune(revs, 10, &["r1"]).is_empty());
    }

    #[test]
    fn a_role_keeps_the_revision_that_introduced_its_template() {
        use kube::runtime::reflector;
        let obj: StormService = serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "StormService",
            "metadata": {"name": "svc", "namespace": "ns", "uid": "u-1"},
            "spec": {"template": {"spec": {"roles": [
                {"name": "prefill", "template": {"spec": {"containers": [{"name": "e", "image": "p:1"}]}}},
                {"name": "decode", "template": {"spec": {"containers": [{"name": "e", "image": "d:1"}]}}}
            ]}}}
        }))
        .expect("object");
        let cr = |number: i64, rev: &str, template: &RoleSetTemplateSpec| {
            let mut cr = ControllerRevision {
                data: Some(RawExtension(serde_json::to_value(template).expect("json"))),
                revision: number,
                ..Default::default()
            };
            cr.metadata.name = Some(revision_name("svc", rev));
            cr.metadata.namespace = Some("ns".into());
            cr.metadata.labels = Some(BTreeMap::from([(LABEL_NAME.into(), "svc".into())]));
            cr
        };
        let first = obj.spec.template.clone();
        let mut second = first.clone();
        std::sync::Arc::make_mut(&mut second.spec.as_mut().expect("spec").roles[1].template)
            .spec
            .as_mut()
            .expect("pod spec")
            .containers[0]
            .image = Some("d:2".into());
        // One revision as the API serves it, one as the cache keeps it: both read the same.
        let mut slimmed = cr(2, "b", &second);
        crate::cache::slim_revision(&mut slimmed);
        assert!(slimmed.data.as_ref().is_some_and(|d| d.0.is_string()));
        assert_eq!(stored_template(&slimmed), Some(second.clone()));
        assert_eq!(stored_template(&cr(2, "b", &second)), Some(second.clone()));
        let revisions = Owned::of([cr(1, "a", &first), slimmed]);
        let caches = Caches {
            rolesets: Owned::default(),
            pods: Owned::default(),
            services: reflector::store().0,
            revisions,
        };
        let got = role_revisions(&caches, &obj, &second, "b");
        assert_eq!(
            got["prefill"],
            (1, "svc-a".to_string()),
            "unchanged since a"
        );
        assert_eq!(got["decode"], (2, "svc-b".to_string()), "changed in b");
        // A revision not stored yet takes the next number.
        let mut third = second.clone();
        third.spec.as_mut().expect("spec").roles[0].name = "encode".into();
        let got = role_revisions(&caches, &obj, &third, "c");
        assert_eq!(got["encode"], (3, "svc-c".to_string()));
        let mut rs = roleset_for(&obj, &second, "b", 0);
        annotate_role_revisions(&mut rs, &role_revisions(&caches, &obj, &second, "b"));
        assert_eq!(
            rs.annotations()
                .get("stormservice.orchestration.aibrix.ai/role-revision-name.prefill")
                .map(String::as_str),
            Some("svc-a")
        );
    }
}
