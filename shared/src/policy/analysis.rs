//! RolloutPolicy rules on analysis: which providers a namespace's metrics may use
//! (`allowedAnalysisProviders`) and which hosts they may query (`allowedAnalysisHosts`). They
//! apply to the AnalysisTemplates of the selected namespaces and to a StormService's inline
//! `autoRollback.onFailure.errorRate` metric.

use super::Violation;
use crate::errors::FieldPath;
use crate::types::analysis::{AnalysisTemplate, Metric};
use crate::types::policy::{AnalysisProviderKind, RolloutPolicy, RolloutPolicySpec};
use std::net::IpAddr;

/// The host a Datadog metric without `address` queries.
pub const DATADOG_DEFAULT_HOST: &str = "api.datadoghq.com";

/// An entry of `allowedAnalysisHosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host name only (lowercase, no trailing dot).
    Exact(String),
    /// Every name ending in `.<suffix>` (not the suffix itself), written `*.suffix`.
    Under(String),
    /// This IP address.
    Ip(IpAddr),
}

impl HostPattern {
    /// Reads a policy entry, or says why it is not a host name, `*.domain` pattern or IP address.
    pub fn parse(entry: &str) -> Result<Self, &'static str> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("must not be empty");
        }
        if let Ok(ip) = entry.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(Self::Ip(ip));
        }
        let (under, name) = match entry.strip_prefix("*.") {
            Some(suffix) => (true, suffix),
            None => (false, entry),
        };
        let name = normalize(name);
        if !is_host_name(&name) {
            return Err(
                "not a host name (prometheus.monitoring.svc), *.domain pattern (*.example.com) or IP address",
            );
        }
        Ok(if under {
            Self::Under(name)
        } else {
            Self::Exact(name)
        })
    }

    /// Whether `host` (as [`url_host`] returns it) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Under(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            Self::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
        }
    }
}

fn normalize(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A DNS name of letters, digits, `-` and `_` labels whose last label is not a number (`10.1`
/// would be read as an address by URL parsers).
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && name
            .rsplit('.')
            .next()
            .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

/// The host of a metric URL, as far as admission can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlHost {
    /// A host name (lowercase, no trailing dot) or an IP address (IPv6 without brackets).
    Host(String),
    /// The host part holds an `{{args.NAME}}` placeholder: known only when the metric runs.
    Placeholder,
    /// Not an http(s) URL with a host; the rules report it.
    Unknown,
}

/// The host of an `http://` or `https://` URL. Everything before the first `/`, `?` or `#` after
/// the scheme is the authority: a placeholder there could change the host (even through the
/// user-info part), so it counts as [`UrlHost::Placeholder`].
pub fn url_host(url: &str) -> UrlHost {
    let url = url.trim();
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return UrlHost::Unknown;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains("{{") {
        return UrlHost::Placeholder;
    }
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((inner, _)) => inner,
            None => return UrlHost::Unknown,
        }
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let host = normalize(host);
    if host.is_empty() {
        UrlHost::Unknown
    } else {
        UrlHost::Host(host)
    }
}

/// The providers a metric sets, with the path of each and the URL it queries (`None`: Datadog's
/// default site).
fn providers<'m>(
    m: &'m Metric,
    path: &FieldPath,
) -> Vec<(AnalysisProviderKind, FieldPath, Option<&'m str>)> {
    let pp = path.child("provider");
    let mut out = Vec::new();
    if let Some(p) = &m.provider.prometheus {
        out.push((
            AnalysisProviderKind::Prometheus,
            pp.child("prometheus"),
            Some(p.address.as_str()),
        ));
    }
    if let Some(w) = &m.provider.web {
        out.push((
            AnalysisProviderKind::Web,
            pp.child("web"),
            Some(w.url.as_str()),
        ));
    }
    if let Some(d) = &m.provider.datadog {
        out.push((
            AnalysisProviderKind::Datadog,
            pp.child("datadog"),
            d.address.as_deref(),
        ));
    }
    out
}

fn kind_name(k: AnalysisProviderKind) -> &'static str {
    match k {
        AnalysisProviderKind::Prometheus => "prometheus",
        AnalysisProviderKind::Web => "web",
        AnalysisProviderKind::Datadog => "datadog",
    }
}

