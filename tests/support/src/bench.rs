//! What the benchmarks share: kwok nodes to run on, and how they read a controller's cost and
//! their own percentiles.

use crate::wait_for;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use std::time::Duration;

/// Adds kwok fake nodes named `<prefix>-<i>` so `pods` Pods fit (110 per node), beside the
/// cluster's own, and waits until they are Ready; returns their names.
pub async fn add_nodes(client: &kube::Client, prefix: &str, pods: usize) -> Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let count = pods.div_ceil(100);
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"type": "kwok", "kubernetes.io/hostname": name}},
            "status": {
                "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110"},
                "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110"}
            }
        }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        names.push(name);
    }
    wait_for(
        "the bench nodes Ready",
        Duration::from_secs(120),
        || async {
            let mut ready = 0;
            for n in &names {
                let node = nodes.get(n).await?;
                let conds = node.status.and_then(|s| s.conditions).unwrap_or_default();
                ready += usize::from(
                    conds
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True"),
                );
            }
            Ok((ready == names.len()).then_some(()))
        },
    )
    .await?;
    Ok(names)
}

/// Reads a process's peak RSS (MiB) and CPU seconds from /proc.
pub fn proc_usage(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after the command they are the 12th and 13th.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok((hwm_kib / 1024.0, ticks / 100.0))
}

/// Sum of a counter family in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The `p` quantile (0..=1) of sorted values, 0 when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
