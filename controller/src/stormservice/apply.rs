//! Executes a plan. Nothing is decided here: the plan says what to write, this writes it, in this
//! order:
//!
//! 1. status: the decision (including the controls it acted on) is recorded before anything else;
//! 2. revisions: the template being rolled out is kept, old ones pruned;
//! 3. Services: each pinned to its revision (traffic moves before capacity: an abort moves it at
//!    once, and the decision takes capacity away only once traffic is gone);
//! 4. traffic routers: set to the plan's weight;
//! 5. RoleSets: what is missing is created, then what is too much is deleted;
//! 6. control annotations that acted are removed (the status written in 1 acknowledges them);
//! 7. events, last: the record of what happened, not part of it.
//!
//! A failed write stops the sequence, except that a failed router write or RoleSet write still lets
//! 6 and 7 happen: the decision was recorded and its events must not be lost.
//!
//! A decision that stops a rollout (an abort, an automatic rollback) moves the traffic first: the
//! Services and routers go back to stable before the status is written, as the fewest writes
//! that restore stable. Doing them again (the status write failed, the next decision repeats
//! it) changes nothing: they are the same pins and weights.

use super::observe::Caches;
use super::revisions::{self, annotate_role_revisions, role_revisions, roleset_for, template_of};
use super::routing::{self, Routing};
use crate::context::{Context, MANAGER};
use crate::error::Error;
use crate::rollout::{Note, Observed, Plan};
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use storm_shared::keys::{AIBRIX_LABEL_STORM_SERVICE_NAME, LABEL_REVISION};
use storm_shared::status::Reason;
use storm_shared::types::API_VERSION;
use storm_shared::types::stormservice::RoleSetTemplateSpec;
use storm_shared::{RoleSet, StormService};
use tracing::{debug, info, warn};

/// Field manager for the Service selectors the controller pins.
pub const ROUTING_MANAGER: &str = "storm-controller-routing";

/// Writes `plan` for `obj`, in the order above.
pub async fn apply(
    ctx: &Context,
    caches: &Caches,
    obj: &StormService,
    observed: &Observed,
    plan: &Plan,
) -> Result<(), Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let client = &ctx.client;
    let api: Api<StormService> = Api::namespaced(client.clone(), &ns);
    let mut notes = Vec::new();
    // Traffic back on stable first when this decision stops the rollout.
    let mut routed = Ok(());
    let traffic_first = plan.rollback.is_some();
    if traffic_first {
        routed = move_traffic(ctx, caches, obj, &ns, observed, plan, &mut notes).await?;
    }
    // 1. Status.
    if obj.status.as_ref() != Some(&plan.status) {
        let body =
            json!({"apiVersion": API_VERSION, "kind": "StormService", "status": plan.status});
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::WriteStatus)?;
    }
    // The status is what is recorded now: the metrics say the same from this moment, not after
    // the writes below (a rollback's capacity changes can take a while).
    ctx.metrics
        .publish_rollout(&ns, &name, plan.status.rollout_status.as_ref());
    // 2. Revisions.
    let update = plan.status.update_revision.clone().unwrap_or_default();
    revisions::record(client, caches, obj, &update).await?;
    revisions::prune(client, caches, obj, plan).await?;
    // 3. Services: the StormService's headless Service (per-Pod DNS), then the pinned selectors.
    headless_service(ctx, caches, obj).await;
    if !traffic_first {
        // 3. and 4.: Services pinned, then traffic routers.
        routed = move_traffic(ctx, caches, obj, &ns, observed, plan, &mut notes).await?;
    }
    // 5. Capacity: RoleSets updated in place, created and deleted, then roles resized in the ones
    //    that stay.
    let mut scaled = retemplate(ctx, caches, obj, &update, observed, plan).await;
    if scaled.is_ok() {
        scaled = scale(ctx, caches, obj, &update, plan).await;
    }
    if scaled.is_ok() {
        scaled = resize(ctx, caches, &ns, plan).await;
    }
    // 6. Controls that acted go away.
    if !plan.remove_annotations.is_empty() {
        let nulls: serde_json::Map<String, serde_json::Value> = plan
            .remove_annotations
            .iter()
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect();
        let body = json!({"metadata": {"annotations": nulls}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(Error::RemoveAnnotations)?;
    }
    // 7. Events.
    publish(ctx, obj, plan.notes.iter().chain(&notes)).await;
    if let Some(reason) = &plan.rollback {
        ctx.metrics.rollback(reason.as_str());
    }
    scaled.and(routed)
}

/// Only the writes that put traffic where `plan` says (Services pinned, routers set): what the
/// urgent lane does for an abort before the ordinary lane applies the whole plan. Its notes are
/// dropped: the whole plan, applied next, makes the same ones.
pub async fn traffic(
    ctx: &Context,
    caches: &Caches,
    obj: &StormService,
    observed: &Observed,
    plan: &Plan,
) -> Result<(), Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    move_traffic(ctx, caches, obj, &ns, observed, plan, &mut Vec::new()).await?
}

