//! Where this replica is reached and listens, when its id may not be in `config.json`: a
//! replica being added (issue 15) is started with its addresses on the command line
//! (`--peer-addr`, `--client-addr`, `--metrics-addr`), since config.json seeds epoch 0 only.
//!
//! The addresses given are kept in the data directory (`addresses`), so that an added replica
//! restarts without the flags, like any other. An id config.json lists takes config.json's
//! entry; flags that contradict it are refused (two sources of truth for one replica would be
//! a mistake to report, not to choose between).

use std::path::Path;

use crate::core::ids::ReplicaId;
use crate::core::limits::MEMBERS_EVER_MAX;
use crate::server::config::{Config, HostPort, Listen, Replica};

/// The file in the data directory holding an added replica's addresses.
pub const ADDRESSES_FILE: &str = "addresses";

/// The addresses given on the command line (each optional).
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub peer_addr: Option<String>,
    pub client_addr: Option<String>,
    pub metrics_addr: Option<String>,
}

impl Given {
    fn any(&self) -> bool {
        self.peer_addr.is_some() || self.client_addr.is_some() || self.metrics_addr.is_some()
    }
}

/// Replica `id`'s entry: config.json's (flags, if any, must agree with it), else the flags
/// (all three), else what an earlier start with them kept in `data_dir`. The flag says whether
/// it is not config.json's (an added replica).
pub fn own_entry(
    config: &Config,
    id: u32,
    given: &Given,
    data_dir: &Path,
) -> Result<(Replica, bool), String> {
    if id as usize >= MEMBERS_EVER_MAX {
        return Err(format!(
            "replica id {id}: ids go up to {}",
            MEMBERS_EVER_MAX - 1
        ));
    }
    if let Ok(listed) = config.replica(id) {
        let pairs = [
            ("--peer-addr", &given.peer_addr, &listed.peer_addr),
            ("--client-addr", &given.client_addr, &listed.addr),
            ("--metrics-addr", &given.metrics_addr, &listed.metrics_addr),
        ];
        for (flag, value, want) in pairs {
            let Some(value) = value else { continue };
            let parsed = HostPort::parse(value).map_err(|why| format!("{flag} {value}: {why}"))?;
            if &parsed != want {
                return Err(format!(
                    "replica {id} is in config.json with other addresses ({flag} {value}, \
                     config.json has {want}): a replica of config.json is started without \
                     --peer-addr/--client-addr/--metrics-addr; an added replica takes a fresh id"
                ));
            }
        }
        return Ok((listed.clone(), false));
    }
    if given.any() {
        let need = |flag: &str, v: &Option<String>| {
            v.clone().ok_or_else(|| {
                format!(
                    "replica {id} is not in config.json: an added replica needs --peer-addr, \
                     --client-addr and --metrics-addr (missing {flag})"
                )
            })
        };
        let entry = entry(
            id,
            &need("--peer-addr", &given.peer_addr)?,
            &need("--client-addr", &given.client_addr)?,
            &need("--metrics-addr", &given.metrics_addr)?,
        )?;
        check_distinct(config, &entry)?;
        if let Some(kept) = kept(data_dir, id)? {
            if kept.addr != entry.addr
                || kept.peer_addr != entry.peer_addr
                || kept.metrics_addr != entry.metrics_addr
            {
                return Err(format!(
                    "replica {id}: its data directory {} was started with peer {}, client {}, \
                     metrics {}; the cluster knows it there: start it with those addresses (or \
                     without the flags)",
                    data_dir.display(),
                    kept.peer_addr,
                    kept.addr,
                    kept.metrics_addr
                ));
            }
        }
        return Ok((entry, true));
    }
    match kept(data_dir, id)? {
        Some(entry) => Ok((entry, true)),
        None => Err(format!(
            "replica id {id} is not in the config: to add a replica, start it with \
             --peer-addr, --client-addr and --metrics-addr (its data directory {} keeps them for later \
             starts), then run `client member add {id} PEER_ADDR CLIENT_ADDR`",
            data_dir.display()
        )),
    }
}

