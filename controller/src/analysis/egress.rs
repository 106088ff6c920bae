//! Where analysis requests may go. A StormService or AnalysisTemplate names a URL; without a
//! policy the controller would request any address a tenant writes there (cloud metadata,
//! the API server, another tenant's unauthenticated services) from inside the cluster.
//!
//! The policy is checked on the addresses a host name resolves to, in the connector, so the
//! address checked is the address connected to (a name that resolves elsewhere on a second lookup
//! gains nothing). Refused unless allowed:
//! - always: loopback, link-local (cloud metadata lives there), unspecified, multicast and
//!   broadcast addresses, and the API server's addresses;
//! - by default: the private ranges clusters take Pod and Service addresses from (RFC 1918,
//!   100.64.0.0/10, fc00::/7), replaceable with `--analysis-egress-deny`.
//!
//! `--analysis-egress-allow` lists what an administrator allows anyway: host names (exact, or
//! `*.example.com` for every name under it) and CIDRs. A listed host is allowed whatever it
//! resolves to (the administrator vouches for its DNS); a listed CIDR allows its addresses for
//! any host name.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The flag that allows destinations; named in every refusal.
pub const ALLOW_FLAG: &str = "--analysis-egress-allow";
/// The flag that replaces the default refused ranges.
pub const DENY_FLAG: &str = "--analysis-egress-deny";

/// The ranges refused by default: where clusters take Pod and Service addresses from.
pub const DEFAULT_DENY: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// A setting of the policy does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} entry {entry:?}: {reason}")]
pub struct SettingError {
    flag: &'static str,
    entry: String,
    reason: String,
}

/// A host name an administrator allows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// This name only.
    Exact(String),
    /// Every name ending in `.<suffix>` (not the suffix itself).
    Under(String),
}

impl HostRule {
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Under(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        }
    }
}

/// The controller's egress policy for analysis requests.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    hosts: Vec<HostRule>,
    allowed: Vec<IpNet>,
    denied: Vec<IpNet>,
    api_server: Vec<IpAddr>,
}

impl Default for EgressPolicy {
    /// The default policy: nothing allowed beyond public addresses.
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            allowed: Vec::new(),
            denied: DEFAULT_DENY.iter().filter_map(|n| n.parse().ok()).collect(),
            api_server: Vec::new(),
        }
    }
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} resolves to {ip} ({why}), which the controller's analysis egress policy refuses; a cluster administrator can allow it with {ALLOW_FLAG}={host} (or a CIDR holding {ip})"
)]
pub struct Refused {
    /// The host name (or address) of the URL.
    pub host: String,
    /// The address refused.
    pub ip: IpAddr,
    /// Which rule refused it.
    pub why: &'static str,
}

fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

impl EgressPolicy {
    /// A policy from the flags' entries: `allow` holds host names, `*.suffix` patterns and CIDRs
    /// (or single addresses); `deny`, when given, replaces [`DEFAULT_DENY`].
    pub fn new(allow: &[String], deny: Option<&[String]>) -> Result<Self, SettingError> {
        let mut policy = Self::default();
        for entry in allow.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if let Some(net) = parse_net(entry) {
                policy.allowed.push(net);
            } else if let Some(suffix) = entry.strip_prefix("*.") {
                check_host(ALLOW_FLAG, entry, suffix)?;
                policy.hosts.push(HostRule::Under(normalize_host(suffix)));
            } else {
                check_host(ALLOW_FLAG, entry, entry)?;
                policy.hosts.push(HostRule::Exact(normalize_host(entry)));
            }
        }
        if let Some(deny) = deny {
            policy.denied = deny
                .iter()
                .map(|e| e.trim())
                .filter(|e| !e.is_empty())
                .map(|e| {
                    parse_net(e).ok_or_else(|| SettingError {
                        flag: DENY_FLAG,
                        entry: e.to_string(),
                        reason: "not a CIDR (e.g. 10.0.0.0/8) or an IP address".into(),
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(policy)
    }

    /// Also refuses the API server's addresses.
    pub fn with_api_server(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        self.api_server.extend(addresses);
        self
    }

    /// Whether `host` is listed by name: its addresses are then not checked.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.hosts.iter().any(|r| r.matches(&host))
    }

    /// Checks one address `host` resolved to (or the address a URL names).
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        if self.allows_host(host) {
            return Ok(());
        }
        // An IPv4 address written as IPv6 (::ffff:a.b.c.d) is that IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        let refuse = |why| {
            Err(Refused {
                host: normalize_host(host),
                ip,
                why,
            })
        };
        if let Some(why) = special(ip) {
            return refuse(why);
        }
        if self.api_server.contains(&ip) {
            return refuse("the Kubernetes API server");
        }
        if self.denied.iter().any(|n| n.contains(&ip)) {
            return refuse("a cluster or private range");
        }
        Ok(())
    }

    /// The addresses of `host` that may be connected to, or the refusal of the first one when
    /// none may.
    pub fn filter(
        &self,
        host: &str,
        addresses: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        let mut first_refusal = None;
        let mut ok = Vec::new();
        for a in addresses {
            match self.check(host, a.ip()) {
                Ok(()) => ok.push(a),
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        match (ok.is_empty(), first_refusal) {
            (true, Some(r)) => Err(r),
            _ => Ok(ok),
        }
    }
}

/// Addresses that are never a metrics endpoint a tenant should reach: the host itself, the link
/// (cloud metadata services answer on 169.254.169.254 and fd00:ec2::254), nowhere, everyone.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local, where cloud metadata services answer")
            } else if v4.is_unspecified() || v4 == Ipv4Addr::BROADCAST || v4.is_multicast() {
                Some("not a single host")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("loopback")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("link-local, where cloud metadata services answer")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata service")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a single host")
            } else {
                None
            }
        }
    }
}

