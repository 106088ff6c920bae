//! Parsing for admission: of each role's Pod template, only what a rule reads.
//!
//! A StormService is mostly Pod templates (containers, args, env, probes, volumes), and the
//! admission rules read little of them: labels, and the containers' names, images, resource
//! requests and the timing of their startup and readiness probes. Decoding every Pod template field into k8s-openapi structs was about half of a
//! review's CPU. [`from_str_lean`] parses the same types with each role's `template` cut down to
//! [`LeanTemplate`]; the fields it skips are still checked for syntax, and for type errors by the
//! API server's schema (validating webhooks see only objects the schema admitted).
//!
//! A rule that needs another Pod template field adds it to [`LeanTemplate`]: the webhook's tests
//! judge every sample both ways and fail if the reports differ.

use k8s_openapi::api::core::v1::{
    Container, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::cell::Cell;
use std::sync::Arc;

thread_local! {
    static LEAN: Cell<bool> = const { Cell::new(false) };
}

/// Parses `json` like `serde_json::from_str`, keeping of each role's Pod template only what the
/// admission rules read (see [`LeanTemplate`]). Not for objects that are written back.
pub fn from_str_lean<T: DeserializeOwned>(json: &str) -> serde_json::Result<T> {
    lean(|| serde_json::from_str(json))
}

/// Runs `parse` with each role's Pod template parsed lean, for a parser that meets a
/// StormService inside a larger document (an AdmissionReview) and parses it in the same pass.
pub fn lean<R>(parse: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEAN.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LEAN.with(|l| l.replace(true)));
    parse()
}

/// `deserialize_with` of a role's Pod template: in full, or lean inside [`from_str_lean`].
pub(crate) fn pod_template<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Arc<PodTemplateSpec>, D::Error> {
    if LEAN.with(Cell::get) {
        LeanTemplate::deserialize(d).map(|t| Arc::new(t.into()))
    } else {
        PodTemplateSpec::deserialize(d).map(Arc::new)
    }
}

