//! Finalizers. AIBrix's, on objects its controllers made: with AIBrix's controllers turned off
//! nobody would ever remove them, and deleting a StormService, RoleSet or PodSet would hang. Owner
//! references let garbage collection remove our children, so when such an object is being deleted,
//! its AIBrix finalizer is removed and deletion goes on.
//!
//! Ours, [`TRAFFIC`]: the routing objects a canary's `trafficRouting` names (an HTTPRoute, a
//! VirtualService, a TrafficSplit) are the user's, so garbage collection leaves them with whatever
//! weight the rollout had reached, pointing at a canary whose Pods are going away. A StormService
//! with routers carries the finalizer; deleting it first puts all traffic back on stable.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt::Debug;
use tracing::info;

/// AIBrix's StormService finalizer.
pub const STORMSERVICE: &str = "orchestration.aibrix.ai/stormservice-finalizer";
/// AIBrix's RoleSet finalizer.
pub const ROLESET: &str = "orchestration.aibrix.ai/roleset-finalizer";
/// AIBrix's PodSet finalizer.
pub const PODSET: &str = "orchestration.aibrix.ai/podset-finalizer";

/// Ours: on a StormService whose canary has traffic routers, until they are back on stable.
pub const TRAFFIC: &str = "stormservice.aibrix.ai/traffic";

/// The finalizers `obj` keeps once `finalizers` are gone, when it is being deleted and carries
/// any of them.
pub fn without(obj: &impl Resource, finalizers: &[&str]) -> Option<Vec<String>> {
    let meta = obj.meta();
    meta.deletion_timestamp.as_ref()?;
    let all = meta.finalizers.as_ref()?;
    let gone = |f: &String| finalizers.contains(&f.as_str());
    all.iter()
        .any(gone)
        .then(|| all.iter().filter(|f| !gone(f)).cloned().collect())
}

/// Whether `obj` carries `finalizer`.
pub fn carries(obj: &impl Resource, finalizer: &str) -> bool {
    obj.meta()
        .finalizers
        .as_ref()
        .is_some_and(|all| all.iter().any(|f| f == finalizer))
}

/// Adds `finalizer` to `obj` unless it carries it or is being deleted. A merge patch guarded by
/// the resourceVersion, as [`release`].
pub async fn add<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    if carries(obj, finalizer) || obj.meta().deletion_timestamp.is_some() {
        return Ok(false);
    }
    let mut all = obj.meta().finalizers.clone().unwrap_or_default();
    all.push(finalizer.to_string());
    let body = json!({"metadata": {"finalizers": all, "resourceVersion": obj.resource_version()}});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await?;
    info!(namespace = ?obj.namespace(), name = %obj.name_any(), finalizer, "finalizer added");
    Ok(true)
}

/// Removes `finalizer` from `obj` if it is being deleted and carries it.
pub async fn release<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    release_all(api, obj, &[finalizer]).await
}

/// Removes every one of `finalizers` that `obj` carries, if it is being deleted. A merge patch
/// guarded by the resourceVersion: a concurrent change is a conflict, tried again next time.
pub async fn release_all<K>(api: &Api<K>, obj: &K, finalizers: &[&str]) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(keep) = without(obj, finalizers) else {
        return Ok(false);
    };
    let body = json!({"metadata": {"finalizers": keep, "resourceVersion": obj.resource_version()}});
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(_) => {
            info!(namespace = ?obj.namespace(), name = %obj.name_any(), ?finalizers, "finalizers removed");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use storm_shared::RoleSet;

    #[test]
    fn only_a_deleting_object_with_the_finalizer_lets_it_go() {
        let mut rs = RoleSet::new("r", Default::default());
        rs.metadata.finalizers = Some(vec![ROLESET.into(), "example.com/keep".into()]);
        assert_eq!(without(&rs, &[ROLESET]), None, "not being deleted");
        rs.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            without(&rs, &[ROLESET]),
            Some(vec!["example.com/keep".to_string()])
        );
        assert_eq!(without(&rs, &[PODSET]), None, "not carried");
        rs.metadata.finalizers = Some(vec![
            ROLESET.into(),
            TRAFFIC.into(),
            "example.com/keep".into(),
        ]);
        assert_eq!(
            without(&rs, &[STORMSERVICE, TRAFFIC, ROLESET]),
            Some(vec!["example.com/keep".to_string()]),
            "all of them at once"
        );
        assert!(carries(&rs, TRAFFIC) && !carries(&rs, PODSET));
    }
}
