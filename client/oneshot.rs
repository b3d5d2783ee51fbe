//! One-shot commands: get, put, delete, cas.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use epaxos_kv::core::command::Op;
use epaxos_kv::core::wire;
use epaxos_kv::proto::{OpResult, Operation};

use crate::cluster::{is_removed_refusal, Cluster, Picker, TargetMode};
use crate::endpoints::{sync, GRACE};
use crate::session::{execute, AttemptError, Failure, RetryPolicy, Session};
use crate::Format;

/// A key/value command given on the command line.
#[derive(Debug, Clone)]
pub enum Request {
    Get {
        key: String,
    },
    Put {
        key: String,
        /// Bytes: a value read from standard input need not be UTF-8.
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

impl Request {
    fn key(&self) -> &str {
        match self {
            Request::Get { key }
            | Request::Put { key, .. }
            | Request::Delete { key }
            | Request::Cas { key, .. } => key,
        }
    }

    /// The operation as the core has it (keys and values as bytes).
    fn to_op(&self) -> Op {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        match self {
            Request::Get { key } => Op::Get { key: b(key) },
            Request::Put { key, value } => Op::Put {
                key: b(key),
                value: Bytes::copy_from_slice(value),
            },
            Request::Delete { key } => Op::Delete { key: b(key) },
            Request::Cas { key, expected, new } => Op::Cas {
                key: b(key),
                expected: expected.as_deref().map(b),
                new: b(new),
            },
        }
    }

    /// Checks the request as the replicas will (`Op::validate`: key and value sizes), so that
    /// the user gets a clear message rather than an INVALID_ARGUMENT from a replica; and,
    /// the client's own rule, that the key is not empty (an empty key is legal in the
    /// protocol, but on a command line it is a mistake: an unset shell variable).
    pub fn validate(&self) -> Result<()> {
        if self.key().is_empty() {
            bail!("the key is empty; keys have at least one byte");
        }
        self.to_op().validate()?;
        Ok(())
    }

    fn to_operation(&self) -> Operation {
        wire::op_to_proto(&self.to_op())
    }
}

/// How often a removed member's refusal makes a command learn the members again and send the
/// request to one of them (after the retry backoff).
const RELEARN_MAX: u32 = 3;

/// Sends one request (retrying as the policy allows) and prints its result. Returns exit code
/// 0, or 1 when a GET found nothing or a CAS did not swap. A request that got no answer (every
/// attempt timed out or found its replica unavailable) is reported with which replicas answer a
/// status probe, so that a cluster without a majority up is named as such.
///
/// `cluster` holds the members synced at start ([`crate::endpoints::sync`]). A replica that
/// refuses because it was removed since (a change during the command, or a stale answer in the
/// sync) makes the command sync again, from the replicas it knows (the removed one reports the
/// epoch that removed it), and send the request to a member of that, at most [`RELEARN_MAX`]
/// times; never when an attempt may have executed a write (sending it again in a new session
/// could execute it twice).
pub async fn run(
    mut cluster: Arc<Cluster>,
    mode: TargetMode,
    replica: Option<u32>,
    policy: &RetryPolicy,
    request: Request,
    format: Format,
) -> Result<ExitCode> {
    request.validate()?;
    let mut session = Session::new();
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut backoff = policy.backoff.clone();
    let mut relearnt = 0;
    let result = loop {
        let mut picker = Picker::choose(&cluster, mode, replica)?;
        let result = execute(
            &cluster,
            &mut session,
            &mut picker,
            request.to_operation(),
            policy,
            None,
            &mut rng,
        )
        .await;
        match &result {
            Err(failure) if relearnt < RELEARN_MAX && removed_refusal(failure) => {
                relearnt += 1;
                tokio::time::sleep(backoff.next_delay_with(&mut rng)).await;
                cluster = sync(cluster, policy.timeout, Some(GRACE)).await?.cluster;
            }
            _ => break result,
        }
    };
    let success = match result {
        Ok(s) => s,
        Err(failure) if failure.last.retryable() => {
            let elapsed = started.elapsed();
            let probe_timeout = policy.timeout.min(Duration::from_secs(1));
            let probes = probe_all(&cluster, probe_timeout).await;
            return Err(anyhow!(
                "{}",
                no_reply_message(&failure, elapsed, policy, mode, &probes)
            ));
        }
        Err(failure) => return Err(anyhow!("request failed: {failure}")),
    };
    if success.attempts > 1 {
        eprintln!(
            "(answered by replica {} after {} attempts)",
            success.reply.replica, success.attempts
        );
    }
    // A reply without a result would be a replica bug; treat it as all-false rather than fail.
    let result = success.reply.result.unwrap_or_default();
    print_result(&request, &result, success.reply.replica, format)
}

/// Whether `failure` is a removed member's refusal of a request that cannot have executed.
fn removed_refusal(failure: &Failure) -> bool {
    let refused =
        matches!(&failure.last, AttemptError::Status { status, .. } if is_removed_refusal(status));
    refused && !failure.may_have_executed
}

/// Asks every replica for its status at once; per replica (by index), `None` if it answered
/// within `timeout`, else why not.
async fn probe_all(cluster: &Arc<Cluster>, timeout: Duration) -> Vec<Option<String>> {
    let mut set = tokio::task::JoinSet::new();
    for idx in 0..cluster.n() {
        let cluster = cluster.clone();
        set.spawn(async move { (idx, cluster.probe(idx, timeout).await) });
    }
    let mut out: Vec<Option<String>> = (0..cluster.n())
        .map(|_| Some("no answer to the probe".to_string()))
        .collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((idx, result)) = joined {
            out[idx] = result.err().map(|e| {
                let text = format!("{e:#}");
                let reason = if text.contains("onnection refused") {
                    "connection refused"
                } else {
                    // Cluster::probe's errors start with "replica N at ADDR: ".
                    text.split_once(": ").map_or(text.as_str(), |(_, r)| r)
                };
                format!(
                    "replica {} at {} ({reason})",
                    cluster.id(idx),
                    cluster.addr(idx)
                )
            });
        }
    }
    out
}

/// The error for a request that got no answer: how long and how often it was tried, the last
/// error, which replicas are unreachable and whether a majority is up.
fn no_reply_message(
    failure: &Failure,
    elapsed: Duration,
    policy: &RetryPolicy,
    mode: TargetMode,
    probes: &[Option<String>],
) -> String {
    let n = probes.len();
    let up = probes.iter().filter(|p| p.is_none()).count();
    let majority = n / 2 + 1;
    let whom = match mode {
        TargetMode::Single => format!("from replica {}", failure.last.id()),
        TargetMode::RoundRobin => "from any replica".to_string(),
    };
    let mut msg = format!(
        "no reply {whom} within {:.1} s ({} attempt{}, {} ms each; last: {})",
        elapsed.as_secs_f64(),
        failure.attempts,
        if failure.attempts == 1 { "" } else { "s" },
        policy.timeout.as_millis(),
        failure.last,
    );
    let down: Vec<&str> = probes.iter().filter_map(|p| p.as_deref()).collect();
    if !down.is_empty() {
        msg.push_str(&format!(
            "; not answering a status probe: {}",
            down.join(", ")
        ));
    }
    // In single mode every attempt went to one replica: say so if that is the one down.
    let target_down = probes
        .get(failure.last.replica())
        .is_none_or(|p| p.is_some());
    if up < majority {
        msg.push_str(&format!(
            "; only {up} of {n} replicas answer and committing needs a majority ({majority} of \
             {n}): is a majority of the cluster up?"
        ));
    } else if mode == TargetMode::Single && target_down {
        msg.push_str(&format!(
            "; {up} of {n} replicas answer: try another with --replica, or --target round-robin"
        ));
    } else {
        msg.push_str(&format!(
            "; {up} of {n} replicas answer, a majority: the command may be waiting for an \
             instance of a failed replica, or the cluster is overloaded (a longer --timeout-ms \
             or more --retries may help)"
        ));
    }
    msg
}

/// Prints a result in `format`. "not found" and "not swapped" go to stderr in the text
/// formats (stdout carries only data); JSON says it in the document.
fn print_result(request: &Request, r: &OpResult, replica: u32, format: Format) -> Result<ExitCode> {
    let key = request.key();
    let code = match request {
        Request::Get { .. } if !r.found => ExitCode::from(1),
        Request::Cas { .. } if !r.success => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    };
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let mut doc = serde_json::json!({ "key": key, "replica": replica });
        match request {
            Request::Get { .. } => {
                doc["found"] = r.found.into();
                if r.found {
                    put_value(&mut doc, &r.value);
                }
            }
            Request::Put { .. } => doc["ok"] = true.into(),
            Request::Delete { .. } => doc["existed"] = r.found.into(),
            Request::Cas { .. } => {
                doc["swapped"] = r.success.into();
                if !r.success {
                    doc["found"] = r.found.into();
                    if r.found {
                        put_value(&mut doc, &r.value);
                    }
                }
            }
        }
        writeln!(out, "{doc}")?;
        out.flush()?;
        return Ok(code);
    }
    let table = format == Format::Table;
    match request {
        Request::Get { .. } if r.found => {
            if table {
                writeln!(out, "KEY\tVALUE")?;
                write!(out, "{key}\t")?;
            }
            out.write_all(&r.value)?;
            out.write_all(b"\n")?;
        }
        Request::Get { .. } => eprintln!("not found: {key}"),
        Request::Put { .. } => writeln!(out, "OK")?,
        Request::Delete { .. } if r.found => writeln!(out, "deleted (the key existed)")?,
        Request::Delete { .. } => eprintln!("not found (nothing to delete): {key}"),
        Request::Cas { .. } if r.success => writeln!(out, "OK: swapped")?,
        Request::Cas { .. } if r.found => {
            eprint!("not swapped; current value: ");
            let mut err = std::io::stderr().lock();
            err.write_all(&r.value)?;
            err.write_all(b"\n")?;
        }
        Request::Cas { .. } => eprintln!("not swapped; the key is absent"),
    }
    out.flush()?;
    Ok(code)
}