/// The part of a Pod template the admission rules read.
#[derive(Deserialize)]
pub struct LeanTemplate {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: Option<LeanPodSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanPodSpec {
    #[serde(default)]
    containers: Vec<LeanContainer>,
    #[serde(default)]
    init_containers: Option<Vec<LeanContainer>>,
    #[serde(default)]
    scheduler_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanContainer {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    resources: Option<ResourceRequirements>,
    #[serde(default)]
    startup_probe: Option<LeanProbe>,
    #[serde(default)]
    readiness_probe: Option<LeanProbe>,
}

/// A probe's timing (the startup window, [`crate::startup`]); its handler is not read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanProbe {
    #[serde(default)]
    initial_delay_seconds: Option<i32>,
    #[serde(default)]
    period_seconds: Option<i32>,
    #[serde(default)]
    failure_threshold: Option<i32>,
    #[serde(default)]
    success_threshold: Option<i32>,
}

impl From<LeanProbe> for Probe {
    fn from(p: LeanProbe) -> Self {
        Probe {
            initial_delay_seconds: p.initial_delay_seconds,
            period_seconds: p.period_seconds,
            failure_threshold: p.failure_threshold,
            success_threshold: p.success_threshold,
            ..Probe::default()
        }
    }
}

impl From<LeanContainer> for Container {
    fn from(c: LeanContainer) -> Self {
        Container {
            name: c.name,
            image: c.image,
            resources: c.resources,
            startup_probe: c.startup_probe.map(Into::into),
            readiness_probe: c.readiness_probe.map(Into::into),
            ..Container::default()
        }
    }
}

impl From<LeanTemplate> for PodTemplateSpec {
    fn from(t: LeanTemplate) -> Self {
        PodTemplateSpec {
            metadata: t.metadata,
            spec: t.spec.map(|s| PodSpec {
                containers: s.containers.into_iter().map(Into::into).collect(),
                init_containers: s
                    .init_containers
                    .map(|cs| cs.into_iter().map(Into::into).collect()),
                scheduler_name: s.scheduler_name,
                ..PodSpec::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StormService;
    use serde_json::json;

    fn storm(template: serde_json::Value) -> String {
        json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1",
            "kind": "StormService",
            "metadata": {"name": "s"},
            "spec": {"template": {"spec": {"roles": [{"name": "r", "template": template}]}}}
        })
        .to_string()
    }

    fn role_template(s: &StormService) -> &PodTemplateSpec {
        &s.spec.template.spec.as_ref().unwrap().roles[0].template
    }

    #[test]
    fn keeps_what_rules_read_and_drops_the_rest() {
        let text = storm(json!({
            "metadata": {"labels": {"app": "a"}},
            "spec": {
                "schedulerName": "volcano",
                "initContainers": [{"name": "fetch", "image": "busybox"}],
                "containers": [{
                    "name": "vllm", "image": "vllm:1", "args": ["--model", "m"],
                    "env": [{"name": "A", "value": "1"}],
                    "resources": {"limits": {"nvidia.com/gpu": "2"}},
                    "startupProbe": {"httpGet": {"path": "/health", "port": 8000},
                                     "initialDelaySeconds": 30, "periodSeconds": 10, "failureThreshold": 60},
                    "readinessProbe": {"tcpSocket": {"port": 8000}, "successThreshold": 2}
                }],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        }));
        let lean: StormService = from_str_lean(&text).unwrap();
        let full: StormService = serde_json::from_str(&text).unwrap();
        let (l, f) = (role_template(&lean), role_template(&full));
        assert_eq!(l.metadata, f.metadata);
        let (ls, fs) = (l.spec.as_ref().unwrap(), f.spec.as_ref().unwrap());
        assert_eq!(ls.scheduler_name.as_deref(), Some("volcano"));
        assert_eq!(ls.containers[0].name, fs.containers[0].name);
        assert_eq!(ls.containers[0].image, fs.containers[0].image);
        assert_eq!(ls.containers[0].resources, fs.containers[0].resources);
        assert_eq!(ls.init_containers.as_ref().unwrap()[0].name, "fetch");
        let timing = |p: &Probe| {
            let t = (
                p.initial_delay_seconds,
                p.period_seconds,
                p.failure_threshold,
            );
            (t, p.success_threshold)
        };
        for probe in [
            |c: &Container| c.startup_probe.clone(),
            |c: &Container| c.readiness_probe.clone(),
        ] {
            let (l, f) = (
                probe(&ls.containers[0]).unwrap(),
                probe(&fs.containers[0]).unwrap(),
            );
            assert_eq!(timing(&l), timing(&f));
            assert!(l.http_get.is_none() && l.tcp_socket.is_none());
        }
        assert_eq!(
            timing(ls.containers[0].startup_probe.as_ref().unwrap()),
            ((Some(30), Some(10), Some(60)), None)
        );
        assert!(ls.containers[0].args.is_none() && ls.volumes.is_none());
        assert!(fs.containers[0].args.is_some() && fs.volumes.is_some());
        // Outside from_str_lean, parsing is whole again.
        let again: StormService = serde_json::from_str(&text).unwrap();
        assert_eq!(role_template(&again), f);
    }

    #[test]
    fn syntax_and_kept_fields_still_fail() {
        let text = storm(json!({"spec": {"containers": [{"name": "c", "args": ["x"]}]}}));
        // A syntax error in a skipped field.
        let broken = text.replace(r#"["x"]"#, r#"["x" "y"]"#);
        assert!(from_str_lean::<StormService>(&broken).is_err());
        let wrong = storm(json!({"spec": {"containers": [{"name": 3}]}}));
        assert!(from_str_lean::<StormService>(&wrong).is_err());
        // The flag is restored after an error too.
        let full: StormService = serde_json::from_str(&text).unwrap();
        assert!(
            role_template(&full).spec.as_ref().unwrap().containers[0]
                .args
                .is_some()
        );
    }
}
