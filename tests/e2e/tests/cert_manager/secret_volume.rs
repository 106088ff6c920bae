//! A Secret mounted as the kubelet mounts it, for a webhook that runs as a local process: the
//! local control plane has no kubelet (kwok fakes the Pods).

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Writes `files` into `dir` as the kubelet projects a Secret volume: into a fresh `..N`
/// directory, switched in by renaming the `..data` symlink, each file a symlink through `..data`.
/// A reader never sees the new certificate beside the old key.
fn project(dir: &Path, seq: u64, files: &[(&str, &[u8])]) -> Result<()> {
    use std::os::unix::fs::symlink;
    let version = format!("..{seq}");
    std::fs::create_dir_all(dir.join(&version))?;
    for (name, bytes) in files {
        std::fs::write(dir.join(&version).join(name), bytes)?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for (name, _) in files {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            symlink(format!("..data/{name}"), dir.join(name))?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") && name != "..data" && name != version {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Keeps `dir` in step with Secret `name`'s `tls.crt` and `tls.key` until `stop`, as the kubelet
/// keeps a mounted Secret (every 200 ms here, so the test need not wait for the kubelet's sync
/// period). Returns how many versions it projected.
pub async fn keep_projected(
    secrets: Api<Secret>,
    name: &str,
    dir: &Path,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let mut seq = 0;
    let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
    while !stop.load(Ordering::Relaxed) {
        // A failed read (the API server busy) is tried again, as the kubelet would.
        if let Ok(Some(secret)) = secrets.get_opt(name).await {
            let data = secret.data.unwrap_or_default();
            if let (Some(crt), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) {
                let pair = (crt.0.clone(), key.0.clone());
                if last.as_ref() != Some(&pair) {
                    seq += 1;
                    project(dir, seq, &[("tls.crt", &pair.0), ("tls.key", &pair.1)])?;
                    last = Some(pair);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(seq)
}
