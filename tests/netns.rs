//! The cluster across a real (virtual) network: one replica per Linux network namespace, each
//! on its own IP address behind a bridge, clients in a namespace of their own (see
//! `tests/netns/mod.rs`). Partitions cut links or drop packets by route; under client load in
//! both target modes the majority side must keep committing, clients of the cut-off side must
//! get an error or fail over within their retry budget, and after healing every replica must
//! reach one digest with every acknowledged write readable through every replica.
//!
//! Needs root and `ip netns` (iproute2). Elsewhere each test prints why it is skipped; under CI
//! (`CI` set) it fails instead, so that CI cannot pass without running it. The tests run one at
//! a time (each builds its own network).

mod common;
// The harness (tests/netns/): `mod netns` would be this file itself.
#[path = "netns/mod.rs"]
mod hosts;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hosts::kv::{Load, NetCluster, SessionReport, Target};

static SERIAL: Mutex<()> = Mutex::new(());

/// The lock that runs these tests one at a time, or None (printed) when they cannot run here.
fn netns_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    if let Some(why) = hosts::unavailable() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: the netns tests must run in CI, but: {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Runs `body` on a runtime of its own, one scenario at a time, unless netns cannot run here.
fn scenario<F, Fut>(test: &str, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(_serial) = netns_or_skip(test) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(body());
}

/// Budget for the majority to show progress, and for healed sessions to succeed again.
const PROGRESS_WITHIN: Duration = Duration::from_secs(30);

/// Stops the load, waits for one digest everywhere and reads every acknowledged key through
/// every replica. Returns the reports and the time from `healed` to equal digests.
async fn stop_converge_and_read(
    c: &NetCluster,
    load: Load,
    healed: Instant,
) -> (Vec<SessionReport>, Duration) {
    let reports = load.stop();
    c.converged(Duration::from_secs(40)).await;
    let to_digest = healed.elapsed();
    let acked: u64 = reports.iter().map(|r| r.acks).sum();
    assert!(acked > 0, "no write was acknowledged");
    let checked = c.check_reads(&reports).await;
    eprintln!(
        "acknowledged {acked} writes, {} abandoned; {checked} reads checked; equal digests {} ms \
         after healing",
        reports.iter().map(|r| r.abandoned).sum::<u64>(),
        to_digest.as_millis()
    );
    (reports, to_digest)
}

/// Sessions of `targets` whose index satisfies `pick`, summed.
fn acks_of(load: &Load, targets: &[Target], pick: impl Fn(&Target) -> bool) -> u64 {
    targets
        .iter()
        .enumerate()
        .filter(|(_, t)| pick(t))
        .map(|(s, _)| load.stats.session_acks(s))
        .sum()
}

/// 3 hosts; the replica the clients talk to (replica 0: the single-mode sessions' target and
/// where the round-robin ones start) is cut off by its link going down, then healed.
#[test]
fn three_hosts_the_clients_replica_cut_off_then_healed() {
    scenario(
        "three_hosts_the_clients_replica_cut_off_then_healed",
        three_hosts_the_clients_replica_cut_off_then_healed_body,
    );
}

async fn three_hosts_the_clients_replica_cut_off_then_healed_body() {
    let c = NetCluster::start(3, false, &[]).await;
    let targets = vec![
        Target::RoundRobin(0),
        Target::RoundRobin(0),
        Target::RoundRobin(0),
        Target::Single(0),
        Target::Single(0),
        Target::Single(1),
    ];
    let load = Load::start(&c, targets.clone());
    load.wait("load before the cut", PROGRESS_WITHIN, |s| s.acks() >= 60)
        .await;

    c.net.set_link(&c.net.hosts[0], false);
    let majority = |l: &Load| acks_of(l, &targets, |t| *t != Target::Single(0));
    let base = majority(&load);
    let rr: Vec<u64> = (0..3).map(|s| load.stats.session_acks(s)).collect();
    let pinned_errors = load.stats.session_errors(3) + load.stats.session_errors(4);
    let deadline = Instant::now() + PROGRESS_WITHIN;
    while majority(&load) < base + 40 {
        assert!(
            Instant::now() < deadline,
            "the majority (replicas 1, 2) did not keep committing: {} -> {}; errors {:?}\n{}",
            base,
            majority(&load),
            load.stats.errors(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Round-robin sessions failed over: each completed requests while replica 0 was cut off.
    load.wait(
        "every round-robin session progresses",
        PROGRESS_WITHIN,
        |s| (0..3).all(|i| s.session_acks(i) > rr[i] + 3),
    )
    .await;
    // Single-mode sessions on the cut-off replica got errors (timeouts: it is unreachable).
    load.wait("the pinned sessions see errors", PROGRESS_WITHIN, |s| {
        s.session_errors(3) + s.session_errors(4) > pinned_errors
    })
    .await;

    c.net.set_link(&c.net.hosts[0], true);
    let healed = Instant::now();
    let pinned = acks_of(&load, &targets, |t| *t == Target::Single(0));
    load.wait(
        "the pinned sessions succeed again after healing",
        PROGRESS_WITHIN,
        |s| s.session_acks(3) + s.session_acks(4) > pinned + 5,
    )
    .await;
    eprintln!("errors seen by clients: {:?}", load.stats.errors());
    stop_converge_and_read(&c, load, healed).await;
}

/// 5 hosts split into a majority {0, 1, 2} and a minority {3, 4} that still reach each other
/// and the clients (each side drops what it sends to the other), then healed.
#[test]
fn five_hosts_majority_split_from_minority_then_healed() {
    scenario(
        "five_hosts_majority_split_from_minority_then_healed",
        five_hosts_majority_split_from_minority_then_healed_body,
    );
}

async fn five_hosts_majority_split_from_minority_then_healed_body() {
    let c = NetCluster::start(5, false, &[]).await;
    let targets = vec![
        Target::RoundRobin(0),
        Target::RoundRobin(2),
        Target::RoundRobin(4),
        Target::Single(0),
        Target::Single(3),
    ];
    let load = Load::start(&c, targets.clone());
    load.wait("load before the split", PROGRESS_WITHIN, |s| s.acks() >= 60)
        .await;

    let (major, minor) = ([0usize, 1, 2], [3usize, 4]);
    let cut = |drop: bool| {
        for &a in &major {
            for &b in &minor {
                let (ha, hb) = (&c.net.hosts[a], &c.net.hosts[b]);
                if drop {
                    c.net.drop_from(ha, hb.ip);
                    c.net.drop_from(hb, ha.ip);
                } else {
                    c.net.undrop_from(ha, hb.ip);
                    c.net.undrop_from(hb, ha.ip);
                }
            }
        }
    };
    cut(true);
    let base = load.stats.session_acks(3);
    let minority_errors = load.stats.session_errors(4);
    load.wait("the majority keeps committing", PROGRESS_WITHIN, |s| {
        s.session_acks(3) > base + 40
    })
    .await;
    // The minority's replica is reachable but cannot commit: its client gets errors.
    load.wait("the minority's client sees errors", PROGRESS_WITHIN, |s| {
        s.session_errors(4) > minority_errors + 1
    })
    .await;
    let errors = load.stats.errors();
    // Before it suspects its peers the minority's replica holds a proposal until the propose
    // timeout (DEADLINE_EXCEEDED, or nothing within the client's timeout); once it knows it has
    // no majority it refuses at once (UNAVAILABLE).
    assert!(
        errors.contains_key("DeadlineExceeded")
            || errors.contains_key("timeout")
            || errors.contains_key("Unavailable"),
        "a replica without a majority answers DEADLINE_EXCEEDED, UNAVAILABLE or nothing: \
         {errors:?}"
    );
    assert!(
        !errors.contains_key("Aborted"),
        "ABORTED means a replica stopped mid-command, and none did: {errors:?}"
    );

    cut(false);
    let healed = Instant::now();
    let minority_acks = load.stats.session_acks(4);
    load.wait(
        "the minority's client succeeds again after healing",
        PROGRESS_WITHIN,
        |s| s.session_acks(4) > minority_acks + 5,
    )
    .await;
    eprintln!("errors seen by clients: {errors:?}");
    stop_converge_and_read(&c, load, healed).await;
}

/// 3 hosts; replica 2's packets to its peers are dropped (it still hears them, and its
/// clients reach it): a one-way cut. Then healed.
#[test]
fn three_hosts_one_way_cut_then_healed() {
    scenario(
        "three_hosts_one_way_cut_then_healed",
        three_hosts_one_way_cut_then_healed_body,
    );
}

async fn three_hosts_one_way_cut_then_healed_body() {
    let c = NetCluster::start(3, false, &[]).await;
    let targets = vec![
        Target::RoundRobin(1),
        Target::RoundRobin(2),
        Target::Single(0),
        Target::Single(2),
    ];
    let load = Load::start(&c, targets.clone());
    load.wait("load before the cut", PROGRESS_WITHIN, |s| s.acks() >= 60)
        .await;
    let (h0, h1, h2) = (&c.net.hosts[0], &c.net.hosts[1], &c.net.hosts[2]);
    c.net.drop_from(h2, h0.ip);
    c.net.drop_from(h2, h1.ip);
    let base = load.stats.session_acks(2);
    let errors_2 = load.stats.session_errors(3);
    load.wait("the majority keeps committing", PROGRESS_WITHIN, |s| {
        s.session_acks(2) > base + 40
    })
    .await;
    load.wait("replica 2's client sees errors", PROGRESS_WITHIN, |s| {
        s.session_errors(3) > errors_2
    })
    .await;
    c.net.undrop_from(h2, h0.ip);
    c.net.undrop_from(h2, h1.ip);
    let healed = Instant::now();
    let acks_2 = load.stats.session_acks(3);
    load.wait(
        "replica 2's client succeeds again after healing",
        PROGRESS_WITHIN,
        |s| s.session_acks(3) > acks_2 + 5,
    )
    .await;
    eprintln!("errors seen by clients: {:?}", load.stats.errors());
    stop_converge_and_read(&c, load, healed).await;
}

/// 3 hosts; replica 1's link flaps (down and up every 600 ms, eight times) under load.
#[test]
fn three_hosts_flapping_link() {
    scenario("three_hosts_flapping_link", three_hosts_flapping_link_body);
}

async fn three_hosts_flapping_link_body() {
    let c = NetCluster::start(3, false, &[]).await;
    let targets = vec![
        Target::RoundRobin(0),
        Target::RoundRobin(1),
        Target::Single(1),
        Target::Single(2),
    ];
    let load = Load::start(&c, targets.clone());
    load.wait("load before flapping", PROGRESS_WITHIN, |s| s.acks() >= 60)
        .await;
    let before = load.stats.session_acks(3);
    let h1 = c.net.hosts[1].clone();
    // The fault schedule itself (not a wait for a condition).
    for _ in 0..8 {
        c.net.set_link(&h1, false);
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.net.set_link(&h1, true);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let healed = Instant::now();
    assert!(
        load.stats.session_acks(3) > before,
        "replica 2's session (majority with replica 0 throughout) made no progress while 1 \
         flapped"
    );
    let acks_1 = load.stats.session_acks(2);
    load.wait(
        "replica 1's client succeeds after the flapping",
        PROGRESS_WITHIN,
        |s| s.session_acks(2) > acks_1 + 5,
    )
    .await;
    eprintln!("errors seen by clients: {:?}", load.stats.errors());
    stop_converge_and_read(&c, load, healed).await;
}

/// Host names in config.json, wildcard listen addresses: replica 2 stops, its host comes back
/// at another address (its name now resolving there in every namespace's /etc/hosts), and it
/// restarts on its data directory. Its peers only reach it if their links resolve the name
/// again: the cluster converging proves they do (peers write only on links they dialed).
/// The bundled client, given the same config in the clients' namespace, finds it by name too.
#[test]
fn a_replica_back_at_another_address_is_found_by_name() {
    scenario(
        "a_replica_back_at_another_address_is_found_by_name",
        a_replica_back_at_another_address_is_found_by_name_body,
    );
}

async fn a_replica_back_at_another_address_is_found_by_name_body() {
    let mut c = NetCluster::start(3, true, &[]).await;
    let targets = vec![Target::RoundRobin(0), Target::Single(0), Target::Single(1)];
    let load = Load::start(&c, targets.clone());
    load.wait("load before the move", PROGRESS_WITHIN, |s| s.acks() >= 60)
        .await;
    c.kill(2);
    let new_ip = std::net::Ipv4Addr::new(198, 18, c.net.subnet, 52);
    c.net.readdress(2, new_ip);
    let entries: Vec<(String, std::net::Ipv4Addr)> = c
        .net
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (hosts::kv::host_name(i), h.ip))
        .collect();
    c.net.write_hosts(&entries);
    let base = load.stats.acks();
    load.wait("writes while replica 2 moves", PROGRESS_WITHIN, |s| {
        s.acks() > base + 30
    })
    .await;
    c.restart(2).await;
    let healed = Instant::now();
    // Both peers reconnect to replica 2 at its new address.
    let deadline = Instant::now() + PROGRESS_WITHIN;
    for i in [0, 1] {
        loop {
            let text = c.metrics(i).unwrap_or_default();
            if common::metric_sum(&text, "epaxos_peer_connected{peer=\"2\"}") == 1.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} did not reconnect to replica 2 at {new_ip}\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop_converge_and_read(&c, load, healed).await;
    // The client binary resolves the names in the clients' namespace.
    let status = hosts::try_run(
        "ip",
        &[
            "netns",
            "exec",
            &c.net.client.ns,
            env!("CARGO_BIN_EXE_client"),
            "--config",
            &c.config.display().to_string(),
            "status",
        ],
    );
    let out = status.unwrap_or_else(|e| panic!("client status by name: {e}"));
    assert!(
        out.contains("h2.kv.test:7070"),
        "status names replica 2 by its host name: {out}"
    );
}

/// 3 hosts with frequent checkpoints; replica 2 is cut off, loses its disk while cut off, and
/// comes back on an empty data directory once the link is back: it rejoins from a peer's
/// snapshot over the network (the replace-a-machine path) and then serves.
#[test]
fn a_cut_off_replica_that_lost_its_disk_rejoins_by_snapshot() {
    scenario(
        "a_cut_off_replica_that_lost_its_disk_rejoins_by_snapshot",
        a_cut_off_replica_that_lost_its_disk_rejoins_by_snapshot_body,
    );
}

async fn a_cut_off_replica_that_lost_its_disk_rejoins_by_snapshot_body() {
    let mut c = NetCluster::start(3, false, &["--checkpoint-every", "20"]).await;
    let targets = vec![Target::RoundRobin(0), Target::Single(0), Target::Single(1)];
    let load = Load::start(&c, targets.clone());
    load.wait("load before the cut", PROGRESS_WITHIN, |s| s.acks() >= 60)
        .await;
    c.net.set_link(&c.net.hosts[2], false);
    c.kill(2);
    std::fs::remove_dir_all(c.data_dir(2)).expect("wipe replica 2");
    let base = load.stats.acks();
    load.wait("the majority keeps committing", PROGRESS_WITHIN, |s| {
        s.acks() > base + 200
    })
    .await;
    c.net.set_link(&c.net.hosts[2], true);
    c.restart(2).await;
    let healed = Instant::now();
    let log = c.log(2);
    assert!(
        log.contains("rejoined the cluster from a peer's snapshot"),
        "replica 2 did not rejoin by snapshot:\n{log}"
    );
    let acks = load.stats.acks();
    load.wait("load after the rejoin", PROGRESS_WITHIN, |s| {
        s.acks() > acks + 30
    })
    .await;
    stop_converge_and_read(&c, load, healed).await;
}
