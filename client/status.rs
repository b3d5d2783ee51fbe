//! `client status`: asks every replica for its progress and compares their digests.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use epaxos_kv::proto::kv_client::KvClient;
use epaxos_kv::proto::{StatusReply, StatusRequest};
use serde_json::json;
use tonic::transport::Channel;

use crate::cluster::{describe_status, is_local_timeout, Cluster};
use crate::endpoints::{answers, latest};
use crate::Format;

/// One replica's answer, or why there was none.
pub(crate) struct Row {
    pub(crate) id: usize,
    pub(crate) addr: String,
    pub(crate) reply: Result<StatusReply, String>,
    pub(crate) rtt: Duration,
}

/// Asks replica `idx` for its Status within `timeout`.
pub(crate) async fn query(cluster: Arc<Cluster>, idx: usize, timeout: Duration) -> Row {
    let addr = cluster.addr(idx).to_string();
    ask(cluster.client(idx), cluster.id(idx) as usize, addr, timeout).await
}

/// Asks replica `id` at `addr` through `client` for its Status within `timeout`.
async fn ask(mut client: KvClient<Channel>, id: usize, addr: String, timeout: Duration) -> Row {
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(timeout);
    let start = Instant::now();
    let reply = match tokio::time::timeout(timeout, client.status(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) if !is_local_timeout(&status) => Err(describe_status(&status)),
        _ => Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    Row {
        id,
        addr,
        reply,
        rtt: start.elapsed(),
    }
}

/// The members of the highest epoch `rows` report that config.json does not list (added by
/// changes), asked too, so that `status` covers every member.
async fn added_members(cluster: &Cluster, rows: &[Row], timeout: Duration) -> Vec<Row> {
    let Some(best) = latest(answers(rows)) else {
        return Vec::new();
    };
    let mut asked = Vec::new();
    for m in best
        .members
        .iter()
        .filter(|m| cluster.index_of(m.id).is_none())
    {
        let id = m.id as usize;
        match cluster.member_client(m.id, &m.client_addr) {
            Ok(client) => asked.push(tokio::spawn(ask(
                client,
                id,
                m.client_addr.clone(),
                timeout,
            ))),
            Err(e) => asked.push(tokio::spawn(std::future::ready(Row {
                id,
                addr: m.client_addr.clone(),
                reply: Err(e.to_string()),
                rtt: Duration::ZERO,
            }))),
        }
    }
    let mut out = Vec::new();
    for h in asked {
        if let Ok(row) = h.await {
            out.push(row);
        }
    }
    out
}

/// Queries replicas `which` concurrently and prints them in `format`. Exit code 0 when all of
/// them answered, can serve, refuse no fenced-out peer and their digests agree; 1 otherwise
/// (the last line, or the JSON's `problems`, says why).
pub async fn run(
    cluster: Arc<Cluster>,
    which: Vec<usize>,
    timeout: Duration,
    format: Format,
) -> Result<ExitCode> {
    let handles: Vec<_> = which
        .iter()
        .map(|&idx| tokio::spawn(query(cluster.clone(), idx, timeout)))
        .collect();
    let mut rows = Vec::with_capacity(handles.len());
    for (h, &idx) in handles.into_iter().zip(&which) {
        rows.push(h.await.unwrap_or_else(|e| Row {
            id: cluster.id(idx) as usize,
            addr: cluster.addr(idx).to_string(),
            reply: Err(format!("status task failed: {e}")),
            rtt: Duration::ZERO,
        }));
    }

    // Asked for every replica: the members changes added are shown too, and the replicas of
    // the client's configuration that are not members of the latest epoch (removed: they may
    // be down for good, or refuse clients and stop executing) are shown but not judged.
    let all = which.len() == cluster.n();
    if all {
        let more = added_members(&cluster, &rows, timeout).await;
        rows.extend(more);
    }
    let members: Option<(u64, Vec<u32>)> = latest(answers(&rows))
        .filter(|s| all && !s.members.is_empty())
        .map(|s| (s.epoch, s.members.iter().map(|m| m.id).collect()));
    let judged = |r: &&Row| {
        members
            .as_ref()
            .is_none_or(|(_, ids)| ids.contains(&(r.id as u32)))
    };
    let up: Vec<&StatusReply> = rows
        .iter()
        .filter(judged)
        .filter_map(|r| r.reply.as_ref().ok())
        .collect();
    let agree = up.windows(2).all(|w| w[0].digest == w[1].digest);
    let problems = problems(rows.iter().filter(judged));
    let asked = rows.iter().filter(judged).count();
    let others: Vec<usize> = rows.iter().filter(|r| !judged(r)).map(|r| r.id).collect();
    let verdict = |up: &[&StatusReply]| {
        let mut v = verdict(up, asked, &problems);
        if let (Some((epoch, _)), false) = (&members, others.is_empty()) {
            v.push_str(&format!(
                "; not members of epoch {epoch}, not judged: {}",
                others
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        v
    };

    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let arr: Vec<_> = rows.iter().map(row_json).collect();
            let doc = json!({
                "replicas": arr,
                "digests_agree": agree,
                "problems": problems,
                "not_members": others,
            });
            writeln!(out, "{doc}")?;
        }
        Format::Simple => {
            for r in &rows {
                match &r.reply {
                    Ok(s) => writeln!(
                        out,
                        "{} {} up {} version={:?} uptime={} data={} executed={} committed={} \
                         waiting={} keys={} digest={:016x} heard={} suspected={} refused={} \
                         epoch={} members={}",
                        r.id,
                        r.addr,
                        if s.serving { "serving" } else { "NOT-SERVING" },
                        s.version,
                        human_duration(s.uptime_ms),
                        human_bytes(s.data_bytes),
                        s.executed,
                        s.committed,
                        s.waiting,
                        s.keys,
                        s.digest,
                        ids(&s.peers_heard),
                        ids(&s.peers_suspected),
                        ids(&s.peers_refused),
                        s.epoch,
                        member_ids(s),
                    )?,
                    Err(e) => writeln!(out, "{} {} DOWN {e}", r.id, r.addr)?,
                }
            }
            writeln!(out, "{}", verdict(&up))?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:>3}  {:<21}  {:<11}  {:<8}  {:>8}  {:>12}  {:>12}  {:>8}  {:>10}  {:<16}  {:<9}  {:<9}  {:<8}  {:>5}  {:<9}",
                "ID", "ADDR", "STATE", "UPTIME", "DATA", "EXECUTED", "COMMITTED", "WAITING",
                "KEYS", "DIGEST", "HEARD", "SUSPECTED", "REFUSED", "EPOCH", "MEMBERS"
            )?;
            for r in &rows {
                match &r.reply {
                    Ok(s) => {
                        writeln!(
                            out,
                            "{:>3}  {:<21}  {:<11}  {:<8}  {:>8}  {:>12}  {:>12}  {:>8}  {:>10}  {:016x}  {:<9}  {:<9}  {:<8}  {:>5}  {:<9}",
                            r.id,
                            r.addr,
                            state(s),
                            human_duration(s.uptime_ms),
                            human_bytes(s.data_bytes),
                            s.executed,
                            s.committed,
                            s.waiting,
                            s.keys,
                            s.digest,
                            ids(&s.peers_heard),
                            ids(&s.peers_suspected),
                            ids(&s.peers_refused),
                            s.epoch,
                            member_ids(s),
                        )?;
                        if !s.serving {
                            writeln!(out, "     not serving: {}", s.health)?;
                        }
                    }
                    Err(e) => writeln!(out, "{:>3}  {:<21}  {:<11}  {e}", r.id, r.addr, "DOWN")?,
                }
            }
            if let Some(v) = up.first().map(|s| &s.version) {
                if up.iter().all(|s| &s.version == v) {
                    writeln!(out, "version: {v}")?;
                } else {
                    for (r, s) in rows
                        .iter()
                        .filter_map(|r| Some((r, r.reply.as_ref().ok()?)))
                    {
                        writeln!(out, "version of {}: {}", r.id, s.version)?;
                    }
                }
            }
            writeln!(out, "{}", verdict(&up))?;
        }
    }
    out.flush()?;
    Ok(if problems.is_empty() && agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One replica as JSON: 64-bit numbers as strings (the protobuf JSON mapping).
fn row_json(r: &Row) -> serde_json::Value {
    match &r.reply {
        Ok(s) => json!({
            "id": r.id,
            "addr": r.addr,
            "up": true,
            "reported_id": s.id,
            "version": s.version,
            "uptime_ms": s.uptime_ms.to_string(),
            "data_bytes": s.data_bytes.to_string(),
            "serving": s.serving,
            "health": s.health,
            "joining": s.joining,
            "abstaining": s.abstaining,
            "executed": s.executed.to_string(),
            "digest": s.digest.to_string(),
            "digest_hex": format!("{:016x}", s.digest),
            "committed": s.committed.to_string(),
            "waiting": s.waiting.to_string(),
            "keys": s.keys.to_string(),
            "peers_heard": s.peers_heard,
            "peers_suspected": s.peers_suspected,
            "peers_refused": s.peers_refused,
            "epoch": s.epoch.to_string(),
            "members": s.members.iter().map(|m| json!({
                "id": m.id,
                "peer_addr": m.peer_addr,
                "client_addr": m.client_addr,
            })).collect::<Vec<_>>(),
            "rtt_ms": r.rtt.as_secs_f64() * 1e3,
        }),
        Err(e) => json!({
            "id": r.id,
            "addr": r.addr,
            "up": false,
            "error": e,
        }),
    }
}

/// What makes `status` fail besides differing digests: replicas that did not answer, cannot
/// serve, or refuse an old incarnation of a peer (which is then fenced out but running).
fn problems<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        match &r.reply {
            Err(e) => out.push(format!("replica {} unreachable: {e}", r.id)),
            Ok(s) => {
                if s.id as usize != r.id {
                    out.push(format!(
                        "the replica at {} says it is replica {}",
                        r.addr, s.id
                    ));
                }
                if !s.serving {
                    out.push(format!("replica {} not serving: {}", r.id, s.health));
                }
                for p in &s.peers_refused {
                    out.push(format!(
                        "replica {} refuses an old incarnation of replica {p}: that one is \
                         fenced out but still running",
                        r.id
                    ));
                }
            }
        }
    }
    out
}

