//! The admission webhook as the suites run against it: the dev stack's (`tests/dev/dev.sh up`,
//! webhook only), built once by the harness, started detached on a free loopback port, registered
//! cluster-wide with the shipped webhook configurations, and reused by every later test process
//! (`make dev-down` removes it). Only the webhook: the dev controller would watch every namespace,
//! including the ones where the suites run their own namespace-scoped controllers.

use crate::{cluster, process};
use anyhow::{Context, Result, ensure};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Where the running webhook answers.
#[derive(Debug)]
pub struct Webhook {
    /// Its base URL.
    pub url: String,
    /// The CA its serving certificate chains to.
    pub ca: PathBuf,
    /// Its process id, when dev.sh knows it.
    pub pid: Option<u32>,
    /// The API server's client certificate and key for webhooks, which reviews sent to it need.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Webhook {
    /// Its resident memory in bytes (Linux `/proc`), when known.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }
}

static WEBHOOK: OnceLock<std::result::Result<Webhook, String>> = OnceLock::new();

/// Starts (or reuses) the webhook, once per test process.
pub fn running() -> Result<&'static Webhook> {
    WEBHOOK
        .get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("webhook unavailable: {e}"))
}

fn start() -> Result<Webhook> {
    let cluster = cluster()?;
    // A release build of the tests (the benchmarks) admits through a release webhook: a debug one
    // would make every write the benchmark times slower than users would ever see.
    let bin = if cfg!(debug_assertions) {
        process::binary("storm-webhook", "storm-webhook")?
    } else {
        process::release_binary("storm-webhook", "storm-webhook")?
    };
    let script = cluster.repo_root().join("tests/dev/dev.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("up")
        .env("STORM_WEBHOOK_BIN", &bin)
        .env("STORM_DEV_COMPONENTS", "webhook")
        .current_dir(cluster.repo_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} up", script.display()))?;
    ensure!(out.status.success(), "dev.sh up failed ({})", out.status);
    let env = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_string)
            .with_context(|| format!("dev.sh up printed no {name}: {env}"))
    };
    Ok(Webhook {
        url: var("STORM_WEBHOOK_URL")?,
        ca: PathBuf::from(var("STORM_WEBHOOK_CA")?),
        pid: var("STORM_WEBHOOK_PID").ok().and_then(|p| p.parse().ok()),
        client: var("STORM_WEBHOOK_CLIENT_CERT")
            .ok()
            .zip(var("STORM_WEBHOOK_CLIENT_KEY").ok())
            .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
    })
}
