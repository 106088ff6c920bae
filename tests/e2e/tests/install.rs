//! Installing on a cluster: `kubectl apply -k manifests/` is accepted by a real API server.

use anyhow::{Result, ensure};
use storm_test_support::cluster;

#[test]
fn the_kustomization_installs_everything_on_a_dry_run() -> Result<()> {
    let c = cluster()?;
    // A server dry run creates nothing, so the namespace the other objects live in must exist.
    let _ = c
        .kubectl()
        .args(["create", "namespace", "storm-system"])
        .output()?;
    // Client-side apply (kubectl's default) stores the whole object in an annotation: the CRDs are
    // kept small enough for it.
    let out = c
        .kubectl()
        .args(["apply", "-k", "manifests/", "--dry-run=server"])
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "kubectl apply -k manifests/ --dry-run=server failed:\n{text}"
    );
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/stormservices.orchestration.aibrix.ai",
        "customresourcedefinition.apiextensions.k8s.io/rolesets.orchestration.aibrix.ai",
        "customresourcedefinition.apiextensions.k8s.io/podsets.orchestration.aibrix.ai",
        "customresourcedefinition.apiextensions.k8s.io/analysistemplates.orchestration.aibrix.ai",
        "customresourcedefinition.apiextensions.k8s.io/rolloutpolicies.orchestration.aibrix.ai",
        "namespace/storm-system",
        "deployment.apps/storm-webhook",
        "deployment.apps/storm-controller",
        "service/storm-webhook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/storm-webhook",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/storm-webhook",
        "clusterrole.rbac.authorization.k8s.io/storm-controller",
        "clusterrole.rbac.authorization.k8s.io/storm-webhook",
        "networkpolicy.networking.k8s.io/storm-webhook",
        "clusterrole.rbac.authorization.k8s.io/storm-rollouts-view",
        "clusterrole.rbac.authorization.k8s.io/storm-rollouts-edit",
        "configmap/storm-rollouts-roleset-creators",
        "validatingadmissionpolicy.admissionregistration.k8s.io/storm-rollouts-roleset-creators",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/storm-rollouts-roleset-creators",
    ] {
        ensure!(text.contains(object), "{object} missing from:\n{text}");
    }
    // The self-managed certificate overlay: everything, plus the webhook issuing its own pair.
    let out = c
        .kubectl()
        .args(["kustomize", "certs/self-managed"])
        .output()?;
    let rendered = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && rendered.contains("- --self-managed"),
        "{rendered:.300}"
    );
    let out = c
        .kubectl()
        .args(["apply", "-k", "certs/self-managed", "--dry-run=server"])
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "self-managed overlay:\n{text}");
    for object in [
        "role.rbac.authorization.k8s.io/storm-webhook-certificates",
        "clusterrole.rbac.authorization.k8s.io/storm-webhook-cabundle",
    ] {
        ensure!(text.contains(object), "{object} missing from:\n{text}");
    }
    Ok(())
}
