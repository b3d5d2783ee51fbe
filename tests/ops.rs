//! What an operator relies on, on real replica processes: health (gRPC and the metrics port's
//! `/health`), the metrics port's paths, and a fast, clear refusal without a majority.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use tonic_health::pb::health_check_response::ServingStatus;

/// One HTTP/1.0 GET against `addr`: (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn grpc_health(cluster: &Cluster, i: usize, service: &str) -> i32 {
    let channel = cluster.channel(i).await.expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// Waits (bounded) until replica `i`'s `/health` answers `code`; returns the body.
async fn wait_health(cluster: &Cluster, i: usize, code: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (got, body) = http_get(&cluster.metrics[i], "/health");
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "replica {i}'s /health still {got} ({body:?}) after {within:?}, expected {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_serves_metrics_and_health_and_nothing_else() {
    let cluster = Cluster::start(3, &["--insecure"]).await;
    let addr = &cluster.metrics[0];
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("# HELP epaxos_proposals_total"), "{body}");
    let (code, body) = http_get(addr, "/health");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(addr, "/");
    assert_eq!(code, 404, "{body}");
    let (code, _) = http_get(addr, "/metricsfoo");
    assert_eq!(code, 404);
    assert_eq!(
        grpc_health(&cluster, 0, "epaxos.v1.Kv").await,
        ServingStatus::Serving as i32
    );
}

/// Two of three down: the survivor says so on both health endpoints within the suspicion
/// timeout, refuses a proposal at once with the reason, and serves again once a peer is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_majority_reports_unhealthy_and_refuses_at_once() {
    let mut cluster = Cluster::start(3, &["--insecure"]).await;
    wait_health(&cluster, 0, 200, Duration::from_secs(10)).await;
    cluster.kill(1);
    cluster.kill(2);
    // Suspicion takes 3 s without a message; allow for a slow CI machine.
    let body = wait_health(&cluster, 0, 503, Duration::from_secs(20)).await;
    assert!(body.contains("no majority"), "{body}");
    assert!(body.contains("1 of 3"), "{body}");
    for service in ["", "epaxos.v1.Kv"] {
        assert_eq!(
            grpc_health(&cluster, 0, service).await,
            ServingStatus::NotServing as i32,
            "service {service:?}"
        );
    }
    let metrics = http_get(&cluster.metrics[0], "/metrics").1;
    assert!(metrics.contains("epaxos_serving 0"), "{metrics}");

    // One attempt tells the client, at once.
    let mut c = cluster.client(0).await.expect("connect");
    let started = Instant::now();
    let err = Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect_err("no majority: refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("no majority"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        started.elapsed()
    );

    // The bundled client says the same in one line, well before its 5 s attempt timeout.
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--config"])
        .arg(&cluster.config)
        .args(["--insecure", "--replica", "0", "put", "k", "v"])
        .output()
        .expect("run client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no majority"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "client took {:?}: {stderr}",
        started.elapsed()
    );

    cluster.restart(1).await;
    wait_health(&cluster, 0, 200, Duration::from_secs(20)).await;
    assert_eq!(
        grpc_health(&cluster, 0, "epaxos.v1.Kv").await,
        ServingStatus::Serving as i32
    );
    let r = Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect("a majority again: served");
    assert!(r.success);
}

/// `promtool`, or `None` (with the reason printed) outside CI when it is not installed. Under
/// CI (`CI` set) a missing promtool fails the test: `.ci/run` installs it.
fn promtool() -> Option<&'static str> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "promtool is not installed (CI installs Debian's `prometheus` package in .ci/run)"
    );
    eprintln!("skipped: promtool is not installed (apt-get install prometheus); CI runs this");
    None
}

/// Runs `promtool args...` with `stdin`, asserting success and no lint output.
fn promtool_ok(args: &[&str], stdin: &str) {
    let Some(tool) = promtool() else { return };
    let mut child = std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{said}");
    if args.contains(&"metrics") {
        assert!(said.trim().is_empty(), "promtool {args:?} lints:\n{said}");
    }
}

