//! Smoke tests for the local control plane (tests/controlplane): scheduling onto kwok nodes,
//! the failure/never-ready Pod stages, garbage collection, namespace deletion, CRD install and
//! the pinned server version.
//!
//! Run: `cargo test -p storm-e2e --test controlplane_smoke` (starts the cluster if needed).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use storm_test_support::{
    CRASH_LOOP_LABEL, FAIL_LABEL, NEVER_READY_LABEL, TestNamespace, cluster, dump_logs_on_error,
    holds_for, pod_is_ready, pod_phase, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(60);

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    let mut all: BTreeMap<String, String> = [("app".to_string(), name.to_string())].into();
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(all),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_string(),
                image: Some("registry.invalid/storm/app:1.0".to_string()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn config_map(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            owner_references: owner.map(owner_ref).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..ConfigMap::default()
    }
}

fn owner_ref(cm: &ConfigMap) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: "ConfigMap".to_string(),
        name: cm.metadata.name.clone().unwrap_or_default(),
        uid: cm.metadata.uid.clone().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

async fn pod_status(pods: &Api<Pod>, name: &str) -> Result<Pod> {
    pods.get(name)
        .await
        .with_context(|| format!("getting pod {name}"))
}

#[tokio::test]
async fn three_untainted_kwok_nodes_are_ready() -> Result<()> {
    dump_logs_on_error(
        async {
            let client = cluster()?.client().await?;
            let nodes = Api::<Node>::all(client)
                .list(&kube::api::ListParams::default().labels("type=kwok"))
                .await?;
            ensure!(
                nodes.items.len() == 3,
                "expected 3 kwok nodes, got {}",
                nodes.items.len()
            );
            for node in &nodes.items {
                let name = node.metadata.name.as_deref().unwrap_or("?");
                let spec = node.spec.as_ref().context("node spec")?;
                ensure!(
                    spec.taints.as_ref().is_none_or(Vec::is_empty),
                    "node {name} has taints: {:?}",
                    spec.taints
                );
                let status = node.status.as_ref().context("node status")?;
                let ready = status
                    .conditions
                    .as_ref()
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                ensure!(ready, "node {name} is not Ready");
                let alloc = status.allocatable.as_ref().context("allocatable")?;
                ensure!(
                    alloc.get("cpu").map(|q| q.0.as_str()) == Some("32"),
                    "node {name} cpu"
                );
                ensure!(
                    alloc.get("pods").map(|q| q.0.as_str()) == Some("110"),
                    "node {name} pods"
                );
            }
            Ok(())
        }
        .await,
    )
}

