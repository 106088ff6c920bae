//! manifests/controller must fit the binary it deploys: flags the binary accepts, probe paths and
//! ports it serves, and the hardening the docs promise. No cluster needed.

use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/controller")
}

/// Every document of a multi-document YAML file.
fn documents(file: &str) -> Vec<Value> {
    let path = manifests_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kustomization_lists_every_file_and_no_namespace_object() {
    let kustomization = &documents("kustomization.yaml")[0];
    assert_eq!(kustomization["namespace"], "storm-system");
    for file in strings(&kustomization["resources"]) {
        let docs = documents(&file);
        assert!(!docs.is_empty(), "{file} is empty");
        // The Namespace is manifests/webhook's; two owners of one object fight over it.
        assert!(
            docs.iter().all(|d| d["kind"] != "Namespace"),
            "{file} creates a Namespace"
        );
    }
}

#[test]
fn deployment_args_are_flags_the_binary_accepts() {
    let deployment = documents("deployment.yaml").remove(0);
    let args = strings(&container(&deployment)["args"]);
    assert!(
        args.contains(&"--leader-elect=true".to_string()),
        "{args:?}"
    );
    // Parsing stops at --help, after every flag before it has been checked.
    let out = Command::new(env!("CARGO_BIN_EXE_storm-controller"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "storm-controller rejects the Deployment's args {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn probes_and_service_use_the_served_paths_and_port() {
    let deployment = documents("deployment.yaml").remove(0);
    let c = container(&deployment);
    let args = strings(&c["args"]);
    let addr = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics-addr="))
        .expect("--metrics-addr in args");
    let port: u64 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(port));
    let port_name = c["ports"][0]["name"].as_str().unwrap();
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], port_name);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], port_name);

    let service = documents("service.yaml").remove(0);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port_name);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[k], v,
            "Service selector {k:?} doesn't match the Pods"
        );
    }
}

#[test]
fn deployment_is_hardened_and_highly_available() {
    let deployment = documents("deployment.yaml").remove(0);
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["serviceAccountName"], "storm-controller");
    let sc = &container(&deployment)["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let resources = &container(&deployment)["resources"];
    assert!(resources["requests"]["memory"].is_string());
    assert!(resources["limits"]["memory"].is_string());
    // Identity and Lease namespace come from the downward API.
    let env = container(&deployment)["env"].as_sequence().unwrap();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], path);
    }
}

#[test]
fn rbac_binds_the_deployment_service_account_and_keeps_leases_namespaced() {
    let docs = documents("rbac.yaml");
    let binding = kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "storm-controller");
    assert_eq!(binding["subjects"][0]["namespace"], "storm-system");
    let cluster_role = kind(&docs, "ClusterRole");
    let rules = cluster_role["rules"].as_sequence().unwrap();
    // Leases only through the namespaced Role, never cluster-wide.
    assert!(
        rules
            .iter()
            .all(|r| !strings(&r["resources"]).contains(&"leases".to_string()))
    );
    // Nothing is granted with wildcards.
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strings(&rule[field]).contains(&"*".to_string()),
                "{rule:?}"
            );
        }
    }
    let role = kind(&docs, "Role");
    let lease_rules = role["rules"].as_sequence().unwrap();
    assert!(
        lease_rules
            .iter()
            .any(|r| strings(&r["resourceNames"]) == ["storm-controller"]
                && strings(&r["verbs"]) == ["get", "update"])
    );
}

/// The ClusterRole grants `verb` on `group`/`resource`.
fn grants(docs: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    kind(docs, "ClusterRole")["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|r| {
            strings(&r["apiGroups"]).iter().any(|g| g == group)
                && strings(&r["resources"]).iter().any(|x| x == resource)
                && strings(&r["verbs"]).iter().any(|v| v == verb)
        })
}

/// ControllerRevisions are cached, created once per revision and pruned beyond
/// revisionHistoryLimit (`prune_revisions`): without `delete` the pruning is forbidden.
#[test]
fn rbac_lets_the_controller_keep_and_prune_controller_revisions() {
    let docs = documents("rbac.yaml");
    for verb in ["list", "watch", "create", "delete"] {
        assert!(
            grants(&docs, "apps", "controllerrevisions", verb),
            "controllerrevisions {verb}"
        );
    }
}

/// The analysis runner reads AnalysisTemplates from a watch cache; Secrets are read only where the
/// admin binds analysis-secrets.yaml, and only by name.
#[test]
fn rbac_lets_the_template_cache_list_and_watch_and_reads_secrets_only_where_granted() {
    let docs = documents("rbac.yaml");
    for verb in ["list", "watch"] {
        assert!(
            grants(&docs, "orchestration.aibrix.ai", "analysistemplates", verb),
            "analysistemplates {verb}"
        );
    }
    for verb in ["get", "list", "watch"] {
        assert!(
            !grants(&docs, "", "secrets", verb),
            "secrets {verb}: granted cluster-wide"
        );
    }
    let secrets = documents("analysis-secrets.yaml");
    assert!(grants(&secrets, "", "secrets", "get"), "secrets get");
    for verb in ["list", "watch", "create", "update", "patch"] {
        assert!(!grants(&secrets, "", "secrets", verb), "secrets {verb}");
    }
    assert!(
        secrets.iter().all(|d| d["kind"] != "ClusterRoleBinding"),
        "bound cluster-wide"
    );
}