/// A value in a JSON document: `value` when it is UTF-8 text, else `value_base64` (the
/// protobuf JSON mapping of bytes).
fn put_value(doc: &mut serde_json::Value, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => doc["value"] = text.into(),
        Err(_) => doc["value_base64"] = base64(value).into(),
    }
}

/// Standard base64 with padding (RFC 4648), for non-UTF-8 values in JSON.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use epaxos_kv::core::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
    use epaxos_kv::proto::operation;

    #[test]
    fn cas_expect_absent_leaves_expected_unset() {
        let op = Request::Cas {
            key: "k".into(),
            expected: None,
            new: "v".into(),
        }
        .to_operation();
        match op.kind {
            Some(operation::Kind::Cas(c)) => {
                assert_eq!(c.expected, None);
                assert_eq!(&c.new_value[..], b"v");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_are_the_replicas() {
        let big = "x".repeat(KEY_BYTES_MAX + 1);
        let err = Request::Get { key: big }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("key is"), "{err}");
        let ok = Request::Put {
            key: "k".into(),
            value: b"v".to_vec(),
        };
        assert!(ok.validate().is_ok());
        let empty = Request::Get { key: String::new() }.validate().unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        let cas = Request::Cas {
            key: "k".into(),
            expected: Some("x".repeat(VALUE_BYTES_MAX + 1)),
            new: "v".into(),
        };
        let err = cas.validate().unwrap_err().to_string();
        assert!(
            err.contains("value is"),
            "an expected value counts too: {err}"
        );
    }

    #[test]
    fn only_a_removed_members_refusal_of_what_cannot_have_executed_is_sent_again() {
        let failure = |status, may_have_executed| Failure {
            attempts: 1,
            last: AttemptError::Status {
                replica: 0,
                id: 1,
                addr: epaxos_kv::server::config::HostPort::parse("127.0.0.1:1").expect("addr"),
                status,
            },
            stopped: false,
            may_have_executed,
        };
        let removed = || {
            tonic::Status::failed_precondition(
                "replica 1 is not a member of the cluster's configuration; send requests to a \
                 member: epoch 2: 0 (peer a:1, client a:2)",
            )
        };
        assert!(removed_refusal(&failure(removed(), false)));
        assert!(
            !removed_refusal(&failure(removed(), true)),
            "an earlier attempt may have executed the write"
        );
        assert!(!removed_refusal(&failure(
            tonic::Status::failed_precondition("request id already used"),
            false
        )));
        assert!(!removed_refusal(&failure(
            tonic::Status::unavailable("down"),
            false
        )));
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }
}