/// The metric names (`epaxos_*`, `process_*`) a text mentions, histogram suffixes removed.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["epaxos_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            from = end.max(start + 1);
            // Part of a longer word (e.g. a path or an id), not a metric name.
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let mut name = text[start..end].trim_end_matches('_').to_string();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base.to_string();
                }
            }
            names.insert(name);
        }
    }
    names
}

/// The names of the series a scrape holds (histograms by their base name).
fn scraped_names(scrape: &str) -> std::collections::BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

fn repo_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A fresh replica's scrape passes `promtool check metrics` (HELP on everything, names and
/// types by the conventions) and already holds every series the README documents and the
/// dashboard and alert rules query, before any traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_series_exists_from_the_start_and_promtool_accepts_them() {
    // With TLS: the certificate expiry gauges exist only then.
    let cluster = Cluster::start(3, &[]).await;
    let (code, scrape) = http_get(&cluster.metrics[0], "/metrics");
    assert_eq!(code, 200, "{scrape}");
    promtool_ok(&["check", "metrics"], &scrape);
    let have = scraped_names(&scrape);
    let readme = repo_file("README.md");
    let metrics_section = readme
        .split_once("## Metrics")
        .and_then(|(_, rest)| rest.split("\n## ").next())
        .expect("README has a Metrics section");
    for (what, text) in [
        ("the README's Metrics section", metrics_section.to_string()),
        (
            "deploy/grafana-dashboard.json",
            repo_file("deploy/grafana-dashboard.json"),
        ),
        ("deploy/alerts.yml", repo_file("deploy/alerts.yml")),
    ] {
        let named = metric_names(&text);
        assert!(named.len() > 5, "{what} names too few metrics: {named:?}");
        let missing: Vec<&String> = named.iter().filter(|n| !have.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{what} names series a fresh replica does not export: {missing:?}"
        );
    }
    // Traffic keeps it clean (labels created on the way are described too).
    let mut c = cluster.client(0).await.expect("connect");
    Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect("put");
    let (_, scrape) = http_get(&cluster.metrics[0], "/metrics");
    promtool_ok(&["check", "metrics"], &scrape);
    assert!(
        scrape.contains("epaxos_client_requests_total{method=\"Propose\",code=\"OK\"} 1"),
        "{scrape}"
    );
    assert!(scrape.contains("epaxos_build_info{"), "{scrape}");
    assert!(
        scrape.contains("process_resident_memory_bytes "),
        "{scrape}"
    );
}

#[test]
fn the_alert_rules_pass_promtool() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts.yml");
    let Some(tool) = promtool() else { return };
    let out = std::process::Command::new(tool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dashboard_is_json_with_panels() {
    let dash: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana-dashboard.json")).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel without a query: {p}"
        );
    }
}

