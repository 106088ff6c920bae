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

#[test]
fn aibrix_samples_are_accepted_unchanged() {
    for f in fixtures("tests/fixtures/aibrix") {
        let out = lint(&[&f]);
        assert_eq!(out.status.code(), Some(0), "{f}:\n{}", stdout(&out));
        assert!(stdout(&out).is_empty(), "{f}: {}", stdout(&out));
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
