//! A real Prometheus server for tests, scraping a fake exporter whose counters the test sets.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use storm_test_support::prometheus::{Exporter, Prometheus};
//! let exporter = Exporter::start()?;
//! exporter.set("abc123", 95, 5); // revision abc123: 95 successful requests, 5 errors
//! let prometheus = Prometheus::start(&[exporter.target()])?; // waits until the target is up
//! prometheus.wait_for_value(&exporter.error_percent_query("abc123"), 5.0)?;
//! // an AnalysisTemplate uses prometheus.base_url() as its address
//! # Ok(()) }
//! ```
//!
//! The exporter serves `storm_test_requests_total{revision="...",outcome="success"|"error"}`.
//! Prometheus is `/usr/bin/prometheus` (Debian's `prometheus` package), `prometheus` on `PATH`, or
//! `STORM_PROMETHEUS`; without one, [`Prometheus::start`] fails and says how to install it.
//!
//! [`Prometheus::start_with`] scrapes real components instead (over HTTPS too) and evaluates rule
//! files; [`Prometheus::alerts`] and [`Prometheus::rules`] read what it made of them, and
//! [`promtool`] finds the `promtool` of the same package.

use crate::process::{Process, free_port};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name of the exporter's counter.
pub const REQUESTS_METRIC: &str = "storm_test_requests_total";

/// Successful and failed request counts of one revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests that succeeded.
    pub success: u64,
    /// Requests that failed.
    pub error: u64,
}