/// Pins the Services (a failure stops here), then sets the routers; a router failure is returned
/// inside, for the caller to report after the writes that follow it.
async fn move_traffic(
    ctx: &Context,
    caches: &Caches,
    obj: &StormService,
    ns: &str,
    observed: &Observed,
    plan: &Plan,
    notes: &mut Vec<Note>,
) -> Result<Result<(), Error>, Error> {
    pin_services(ctx, caches, ns, plan, notes).await?;
    Ok(set_routers(ctx, obj, ns, observed, plan, notes).await)
}

/// The StormService's headless Service `<name>`, as AIBrix makes it: `clusterIP: None`, selecting
/// every Pod of the StormService (`storm-service-name`), not-ready addresses published (engines
/// rendezvous before they are Ready), no ports. Pods get `subdomain: <name>`, so
/// `<pod>.<name>.<namespace>.svc` resolves. A Service of that name that is not ours is left alone;
/// a failure here never holds a rollout back (it is logged and tried again next time).
async fn headless_service(ctx: &Context, caches: &Caches, obj: &StormService) {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    if let Some(existing) = caches.services.get(&ObjectRef::new(&name).within(&ns)) {
        let ours = existing
            .owner_references()
            .iter()
            .any(|o| Some(o.uid.as_str()) == obj.uid().as_deref());
        if !ours {
            debug!(namespace = %ns, service = %name, "a Service of the StormService's name exists and is not ours; per-Pod DNS uses it as it is");
        }
        return;
    }
    let mut labels = obj.labels().clone();
    labels.insert(AIBRIX_LABEL_STORM_SERVICE_NAME.into(), name.clone());
    let svc: Service = match serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels,
                     "ownerReferences": [revisions::owner(obj)]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": true,
                 "selector": {AIBRIX_LABEL_STORM_SERVICE_NAME: name}}
    })) {
        Ok(s) => s,
        Err(e) => {
            warn!(namespace = %ns, service = %name, error = %e, "building the headless Service");
            return;
        }
    };
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &svc).await {
        Ok(_) => info!(namespace = %ns, service = %name, "headless Service created"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            warn!(namespace = %ns, service = %name, error = %e, "creating the headless Service")
        }
    }
}

/// Why a Service must not be pinned, if it must not: one without a selector has Endpoints
/// someone keeps by hand (an external database, another cluster), and adding a selector would
/// replace them with the StormService's Pods. That is never the controller's call.
pub fn pin_refusal(service: &Service, ns: &str) -> Option<String> {
    let unselected = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none_or(BTreeMap::is_empty);
    unselected.then(|| {
        format!(
            "Service {ns}/{} has no selector (its Endpoints are managed by hand), so it is not pinned to a revision: the controller never adds a selector to a Service. Give it a selector that matches the StormService's Pods, or name another Service",
            service.name_any()
        )
    })
}

