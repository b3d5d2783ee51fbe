//! The configuration parser: text -> `Config::parse` (JSON, then validation). Must never panic;
//! an accepted configuration has 1..=REPLICAS_MAX replicas with ids 0..N-1, each findable.
#![no_main]

use epaxos_kv::server::config::{Config, REPLICAS_MAX};
use epaxos_kv_fuzz::{mode, patch};
use libfuzzer_sys::fuzz_target;

const TEMPLATE: &str = r#"{ "replicas": [
  { "id": 0, "addr": "127.0.0.1:7070", "metrics_addr": "127.0.0.1:9070" },
  { "id": 1, "addr": "[::1]:7071", "metrics_addr": "127.0.0.1:9071", "extra": [1, {"a": null}] },
  { "id": 2, "addr": "10.0.0.3:7072", "metrics_addr": "10.0.0.3:9072" }
] }"#;

fuzz_target!(|data: &[u8]| {
    let Some((template, rest)) = mode(data) else {
        return;
    };
    let bytes = match template {
        Some(_) => patch(TEMPLATE.as_bytes().to_vec(), rest),
        None => rest.to_vec(),
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    let n = config.n();
    assert!((1..=REPLICAS_MAX).contains(&n), "{n} replicas accepted");
    for i in 0..n as u32 {
        let r = config.replica(i);
        assert_eq!(r.ok().map(|r| r.id.0), Some(i), "replica {i} of {n}");
    }
    assert!(config.replica(n as u32).is_err());
});