/// Keeps an added replica's addresses in its data directory (created if new, 0700), replaced
/// atomically, so that later starts need no flags.
pub fn keep(data_dir: &Path, entry: &Replica) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    let path = data_dir.join(ADDRESSES_FILE);
    let text = format!(
        "id {}\npeer_addr {}\nclient_addr {}\nmetrics_addr {}\n",
        entry.id.0, entry.peer_addr, entry.addr, entry.metrics_addr
    );
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(fail)?;
    let tmp = data_dir.join(format!("{ADDRESSES_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The addresses an earlier start kept in `data_dir`, if any.
fn kept(data_dir: &Path, id: u32) -> Result<Option<Replica>, String> {
    let path = data_dir.join(ADDRESSES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bad = |why: &str| format!("{}: {why}", path.display());
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .ok_or_else(|| bad(&format!("no {name}")))
    };
    if field("id")? != id.to_string() {
        return Err(bad(&format!("kept for another replica than {id}")));
    }
    entry(
        id,
        field("peer_addr")?,
        field("client_addr")?,
        field("metrics_addr")?,
    )
    .map(Some)
}

/// An entry from addresses (each listener binds where it is reached).
fn entry(id: u32, peer: &str, client: &str, metrics: &str) -> Result<Replica, String> {
    let parse = |flag: &str, v: &str| {
        let a = HostPort::parse(v).map_err(|why| format!("{flag} {v}: {why}"))?;
        if flag != "--metrics-addr" && a.is_wildcard() {
            return Err(format!(
                "{flag} {v}: a wildcard address binds every interface but reaches none"
            ));
        }
        Ok(a)
    };
    let (peer_addr, addr, metrics_addr) = (
        parse("--peer-addr", peer)?,
        parse("--client-addr", client)?,
        parse("--metrics-addr", metrics)?,
    );
    if peer_addr == addr || peer_addr == metrics_addr || addr == metrics_addr {
        return Err(format!(
            "replica {id}: --peer-addr, --client-addr and --metrics-addr must differ"
        ));
    }
    Ok(Replica {
        id: ReplicaId(id),
        listen: Listen {
            addr: addr.clone(),
            peer_addr: peer_addr.clone(),
            metrics_addr: metrics_addr.clone(),
        },
        addr,
        peer_addr,
        metrics_addr,
    })
}

/// An added replica's addresses must not be one of config.json's.
fn check_distinct(config: &Config, entry: &Replica) -> Result<(), String> {
    for r in &config.replicas {
        for a in [&r.addr, &r.peer_addr, &r.metrics_addr] {
            if [&entry.addr, &entry.peer_addr, &entry.metrics_addr].contains(&a) {
                return Err(format!(
                    "replica {}: address {a} is replica {}'s in config.json",
                    entry.id.0, r.id.0
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::members::three_local_replicas as config;

    fn given(peer: &str, client: &str, metrics: &str) -> Given {
        Given {
            peer_addr: Some(peer.into()),
            client_addr: Some(client.into()),
            metrics_addr: Some(metrics.into()),
        }
    }

    fn temp() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("epaxos-added-{}", rand::random::<u64>()))
    }

    #[test]
    fn config_json_ids_take_their_entry_and_refuse_other_addresses() {
        let d = temp();
        let (e, added) = own_entry(&config(), 1, &Given::default(), &d).expect("listed");
        assert_eq!((e.id, added), (ReplicaId(1), false));
        let same = given("127.0.0.1:7171", "127.0.0.1:7071", "127.0.0.1:9071");
        assert!(
            own_entry(&config(), 1, &same, &d).is_ok(),
            "the same addresses"
        );
        let other = given("127.0.0.1:8171", "127.0.0.1:7071", "127.0.0.1:9071");
        let e = own_entry(&config(), 1, &other, &d).expect_err("other addresses");
        assert!(
            e.contains("replica 1 is in config.json with other addresses"),
            "{e}"
        );
        assert!(!d.exists(), "nothing written");
    }

    #[test]
    fn an_added_id_needs_its_addresses_once_and_restarts_without_them() {
        let d = temp();
        let e = own_entry(&config(), 3, &Given::default(), &d).expect_err("no flags");
        assert!(e.contains("replica id 3 is not in the config") && e.contains("--peer-addr"));
        let partial = Given {
            peer_addr: Some("127.0.0.1:7173".into()),
            ..Given::default()
        };
        let e = own_entry(&config(), 3, &partial, &d).expect_err("partial");
        assert!(e.contains("missing --client-addr"), "{e}");
        let clash = given("127.0.0.1:7172", "127.0.0.1:7073", "127.0.0.1:9073");
        let e = own_entry(&config(), 3, &clash, &d).expect_err("replica 2's address");
        assert!(e.contains("is replica 2's"), "{e}");
        let flags = given("127.0.0.1:7173", "127.0.0.1:7073", "127.0.0.1:9073");
        let (e, added) = own_entry(&config(), 3, &flags, &d).expect("added");
        assert!(added);
        assert_eq!(e.peer_addr.to_string(), "127.0.0.1:7173");
        keep(&d, &e).expect("keep");
        let (again, _) = own_entry(&config(), 3, &Given::default(), &d).expect("kept");
        assert_eq!(again.addr, e.addr);
        assert_eq!(again.metrics_addr, e.metrics_addr);
        let moved = given("127.0.0.1:7273", "127.0.0.1:7073", "127.0.0.1:9073");
        let err = own_entry(&config(), 3, &moved, &d).expect_err("not what was kept");
        assert!(
            err.contains("was started with peer 127.0.0.1:7173"),
            "{err}"
        );
        assert!(
            own_entry(&config(), 4, &Given::default(), &d).is_err(),
            "kept for 3"
        );
        assert!(
            own_entry(&config(), 64, &flags, &d).is_err(),
            "beyond the ids"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