/// Pins each Service of the plan to its revision (a merge patch of our one selector key). A
/// Service without a selector is left alone, with a Warning event ([`pin_refusal`]).
async fn pin_services(
    ctx: &Context,
    caches: &Caches,
    ns: &str,
    plan: &Plan,
    notes: &mut Vec<Note>,
) -> Result<(), Error> {
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let mut unpinned = Vec::new();
    for (svc, rev) in &plan.services {
        let Some(current) = caches.services.get(&ObjectRef::new(svc).within(ns)) else {
            // A missing Service is the user's to create; admission already warned about it.
            debug!(namespace = ns, service = %svc, "Service not found; not pinned");
            continue;
        };
        if let Some(message) = pin_refusal(&current, ns) {
            warn!(namespace = ns, service = %svc, "Service has no selector; not pinned");
            notes.push(Note {
                warning: true,
                reason: Reason::ServiceNotPinned,
                message,
            });
            continue;
        }
        let pinned = current
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get(LABEL_REVISION))
            .map(String::as_str);
        if pinned != Some(rev.as_str()) {
            unpinned.push((svc, rev));
        }
    }
    // The Services are independent: pinned together, one round trip for all (an abort's stable
    // and canary Services move at once), and the first failure is returned after all were tried.
    let params = PatchParams {
        field_manager: Some(ROUTING_MANAGER.into()),
        ..Default::default()
    };
    let pins = unpinned.into_iter().map(|(svc, rev)| {
        let (api, params) = (&api, &params);
        async move {
            // A Service's selector is an atomic map: server-side apply would replace the user's
            // keys. A merge patch adds or updates our one key and leaves theirs alone.
            let body = json!({"spec": {"selector": {LABEL_REVISION: rev}}});
            api.patch(svc, params, &Patch::Merge(&body))
                .await
                .map_err(|e| Error::PinService(svc.clone(), e))?;
            info!(namespace = ns, service = %svc, revision = %rev, "Service pinned");
            Ok(())
        }
    });
    futures::future::join_all(pins).await.into_iter().collect()
}

/// Sets the routers to the plan's weight. A failure is an event and an error only when the plan
/// says it matters.
async fn set_routers(
    ctx: &Context,
    obj: &StormService,
    ns: &str,
    observed: &Observed,
    plan: &Plan,
    notes: &mut Vec<Note>,
) -> Result<(), Error> {
    let Some(write) = &plan.routers else {
        return Ok(());
    };
    let Some(r) = Routing::of(obj, ns, &write.stable_revision, &write.canary_revision) else {
        return Ok(());
    };
    match r
        .set(&ctx.client, observed.router_weight, plan.weight)
        .await
    {
        Ok(true) => {
            info!(namespace = ns, name = %obj.name_any(), weight = plan.weight, "traffic routers set");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) if write.report_errors => {
            notes.push(routing::error_note("setting the traffic routers", &e));
            Err(Error::Router(e))
        }
        Err(e) => {
            debug!(namespace = ns, name = %obj.name_any(), error = %e, "traffic routers not settable at rest");
            Ok(())
        }
    }
}

/// Creates and deletes exactly the RoleSets the plan names: creates first (in each revision's
/// template), then deletes.
async fn scale(
    ctx: &Context,
    caches: &Caches,
    obj: &StormService,
    update: &str,
    plan: &Plan,
) -> Result<(), Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<RoleSet> = Api::namespaced(ctx.client.clone(), &ns);
    create(ctx, caches, obj, update, plan.create.iter()).await?;
    // With a capacity budget a RoleSet stays (being deleted, counted against the budget) until
    // its Pods are gone: they hold the resource until then.
    let params = if obj.spec.capacity_budget().is_some() {
        DeleteParams::foreground()
    } else {
        DeleteParams::background()
    };
    for d in &plan.delete {
        match api.delete(d, &params).await {
            Ok(_) => info!(namespace = %ns, roleset = %d, "RoleSet deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::DeleteRoleSet(d.clone(), e)),
        }
    }
    Ok(())
}

/// Creates the RoleSets `create` names (revision and slot); one that exists already is left.
async fn create<'a>(
    ctx: &Context,
    caches: &Caches,
    obj: &StormService,
    update: &str,
    create: impl Iterator<Item = &'a (String, i32)>,
) -> Result<(), Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<RoleSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut templates: BTreeMap<&str, RoleSetTemplateSpec> = BTreeMap::new();
    for (rev, i) in create {
        if !templates.contains_key(rev.as_str()) {
            templates.insert(rev, template_of(caches, obj, update, rev)?);
        }
        let template = templates.get(rev.as_str()).unwrap_or(&obj.spec.template);
        let mut rs = roleset_for(obj, template, rev, *i);
        annotate_role_revisions(&mut rs, &role_revisions(caches, obj, template, rev));
        match api.create(&PostParams::default(), &rs).await {
            Ok(_) => info!(namespace = %ns, roleset = %rs.name_any(), "RoleSet created"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(Error::CreateRoleSet(rs.name_any(), e)),
        }
    }
    Ok(())
}

