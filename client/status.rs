//! `client status`: asks every replica for its progress and compares their digests.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use epaxos_kv::proto::{StatusReply, StatusRequest};
use serde_json::json;

use crate::cluster::{describe_status, is_local_timeout, Cluster};

/// One replica's answer, or why there was none.
struct Row {
    id: usize,
    addr: String,
    reply: Result<StatusReply, String>,
    rtt: Duration,
}

async fn query(cluster: Arc<Cluster>, idx: usize, timeout: Duration) -> Row {
    let mut client = cluster.client(idx);
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(timeout);
    let start = Instant::now();
    let reply = match tokio::time::timeout(timeout, client.status(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) if !is_local_timeout(&status) => Err(describe_status(&status)),
        _ => Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    Row {
        id: idx,
        addr: cluster.addr(idx).to_string(),
        reply,
        rtt: start.elapsed(),
    }
}

/// Queries replicas `which` concurrently and prints a table (or one JSON line). Exit code 0 when
/// all of them answered and their digests agree, 1 otherwise.
pub async fn run(
    cluster: Arc<Cluster>,
    which: Vec<usize>,
    timeout: Duration,
    json_out: bool,
) -> Result<ExitCode> {
    let handles: Vec<_> = which
        .iter()
        .map(|&idx| tokio::spawn(query(cluster.clone(), idx, timeout)))
        .collect();
    let mut rows = Vec::with_capacity(handles.len());
    for (h, &idx) in handles.into_iter().zip(&which) {
        rows.push(h.await.unwrap_or_else(|e| Row {
            id: idx,
            addr: cluster.addr(idx).to_string(),
            reply: Err(format!("status task failed: {e}")),
            rtt: Duration::ZERO,
        }));
    }

    let up: Vec<&StatusReply> = rows.iter().filter_map(|r| r.reply.as_ref().ok()).collect();
    let all_up = up.len() == rows.len();
    let agree = up.windows(2).all(|w| w[0].digest == w[1].digest);

    if json_out {
        let arr: Vec<_> = rows
            .iter()
            .map(|r| match &r.reply {
                Ok(s) => json!({
                    "id": r.id,
                    "addr": r.addr,
                    "up": true,
                    "reported_id": s.id,
                    "executed": s.executed,
                    "digest": s.digest,
                    "digest_hex": format!("{:016x}", s.digest),
                    "committed": s.committed,
                    "waiting": s.waiting,
                    "keys": s.keys,
                    "joining": s.joining,
                    "rtt_ms": r.rtt.as_secs_f64() * 1e3,
                }),
                Err(e) => json!({
                    "id": r.id,
                    "addr": r.addr,
                    "up": false,
                    "executed": null,
                    "digest": null,
                    "error": e,
                }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(arr));
    } else {
        println!(
            "{:>3}  {:<21}  {:<4}  {:>12}  {:>12}  {:>8}  {:>10}  {:<16}",
            "ID", "ADDR", "UP", "EXECUTED", "COMMITTED", "WAITING", "KEYS", "DIGEST"
        );
        for r in &rows {
            match &r.reply {
                Ok(s) => {
                    println!(
                        "{:>3}  {:<21}  {:<4}  {:>12}  {:>12}  {:>8}  {:>10}  {:016x}",
                        r.id, r.addr, "yes", s.executed, s.committed, s.waiting, s.keys, s.digest
                    );
                    if s.joining {
                        println!(
                            "     joining: its data directory is new and it waits for its peers \
                             (a replica that lost its data waits for every peer)"
                        );
                    }
                    if s.id as usize != r.id {
                        println!(
                            "     warning: the replica at {} says it is replica {}",
                            r.addr, s.id
                        );
                    }
                }
                Err(e) => println!("{:>3}  {:<21}  {:<4}  {e}", r.id, r.addr, "NO"),
            }
        }
        println!("{}", verdict(&up, rows.len()));
    }
    Ok(if all_up && agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line saying whether the answering replicas agree.
fn verdict(up: &[&StatusReply], asked: usize) -> String {
    let Some(first) = up.first() else {
        return format!("no replica answered (asked {asked})");
    };
    if up.iter().all(|s| s.digest == first.digest) {
        let down = asked - up.len();
        let tail = if down > 0 {
            format!(" ({down} not answering)")
        } else {
            String::new()
        };
        return format!(
            "digests agree: all {} up replicas have {:016x}{tail}",
            up.len(),
            first.digest
        );
    }
    if up.iter().all(|s| s.executed == first.executed) {
        "digests DIFFER although executed counts are equal: the replicas have diverged".to_string()
    } else {
        "digests differ, and so do executed counts: replicas may still be catching up \
         (compare again when the cluster is idle)"
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(executed: u64, digest: u64) -> StatusReply {
        StatusReply {
            executed,
            digest,
            ..Default::default()
        }
    }

    #[test]
    fn verdicts() {
        let (a, b, c) = (st(5, 1), st(5, 1), st(5, 2));
        assert!(verdict(&[&a, &b], 3).contains("agree"));
        assert!(verdict(&[&a, &c], 2).contains("diverged"));
        let d = st(4, 3);
        assert!(verdict(&[&a, &d], 2).contains("catching up"));
        assert!(verdict(&[], 3).contains("no replica"));
    }
}