/// A fake application exporter on loopback, served from a thread (so it outlives any one Tokio
/// runtime). Stopped when dropped.
pub struct Exporter {
    addr: SocketAddr,
    counts: Arc<Mutex<BTreeMap<String, Counts>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts serving `/metrics` on a free loopback port.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the exporter")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::Builder::new()
                .name("storm-test-exporter".into())
                .spawn(move || serve(listener, counts, stop))
                .context("starting the exporter thread")?
        };
        Ok(Self {
            addr,
            counts,
            stop,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`, the scrape target.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Sets the counters of `revision` (counters should only grow; tests may do as they like).
    pub fn set(&self, revision: &str, success: u64, error: u64) {
        if let Ok(mut c) = self.counts.lock() {
            c.insert(revision.to_string(), Counts { success, error });
        }
    }

    /// Adds to the counters of `revision`.
    pub fn add(&self, revision: &str, success: u64, error: u64) {
        if let Ok(mut c) = self.counts.lock() {
            let e = c.entry(revision.to_string()).or_default();
            e.success += success;
            e.error += error;
        }
    }

    /// The current counters of `revision`.
    pub fn get(&self, revision: &str) -> Counts {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.get(revision).copied())
            .unwrap_or_default()
    }

    /// PromQL for the error share of `revision` in percent over all its requests so far (exact at
    /// every scrape, unlike `rate()`, which needs two samples in its window). Empty when there are
    /// no requests yet: `> -1` drops the NaN of 0 / 0.
    pub fn error_percent_query(&self, revision: &str) -> String {
        format!(
            "100 * sum({REQUESTS_METRIC}{{revision=\"{revision}\",outcome=\"error\"}}) / sum({REQUESTS_METRIC}{{revision=\"{revision}\"}}) > -1"
        )
    }

    /// The exposition text served right now.
    pub fn render(&self) -> String {
        render(&self.counts)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn render(counts: &Mutex<BTreeMap<String, Counts>>) -> String {
    let mut out = format!(
        "# HELP {REQUESTS_METRIC} Requests served, by revision and outcome.\n# TYPE {REQUESTS_METRIC} counter\n"
    );
    if let Ok(c) = counts.lock() {
        for (revision, n) in c.iter() {
            out.push_str(&format!(
                "{REQUESTS_METRIC}{{revision=\"{revision}\",outcome=\"success\"}} {}\n",
                n.success
            ));
            out.push_str(&format!(
                "{REQUESTS_METRIC}{{revision=\"{revision}\",outcome=\"error\"}} {}\n",
                n.error
            ));
        }
    }
    out
}

fn serve(
    listener: TcpListener,
    counts: Arc<Mutex<BTreeMap<String, Counts>>>,
    stop: Arc<AtomicBool>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        // Read the request head; the path does not matter, every path serves the metrics.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = render(&counts);
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// One scrape job of a [`Prometheus`]: its targets' `/metrics` every second.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// The `job` label of what it scrapes.
    pub name: String,
    /// `host:port` of each target.
    pub targets: Vec<String>,
    /// Scrape over HTTPS, trusting server certificates that chain to this CA.
    pub https_ca: Option<PathBuf>,
}

impl ScrapeJob {
    /// Plain HTTP targets.
    pub fn http(name: &str, targets: &[String]) -> Self {
        Self {
            name: name.to_string(),
            targets: targets.to_vec(),
            https_ca: None,
        }
    }

    /// HTTPS targets whose certificates chain to `ca`.
    pub fn https(name: &str, targets: &[String], ca: &std::path::Path) -> Self {
        Self {
            https_ca: Some(ca.to_path_buf()),
            ..Self::http(name, targets)
        }
    }

    fn config(&self) -> serde_json::Value {
        let mut job = serde_json::json!({
            "job_name": self.name,
            "static_configs": [{"targets": self.targets}],
        });
        if let Some(ca) = &self.https_ca {
            job["scheme"] = "https".into();
            job["tls_config"] = serde_json::json!({"ca_file": ca.display().to_string()});
        }
        job
    }
}

/// An alert as `/api/v1/alerts` lists it (pending or firing).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Its labels, `alertname` among them.
    pub labels: BTreeMap<String, String>,
    /// Its annotations, templates expanded.
    pub annotations: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
    /// When its expression first held (RFC 3339).
    pub active_at: String,
}

impl Alert {
    /// The `alertname` label.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

/// A Prometheus server on loopback with its own config and storage; killed when dropped.
pub struct Prometheus {
    process: Process,
    port: u16,
    dir: PathBuf,
}

/// Where the Prometheus binary is: `STORM_PROMETHEUS`, `/usr/bin/prometheus`, or `prometheus` on `PATH`.
pub fn binary() -> Result<PathBuf> {
    tool("prometheus", "STORM_PROMETHEUS")
}

/// Where promtool is (Debian's `prometheus` package has both): `STORM_PROMTOOL`,
/// `/usr/bin/promtool`, or `promtool` on `PATH`.
pub fn promtool() -> Result<PathBuf> {
    tool("promtool", "STORM_PROMTOOL")
}

fn tool(name: &str, variable: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "{variable}={} is not a file: point it at a {name} binary, or unset it and \
             install Prometheus with `sudo apt-get install -y prometheus`",
            p.display()
        );
    }
    let mut candidates = vec![PathBuf::from("/usr/bin").join(name)];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "the {name} binary is missing: install it with `sudo apt-get install -y prometheus` \
             (Debian/Ubuntu; `make tools` and .ci/run do this), or point {variable} at a {name} binary"
        )
    })
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second and waits
    /// until every target has been scraped successfully (`up == 1`).
    pub fn start(targets: &[String]) -> Result<Self> {
        Self::start_with(&[ScrapeJob::http("storm-test", targets)], &[])
    }

    /// Starts Prometheus scraping `jobs` every second and evaluating the rules in `rule_files`
    /// every second, and waits until every target has been scraped successfully.
    pub fn start_with(jobs: &[ScrapeJob], rule_files: &[PathBuf]) -> Result<Self> {
        let program = binary()?;
        let dir = std::env::temp_dir().join(crate::unique_name("prometheus"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // JSON is YAML: no quoting of paths and targets by hand.
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "scrape_configs": jobs.iter().map(ScrapeJob::config).collect::<Vec<_>>(),
        })
        .to_string();
        let targets = jobs.iter().map(|j| j.targets.len()).sum();
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let port = free_port()?;
        let args = vec![
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_string(),
        ];
        let process = Process::start("prometheus", program, args, Vec::new())?;
        let mut this = Self { process, port, dir };
        this.wait_until_up(targets, Duration::from_secs(60))?;
        Ok(this)
    }

    /// The alerts pending or firing now (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<Alert>> {
        let data = self.api("/api/v1/alerts")?;
        let strings = |v: &serde_json::Value| -> BTreeMap<String, String> {
            v.as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        };
        Ok(data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| Alert {
                labels: strings(&a["labels"]),
                annotations: strings(&a["annotations"]),
                state: a["state"].as_str().unwrap_or_default().to_string(),
                active_at: a["activeAt"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// The rule groups as evaluated (`/api/v1/rules`: `data.groups[].rules[]`, each with its
    /// `name`, `query`, `health` and `lastError`).
    pub fn rules(&self) -> Result<serde_json::Value> {
        self.api("/api/v1/rules")
    }

    /// `data` of a successful answer of the HTTP API at `path`.
    fn api(&self, path: &str) -> Result<serde_json::Value> {
        let (code, body) = get(self.port, path)?;
        let mut doc: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{path}: Prometheus answered HTTP {code}: {body:.300}"))?;
        if doc["status"] != "success" {
            bail!("{path} failed: {}", doc["error"]);
        }
        Ok(doc["data"].take())
    }

    /// `http://127.0.0.1:PORT`: the `address` of a Prometheus metric.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_until_up(&mut self, targets: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.ensure_running()?;
            let last = match self.query("up == 1") {
                Ok(values) if values.len() >= targets => return Ok(()),
                Ok(values) => format!("{} of {targets} targets up", values.len()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "Prometheus did not scrape its targets within {timeout:?} ({last}); log:\n{}",
                    self.process.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The URL of the instant query `promql` on the HTTP API (a JSON endpoint, e.g. for a web
    /// metric).
    pub fn query_url(&self, promql: &str) -> String {
        format!("{}{}", self.base_url(), query_path(promql))
    }

    /// Runs an instant query and returns the sample values (a scalar is one value).
    pub fn query(&self, promql: &str) -> Result<Vec<f64>> {
        let path = query_path(promql);
        let (code, body) = get(self.port, &path)?;
        let doc: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("Prometheus answered HTTP {code}: {body:.300}"))?;
        if doc["status"] != "success" {
            bail!("query {promql:?} failed: {}", doc["error"]);
        }
        let value = |v: &serde_json::Value| -> Result<f64> {
            v[1].as_str()
                .context("sample without a value")?
                .parse::<f64>()
                .context("sample value")
        };
        let result = &doc["data"]["result"];
        match doc["data"]["resultType"].as_str() {
            Some("scalar") => Ok(vec![value(result)?]),
            Some("vector") => result
                .as_array()
                .map(|a| a.iter().map(|s| value(&s["value"])).collect())
                .unwrap_or_else(|| Ok(Vec::new())),
            other => bail!("unexpected result type {other:?}"),
        }
    }

    /// Polls `promql` until it returns exactly one value equal to `expected` (within 1e-9): the
    /// exporter's latest counters have been scraped.
    pub fn wait_for_value(&self, promql: &str, expected: f64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.query(promql)?;
            if let [v] = got.as_slice()
                && (v - expected).abs() < 1e-9
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{promql:?} gave {got:?}, not [{expected}], for 30s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A plain HTTP/1.0 GET on loopback (no chunked encoding to undo): (status code, body).
fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed HTTP response: {response:.200}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn query_path(promql: &str) -> String {
    format!("/api/v1/query?query={}", percent_encode(promql))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_serves_counters_per_revision() {
        let e = Exporter::start().unwrap();
        e.set("abc", 9, 1);
        e.add("abc", 1, 1);
        e.add("def", 3, 0);
        assert_eq!(
            e.get("abc"),
            Counts {
                success: 10,
                error: 2
            }
        );
        let port = e.addr.port();
        let (code, body) = get(port, "/metrics").unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains("storm_test_requests_total{revision=\"abc\",outcome=\"success\"} 10\n")
        );
        assert!(body.contains("storm_test_requests_total{revision=\"abc\",outcome=\"error\"} 2\n"));
        assert!(body.contains("storm_test_requests_total{revision=\"def\",outcome=\"error\"} 0\n"));
        drop(e);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn scrape_jobs_say_how_to_reach_their_targets() {
        let plain = ScrapeJob::http("c", &["127.0.0.1:1".to_string()]).config();
        assert_eq!(
            plain,
            serde_json::json!({"job_name": "c", "static_configs": [{"targets": ["127.0.0.1:1"]}]})
        );
        let tls = ScrapeJob::https("w", &["127.0.0.1:2".to_string()], "/x/ca.crt".as_ref());
        let tls = tls.config();
        assert_eq!(tls["scheme"], "https");
        assert_eq!(tls["tls_config"]["ca_file"], "/x/ca.crt");
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("up == 1"), "up%20%3D%3D%201");
        assert_eq!(percent_encode("a{b=\"c\"}"), "a%7Bb%3D%22c%22%7D");
    }
}