/// Runs the bundled client with `args` (plus `env`, and `stdin` if given) in `dir`: (exit
/// code, stdout, stderr).
fn client_in(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_client"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("EPAXOS_CONFIG")
        .env_remove("EPAXOS_ENDPOINTS")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run client");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input)
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("client output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The client as a script uses it: where the cluster is (flags, environment, a clear error
/// when nothing says), output formats, errors on one line, stdin values, exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fits_scripts() {
    let mut cluster = Cluster::start(3, &[]).await;
    let config = cluster.config.to_string_lossy().into_owned();
    let dir = cluster.dir.clone();
    let elsewhere = std::env::temp_dir();
    let c = |args: &[&str], env: &[(&str, &str)]| client_in(&dir, args, env, None);

    // Where the cluster is: --config, EPAXOS_CONFIG, --endpoints, EPAXOS_ENDPOINTS (the
    // TLS settings come from the config file in the working directory).
    assert_eq!(c(&["--config", &config, "put", "k1", "v1"], &[]).0, 0);
    let (code, out, err) = c(&["get", "k1"], &[("EPAXOS_CONFIG", &config)]);
    assert_eq!((code, out.as_str()), (0, "v1\n"), "{err}");
    let endpoints = cluster.addrs.join(",");
    let (code, out, err) = c(&["--endpoints", &endpoints, "get", "k1"], &[]);
    assert_eq!((code, out.as_str()), (0, "v1\n"), "{err}");
    let (code, out, err) = c(&["get", "k1"], &[("EPAXOS_ENDPOINTS", &endpoints)]);
    assert_eq!((code, out.as_str()), (0, "v1\n"), "{err}");
    let (code, _, err) = client_in(&elsewhere, &["get", "k1"], &[], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("config.json") && err.contains("--config") && err.contains("EPAXOS_CONFIG"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // Formats; "not found" on stderr; 64-bit numbers as JSON strings.
    let (code, out, err) = c(&["--config", &config, "get", "nope"], &[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("not found"), "{err}");
    let (code, out, _) = c(&["--config", &config, "-w", "json", "get", "k1"], &[]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(doc["value"], "v1", "{out}");
    let (code, out, _) = c(
        &["--config", &config, "--write-out", "table", "get", "k1"],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.starts_with("KEY\tVALUE\n"), "{out}");
    let (code, out, err) = c(&["--config", &config, "-w", "json", "status"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    let r0 = &doc["replicas"][0];
    assert!(r0["digest"].is_string(), "{out}");
    assert!(r0["executed"].is_string(), "{out}");
    assert!(
        r0["version"].as_str().is_some_and(|v| v.contains("commit")),
        "{out}"
    );
    assert_eq!(r0["serving"], true, "{out}");
    assert_eq!(r0["peers_heard"].as_array().map(Vec::len), Some(2), "{out}");
    for format in ["simple", "table"] {
        let (code, out, err) = c(&["--config", &config, "-w", format, "status"], &[]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("agree"), "{out}");
    }

    // Empty keys are refused; `put KEY` reads stdin (bytes as they are).
    let (code, _, err) = c(&["--config", &config, "put", "", "v"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("empty"), "{err}");
    let (code, _, err) = client_in(
        &dir,
        &["--config", &config, "put", "k2"],
        &[],
        Some(b"from\nstdin"),
    );
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = c(&["--config", &config, "get", "k2"], &[]);
    assert_eq!(out, "from\nstdin\n");

    // Errors: one line, no backtrace even when asked for one.
    let (code, _, err) = c(
        &["--config", &config, "--replica", "9", "get", "k"],
        &[("RUST_BACKTRACE", "1")],
    );
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("panicked"),
        "{err}"
    );

    // A closed pipe ends the client quietly: no panic message, exit 0. (`true` exits before
    // the client, which first asks every replica, writes.)
    for format in ["simple", "json"] {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; '{}' --config '{config}' -w {format} status | true",
                env!("CARGO_BIN_EXE_client")
            ))
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("bash");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{:?}: {err}", out.status);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{err}"
        );
    }

    // Help lists what applies; both binaries say their commit.
    let (_, help, _) = c(&["status", "--help"], &[]);
    assert!(
        !help.contains("--target") && !help.contains("--retries"),
        "{help}"
    );
    assert!(help.contains("--status-timeout-ms"), "{help}");
    let (_, help, _) = c(&["get", "--help"], &[]);
    assert!(
        help.contains("--target") && !help.contains("--status-timeout-ms"),
        "{help}"
    );
    let (_, version, _) = c(&["--version"], &[]);
    assert!(version.contains("commit"), "{version}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replica"))
        .arg("--version")
        .output()
        .expect("replica --version");
    assert!(String::from_utf8_lossy(&out.stdout).contains("commit"));

    // A replica down: status fails and says which.
    cluster.kill(2);
    let (code, out, _) = c(&["--config", &config, "status"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("replica 2 unreachable"), "{out}");
}
