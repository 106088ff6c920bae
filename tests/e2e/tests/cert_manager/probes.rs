//! What the suite reads from outside the webhook: the certificate it serves (a TLS handshake),
//! its metrics (HTTPS), and the API server's connections to it (`/proc/net/tcp`).

use anyhow::{Context, Result, ensure};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// `openssl x509 -serial` of the first certificate in `pem`.
pub fn serial_of(pem: &[u8]) -> Result<String> {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl x509")?;
    child.stdin.take().context("stdin")?.write_all(pem)?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .trim()
        .strip_prefix("serial=")
        .context("no serial")?
        .to_string())
}

/// The serial of the certificate the webhook serves, read by a TLS handshake checked as the API
/// server checks it: chained to `ca` (the injected caBundle) and valid for 127.0.0.1.
pub fn served_serial(port: u16, ca: &Path) -> Result<String> {
    let ca = ca.display().to_string();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-CAfile",
            &ca,
            "-verify_ip",
            "127.0.0.1",
            "-verify_return_error",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running openssl s_client")?;
    ensure!(
        out.status.success(),
        "TLS handshake with the webhook failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serial_of(&out.stdout)
}

/// The peer ports of the established TCP connections to 127.0.0.1:`port` (`/proc/net/tcp`):
/// while only the API server calls the webhook, its connections to it.
pub fn connections_to(port: u16) -> Result<BTreeSet<u16>> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    // Addresses are hex in host byte order (127.0.0.1 is 0100007F here); state 01 is ESTABLISHED.
    let local = format!("{:08X}:{port:04X}", u32::from_ne_bytes([127, 0, 0, 1]));
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"01") {
                return None;
            }
            let (_, peer_port) = fields.get(2)?.split_once(':')?;
            u16::from_str_radix(peer_port, 16).ok()
        })
        .collect())
}

/// `curl` of `path` on the webhook over HTTPS, trusting `ca`.
pub fn webhook_get(port: u16, ca: &Path, path: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .context("running curl")?;
    ensure!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The webhook's admission requests counter.
pub const REQUESTS: &str = "storm_webhook_requests_total";
/// StormService CREATEs the webhook's /validate answered, whatever the answer: one per admitted
/// create (the mutating webhook may be called twice, `reinvocationPolicy: IfNeeded`).
pub const VALIDATED_CREATES: &[&str] = &[
    r#"endpoint="validate""#,
    r#"kind="StormService""#,
    r#"operation="CREATE""#,
];
/// StormService CREATEs the webhook denied, at either endpoint.
pub const DENIED_CREATES: &[&str] = &[
    r#"kind="StormService""#,
    r#"operation="CREATE""#,
    r#"result="denied""#,
];
/// The webhook's certificate reloads counter.
pub const RELOADS: &str = "storm_webhook_certificate_reloads_total";

/// The sum of the samples of counter `name` carrying every label of `labels` (`key="value"`).
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