fn url_field(k: AnalysisProviderKind) -> &'static str {
    match k {
        AnalysisProviderKind::Web => "url",
        AnalysisProviderKind::Prometheus | AnalysisProviderKind::Datadog => "address",
    }
}

/// Every rule of `p` on analysis that metric `m` at `path` breaks, as `violate(path, message)`.
pub fn check_metric(
    p: &RolloutPolicySpec,
    m: &Metric,
    path: &FieldPath,
    violate: &mut impl FnMut(FieldPath, String),
) {
    for (kind, provider_path, url) in providers(m, path) {
        if let Some(allowed) = &p.allowed_analysis_providers
            && !allowed.contains(&kind)
        {
            let list: Vec<&str> = allowed.iter().map(|k| kind_name(*k)).collect();
            violate(
                provider_path.clone(),
                format!(
                    "analysis provider {} is not allowed in this namespace; allowed: {}",
                    kind_name(kind),
                    list.join(", ")
                ),
            );
        }
        let Some(hosts) = &p.allowed_analysis_hosts else {
            continue;
        };
        let patterns: Vec<HostPattern> = hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect();
        let allowed = hosts.join(", ");
        let field = provider_path.child(url_field(kind));
        let host = match url {
            Some(u) => url_host(u),
            None => UrlHost::Host(DATADOG_DEFAULT_HOST.to_string()),
        };
        match host {
            UrlHost::Host(h) if patterns.iter().any(|pat| pat.matches(&h)) => {}
            UrlHost::Host(h) => {
                let what = if url.is_none() {
                    format!("Datadog's default site {h} (no address set)")
                } else {
                    format!("host {h}")
                };
                violate(
                    field,
                    format!(
                        "{what} is not among the hosts analysis may query in this namespace (allowedAnalysisHosts: {allowed}); query an allowed host, or ask a cluster admin to add it"
                    ),
                );
            }
            UrlHost::Placeholder => violate(
                field,
                format!(
                    "the host comes from an {{{{args.…}}}} placeholder, which admission cannot check against allowedAnalysisHosts ({allowed}); write the host in the URL and use args only in its path or query"
                ),
            ),
            UrlHost::Unknown => {}
        }
    }
}

/// Every rule of `policy` on analysis that the template's metrics break.
pub fn evaluate_template(policy: &RolloutPolicy, t: &AnalysisTemplate) -> Vec<Violation> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mode = policy.spec.mode.unwrap_or_default();
    let mut out = Vec::new();
    let metrics = FieldPath::new("spec").child("metrics");
    for (i, m) in t.spec.metrics.iter().enumerate() {
        check_metric(&policy.spec, m, &metrics.index(i), &mut |path, message| {
            out.push(Violation {
                policy: name.clone(),
                mode,
                path,
                message,
            })
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        let host = |h: &str| UrlHost::Host(h.to_string());
        assert_eq!(
            url_host("http://Prom.Monitoring.svc:9090/api"),
            host("prom.monitoring.svc")
        );
        assert_eq!(
            url_host("https://user:pw@metrics.example.com./x"),
            host("metrics.example.com")
        );
        assert_eq!(
            url_host("http://[fd00:ec2::254]:80/"),
            host("fd00:ec2::254")
        );
        assert_eq!(url_host("http://10.0.0.1?q"), host("10.0.0.1"));
        assert_eq!(url_host("http://{{args.host}}/q"), UrlHost::Placeholder);
        assert_eq!(url_host("http://u{{args.x}}@prom/q"), UrlHost::Placeholder);
        assert_eq!(url_host("http://prom/{{args.path}}"), host("prom"));
        assert_eq!(url_host("ftp://prom"), UrlHost::Unknown);
    }

    #[test]
    fn patterns() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(p("Prom.Monitoring.svc").matches("prom.monitoring.svc"));
        assert!(p("*.example.com").matches("a.b.example.com"));
        assert!(!p("*.example.com").matches("example.com"));
        assert!(!p("*.example.com").matches("evilexample.com"));
        assert!(p("10.0.0.1").matches("10.0.0.1"));
        assert!(p("[::1]").matches("::1"));
        assert!(!p("10.0.0.1").matches("10.0.0.2"));
        for bad in ["", "*.", "a b", "http://x", "*.10.1", "x/y"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
