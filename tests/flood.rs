//! Floods and garbage against a real replica: random bytes on every listener leave it serving;
//! a flood of large proposals from many connections is answered RESOURCE_EXHAUSTED at once and
//! the replica's resident memory stays under what its configured byte budgets allow.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use epaxos_kv::proto::{self, operation::Kind};

/// A small deterministic generator (xorshift64*), so a failure replays the same bytes.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Writes `chunks` to a fresh connection to `addr`, ignoring whatever the replica does about it
/// (it may close the connection at any point).
fn spray(addr: &str, chunks: &[Vec<u8>]) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    for c in chunks {
        if s.write_all(c).is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_every_listener_leave_the_replica_serving() {
    let cluster = Cluster::start(3, &[]).await;
    let mut noise = Noise(0x05ee_d0ff_100d);
    let listeners = [
        cluster.addrs[0].clone(),
        cluster.peers[0].clone(),
        cluster.metrics[0].clone(),
    ];
    for addr in &listeners {
        for round in 0..12 {
            let mut chunks = Vec::new();
            // Some rounds look like the start of a protocol the listener speaks, then go wrong.
            match round % 4 {
                0 => chunks.push(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
                1 => chunks.push(vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]),
                2 => chunks.push(b"GET /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n".to_vec()),
                _ => {}
            }
            for _ in 0..4 {
                let len = 1 + (noise.next() % 16_384) as usize;
                chunks.push(noise.bytes(len));
            }
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || spray(&addr, &chunks))
                .await
                .expect("spray task");
        }
    }
    // Still serving clients and metrics, and not fenced from its peers.
    let mut c = cluster.client(0).await.expect("connect after the garbage");
    let reply = Session::new()
        .call(&mut c, put("after-garbage", "v"))
        .await
        .expect("served after the garbage");
    assert!(reply.success);
    let text = scrape_metrics(&cluster.metrics[0]).expect("metrics after the garbage");
    assert!(text.contains("epaxos_"), "metrics answer: {text:.200}");
    cluster.converged().await;
}

/// Resident memory of process `pid` in bytes (VmRSS).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_refused_at_once_and_memory_stays_under_the_configured_bound() {
    // Small budgets, so that the bound is far below what the flood offers at once.
    let budget = 8 * MIB;
    let connections = 8;
    let inflight = 2;
    let flags: Vec<String> = [
        "--insecure",
        "--client-connections-max",
        &connections.to_string(),
        "--request-bytes-max",
        // FLOOD_REQUEST_BYTES=4294967295 lifts the request budget: the test then fails
        // (measured: 436 MiB over the baseline), which shows what it guards.
        &std::env::var("FLOOD_REQUEST_BYTES").unwrap_or(budget.to_string()),
        "--big-channel-bytes-max",
        &budget.to_string(),
        "--pending-bytes-max",
        &budget.to_string(),
        "--peer-queue-bytes-max",
        &budget.to_string(),
        "--inflight-max",
        &inflight.to_string(),
        "--propose-timeout-ms",
        "2000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let flags: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
    let mut cluster = Cluster::start(3, &flags).await;
    // Without a majority nothing commits: every admitted proposal stays in the replica until
    // it times out, so the budgets, not the commit rate, decide what it holds.
    cluster.kill(1);
    cluster.kill(2);
    let pid = cluster.pid(0).expect("replica 0 runs");
    let baseline = rss(pid).expect("read VmRSS");

    // What the configuration lets the replica hold beyond its baseline: request bodies (twice:
    // a decode buffer grows by doubling), bigChannel, pending commands, the instances in flight (each a batch of up to
    // BATCH_BYTES_MAX), two peers' outbound queues, and each connection's unread HTTP/2
    // window; plus a fixed allowance for allocator slack, buffers and the runtime.
    let batch_bytes = epaxos_kv::core::limits::BATCH_BYTES_MAX;
    let window = epaxos_kv::core::limits::CLIENT_CONNECTION_WINDOW_BYTES as usize;
    let configured = 4 * budget + inflight * batch_bytes + 2 * budget + connections * window;
    let allowance = 128 * MIB;
    let bound = (configured + allowance) as u64;

    // The flood: every connection carries 48 proposals of 1 MiB at a time, retried at once
    // when refused — 384 MiB offered at any moment, far over the bound.
    let value = Bytes::from(vec![7u8; MIB]);
    let exhausted = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let channel = cluster.channel(0).await.expect("connect");
        for w in 0..48u64 {
            let client = proto::kv_client::KvClient::new(channel.clone());
            let (value, exhausted, other) = (value.clone(), exhausted.clone(), other.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = client;
                while Instant::now() < stop_at {
                    let op = proto::Operation {
                        kind: Some(Kind::Put(proto::Put {
                            key: Bytes::from(format!("flood-{w}")),
                            value: value.clone(),
                        })),
                    };
                    match Session::new().call(&mut client, op).await {
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            exhausted.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            other.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
    }
    let mut peak = baseline;
    while Instant::now() < stop_at {
        if let Some(now) = rss(pid) {
            peak = peak.max(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let (refused, rest) = (
        exhausted.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood: baseline {} MiB, peak {} MiB, bound {} MiB above baseline; \
         {refused} RESOURCE_EXHAUSTED, {rest} other answers",
        baseline / MIB as u64,
        peak / MIB as u64,
        bound / MIB as u64
    );
    assert!(
        refused > 0,
        "the flood was never refused ({rest} other answers)"
    );
    assert!(
        peak.saturating_sub(baseline) <= bound,
        "resident memory grew {} MiB, over the configured bound of {} MiB",
        (peak - baseline) / MIB as u64,
        bound / MIB as u64
    );
    let text = scrape_metrics(&cluster.metrics[0]).expect("metrics after the flood");
    assert!(
        metric_sum(&text, "epaxos_request_bytes_refused_total") > 0.0
            || metric_sum(
                &text,
                "epaxos_proposals_rejected_total{reason=\"overloaded\"}"
            ) > 0.0,
        "refusals counted"
    );
}