fn parse_net(entry: &str) -> Option<IpNet> {
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

fn check_host(flag: &'static str, entry: &str, host: &str) -> Result<(), SettingError> {
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if valid {
        Ok(())
    } else {
        Err(SettingError {
            flag,
            entry: entry.to_string(),
            reason: "not a host name, *.domain pattern, CIDR or IP address".into(),
        })
    }
}

/// A DNS resolver that resolves with the system's resolver and keeps only the addresses the
/// policy allows: the connector connects to nothing else.
#[derive(Clone)]
pub struct PolicyResolver {
    inner: hyper_util::client::legacy::connect::dns::GaiResolver,
    policy: Arc<EgressPolicy>,
}

impl PolicyResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self {
            inner: hyper_util::client::legacy::connect::dns::GaiResolver::new(),
            policy,
        }
    }
}

type Resolved = std::vec::IntoIter<SocketAddr>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for PolicyResolver {
    type Response = Resolved;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resolved, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let host = name.as_str().to_string();
        let policy = self.policy.clone();
        let lookup = self.inner.call(name);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = lookup.await?.collect();
            Ok(policy.filter(&host, addresses)?.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_policy_refuses_the_host_the_link_and_the_cluster() {
        let p = EgressPolicy::default().with_api_server([ip("203.0.113.7")]);
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("::ffff:169.254.169.254", "link-local"),
            ("fd00:ec2::254", "metadata"),
            ("0.0.0.0", "not a single host"),
            ("10.96.0.1", "cluster"),
            ("192.168.1.5", "cluster"),
            ("100.64.3.2", "cluster"),
            ("203.0.113.7", "API server"),
        ] {
            let r = p.check("metrics.example", ip(addr)).unwrap_err();
            assert!(r.why.contains(why), "{addr}: {r}");
            assert!(r.to_string().contains(ALLOW_FLAG), "{r}");
        }
        assert!(p.check("metrics.example", ip("203.0.113.8")).is_ok());
        assert!(p.check("metrics.example", ip("2001:db8::1")).is_ok());
    }

    #[test]
    fn administrators_allow_hosts_and_ranges() {
        let allow: Vec<String> = [
            "prometheus.monitoring.svc",
            "*.metrics.internal",
            "10.96.0.0/12",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec();
        let p = EgressPolicy::new(&allow, None).unwrap();
        // A listed host whatever it resolves to; a listed range for any host.
        assert!(p.check("prometheus.monitoring.svc", ip("10.0.0.5")).is_ok());
        assert!(
            p.check("Prometheus.Monitoring.svc.", ip("10.0.0.5"))
                .is_ok()
        );
        assert!(p.check("a.metrics.internal", ip("192.168.0.1")).is_ok());
        assert!(p.check("metrics.internal", ip("192.168.0.1")).is_err());
        assert!(p.check("evilmetrics.internal", ip("192.168.0.1")).is_err());
        assert!(p.check("anything", ip("10.100.0.1")).is_ok());
        assert!(p.check("anything", ip("10.0.0.1")).is_err());
        assert!(p.check("localhost", ip("127.0.0.1")).is_ok());
        assert!(p.check("localhost", ip("127.0.0.2")).is_err());
        // Replacing the refused ranges.
        let p = EgressPolicy::new(&[], Some(&["10.0.0.0/8".to_string()])).unwrap();
        assert!(p.check("x", ip("192.168.0.1")).is_ok());
        assert!(p.check("x", ip("10.1.1.1")).is_err());
        // Bad entries name the flag.
        let e = EgressPolicy::new(&["http://x".to_string()], None).unwrap_err();
        assert!(e.to_string().contains(ALLOW_FLAG), "{e}");
        let e = EgressPolicy::new(&[], Some(&["intranet".to_string()])).unwrap_err();
        assert!(e.to_string().contains(DENY_FLAG), "{e}");
    }

    #[test]
    fn a_name_with_some_refused_addresses_keeps_the_others() {
        let p = EgressPolicy::default();
        let addrs = [
            SocketAddr::new(ip("127.0.0.1"), 80),
            SocketAddr::new(ip("203.0.113.9"), 80),
        ];
        assert_eq!(p.filter("x", addrs).unwrap(), vec![addrs[1]]);
        assert!(p.filter("x", [addrs[0]]).is_err());
    }
}
