//! Rules for traffic routing.

use super::names;
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::policy::RouterKind;
use crate::types::stormservice::TrafficRouting;

/// The routers a `trafficRouting` block names.
pub fn routers(tr: &TrafficRouting) -> Vec<RouterKind> {
    let mut out = Vec::new();
    if tr.nginx.is_some() {
        out.push(RouterKind::Nginx);
    }
    if tr.istio.is_some() {
        out.push(RouterKind::Istio);
    }
    if tr.smi.is_some() {
        out.push(RouterKind::Smi);
    }
    if tr.gateway_api.is_some() {
        out.push(RouterKind::GatewayApi);
    }
    out
}

pub(super) fn check(tr: &TrafficRouting, path: &dyn Fn() -> FieldPath, report: &mut Report) {
    let named = routers(tr);
    match named.len() {
        0 => report.error(FieldError::required(
            path(),
            "name one router: nginx, istio, smi or gatewayAPI (or remove trafficRouting to split by RoleSets)",
        )),
        1 => {}
        _ => report.error(FieldError::forbidden(
            path(),
            format!(
                "name exactly one router, found {}",
                named.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" and ")
            ),
        )),
    }
    // Paths are made only for a problem.
    let name = |report: &mut Report, field: &dyn Fn() -> FieldPath, value: &str, what: &str| {
        if value.trim().is_empty() {
            report.error(FieldError::required(
                field(),
                format!("the name of the {what}"),
            ));
        } else if let Some(why) = names::dns1123_subdomain(value) {
            report.error(FieldError::invalid(field(), value, why));
        }
    };
    if let Some(n) = &tr.nginx {
        let p = || path().child("nginx");
        name(
            report,
            &|| p().child("ingress"),
            &n.ingress,
            "Ingress that routes to the stable Service",
        );
        if !(1..=65535).contains(&n.service_port) {
            report.error(FieldError::invalid(
                p().child("servicePort"),
                n.service_port,
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
    if let Some(i) = &tr.istio {
        let p = || path().child("istio");
        name(
            report,
            &|| p().child("virtualService"),
            &i.virtual_service,
            "Istio VirtualService",
        );
        if let Some(dr) = &i.destination_rule {
            name(
                report,
                &|| p().child("destinationRule"),
                dr,
                "Istio DestinationRule",
            );
        }
    }
    if let Some(s) = &tr.smi {
        let p = || path().child("smi");
        name(
            report,
            &|| p().child("trafficSplit"),
            &s.traffic_split,
            "SMI TrafficSplit",
        );
        if let Some(root) = &s.root_service {
            name(report, &|| p().child("rootService"), root, "root Service");
        }
    }
    if let Some(g) = &tr.gateway_api {
        name(
            report,
            &|| path().child("gatewayAPI").child("httpRoute"),
            &g.http_route,
            "Gateway API HTTPRoute",
        );
    }
}