/// After an abort's traffic, the urgent lane's other writes: the stable RoleSets the plan
/// makes again (the rolled-out revision's are not made here). Deletions, resizes, the status
/// and events stay the ordinary lane's, which decides again and finds these made.
pub async fn restore_stable(
    ctx: &Context,
    caches: &Caches,
    obj: &StormService,
    update: &str,
    plan: &Plan,
) -> Result<(), Error> {
    let stable = plan.create.iter().filter(|(rev, _)| rev != update);
    create(ctx, caches, obj, update, stable).await
}

/// Gives each RoleSet the plan retemplates the update revision's template, in place: its spec,
/// labels and annotations become those a RoleSet of that revision in its slot would have; its
/// name, UID and Pods stay (the RoleSet controller then updates the changed roles' Pods). A PUT
/// with the cached resourceVersion: a RoleSet changed meanwhile is a conflict, retried next time.
async fn retemplate(
    ctx: &Context,
    caches: &Caches,
    obj: &StormService,
    update: &str,
    observed: &Observed,
    plan: &Plan,
) -> Result<(), Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<RoleSet> = Api::namespaced(ctx.client.clone(), &ns);
    for name in &plan.retemplate {
        let Some(current) = caches.rolesets.get(&ns, name) else {
            continue;
        };
        let index = observed
            .rolesets
            .iter()
            .find(|r| &r.name == name)
            .and_then(|r| r.index)
            .unwrap_or(0);
        let mut next = roleset_for(obj, &obj.spec.template, update, index);
        annotate_role_revisions(
            &mut next,
            &role_revisions(caches, obj, &obj.spec.template, update),
        );
        next.metadata.name = current.metadata.name.clone();
        next.metadata.uid = current.metadata.uid.clone();
        next.metadata.resource_version = current.metadata.resource_version.clone();
        next.metadata.finalizers = current.metadata.finalizers.clone();
        match api.replace(name, &PostParams::default(), &next).await {
            Ok(_) => {
                info!(namespace = %ns, roleset = %name, revision = update, "RoleSet updated in place")
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                debug!(namespace = %ns, roleset = %name, "RoleSet changed before its in-place update");
            }
            Err(e) => return Err(Error::RetemplateRoleSet(name.clone(), e)),
        }
    }
    Ok(())
}

/// Resizes roles in place: each RoleSet's `spec.roles` with the planned `replicas`, written as a
/// merge patch guarded by the cached resourceVersion (a RoleSet changed meanwhile is a conflict,
/// retried on the next reconcile with fresh data).
async fn resize(ctx: &Context, caches: &Caches, ns: &str, plan: &Plan) -> Result<(), Error> {
    let api: Api<RoleSet> = Api::namespaced(ctx.client.clone(), ns);
    for (name, changes) in &plan.resize {
        let Some(current) = caches.rolesets.get(ns, name) else {
            continue;
        };
        let mut roles = current.spec.roles.clone();
        for role in &mut roles {
            if let Some(want) = changes.get(&role.name) {
                role.replicas = Some(*want);
            }
        }
        let body = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"roles": roles},
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(|e| Error::ResizeRoleSet(name.clone(), e))?;
        info!(namespace = ns, roleset = %name, roles = ?changes, "RoleSet roles resized");
    }
    Ok(())
}

/// Records the notes as Events on the StormService. Best effort: a lost event fails nothing.
pub async fn publish<'a>(ctx: &Context, obj: &StormService, notes: impl Iterator<Item = &'a Note>) {
    let reference = obj.object_ref(&());
    for note in notes {
        let ev = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.as_str().to_string(),
            note: Some(note.message.clone()),
            // The recorder folds events with the same (type, reason, action) into one series, which
            // would hide "Step 1 completed" under "Step 0 completed": the action carries the
            // specific message so distinct transitions stay distinct events.
            action: note.message.chars().take(128).collect(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            warn!(namespace = ?obj.namespace(), name = %obj.name_any(), error = %e, "recording event");
        }
    }
}
