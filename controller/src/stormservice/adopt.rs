//! Switching from AIBrix's controllers: RoleSets (and their Pods and PodSets) that AIBrix's
//! StormService controller made are adopted in place, so nothing that serves is deleted or
//! restarted.
//!
//! A RoleSet is AIBrix's when the StormService controls it (owner reference with its UID) and it
//! lacks our revision label. It is adopted when AIBrix left the StormService at rest (its status's
//! `currentRevision` equals `updateRevision`, and the RoleSet's `storm-service-revision` names
//! it): its Pods and PodSets are stamped with our template hashes (they run the RoleSet's
//! template), then the RoleSet gets our labels (the StormService's current revision) and a slot of
//! its own (`roleset-index`). A StormService whose AIBrix RoleSets are mid-update is not touched
//! at all until the update is finished: adopting half of it, or making our own RoleSets beside
//! AIBrix's, would double its GPUs.

use super::observe::{Caches, belongs, roleset_index};
use crate::error::Error;
use crate::roleset::update::{ANNOTATION_SHAPE_HASH, role_template_hash, shape_hash};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use storm_shared::keys::{
    AIBRIX_ANNOTATION_ROLESET_INDEX, AIBRIX_LABEL_ROLE_NAME, AIBRIX_LABEL_ROLE_TEMPLATE_HASH,
    AIBRIX_LABEL_ROLESET_NAME, AIBRIX_LABEL_STORM_SERVICE_REVISION, LABEL_NAME, LABEL_REVISION,
};
use storm_shared::types::podset::PodSet;
use storm_shared::{RoleSet, StormService};
use tracing::{info, warn};

/// What adoption found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// No RoleSet of AIBrix's.
    Nothing,
    /// These RoleSets were adopted.
    Adopted(usize),
    /// AIBrix's RoleSets are mid-update (or of a revision the status does not name as current):
    /// the StormService is left alone.
    Waiting(String),
}

/// The StormService's RoleSets that AIBrix made and we have not adopted.
pub fn foreign(caches: &Caches, obj: &StormService) -> Vec<Arc<RoleSet>> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let mut out: Vec<Arc<RoleSet>> = caches
        .rolesets
        .state()
        .into_iter()
        .filter(|r| {
            belongs(r.as_ref(), &ns, &name)
                && !r.labels().contains_key(LABEL_REVISION)
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
    let ours = caches.rolesets.state().iter().any(|r| {
        belongs(r.as_ref(), &ns, &name)
            && r.labels().get(LABEL_REVISION).map(String::as_str) == Some(rev)
    });
    let recorded = caches
        .revisions
        .get(
            &kube::runtime::reflector::ObjectRef::new(&super::revisions::revision_name(&name, rev))
                .within(&ns),
        )
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
    let current = status.and_then(|s| s.current_revision.as_deref());
    let at_rest = current.is_some() && current == status.and_then(|s| s.update_revision.as_deref());
    let mid_update = foreign.iter().any(|r| {
        r.labels()
            .get(AIBRIX_LABEL_STORM_SERVICE_REVISION)
            .map(String::as_str)
            != current
    });
    if !at_rest || mid_update {
        let why = format!(
            "RoleSets made by AIBrix's controllers are mid-update (status currentRevision {current:?}, updateRevision {:?}); finish that update with AIBrix's controllers before switching, or delete those RoleSets",
            status.and_then(|s| s.update_revision.as_deref())
        );
        warn!(namespace = %ns, name = %name, "{why}");
        return Ok(Adoption::Waiting(why));
    }
    // Slots: ours keep theirs; adopted RoleSets take the free ones in name order.
    let used: BTreeSet<i32> = caches
        .rolesets
        .state()
        .iter()
        .filter(|r| belongs(r.as_ref(), &ns, &name) && r.labels().contains_key(LABEL_REVISION))
        .filter_map(|r| roleset_index(r))
        .collect();
    let mut free = (0..).filter(|i| !used.contains(i));
    let rolesets: Api<RoleSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let podsets: Api<PodSet> = Api::namespaced(client.clone(), &ns);
    for rs in &foreign {
        let rs_name = rs.name_any();
        stamp_members(caches, rs, &pods, &podsets).await?;
        let slot = free.next().unwrap_or(0);
        let body = json!({"metadata": {
            "resourceVersion": rs.resource_version(),
            "labels": {LABEL_NAME: name, LABEL_REVISION: update},
            "annotations": {AIBRIX_ANNOTATION_ROLESET_INDEX: slot.to_string()},
        }});
        rolesets
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(|e| Error::Adopt(format!("RoleSet {rs_name}"), e))?;
        info!(namespace = %ns, name = %name, roleset = %rs_name, slot, revision = update, "adopted AIBrix's RoleSet");
    }
    Ok(Adoption::Adopted(foreign.len()))
}

/// Stamps the RoleSet's Pods and PodSets with our hashes of the role template they run, so later
/// template changes update them like ours.
async fn stamp_members(
    caches: &Caches,
    rs: &RoleSet,
    pods: &Api<Pod>,
    podsets: &Api<PodSet>,
) -> Result<(), Error> {
    let rs_name = rs.name_any();
    let stamp = |role_name: Option<&String>| {
        let role = rs.spec.roles.iter().find(|r| Some(&r.name) == role_name)?;
        Some(json!({"metadata": {
            "labels": {AIBRIX_LABEL_ROLE_TEMPLATE_HASH: role_template_hash(role)},
            "annotations": {ANNOTATION_SHAPE_HASH: shape_hash(&role.template)},
        }}))
    };
    for pod in caches.pods.state().iter().filter(|p| {
        p.labels().get(AIBRIX_LABEL_ROLESET_NAME) == Some(&rs_name)
            && crate::cache::controlled_by(p.as_ref(), rs)
            && !p.annotations().contains_key(ANNOTATION_SHAPE_HASH)
    }) {
        if let Some(body) = stamp(pod.labels().get(AIBRIX_LABEL_ROLE_NAME)) {
            pods.patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
            .map_err(|e| Error::Adopt(format!("Pod {}", pod.name_any()), e))?;
        }
    }
    let owned_podsets = podsets
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("{AIBRIX_LABEL_ROLESET_NAME}={rs_name}")),
        )
        .await
        .map_err(|e| Error::Adopt(format!("PodSets of {rs_name}"), e))?;
    for ps in owned_podsets.items.iter().filter(|p| {
        crate::cache::controlled_by(*p, rs) && !p.annotations().contains_key(ANNOTATION_SHAPE_HASH)
    }) {
        if let Some(body) = stamp(ps.labels().get(AIBRIX_LABEL_ROLE_NAME)) {
            podsets
                .patch(
                    &ps.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&body),
                )
                .await
                .map_err(|e| Error::Adopt(format!("PodSet {}", ps.name_any()), e))?;
        }
    }
    Ok(())
}
