//! Hostile input at load (`make bench-webhook-hostile`, run by `webhook/bench/bench.sh`): a
//! running webhook gets valid AdmissionReviews on `CONNS` keep-alive connections, first alone (the
//! clean run) and then mixed with hostile clients at full rate: malformed JSON, reviews of kinds it
//! does not judge, a 3 MiB review, bodies over the limit (with and without Content-Length), deep
//! nesting, invalid UTF-8, clients that send their headers or body one byte at a time, and TLS
//! handshakes that stall. It reports the valid reviews' p50/p99 in both runs, what each hostile
//! kind got back, and the webhook's peak RSS in each run, and fails (exit 1) if the webhook died or
//! panicked, a valid review went unanswered or was judged differently, or a hostile request got
//! anything but a refusal.
//!
//! Usage: hostile URL CA_FILE PID LOG_FILE REVIEW_FILE SECONDS CONNS OUT_JSON

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What one hostile kind got back: HTTP status codes, or how the connection ended.
type Outcomes = Arc<Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>>;

struct Target {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    host: String,
    port: u16,
}

fn tls_config(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("reading the CA file") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("adding the CA");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn client(target: &Target) -> HttpsClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*target.tls).clone())
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

async fn post(client: &HttpsClient, url: &str, body: Bytes) -> Result<(u16, Bytes), String> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(15), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Peak and current resident memory of `pid` in KiB (VmHWM, VmRSS).
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5), so each run reports its own peak.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[derive(Default)]
struct ValidRun {
    latencies_us: Vec<u64>,
    failures: Vec<String>,
}

/// `conns` workers posting the valid review until `stop`; each answer must be the reference one.
async fn valid_load(
    target: Arc<Target>,
    review: Bytes,
    expected: Value,
    conns: usize,
    stop: Arc<AtomicBool>,
) -> ValidRun {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (target, review, expected, stop) = (
            target.clone(),
            review.clone(),
            expected.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c = client(&target);
            let url = format!("{}/validate", target.url);
            let mut run = ValidRun::default();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let answer = post(&c, &url, review.clone()).await;
                run.latencies_us.push(t.elapsed().as_micros() as u64);
                match answer {
                    Ok((200, body)) => {
                        let got = serde_json::from_slice::<Value>(&body)
                            .map(|v| v["response"].clone())
                            .unwrap_or(Value::Null);
                        if got != expected && run.failures.len() < 5 {
                            run.failures.push(format!("judged differently: {got}"));
                        }
                    }
                    Ok((status, body)) if run.failures.len() < 5 => run.failures.push(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                    Err(e) if run.failures.len() < 5 => run.failures.push(e),
                    _ => {}
                }
            }
            run
        }));
    }
    let mut all = ValidRun::default();
    for t in tasks {
        let run = t.await.expect("a valid-load worker panicked");
        all.latencies_us.extend(run.latencies_us);
        all.failures.extend(run.failures);
    }
    all.latencies_us.sort_unstable();
    all
}

fn record(outcomes: &Outcomes, kind: &'static str, outcome: String) {
    *outcomes
        .lock()
        .unwrap()
        .entry(kind)
        .or_default()
        .entry(outcome)
        .or_default() += 1;
}

fn review_of(kind: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "hostile",
            "kind": {"group": "orchestration.aibrix.ai", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "orchestration.aibrix.ai", "version": "v1alpha1", "resource": "stormservices"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "hostile"},
            "object": object
        }
    }))
    .unwrap()
}

/// The hostile bodies sent with a normal client, and what each must get: an HTTP status.
fn hostile_bodies(review: &Value) -> Vec<(&'static str, Bytes, u16)> {
    let mut big = review.clone();
    // A review of exactly the size limit (the API server's own request limit is 3 MiB): judged.
    let padding = 3 * 1024 * 1024 - serde_json::to_vec(&big).unwrap().len() - 40;
    big["request"]["object"]["metadata"]["annotations"]["padding"] = json!("x".repeat(padding));
    let big = serde_json::to_vec(&big).unwrap();
    assert!(big.len() <= 3 * 1024 * 1024);
    vec![
        (
            "malformed_json",
            Bytes::from_static(b"{\"request\": {{{"),
            400,
        ),
        (
            "not_a_review",
            Bytes::from_static(br#"{"apiVersion":"v1","kind":"Pod","metadata":{}}"#),
            400,
        ),
        (
            "unjudged_kind",
            Bytes::from(review_of("Gadget", json!({"spec": {}}))),
            200,
        ),
        ("review_3mib", Bytes::from(big), 200),
        (
            "over_limit",
            Bytes::from(vec![b' '; 3 * 1024 * 1024 + 1]),
            413,
        ),
        (
            "deep_nesting",
            Bytes::from("[".repeat(200_000).into_bytes()),
            400,
        ),
        (
            "invalid_utf8",
            Bytes::from_static(b"{\"apiVersion\":\"\xc3\x28\"}"),
            400,
        ),
    ]
}

/// `workers` clients cycling through the hostile bodies until `stop`.
fn hostile_requests(
    target: Arc<Target>,
    review: &Value,
    workers: usize,
    stop: Arc<AtomicBool>,
    outcomes: Outcomes,
    wrong: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let bodies = Arc::new(hostile_bodies(review));
    (0..workers)
        .map(|w| {
            let (target, bodies, stop, outcomes, wrong) = (
                target.clone(),
                bodies.clone(),
                stop.clone(),
                outcomes.clone(),
                wrong.clone(),
            );
            tokio::spawn(async move {
                let c = client(&target);
                let url = format!("{}/validate", target.url);
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let (kind, body, want) = &bodies[i % bodies.len()];
                    i += 1;
                    let outcome = match post(&c, &url, body.clone()).await {
                        Ok((status, _)) => {
                            if status != *want {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                            format!("HTTP {status}")
                        }
                        // The server may close a connection whose body is over the limit
                        // before the client finished sending it: a refusal too.
                        Err(e) if *kind == "over_limit" => format!("closed ({e})"),
                        Err(e) => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                            format!("error ({e})")
                        }
                    };
                    record(&outcomes, kind, outcome);
                }
            })
        })
        .collect()
}

