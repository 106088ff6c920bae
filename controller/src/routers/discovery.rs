//! Which version of an API group the API server prefers, asked once and remembered for a while.
//!
//! The routers read and write their custom resources several times per reconcile, and every
//! second while a rollout waits; asking discovery each time would double the API calls for an
//! answer that changes only when a CRD is installed or upgraded. The answer is kept per group,
//! process-wide, for [`SERVED_TTL`]; a group that is not served is kept only for
//! [`NOT_SERVED_TTL`], so installing its CRD is noticed soon. Discovery errors are not kept.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroupList;
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a served group's preferred version is trusted.
pub const SERVED_TTL: Duration = Duration::from_secs(5 * 60);
/// How long "not served" is trusted: short, so a newly installed CRD is picked up soon.
pub const NOT_SERVED_TTL: Duration = Duration::from_secs(30);

/// What discovery says about a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preferred {
    /// The group is served; this is the version to use.
    Version(String),
    /// The API server does not serve the group (its CRD is not installed).
    NotServed,
}

impl Preferred {
    fn ttl(&self) -> Duration {
        match self {
            Preferred::Version(_) => SERVED_TTL,
            Preferred::NotServed => NOT_SERVED_TTL,
        }
    }
}

/// Answers per group with the time they were learned.
#[derive(Debug, Default)]
pub struct Cache {
    entries: BTreeMap<String, (Preferred, Instant)>,
}

impl Cache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
        }
    }

    /// The answer for `group` if it is still fresh at `now`.
    pub fn get(&self, group: &str, now: Instant) -> Option<Preferred> {
        let (found, learned) = self.entries.get(group)?;
        (now.saturating_duration_since(*learned) < found.ttl()).then(|| found.clone())
    }

    /// Remembers what `groups` (one discovery answer, read at `now`) says: every group it lists,
    /// and `asked` as not served when it is missing. Returns the answer for `asked`.
    pub fn learn(&mut self, groups: &APIGroupList, asked: &str, now: Instant) -> Preferred {
        for g in &groups.groups {
            self.entries
                .insert(g.name.clone(), (preferred(groups, &g.name), now));
        }
        let answer = preferred(groups, asked);
        self.entries
            .insert(asked.to_string(), (answer.clone(), now));
        answer
    }
}

/// The version of `group` to use: the server's preferred one, else the first it lists.
pub fn preferred(groups: &APIGroupList, group: &str) -> Preferred {
    groups
        .groups
        .iter()
        .find(|g| g.name == group)
        .and_then(|g| g.preferred_version.as_ref().or(g.versions.first()))
        .map_or(Preferred::NotServed, |v| {
            Preferred::Version(v.version.clone())
        })
}

/// The one cache of the process (one controller talks to one cluster).
static CACHE: Mutex<Cache> = Mutex::new(Cache::new());

/// The version of `group` the API server prefers, from the cache or from discovery.
pub async fn preferred_version(
    client: &kube::Client,
    group: &str,
) -> Result<Preferred, kube::Error> {
    // A panic while holding the lock leaves the map whole: keep using it.
    let cached = CACHE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(group, Instant::now());
    if let Some(found) = cached {
        return Ok(found);
    }
    let groups = client.list_api_groups().await?;
    Ok(CACHE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .learn(&groups, group, Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, GroupVersionForDiscovery};

    fn version(v: &str) -> GroupVersionForDiscovery {
        GroupVersionForDiscovery {
            group_version: format!("g/{v}"),
            version: v.into(),
        }
    }

    fn groups(list: &[(&str, Option<&str>, &[&str])]) -> APIGroupList {
        APIGroupList {
            groups: list
                .iter()
                .map(|(name, preferred, versions)| APIGroup {
                    name: (*name).into(),
                    preferred_version: preferred.map(version),
                    versions: versions.iter().map(|v| version(v)).collect(),
                    ..APIGroup::default()
                })
                .collect(),
        }
    }

    #[test]
    fn the_preferred_version_wins_then_the_first_listed() {
        let list = groups(&[
            ("networking.istio.io", Some("v1"), &["v1", "v1beta1"]),
            ("split.smi-spec.io", None, &["v1alpha4", "v1alpha3"]),
            ("empty.example.com", None, &[]),
        ]);
        assert_eq!(
            preferred(&list, "networking.istio.io"),
            Preferred::Version("v1".into())
        );
        assert_eq!(
            preferred(&list, "split.smi-spec.io"),
            Preferred::Version("v1alpha4".into())
        );
        assert_eq!(preferred(&list, "empty.example.com"), Preferred::NotServed);
        assert_eq!(
            preferred(&list, "gateway.networking.k8s.io"),
            Preferred::NotServed
        );
    }

    #[test]
    fn a_served_group_is_kept_five_minutes_and_every_listed_group_is_learned() {
        let t0 = Instant::now();
        let mut cache = Cache::new();
        assert_eq!(cache.get("networking.istio.io", t0), None);
        let list = groups(&[
            ("networking.istio.io", Some("v1"), &["v1"]),
            ("gateway.networking.k8s.io", Some("v1"), &["v1", "v1beta1"]),
        ]);
        assert_eq!(
            cache.learn(&list, "networking.istio.io", t0),
            Preferred::Version("v1".into())
        );
        let later = t0 + SERVED_TTL - Duration::from_secs(1);
        assert_eq!(
            cache.get("networking.istio.io", later),
            Some(Preferred::Version("v1".into()))
        );
        // Learned from the same answer: no second discovery call for another router.
        assert_eq!(
            cache.get("gateway.networking.k8s.io", later),
            Some(Preferred::Version("v1".into()))
        );
        assert_eq!(cache.get("networking.istio.io", t0 + SERVED_TTL), None);
    }

    #[test]
    fn a_group_not_served_is_asked_again_after_thirty_seconds() {
        let t0 = Instant::now();
        let mut cache = Cache::new();
        assert_eq!(
            cache.learn(&groups(&[]), "split.smi-spec.io", t0),
            Preferred::NotServed
        );
        assert_eq!(
            cache.get("split.smi-spec.io", t0 + Duration::from_secs(29)),
            Some(Preferred::NotServed)
        );
        assert_eq!(cache.get("split.smi-spec.io", t0 + NOT_SERVED_TTL), None);
        // The CRD was installed meanwhile: the next answer replaces the old one.
        let installed = groups(&[("split.smi-spec.io", None, &["v1alpha4"])]);
        assert_eq!(
            cache.learn(&installed, "split.smi-spec.io", t0 + NOT_SERVED_TTL),
            Preferred::Version("v1alpha4".into())
        );
    }
}
