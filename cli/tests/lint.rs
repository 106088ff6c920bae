//! `kubectl-storm lint` as a user runs it: the real binary, real files, exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn lint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-storm"))
        .arg("lint")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("kubectl-storm runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fixtures(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join(dir))
        .expect("fixture dir")
        .map(|e| format!("{dir}/{}", e.expect("entry").file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_example_is_accepted_with_the_expected_warnings() {
    let files = fixtures("tests/fixtures/seed");
    assert!(files.len() >= 13, "{files:?}");
    for f in &files {
        let out = lint(&[f]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{f}:\n{text}");
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains(": warning: ")).collect();
        let expected: &[&str] = match f.rsplit('/').next().unwrap_or_default() {
            "09-best-practice-conservative.yaml" => &[
                "spec.rolloutStrategy.canary.steps[0].weight",
                "spec.rolloutStrategy.canary.steps[1].weight",
                "spec.rolloutStrategy.canary.steps[2].weight",
            ],
            "13-migration-after.yaml" => &[
                "spec.rolloutStrategy.canary.autoRollback",
                "spec.rolloutStrategy.canary.steps[0].weight",
            ],
            _ => &[],
        };
        assert_eq!(warnings.len(), expected.len(), "{f}:\n{text}");
        for (w, path) in warnings.iter().zip(expected) {
            assert!(
                w.starts_with(&format!("{f}: StormService/my-app: warning: {path}: ")),
                "{w}"
            );
        }
    }
}

/// AIBrix's own samples, relative to the workspace root: they stay in `../shared` beside the
/// checkout (CI has them there too) and are never copied into the repository.
const AIBRIX_SAMPLES: &str = "../shared/fixtures/aibrix";

/// Every sample under `dir` (relative to the workspace root), subdirectories included, except
/// AIBrix's CRDs.
fn samples(dir: &str) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let entry = entry.expect("entry");
        let name = format!("{dir}/{}", entry.file_name().to_string_lossy());
        if entry.file_type().expect("file type").is_dir() {
            if !name.ends_with("/crds") {
                files.extend(samples(&name));
            }
        } else if name.ends_with(".yaml") {
            files.push(name);
        }
    }
    files.sort();
    files
}

#[test]
fn aibrix_samples_are_accepted_unchanged() {
    let files = samples(AIBRIX_SAMPLES);
    for expected in [
        "1p1d.yaml",
        "replica.yaml",
        "roleset-inplace-update.yaml",
        "sglang-pool.yaml",
        "sglang-tp-1p1d.yaml",
        "stormservice-inplace-update.yaml",
        "vllm-pool.yaml",
        "with-autoscaler/stormservice-pool.yaml",
    ] {
        let path = format!("{AIBRIX_SAMPLES}/{expected}");
        assert!(files.contains(&path), "{path} missing from {files:?}");
    }
    for f in &files {
        let out = lint(&[f]);
        assert_eq!(out.status.code(), Some(0), "{f}:\n{}", stdout(&out));
        assert!(stdout(&out).is_empty(), "{f}: {}", stdout(&out));
    }
}

/// AIBrix fields no sample uses, which our CRDs used to prune or refuse: a RoleSet-level
/// `topologyPolicy`, the template metadata's `name`/`namespace`/`finalizers`, and Pod references
/// without a name (Kubernetes lets those be empty).
#[test]
fn aibrix_fields_beyond_the_samples_are_accepted() {
    let dir = tempdir();
    let f = dir.join("aibrix-fields.yaml");
    std::fs::write(
        &f,
        "apiVersion: orchestration.aibrix.ai/v1alpha1\nkind: StormService\nmetadata: {name: t}\nspec:\n  selector: {matchLabels: {app: t}}\n  template:\n    metadata: {name: x, namespace: y, finalizers: [example.com/keep], labels: {app: t}}\n    spec:\n      topologyPolicy: {key: kubernetes.io/hostname, mode: Required, scope: RoleSet}\n      roles:\n      - name: a\n        template:\n          spec:\n            imagePullSecrets: [{}]\n            containers:\n            - name: c\n              image: i\n              env: [{name: E, valueFrom: {configMapKeyRef: {key: k}}}]\n---\napiVersion: orchestration.aibrix.ai/v1alpha1\nkind: PodSet\nmetadata: {name: p}\nspec: {podGroupSize: 2, recoveryPolicy: Recreate, template: {spec: {containers: [{name: c, image: i}]}}}\n",
    )
    .expect("write");
    let out = lint(&[f.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn topology_policies_are_checked_as_aibrix_checks_them() {
    let dir = tempdir();
    let f = dir.join("topology.yaml");
    std::fs::write(
        &f,
        "apiVersion: orchestration.aibrix.ai/v1alpha1\nkind: RoleSet\nmetadata: {name: t}\nspec:\n  topologyPolicy: {key: 'not a key', scope: Zone}\n  roles: [{name: a, template: {spec: {containers: [{name: c, image: i}]}}}]\n---\napiVersion: orchestration.aibrix.ai/v1alpha1\nkind: PodSet\nmetadata: {name: p}\nspec: {podGroupSize: 1, template: {}}\n",
    )
    .expect("write");
    let out = lint(&[f.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for path in [
        "RoleSet/t: spec.topologyPolicy.key: Invalid value",
        "RoleSet/t: spec.topologyPolicy.scope: Invalid value: \"Zone\"",
        "PodSet/p: spec.podGroupSize: Invalid value: 1",
    ] {
        assert!(text.contains(path), "missing {path} in:\n{text}");
    }
}

#[test]
fn broken_objects_fail_with_every_path() {
    let f = "tests/fixtures/invalid/many-faults.yaml";
    let out = lint(&[f]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let prefix = format!("{f}: StormService/broken: ");
    for line in text.lines() {
        assert!(line.starts_with(&prefix), "{line}");
    }
    for path in [
        "spec.template.metadata.labels: Invalid value",
        "spec.rolloutStrategy.canary.steps[1].weight: Invalid value: 150: must be between 0 and 100",
        "spec.rolloutStrategy.canary.steps[2].weight: Invalid value: 20",
        "spec.rolloutStrategy.canary.steps[2].pause: Forbidden",
        "spec.rolloutStrategy.canary.steps[3]: Required value",
        "spec.rolloutStrategy.canary.steps[4].replicas: Invalid value: 5",
        "spec.rolloutStrategy.canary.steps[5].pause.duration: Invalid value: \"soon\"",
        "spec.rolloutStrategy.canary.stableService: Invalid value",
        "spec.rolloutStrategy.canary.canaryService: Invalid value",
        "spec.rolloutStrategy.canary.trafficRouting: Forbidden: name exactly one router, found nginx and istio",
        "spec.rolloutStrategy.canary.trafficRouting.nginx.servicePort: Invalid value: 70000",
        "spec.rolloutStrategy.autoRollback.onTimeout: Invalid value: \"0s\"",
        "spec.rolloutStrategy.autoRollback.onFailure.errorThreshold: Invalid value: \"150%\"",
        "metadata.annotations[stormservice.aibrix.ai/rollout-resume]: Invalid value: \"yes\"",
        "metadata.annotations[stormservice.aibrix.ai/rollout-resume]: Forbidden",
    ] {
        assert!(
            text.contains(&format!("{prefix}{path}")),
            "missing {path} in:\n{text}"
        );
    }
    // The ConfigMap in the same file is not ours and is ignored.
    assert!(!text.contains("ConfigMap"));
}

#[test]
fn unknown_fields_are_caught_like_strict_field_validation() {
    let out = lint(&["tests/fixtures/invalid/unknown-field.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("StormService/typo: spec.rolloutStrategy.canary.steps[0].pause.untilAproval: Unknown field"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn schema_type_errors_are_caught() {
    let dir = tempdir();
    let f = dir.join("types.yaml");
    std::fs::write(
        &f,
        "apiVersion: orchestration.aibrix.ai/v1alpha1\nkind: StormService\nmetadata: {name: t}\nspec:\n  template: {spec: {roles: [{name: a, template: {spec: {containers: [{name: c, image: i}]}}}]}}\n  rolloutStrategy:\n    type: Linear\n",
    )
    .expect("write");
    let out = lint(&[f.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("spec.rolloutStrategy.type: Invalid value: \"Linear\""),
        "{}",
        stdout(&out)
    );
}

#[test]
fn unreadable_input_exits_2() {
    let out = lint(&["tests/fixtures/does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let dir = tempdir();
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "a: [").expect("write");
    let out = lint(&[f.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid YAML"));
}

#[test]
fn reads_standard_input() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-storm"))
        .args(["lint", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let text = std::fs::read_to_string(repo().join("tests/fixtures/invalid/many-faults.yaml"))
        .expect("fixture");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("<stdin>: StormService/broken: "));
}

#[test]
fn policies_apply_offline() {
    let policy = "tests/fixtures/policy/strict.yaml";
    // The seed canary: first step 10%, approval at step 1, jumps of at most 50: complies.
    let out = lint(&["--policy", policy, "tests/fixtures/seed/01-canary.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // The analysis fragment starts at 25% and has no approval gate.
    let out = lint(&[
        "--policy",
        policy,
        "tests/fixtures/seed/08-analysis-templates.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("spec.rolloutStrategy.canary.steps[0].weight: Forbidden: violates RolloutPolicy production-safety"), "{text}");
    assert!(
        text.contains(
            "spec.rolloutStrategy.canary.steps: Forbidden: violates RolloutPolicy production-safety"
        ),
        "{text}"
    );
    // A policy file without policies is unusable input.
    let out = lint(&[
        "--policy",
        "tests/fixtures/seed/01-canary.yaml",
        "tests/fixtures/seed/01-canary.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn policy_and_template_documents_are_linted_too() {
    let dir = tempdir();
    let f = dir.join("mixed.yaml");
    std::fs::write(
        &f,
        "apiVersion: orchestration.aibrix.ai/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec: {minOnTimeout: 2h, maxOnTimeout: 1h}\n---\napiVersion: orchestration.aibrix.ai/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  metrics:\n  - name: m\n    successCondition: 'result >'\n    provider: {prometheus: {address: 'http://p:9090', query: up}}\n",
    )
    .expect("write");
    let out = lint(&[f.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("RolloutPolicy/p: spec.minOnTimeout: Invalid value"),
        "{text}"
    );
    assert!(
        text.contains("AnalysisTemplate/t: spec.metrics[0].successCondition: Invalid value"),
        "{text}"
    );
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "storm-lint-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}
