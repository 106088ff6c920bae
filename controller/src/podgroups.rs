//! Gang scheduling: a `schedulingStrategy` (on a RoleSet template for the whole RoleSet, on a role
//! for each of its pod groups) names one scheduler's PodGroup. The controller creates that PodGroup
//! — `<roleset>` or `<podset>`, owned by it, its spec copied from the strategy (`minMember` as
//! written) — and labels the Pods so the scheduler gangs them. When the scheduler's PodGroup CRD is
//! not installed, the Pods are made anyway and a Warning event says what to install.

use kube::api::{Api, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// A scheduler's PodGroup, and how Pods name theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduler {
    /// The `schedulingStrategy` key.
    pub key: &'static str,
    /// The PodGroup's API group, version and plural.
    pub group: &'static str,
    /// The version.
    pub version: &'static str,
    /// The label (and, for some, annotation) on Pods naming their PodGroup.
    pub pod_key: &'static str,
    /// Whether `pod_key` is also an annotation.
    pub annotation: bool,
}

/// The schedulers AIBrix's `schedulingStrategy` knows.
pub const SCHEDULERS: [Scheduler; 3] = [
    Scheduler {
        key: "coschedulingSchedulingStrategy",
        group: "scheduling.x-k8s.io",
        version: "v1alpha1",
        pod_key: "scheduling.x-k8s.io/pod-group",
        annotation: false,
    },
    Scheduler {
        key: "volcanoSchedulingStrategy",
        group: "scheduling.volcano.sh",
        version: "v1beta1",
        pod_key: "scheduling.k8s.io/group-name",
        annotation: true,
    },
    Scheduler {
        key: "godelSchedulingStrategy",
        group: "scheduling.godel.bytedance.com",
        version: "v1alpha1",
        pod_key: "godel.bytedance.com/pod-group-name",
        annotation: true,
    },
];

/// The scheduler a strategy names and its settings (admission allows exactly one key).
pub fn of(strategy: &Map<String, Value>) -> Option<(&'static Scheduler, &Value)> {
    SCHEDULERS
        .iter()
        .find_map(|s| strategy.get(s.key).map(|v| (s, v)))
}

/// The labels and annotations a Pod of PodGroup `name` carries for `strategy`'s scheduler.
pub fn pod_marks(
    strategy: &Map<String, Value>,
    name: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    if let Some((s, _)) = of(strategy) {
        labels.insert(s.pod_key.to_string(), name.to_string());
        if s.annotation {
            annotations.insert(s.pod_key.to_string(), name.to_string());
        }
    }
    (labels, annotations)
}

/// The PodGroup object for `strategy`, named `name`, owned by `owner`.
pub fn podgroup(
    strategy: &Map<String, Value>,
    name: &str,
    namespace: &str,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Option<(ApiResource, DynamicObject)> {
    let (s, settings) = of(strategy)?;
    let gvk = GroupVersionKind::gvk(s.group, s.version, "PodGroup");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "podgroups");
    let spec = settings.as_object().cloned().unwrap_or_default();
    let mut obj = DynamicObject::new(name, &ar).within(namespace);
    obj.metadata.owner_references = Some(vec![owner.clone()]);
    obj.data = json!({"spec": spec});
    Some((ar, obj))
}

/// Creates the PodGroup unless it exists. `Err` is a sentence for a Warning event: the scheduler's
/// CRD is not installed (or the create failed otherwise).
pub async fn ensure(
    client: &kube::Client,
    strategy: &Map<String, Value>,
    name: &str,
    namespace: &str,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<bool, String> {
    let Some((ar, obj)) = podgroup(strategy, name, namespace, owner) else {
        return Ok(false);
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    match api.get_opt(name).await {
        Ok(Some(_)) => return Ok(false),
        Ok(None) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(not_installed(&ar));
        }
        Err(e) => return Err(format!("reading PodGroup {name}: {e}")),
    }
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(not_installed(&ar)),
        Err(e) => Err(format!("creating PodGroup {name}: {e}")),
    }
}

fn not_installed(ar: &ApiResource) -> String {
    format!(
        "PodGroup {} is not served: install the scheduler's PodGroup CRD (podgroups.{}) for gang scheduling, or remove schedulingStrategy; the Pods are scheduled one by one meanwhile",
        ar.api_version, ar.group
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn a_strategy_names_its_scheduler_podgroup_and_pod_marks() {
        let co = strategy(
            json!({"coschedulingSchedulingStrategy": {"minMember": 2, "scheduleTimeoutSeconds": 60}}),
        );
        let owner = Default::default();
        let (ar, pg) = podgroup(&co, "rs-1", "ns", &owner).expect("podgroup");
        assert_eq!(ar.api_version, "scheduling.x-k8s.io/v1alpha1");
        assert_eq!(
            pg.data["spec"]["minMember"],
            json!(2),
            "minMember as written"
        );
        let (labels, annotations) = pod_marks(&co, "rs-1");
        assert_eq!(
            labels
                .get("scheduling.x-k8s.io/pod-group")
                .map(String::as_str),
            Some("rs-1")
        );
        assert!(annotations.is_empty());
        let vo = strategy(json!({"volcanoSchedulingStrategy": {"minMember": 3, "queue": "gpu"}}));
        let (labels, annotations) = pod_marks(&vo, "ps-0");
        assert_eq!(
            labels
                .get("scheduling.k8s.io/group-name")
                .map(String::as_str),
            Some("ps-0")
        );
        assert_eq!(
            annotations
                .get("scheduling.k8s.io/group-name")
                .map(String::as_str),
            Some("ps-0")
        );
        assert!(of(&strategy(json!({"other": {}}))).is_none());
    }
}
