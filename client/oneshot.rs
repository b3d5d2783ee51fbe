//! One-shot commands: get, put, delete, cas.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use epaxos_kv::command::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use epaxos_kv::proto::{operation, Cas, Delete, Get, OpResult, Operation, Put};

use crate::cluster::{Cluster, Picker};
use crate::session::{execute, RetryPolicy, Session};

/// A key/value command given on the command line.
#[derive(Debug, Clone)]
pub enum Request {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
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

    /// Checks the limits of `src/command.rs` so that the user gets a clear message rather than
    /// an INVALID_ARGUMENT from the replica.
    fn validate(&self) -> Result<()> {
        let key = self.key();
        if key.len() > KEY_BYTES_MAX {
            bail!(
                "key is {} bytes; at most {KEY_BYTES_MAX} are allowed",
                key.len()
            );
        }
        let values: Vec<&str> = match self {
            Request::Put { value, .. } => vec![value],
            Request::Cas { expected, new, .. } => expected
                .iter()
                .map(String::as_str)
                .chain([&**new])
                .collect(),
            _ => vec![],
        };
        for v in values {
            if v.len() > VALUE_BYTES_MAX {
                bail!(
                    "value is {} bytes; at most {VALUE_BYTES_MAX} are allowed",
                    v.len()
                );
            }
        }
        Ok(())
    }

    fn to_operation(&self) -> Operation {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let kind = match self {
            Request::Get { key } => operation::Kind::Get(Get { key: b(key) }),
            Request::Put { key, value } => operation::Kind::Put(Put {
                key: b(key),
                value: b(value),
            }),
            Request::Delete { key } => operation::Kind::Delete(Delete { key: b(key) }),
            Request::Cas { key, expected, new } => operation::Kind::Cas(Cas {
                key: b(key),
                expected: expected.as_deref().map(b),
                new_value: b(new),
            }),
        };
        Operation { kind: Some(kind) }
    }
}

/// Sends one request (retrying as the policy allows) and prints its result. Returns exit code
/// 0, or 1 when a GET found nothing or a CAS did not swap.
pub async fn run(
    cluster: &Cluster,
    mut picker: Picker,
    policy: &RetryPolicy,
    request: Request,
) -> Result<ExitCode> {
    request.validate()?;
    let mut session = Session::new();
    let mut rng = rand::rng();
    let success = execute(
        cluster,
        &mut session,
        &mut picker,
        request.to_operation(),
        policy,
        None,
        &mut rng,
    )
    .await
    .context("request failed")?;
    if success.attempts > 1 {
        eprintln!(
            "(answered by replica {} after {} attempts)",
            success.reply.replica, success.attempts
        );
    }
    // A reply without a result would be a replica bug; treat it as all-false rather than fail.
    let result = success.reply.result.unwrap_or_default();
    print_result(&request, &result)
}

fn print_result(request: &Request, r: &OpResult) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let code = match request {
        Request::Get { .. } => {
            if r.found {
                out.write_all(&r.value)?;
                out.write_all(b"\n")?;
                ExitCode::SUCCESS
            } else {
                writeln!(out, "(not found)")?;
                ExitCode::from(1)
            }
        }
        Request::Put { .. } => {
            writeln!(out, "OK")?;
            ExitCode::SUCCESS
        }
        Request::Delete { .. } => {
            if r.found {
                writeln!(out, "deleted (the key existed)")?;
            } else {
                writeln!(out, "not found (nothing to delete)")?;
            }
            ExitCode::SUCCESS
        }
        Request::Cas { .. } => {
            if r.success {
                writeln!(out, "OK: swapped")?;
                ExitCode::SUCCESS
            } else {
                if r.found {
                    write!(out, "not swapped; current value: ")?;
                    out.write_all(&r.value)?;
                    out.write_all(b"\n")?;
                } else {
                    writeln!(out, "not swapped; the key is absent")?;
                }
                ExitCode::from(1)
            }
        }
    };
    out.flush()?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn limits_are_checked() {
        let big = "x".repeat(KEY_BYTES_MAX + 1);
        let err = Request::Get { key: big }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("key is"), "{err}");
        let ok = Request::Put {
            key: "k".into(),
            value: "v".into(),
        };
        assert!(ok.validate().is_ok());
    }
}