/// Clients that are slow on purpose, `workers` of each kind, until `stop`: a body over the
/// limit streamed without Content-Length, headers one byte every 50 ms, a body one byte every
/// 50 ms, and a TLS handshake that stops after its first bytes. They must be cut off by the
/// server's timeouts and limits, never hold it up.
fn slow_clients(
    target: Arc<Target>,
    workers: usize,
    stop: Arc<AtomicBool>,
    outcomes: Outcomes,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        // Chunked, over the limit.
        let (t, s, o) = (target.clone(), stop.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*t.tls).clone())
                .https_only()
                .enable_http1()
                .build();
            let c: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build(https);
            while !s.load(Ordering::Relaxed) {
                let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = (0
                    ..4)
                    .map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b' '; 1 << 20]))))
                    .collect();
                let req = hyper::Request::post(format!("{}/validate", t.url))
                    .body(StreamBody::new(futures::stream::iter(chunks)))
                    .unwrap();
                let outcome =
                    match tokio::time::timeout(Duration::from_secs(15), c.request(req)).await {
                        Ok(Ok(resp)) => format!("HTTP {}", resp.status().as_u16()),
                        Ok(Err(_)) => "closed".to_string(),
                        Err(_) => "timed out".to_string(),
                    };
                record(&o, "chunked_over_limit", outcome);
            }
        }));
        // One byte at a time: headers, or a body after complete headers.
        for (kind, body_slow) in [("slow_headers", false), ("slow_body", true)] {
            let (t, s, o) = (target.clone(), stop.clone(), outcomes.clone());
            tasks.push(tokio::spawn(async move {
                while !s.load(Ordering::Relaxed) {
                    let outcome = dribble(&t, body_slow, &s).await;
                    record(&o, kind, outcome);
                }
            }));
        }
        // A TLS handshake that stops after its first bytes.
        let (t, s, o) = (target.clone(), stop.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let outcome = match TcpStream::connect((t.host.as_str(), t.port)).await {
                    Ok(mut tcp) => {
                        let _ = tcp.write_all(b"\x16\x03\x01").await;
                        let mut buf = [0u8; 64];
                        let start = Instant::now();
                        // Wait for the server to give up (or the run to end).
                        loop {
                            tokio::select! {
                                r = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf) => {
                                    break match r {
                                        Ok(0) | Err(_) => format!("closed after {}s", start.elapsed().as_secs()),
                                        Ok(_) => continue,
                                    };
                                }
                                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                                    if s.load(Ordering::Relaxed) { break "open at the end".to_string(); }
                                }
                            }
                        }
                    }
                    Err(e) => format!("connect failed ({e})"),
                };
                record(&o, "stalled_handshake", outcome);
            }
        }));
    }
    tasks
}