#[tokio::test]
async fn pod_is_scheduled_onto_a_kwok_node_and_becomes_ready() -> Result<()> {
    let ns = TestNamespace::new("pod-ready").await?;
    let result = async {
        let pods: Api<Pod> = ns.api();
        pods.create(&PostParams::default(), &pod("web", &[]))
            .await?;
        let ready = wait_for("pod web Ready", TIMEOUT, || async {
            let p = pod_status(&pods, "web").await?;
            Ok(pod_is_ready(&p).then_some(p))
        })
        .await?;
        let node = ready
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .context("ready pod has no nodeName")?;
        ensure!(
            node.starts_with("kwok-node-"),
            "scheduled onto unexpected node {node}"
        );
        let scheduled = ready
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "PodScheduled" && c.status == "True")
            });
        ensure!(
            scheduled,
            "PodScheduled condition missing: {:?}",
            ready.status
        );
        ensure!(
            pod_phase(&ready) == "Running",
            "phase {}",
            pod_phase(&ready)
        );
        let status = ready.status.as_ref().context("status")?;
        ensure!(status.pod_ip.is_some(), "kwok gave the pod no IP");
        let containers = status.container_statuses.as_deref().unwrap_or_default();
        ensure!(
            containers.len() == 1 && containers[0].ready,
            "container statuses: {containers:?}"
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn pod_labelled_to_fail_is_reported_failed() -> Result<()> {
    let ns = TestNamespace::new("pod-fail").await?;
    let result = async {
        let pods: Api<Pod> = ns.api();
        pods.create(
            &PostParams::default(),
            &pod("crash", &[(FAIL_LABEL, "true")]),
        )
        .await?;
        let failed = wait_for("pod crash Failed", TIMEOUT, || async {
            let p = pod_status(&pods, "crash").await?;
            ensure!(
                !pod_is_ready(&p),
                "a failing pod became Ready: {:?}",
                p.status
            );
            Ok((pod_phase(&p) == "Failed").then_some(p))
        })
        .await?;
        ensure!(!pod_is_ready(&failed), "failed pod is Ready");
        let containers = failed
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .context("no container statuses")?;
        let exit = containers[0]
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        ensure!(
            exit == Some(1),
            "expected exit code 1, got {exit:?} in {containers:?}"
        );
        // Stays failed: nothing moves it on.
        holds_for("pod crash stays Failed", Duration::from_secs(2), || async {
            Ok(pod_phase(&pod_status(&pods, "crash").await?) == "Failed")
        })
        .await
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn pod_labelled_never_ready_runs_but_stays_unready() -> Result<()> {
    let ns = TestNamespace::new("pod-never-ready").await?;
    let result = async {
        let pods: Api<Pod> = ns.api();
        pods.create(
            &PostParams::default(),
            &pod("stuck", &[(NEVER_READY_LABEL, "true")]),
        )
        .await?;
        // A plain pod alongside shows the stages really ran in the same time window.
        pods.create(&PostParams::default(), &pod("fine", &[]))
            .await?;
        wait_for("pod stuck Running", TIMEOUT, || async {
            let p = pod_status(&pods, "stuck").await?;
            ensure!(!pod_is_ready(&p), "never-ready pod became Ready");
            Ok((pod_phase(&p) == "Running").then_some(()))
        })
        .await?;
        wait_for("pod fine Ready", TIMEOUT, || async {
            Ok(pod_is_ready(&pod_status(&pods, "fine").await?).then_some(()))
        })
        .await?;
        holds_for(
            "pod stuck Running and not Ready",
            Duration::from_secs(5),
            || async {
                let p = pod_status(&pods, "stuck").await?;
                Ok(pod_phase(&p) == "Running" && !pod_is_ready(&p))
            },
        )
        .await
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn pod_labelled_crash_loop_runs_in_crash_loop_back_off() -> Result<()> {
    let ns = TestNamespace::new("pod-crash-loop").await?;
    let result = async {
        let pods: Api<Pod> = ns.api();
        pods.create(
            &PostParams::default(),
            &pod("looping", &[(CRASH_LOOP_LABEL, "true")]),
        )
        .await?;
        let looping = wait_for("pod looping Running", TIMEOUT, || async {
            let p = pod_status(&pods, "looping").await?;
            ensure!(!pod_is_ready(&p), "crash-looping pod became Ready");
            Ok((pod_phase(&p) == "Running").then_some(p))
        })
        .await?;
        let status = looping
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .context("no container status")?;
        let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
        ensure!(
            waiting.and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff"),
            "state: {:?}",
            status.state
        );
        let last_exit = status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        ensure!(last_exit == Some(1), "lastState: {:?}", status.last_state);
        ensure!(
            status.restart_count >= 1 && !status.ready,
            "status: {status:?}"
        );
        holds_for(
            "pod looping stays unready",
            Duration::from_secs(3),
            || async {
                let p = pod_status(&pods, "looping").await?;
                Ok(pod_phase(&p) == "Running" && !pod_is_ready(&p))
            },
        )
        .await
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() -> Result<()> {
    let ns = TestNamespace::new("gc").await?;
    let result = async {
        let cms: Api<ConfigMap> = ns.api();
        let pods: Api<Pod> = ns.api();
        let owner = cms
            .create(&PostParams::default(), &config_map("owner", None))
            .await?;
        cms.create(
            &PostParams::default(),
            &config_map("dependent", Some(&owner)),
        )
        .await?;
        let mut owned_pod = pod("owned", &[]);
        owned_pod.metadata.owner_references = Some(vec![owner_ref(&owner)]);
        pods.create(&PostParams::default(), &owned_pod).await?;
        // An unrelated object must survive.
        cms.create(&PostParams::default(), &config_map("bystander", None))
            .await?;
        wait_for("pod owned Ready", TIMEOUT, || async {
            Ok(pod_is_ready(&pod_status(&pods, "owned").await?).then_some(()))
        })
        .await?;

        cms.delete("owner", &DeleteParams::background()).await?;
        wait_for("garbage collection of dependents", TIMEOUT, || async {
            let cm_gone = cms.get_opt("dependent").await?.is_none();
            let pod_gone = pods.get_opt("owned").await?.is_none();
            Ok((cm_gone && pod_gone).then_some(()))
        })
        .await?;
        ensure!(
            cms.get_opt("bystander").await?.is_some(),
            "garbage collector removed an object without owner"
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn namespace_deletion_completes() -> Result<()> {
    let ns = TestNamespace::new("ns-delete").await?;
    let name = ns.name().to_string();
    let client = ns.client();
    let result = async {
        let pods: Api<Pod> = ns.api();
        let cms: Api<ConfigMap> = ns.api();
        cms.create(&PostParams::default(), &config_map("data", None))
            .await?;
        pods.create(&PostParams::default(), &pod("web", &[]))
            .await?;
        wait_for("pod web Ready", TIMEOUT, || async {
            Ok(pod_is_ready(&pod_status(&pods, "web").await?).then_some(()))
        })
        .await?;
        let namespaces: Api<Namespace> = Api::all(client);
        namespaces.delete(&name, &DeleteParams::default()).await?;
        wait_for(&format!("namespace {name} to be gone"), TIMEOUT, || async {
            Ok(namespaces.get_opt(&name).await?.is_none().then_some(()))
        })
        .await
    }
    .await;
    dump_logs_on_error(result)?;
    // The namespace is already gone; Drop's delete is --ignore-not-found.
    drop(ns);
    Ok(())
}

#[test]
fn crds_apply_server_side_and_stormservices_are_served() -> Result<()> {
    let cluster = cluster()?;
    let dir = cluster.repo_root().join("manifests/crds");
    let has_manifests = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .any(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml")
        });
    if !has_manifests {
        eprintln!(
            "SKIPPED: no CRD manifests in {} yet (run `make manifests`); nothing to apply",
            dir.display()
        );
        return Ok(());
    }
    dump_logs_on_error((|| {
        let names = cluster.install_crds()?;
        ensure!(
            names
                .iter()
                .any(|n| n.ends_with("/stormservices.orchestration.aibrix.ai")),
            "StormService CRD not among the applied {names:?}"
        );
        // Re-applying is a no-op, not a conflict.
        for file in std::fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
            let path = file.path();
            if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                cluster.kubectl_run([
                    "apply".as_ref(),
                    "--server-side".as_ref(),
                    "-f".as_ref(),
                    path.as_os_str(),
                ])?;
            }
        }
        let out =
            cluster.kubectl_run(["get", "stormservices", "--all-namespaces", "-o", "json"])?;
        let list: serde_json::Value = serde_json::from_str(&out).context("parsing list")?;
        ensure!(
            list["items"].is_array(),
            "unexpected `kubectl get stormservices`: {out}"
        );
        let resources = cluster.kubectl_run(["api-resources", "-o", "name"])?;
        ensure!(
            resources
                .lines()
                .any(|l| l == "stormservices.orchestration.aibrix.ai"),
            "stormservices missing from api-resources:\n{resources}"
        );
        Ok(())
    })())
}

#[tokio::test]
async fn url_webhook_on_loopback_is_accepted_and_called() -> Result<()> {
    let ns = TestNamespace::new("webhook-url").await?;
    let cluster = ns.cluster();
    // A loopback port with nothing behind it: the API server must try to call it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("https://127.0.0.1:{port}/validate");
    let config_name = format!("{}.storm.test", ns.name());
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(ns.client());
    let config = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(config_name.clone()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: format!("deny.{config_name}"),
            client_config: WebhookClientConfig {
                url: Some(url.clone()),
                ca_bundle: Some(ByteString(cluster.ca_pem()?)),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_string()]),
                operations: Some(vec!["CREATE".to_string()]),
                resources: Some(vec!["configmaps".to_string()]),
                scope: Some("Namespaced".to_string()),
            }]),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_string(),
                        ns.name().to_string(),
                    )]
                    .into(),
                ),
                ..LabelSelector::default()
            }),
            failure_policy: Some("Fail".to_string()),
            side_effects: "None".to_string(),
            admission_review_versions: vec!["v1".to_string()],
            timeout_seconds: Some(5),
            ..ValidatingWebhook::default()
        }]),
    };
    webhooks.create(&PostParams::default(), &config).await?;
    let result = async {
        let stored = webhooks.get(&config_name).await?;
        let stored_url = stored
            .webhooks
            .as_ref()
            .and_then(|w| w.first())
            .and_then(|w| w.client_config.url.clone());
        ensure!(
            stored_url.as_deref() == Some(url.as_str()),
            "stored url {stored_url:?}"
        );
        let cms: Api<ConfigMap> = ns.api();
        let mut attempt = 0u32;
        let message = wait_for("the API server to call the URL webhook", TIMEOUT, || {
            attempt += 1;
            let cm = config_map(&format!("probe-{attempt}"), None);
            let cms = cms.clone();
            async move {
                match cms.create(&PostParams::default(), &cm).await {
                    // The webhook configuration is not active yet.
                    Ok(_) => Ok(None),
                    Err(kube::Error::Api(status))
                        if status.message.contains("failed calling webhook") =>
                    {
                        Ok(Some(status.message))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        })
        .await?;
        ensure!(
            message.contains(&format!("127.0.0.1:{port}")),
            "webhook error does not name the loopback URL: {message}"
        );
        Ok(())
    }
    .await;
    let deleted = webhooks
        .delete(&config_name, &DeleteParams::default())
        .await;
    dump_logs_on_error(result)?;
    deleted?;
    ns.cleanup().await
}

#[test]
fn kubectl_version_reports_the_pinned_server_version() -> Result<()> {
    let cluster = cluster()?;
    let go_mod_path = cluster.repo_root().join("tests/controlplane/kube/go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .with_context(|| format!("reading {}", go_mod_path.display()))?;
    let pinned = go_mod
        .lines()
        .map(str::split_whitespace)
        .filter_map(|mut w| {
            let first = w.next()?;
            let (module, version) = if first == "require" {
                (w.next()?, w.next()?)
            } else {
                (first, w.next()?)
            };
            (module == "k8s.io/kubernetes").then(|| version.to_string())
        })
        .next()
        .context("k8s.io/kubernetes not required in go.mod")?;
    ensure!(
        pinned.starts_with("v1.34."),
        "go.mod pins {pinned}, expected v1.34.x"
    );

    let out = cluster.kubectl_run(["version", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing kubectl version")?;
    let server = &v["serverVersion"];
    if server.is_null() {
        bail!("no serverVersion in {out}");
    }
    ensure!(
        server["gitVersion"] == pinned.as_str(),
        "server reports {server}, pinned {pinned}"
    );
    ensure!(
        server["major"] == "1" && server["minor"] == "34",
        "server reports {server}"
    );
    ensure!(server["gitTreeState"] == "clean", "server reports {server}");
    Ok(())
}