fn state(s: &StatusReply) -> &'static str {
    if s.joining {
        "joining"
    } else if s.abstaining {
        "abstaining"
    } else if s.serving {
        "serving"
    } else {
        "NO-MAJORITY"
    }
}

/// The ids of the members of the configuration a replica acts in.
fn member_ids(s: &StatusReply) -> String {
    ids(&s.members.iter().map(|m| m.id).collect::<Vec<_>>())
}

fn ids(list: &[u32]) -> String {
    if list.is_empty() {
        return "-".to_string();
    }
    list.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// One line saying whether the answering replicas agree, and what else is wrong.
fn verdict(up: &[&StatusReply], asked: usize, problems: &[String]) -> String {
    let digests = digest_verdict(up, asked);
    if problems.is_empty() {
        digests
    } else {
        format!("{digests}; PROBLEMS: {}", problems.join("; "))
    }
}

fn digest_verdict(up: &[&StatusReply], asked: usize) -> String {
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
        assert!(verdict(&[&a, &b], 3, &[]).contains("agree"));
        assert!(verdict(&[&a, &c], 2, &[]).contains("diverged"));
        let d = st(4, 3);
        assert!(verdict(&[&a, &d], 2, &[]).contains("catching up"));
        assert!(verdict(&[], 3, &[]).contains("no replica"));
        assert!(verdict(&[&a], 1, &["x".into()]).contains("PROBLEMS: x"));
    }
}
