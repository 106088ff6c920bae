//! AIBrix's finalizers on objects its controllers made. With AIBrix's controllers turned off nobody
//! would ever remove them, and deleting a StormService, RoleSet or PodSet would hang. Our
//! controllers need no finalizer (owner references let garbage collection remove the children), so
//! when such an object is being deleted, its AIBrix finalizer is removed and deletion goes on.

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

/// The finalizers `obj` keeps once `finalizer` is gone, when it is being deleted and carries it.
pub fn without(obj: &impl Resource, finalizer: &str) -> Option<Vec<String>> {
    let meta = obj.meta();
    meta.deletion_timestamp.as_ref()?;
    let all = meta.finalizers.as_ref()?;
    all.iter()
        .any(|f| f == finalizer)
        .then(|| all.iter().filter(|f| *f != finalizer).cloned().collect())
}

/// Removes AIBrix's `finalizer` from `obj` if it is being deleted and carries it. A merge patch
/// guarded by the resourceVersion: a concurrent change is a conflict, tried again next time.
pub async fn release<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(keep) = without(obj, finalizer) else {
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
            info!(namespace = ?obj.namespace(), name = %obj.name_any(), finalizer, "AIBrix finalizer removed");
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
        assert_eq!(without(&rs, ROLESET), None, "not being deleted");
        rs.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            without(&rs, ROLESET),
            Some(vec!["example.com/keep".to_string()])
        );
        assert_eq!(without(&rs, PODSET), None, "not carried");
    }
}
