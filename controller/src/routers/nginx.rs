//! nginx ingress: a generated `<ingress>-canary` Ingress, a copy of the user's Ingress whose
//! backends for the stable Service point at `canaryService:servicePort`, marked as canary with
//! its weight in annotations (ingress-nginx's canary feature). The user's Ingress is only read.

use super::{Error, FIELD_MANAGER, ObjectName, Target, contains};
use k8s_openapi::api::networking::v1::{
    HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use std::collections::BTreeMap;
use storm_shared::keys::LABEL_NAME;
use storm_shared::types::stormservice::NginxRouting;

/// Annotation marking an Ingress as ingress-nginx canary of the Ingress with the same host and path.
pub const ANNOTATION_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
/// Annotation with the canary's share of traffic, in percent.
pub const ANNOTATION_CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
/// Label on generated objects: the tool that manages them.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on generated objects.
pub const MANAGED_BY: &str = "storm-rollouts";

const NGINX_ANNOTATIONS: &str = "nginx.ingress.kubernetes.io/";
/// The user's ingress-nginx annotations copied to the canary Ingress: only those ingress-nginx
/// reads from a canary Ingress (it ignores every other non-canary annotation there and inherits
/// it from the main Ingress): the load balancing and session affinity ones, as names after
/// [`NGINX_ANNOTATIONS`]; a trailing `*` is a prefix. Copying others would do nothing for the
/// canary and would have the controller write configuration (snippets, auth, rate limits) into an
/// object of its own making.
const COPIED_NGINX_ANNOTATIONS: [&str; 6] = [
    "load-balance",
    "upstream-hash-by",
    "affinity",
    "affinity-mode",
    "affinity-canary-behavior",
    "session-cookie-*",
];
/// The deprecated class annotation still selects the controller on many installs.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const INGRESS_FIELD: &str = "spec.rolloutStrategy.canary.trafficRouting.nginx.ingress";

/// Name of the generated canary Ingress for the user's Ingress `ingress`.
pub fn canary_ingress_name(ingress: &str) -> String {
    format!("{ingress}-canary")
}

fn user_object(routing: &NginxRouting, target: &Target<'_>) -> ObjectName {
    ObjectName::new("Ingress", target.namespace, &routing.ingress)
}

/// The canary Ingress for `user` at `weight`: the class, TLS and every rule path (and default
/// backend) that routes to the stable Service, pointed at `canaryService:servicePort`; paths to
/// other Services are left out. It carries the user's class annotation and the few ingress-nginx
/// annotations a canary Ingress honours ([`COPIED_NGINX_ANNOTATIONS`]), the canary annotations,
/// our labels and an ownerReference to the StormService.
pub fn canary_ingress(
    user: &Ingress,
    routing: &NginxRouting,
    target: &Target<'_>,
    weight: i32,
) -> Result<Ingress, Error> {
    let spec = user.spec.clone().unwrap_or_default();
    let canary_backend = || IngressBackend {
        service: Some(IngressServiceBackend {
            name: target.canary_service.to_string(),
            port: Some(ServiceBackendPort {
                number: Some(routing.service_port),
                name: None,
            }),
        }),
        resource: None,
    };
    let to_stable = |b: &IngressBackend| {
        b.service
            .as_ref()
            .is_some_and(|s| s.name == target.stable_service)
    };
    let default_backend = spec
        .default_backend
        .as_ref()
        .filter(|b| to_stable(b))
        .map(|_| canary_backend());
    let rules: Vec<IngressRule> = spec
        .rules
        .unwrap_or_default()
        .into_iter()
        .filter_map(|rule| {
            let paths: Vec<_> = rule
                .http?
                .paths
                .into_iter()
                .filter(|p| to_stable(&p.backend))
                .map(|mut p| {
                    p.backend = canary_backend();
                    p
                })
                .collect();
            (!paths.is_empty()).then_some(IngressRule {
                host: rule.host,
                http: Some(HTTPIngressRuleValue { paths }),
            })
        })
        .collect();
    if rules.is_empty() && default_backend.is_none() {
        return Err(Error::Unroutable {
            object: user_object(routing, target),
            problem: format!(
                "no backend routes to the stable Service {}",
                target.stable_service
            ),
            fix: "point spec.rules[].http.paths[].backend.service.name (or spec.defaultBackend) at it"
                .into(),
        });
    }

    let mut annotations: BTreeMap<String, String> = user
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| *k == CLASS_ANNOTATION || copied_nginx_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(ANNOTATION_CANARY.into(), "true".into());
    annotations.insert(ANNOTATION_CANARY_WEIGHT.into(), weight.to_string());
    let labels = BTreeMap::from([
        (LABEL_NAME.to_string(), target.owner.name.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);

    Ok(Ingress {
        metadata: ObjectMeta {
            name: Some(canary_ingress_name(&routing.ingress)),
            namespace: Some(target.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![target.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: spec.ingress_class_name,
            default_backend,
            rules: (!rules.is_empty()).then_some(rules),
            tls: spec.tls,
        }),
        status: None,
    })
}

/// Whether `key` is one of [`COPIED_NGINX_ANNOTATIONS`].
fn copied_nginx_annotation(key: &str) -> bool {
    let Some(name) = key.strip_prefix(NGINX_ANNOTATIONS) else {
        return false;
    };
    COPIED_NGINX_ANNOTATIONS
        .iter()
        .any(|a| match a.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *a,
        })
}

/// Whether applying `desired` would change `current` (the existing canary Ingress).
pub fn needs_apply(current: &Ingress, desired: &Ingress) -> bool {
    match (serde_json::to_value(current), serde_json::to_value(desired)) {
        (Ok(current), Ok(desired)) => !contains(&current, &desired),
        _ => true,
    }
}

/// Whether `ingress` was generated for the StormService of `target` (its ownerReference).
pub fn generated_for(ingress: &Ingress, target: &Target<'_>) -> bool {
    ingress
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == target.owner.uid)
}

/// The weight a canary Ingress carries; `None` unless it is marked canary with a weight in 0..=100.
pub fn canary_weight(canary: &Ingress) -> Option<i32> {
    let annotations = canary.metadata.annotations.as_ref()?;
    if annotations.get(ANNOTATION_CANARY).map(String::as_str) != Some("true") {
        return None;
    }
    annotations
        .get(ANNOTATION_CANARY_WEIGHT)?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|w| (0..=100).contains(w))
}

/// Creates or updates the canary Ingress for `weight` (server-side apply; no write when it is
/// already as wanted).
pub async fn set_weight(
    client: &kube::Client,
    routing: &NginxRouting,
    target: &Target<'_>,
    weight: i32,
) -> Result<(), Error> {
    let api: Api<Ingress> = Api::namespaced(client.clone(), target.namespace);
    let user_object = user_object(routing, target);
    let user = api
        .get_opt(&routing.ingress)
        .await
        .map_err(|source| Error::Read {
            object: user_object.clone(),
            source: Box::new(source),
        })?
        .ok_or_else(|| Error::Missing {
            object: user_object.clone(),
            field: INGRESS_FIELD,
        })?;
    let desired = canary_ingress(&user, routing, target, weight)?;
    let name = canary_ingress_name(&routing.ingress);
    let object = ObjectName::new("Ingress", target.namespace, &name);
    let current = api.get_opt(&name).await.map_err(|source| Error::Read {
        object: object.clone(),
        source: Box::new(source),
    })?;
    if let Some(current) = current {
        if !generated_for(&current, target) {
            return Err(Error::Unroutable {
                object,
                problem: format!(
                    "exists but was not generated for StormService {} (no ownerReference to it)",
                    target.owner.name
                ),
                fix: format!(
                    "delete or rename it: the nginx router generates the canary Ingress of {} under this name",
                    routing.ingress
                ),
            });
        }
        if !needs_apply(&current, &desired) {
            return Ok(());
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| Error::Write {
        object: object.clone(),
        source: Box::new(source),
    })?;
    tracing::info!(object = %object, weight, "nginx canary Ingress applied");
    Ok(())
}

/// The weight of the canary Ingress; `None` while it does not exist.
pub async fn read_weight(
    client: &kube::Client,
    routing: &NginxRouting,
    target: &Target<'_>,
) -> Result<Option<i32>, Error> {
    let api: Api<Ingress> = Api::namespaced(client.clone(), target.namespace);
    let name = canary_ingress_name(&routing.ingress);
    let canary = api.get_opt(&name).await.map_err(|source| Error::Read {
        object: ObjectName::new("Ingress", target.namespace, &name),
        source: Box::new(source),
    })?;
    Ok(canary
        .filter(|c| generated_for(c, target))
        .as_ref()
        .and_then(canary_weight))
}

#[cfg(test)]
#[path = "nginx_tests.rs"]
mod tests;
