//! `client member list|add|remove`: the cluster's configuration (epoch and members), and the
//! admin calls that change it.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use epaxos_kv::proto::{
    Member, MemberAddRequest, MemberChangeReply, MemberRemoveRequest, StatusReply,
};
use serde_json::json;

use crate::cluster::{describe_status, is_local_timeout, Cluster};
use crate::endpoints::{answers, latest, sync};
use crate::status::Row;
use crate::Format;

/// One line of `member list`: a member of the reported epoch, or a replica of the client's
/// configuration that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    id: u32,
    peer_addr: String,
    client_addr: String,
    member: bool,
    reachable: bool,
}

/// The configuration as the answering replica with the highest epoch reports it, and whether
/// each member is reachable: it answered this client, or that replica hears it. Replicas of the
/// client's configuration outside it are listed as not members.
fn lines(rows: &[Row]) -> Option<(&StatusReply, Vec<Line>)> {
    let up: Vec<&StatusReply> = answers(rows).collect();
    let best = latest(up.iter().copied())?;
    let answered = |id: u32| up.iter().any(|s| s.id == id);
    let reachable = |id: u32| answered(id) || best.id == id || best.peers_heard.contains(&id);
    let mut out: Vec<Line> = best
        .members
        .iter()
        .map(|m: &Member| Line {
            id: m.id,
            peer_addr: m.peer_addr.clone(),
            client_addr: m.client_addr.clone(),
            member: true,
            reachable: reachable(m.id),
        })
        .collect();
    for r in rows {
        let id = r.id as u32;
        if !out.iter().any(|l| l.id == id) {
            out.push(Line {
                id,
                peer_addr: "-".into(),
                client_addr: r.addr.clone(),
                member: false,
                reachable: r.reply.is_ok(),
            });
        }
    }
    out.sort_by_key(|l| l.id);
    Some((best, out))
}