/// A request written one byte every 50 ms (the headers, or the body after whole headers), until
/// the server answers or closes, or the run ends.
async fn dribble(t: &Target, body_slow: bool, stop: &AtomicBool) -> String {
    let Ok(tcp) = TcpStream::connect((t.host.as_str(), t.port)).await else {
        return "connect failed".to_string();
    };
    let connector = tokio_rustls::TlsConnector::from(t.tls.clone());
    let name = ServerName::try_from(t.host.clone()).unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return "handshake failed".to_string();
    };
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        t.host
    );
    let (fast, slow): (&[u8], Vec<u8>) = if body_slow {
        (head.as_bytes(), vec![b' '; 100_000])
    } else {
        (&[], head.into_bytes())
    };
    if tls.write_all(fast).await.is_err() {
        return "closed".to_string();
    }
    let start = Instant::now();
    for byte in slow {
        if stop.load(Ordering::Relaxed) {
            return "open at the end".to_string();
        }
        if tls.write_all(&[byte]).await.is_err() || tls.flush().await.is_err() {
            return format!("closed after {}s", start.elapsed().as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    "sent whole".to_string()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 8 {
        eprintln!("usage: hostile URL CA_FILE PID LOG_FILE REVIEW_FILE SECONDS CONNS OUT_JSON");
        std::process::exit(2);
    }
    let pid: u32 = args[2].parse().expect("PID");
    let log = Path::new(&args[3]);
    let review_bytes = Bytes::from(std::fs::read(&args[4]).expect("reading the review"));
    let review: Value = serde_json::from_slice(&review_bytes).expect("the review is JSON");
    let seconds: u64 = args[5].parse().expect("SECONDS");
    let conns: usize = args[6].parse().expect("CONNS");
    let out = Path::new(&args[7]);
    let url = args[0].trim_end_matches('/').to_string();
    let authority = url.trim_start_matches("https://");
    let (host, port) = authority.rsplit_once(':').expect("URL with a port");
    let target = Arc::new(Target {
        tls: Arc::new(tls_config(Path::new(&args[1]))),
        host: host.to_string(),
        port: port.parse().expect("port"),
        url: url.clone(),
    });
    let log_start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);

    // The reference answer to the valid review.
    let c = client(&target);
    let (status, body) = post(&c, &format!("{url}/validate"), review_bytes.clone())
        .await
        .expect("the webhook answers");
    assert_eq!(status, 200, "the valid review is answered");
    let expected = serde_json::from_slice::<Value>(&body).unwrap()["response"].clone();

    // The clean run.
    reset_peak(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(valid_load(
        target.clone(),
        review_bytes.clone(),
        expected.clone(),
        conns,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let clean = load.await.unwrap();
    let clean_peak = memory_kib(pid).map(|m| m.0).unwrap_or(0);

    // The same load mixed with hostile clients.
    reset_peak(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Outcomes = Arc::default();
    let wrong = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(valid_load(
        target.clone(),
        review_bytes.clone(),
        expected,
        conns,
        stop.clone(),
    ));
    let mut hostile = hostile_requests(
        target.clone(),
        &review,
        conns / 2,
        stop.clone(),
        outcomes.clone(),
        wrong.clone(),
    );
    hostile.extend(slow_clients(
        target.clone(),
        4,
        stop.clone(),
        outcomes.clone(),
    ));
    let mut rss_max = 0;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        if let Some((_, rss)) = memory_kib(pid) {
            rss_max = rss_max.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mixed = load.await.unwrap();
    for t in hostile {
        t.await.expect("a hostile worker panicked");
    }
    let mixed_peak = memory_kib(pid).map(|m| m.0).unwrap_or(0).max(rss_max);

    // The webhook's own account: still running, no panic in its log.
    let alive = memory_kib(pid).is_some();
    let log_text = std::fs::read(log).unwrap_or_default();
    let new_log = String::from_utf8_lossy(&log_text[(log_start as usize).min(log_text.len())..]);
    let panics = new_log.matches("panicked").count();

    let outcomes = outcomes.lock().unwrap().clone();
    let hostile_total: u64 = outcomes.values().flat_map(|m| m.values()).sum();
    let p = |run: &ValidRun, q| percentile(&run.latencies_us, q);
    let report = json!({
        "seconds": seconds,
        "connections": conns,
        "clean": {
            "reviews": clean.latencies_us.len(),
            "reviews_per_sec": clean.latencies_us.len() as f64 / seconds as f64,
            "p50_ms": p(&clean, 0.5), "p99_ms": p(&clean, 0.99),
            "peak_rss_mib": clean_peak as f64 / 1024.0,
            "failures": clean.failures.len(),
        },
        "hostile": {
            "reviews": mixed.latencies_us.len(),
            "reviews_per_sec": mixed.latencies_us.len() as f64 / seconds as f64,
            "p50_ms": p(&mixed, 0.5), "p99_ms": p(&mixed, 0.99),
            "peak_rss_mib": mixed_peak as f64 / 1024.0,
            "failures": mixed.failures.len(),
            "hostile_requests": hostile_total,
            "hostile_wrong_answers": wrong.load(Ordering::Relaxed),
            "by_kind": outcomes,
        },
        "p99_ratio_hostile_to_clean": p(&mixed, 0.99) / p(&clean, 0.99).max(0.001),
        "webhook_alive": alive,
        "panics": panics,
    });
    std::fs::create_dir_all(out.parent().unwrap()).ok();
    std::fs::write(out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let mut failed = Vec::new();
    if !alive {
        failed.push("the webhook is no longer running".to_string());
    }
    if panics > 0 {
        failed.push(format!("{panics} panics in the webhook's log"));
    }
    for f in clean.failures.iter().chain(&mixed.failures) {
        failed.push(format!("valid review: {f}"));
    }
    if wrong.load(Ordering::Relaxed) > 0 {
        failed.push("hostile requests got an answer other than their refusal (by_kind)".into());
    }
    if mixed.latencies_us.is_empty() {
        failed.push("no valid review answered during the hostile run".into());
    }
    if !failed.is_empty() {
        eprintln!("hostile: FAILED\n  {}", failed.join("\n  "));
        std::process::exit(1);
    }
}