/// `member list`: asks every replica of the client's configuration and the members they name
/// (see [`crate::endpoints::sync`]), prints one line per member (id, peer address, client
/// address, member or not, reachable or not). Exit code 0 when a replica answered, 2 when none
/// did.
pub async fn list(cluster: Arc<Cluster>, timeout: Duration, format: Format) -> Result<ExitCode> {
    let rows = sync(cluster, timeout, None).await?.rows;
    let Some((best, lines)) = lines(&rows) else {
        bail!("no replica answered");
    };
    let mut out = std::io::stdout().lock();
    let word = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
    match format {
        Format::Simple => {
            for l in &lines {
                writeln!(
                    out,
                    "{} {} {} {} {}",
                    l.id,
                    l.peer_addr,
                    l.client_addr,
                    word(l.member, "member", "not-member"),
                    word(l.reachable, "reachable", "unreachable"),
                )?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "{:>3}  {:<24}  {:<24}  {:<10}  {:<11}",
                "ID", "PEER_ADDR", "CLIENT_ADDR", "MEMBER", "REACHABLE"
            )?;
            for l in &lines {
                writeln!(
                    out,
                    "{:>3}  {:<24}  {:<24}  {:<10}  {:<11}",
                    l.id,
                    l.peer_addr,
                    l.client_addr,
                    word(l.member, "yes", "no"),
                    word(l.reachable, "yes", "no"),
                )?;
            }
            writeln!(
                out,
                "epoch: {} (as replica {} reports it)",
                best.epoch, best.id
            )?;
        }
        Format::Json => {
            let members: Vec<_> = lines
                .iter()
                .map(|l| {
                    json!({
                        "id": l.id,
                        "peer_addr": l.peer_addr,
                        "client_addr": l.client_addr,
                        "member": l.member,
                        "reachable": l.reachable,
                    })
                })
                .collect();
            let doc = json!({
                "epoch": best.epoch.to_string(),
                "reported_by": best.id,
                "members": members,
            });
            writeln!(out, "{doc}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// What an admin asks.
pub enum Change {
    Add {
        id: u32,
        peer_addr: String,
        client_addr: String,
    },
    Remove {
        id: u32,
    },
}

/// `member add` / `member remove`: sends the change to the first current member (`cluster` is
/// synced: see [`crate::endpoints::sync`]) that takes the call (one that cannot be reached, or
/// answers UNAVAILABLE, passes it to the next) and prints the configuration it answers with,
/// once the change executed there.
pub async fn change(
    cluster: Arc<Cluster>,
    change: Change,
    timeout: Duration,
    format: Format,
) -> Result<ExitCode> {
    let mut failures = Vec::new();
    for idx in 0..cluster.n() {
        let mut client = cluster.client(idx);
        let answer = match &change {
            Change::Add {
                id,
                peer_addr,
                client_addr,
            } => {
                let mut req = tonic::Request::new(MemberAddRequest {
                    member: Some(Member {
                        id: *id,
                        peer_addr: peer_addr.clone(),
                        client_addr: client_addr.clone(),
                    }),
                });
                req.set_timeout(timeout);
                tokio::time::timeout(timeout, client.member_add(req)).await
            }
            Change::Remove { id } => {
                let mut req = tonic::Request::new(MemberRemoveRequest { id: *id });
                req.set_timeout(timeout);
                tokio::time::timeout(timeout, client.member_remove(req)).await
            }
        };
        match answer {
            Ok(Ok(reply)) => {
                print_change(&reply.into_inner(), format)?;
                return Ok(ExitCode::SUCCESS);
            }
            // Never reached the protocol there: the next replica may take it.
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                failures.push(format!(
                    "replica {}: {}",
                    cluster.id(idx),
                    describe_status(&status)
                ));
            }
            Ok(Err(status)) if !is_local_timeout(&status) => {
                bail!(
                    "replica {} at {}: {}",
                    cluster.id(idx),
                    cluster.addr(idx),
                    describe_status(&status)
                )
            }
            // The change may still execute: say so rather than send it again elsewhere.
            _ => bail!(
                "replica {} at {}: no answer within {} ms; the change may still take effect \
                 (see `client member list`)",
                cluster.id(idx),
                cluster.addr(idx),
                timeout.as_millis()
            ),
        }
    }
    bail!("no replica took the change: {}", failures.join("; "))
}

fn print_change(reply: &MemberChangeReply, format: Format) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let members: Vec<_> = reply
                .members
                .iter()
                .map(
                    |m| json!({"id": m.id, "peer_addr": m.peer_addr, "client_addr": m.client_addr}),
                )
                .collect();
            writeln!(
                out,
                "{}",
                json!({"epoch": reply.epoch.to_string(), "members": members})
            )?;
        }
        Format::Simple | Format::Table => {
            writeln!(out, "epoch {}", reply.epoch)?;
            for m in &reply.members {
                writeln!(out, "{} {} {}", m.id, m.peer_addr, m.client_addr)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u32) -> Member {
        Member {
            id,
            peer_addr: format!("p{id}:1"),
            client_addr: format!("c{id}:1"),
        }
    }

    fn row(id: usize, reply: Option<StatusReply>) -> Row {
        Row {
            id,
            addr: format!("c{id}:1"),
            reply: reply.ok_or_else(|| "down".to_string()),
            rtt: Duration::ZERO,
        }
    }

    #[test]
    fn the_highest_epoch_answering_names_the_members_and_who_is_reachable() {
        let old = StatusReply {
            id: 0,
            epoch: 1,
            members: vec![member(0), member(1), member(2)],
            ..Default::default()
        };
        let new = StatusReply {
            id: 1,
            epoch: 2,
            members: vec![member(0), member(1), member(3)],
            peers_heard: vec![3],
            ..Default::default()
        };
        let rows = vec![row(0, Some(old)), row(1, Some(new)), row(2, None)];
        let (best, listed) = lines(&rows).expect("answered");
        assert_eq!(best.epoch, 2);
        let got: Vec<(u32, bool, bool)> = listed
            .iter()
            .map(|l| (l.id, l.member, l.reachable))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, true, true),
                (1, true, true),
                (2, false, false),
                (3, true, true)
            ],
            "3 is heard by the reporter; 2 is down and no longer a member"
        );
        assert!(lines(&[row(0, None)]).is_none(), "nobody answered");
    }
}
