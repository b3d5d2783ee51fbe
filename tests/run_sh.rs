//! `run.sh` as an operator uses it, on a temporary directory with free ports and the binaries
//! this test run built: exit codes, inherited file descriptors, stale pid files, a failed
//! start, restart, stopping, and a changed cluster size on existing data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A temporary run.sh deployment; stops every replica and removes the directory on drop.
struct Deployment {
    dir: PathBuf,
    config: PathBuf,
    addrs: Vec<String>,
}

impl Deployment {
    fn new(n: usize) -> Deployment {
        let dir = std::env::temp_dir().join(format!(
            "epaxos-run-sh-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let ports = common::free_ports(3 * n);
        let addrs: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let entries: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"id": {i}, "addr": "{}", "peer_addr": "127.0.0.1:{}", "metrics_addr": "127.0.0.1:{}"}}"#,
                    addrs[i],
                    ports[n + i],
                    ports[2 * n + i]
                )
            })
            .collect();
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            format!(r#"{{"replicas": [{}]}}"#, entries.join(", ")),
        )
        .expect("write config");
        Deployment { dir, config, addrs }
    }

    /// `run.sh args...` (through `sh -c` with `prefix` run first, e.g. to open a descriptor).
    fn run_with(&self, prefix: &str, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("run.sh");
        let bin = Path::new(env!("CARGO_BIN_EXE_replica"))
            .parent()
            .expect("binary directory")
            .to_path_buf();
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{prefix} exec '{}' {}",
                script.display(),
                quoted.join(" ")
            ))
            .env("CONFIG", &self.config)
            .env("DATA", self.dir.join("data"))
            .env("BIN", bin)
            .env_remove("REPLICA_FLAGS")
            .output()
            .expect("run run.sh")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with("", args)
    }

    fn pid(&self, id: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("data/replica-{id}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
}

/// Waits (bounded) until `run.sh status` exits with `code`.
fn wait_status(d: &Deployment, code: i32, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    loop {
        let out = d.run(&["status"]);
        if out.status.code() == Some(code) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "run.sh status never exited {code}:\n{}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn run_sh_starts_checks_restarts_and_stops_safely() {
    let d = Deployment::new(3);

    // Unknown commands and ids fail.
    let out = d.run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unknown command"), "{}", text(&out));
    let out = d.run(&["start", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("replica 7 is not in"), "{}", text(&out));
    assert!(d.pid(0).is_none(), "nothing started for a bad id");

    // Start while the caller holds descriptor 7 open on a file: no replica inherits it.
    let held = d.dir.join("caller-lock");
    let out = d.run_with(&format!("exec 7>'{}';", held.display()), &["start"]);
    assert!(out.status.success(), "{}", text(&out));
    for id in 0..3 {
        let pid = d.pid(id).expect("pid file");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("replica fds");
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert_ne!(
                target, held,
                "replica {id} inherited the caller's descriptor"
            );
        }
    }
    wait_status(&d, 0, Duration::from_secs(15));

    // One down: status says so with its exit code.
    let out = d.run(&["kill", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("replica 2: stopped"), "{}", text(&out));

    // A stale pid file naming an unrelated process: stop leaves that process alone.
    let mut bystander = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::fs::write(
        d.dir.join("data/replica-2.pid"),
        format!("{}\n", bystander.id()),
    )
    .expect("write pid file");
    let out = d.run(&["stop", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        alive(bystander.id()),
        "stop killed an unrelated process:\n{}",
        text(&out)
    );
    let _ = bystander.kill();
    let _ = bystander.wait();

    // Restart brings it back; then all are healthy again.
    let out = d.run(&["restart", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_status(&d, 0, Duration::from_secs(15));

    // Stop (all at once) ends every replica.
    let pids: Vec<u32> = (0..3).map(|i| d.pid(i).expect("pid")).collect();
    let started = Instant::now();
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stop took {:?}",
        started.elapsed()
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still runs after stop");
    }
    assert_eq!(d.run(&["status"]).status.code(), Some(1));
}

#[test]
fn a_failed_start_is_reported_with_what_still_runs() {
    let d = Deployment::new(3);
    // Replica 1's client address is taken: it cannot start.
    let _squatter = std::net::TcpListener::bind(&d.addrs[1]).expect("bind replica 1's port");
    let out = d.run(&["start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("1 failed to start"), "{all}");
    assert!(all.contains("0 2 started and still run"), "{all}");
}

#[test]
fn a_changed_cluster_size_on_existing_data_is_named_as_such() {
    let d = Deployment::new(3);
    let out = d.run(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    // The same data directory under a configuration of 5 replicas.
    let ports = common::free_ports(15);
    let entries: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "addr": "127.0.0.1:{}", "peer_addr": "127.0.0.1:{}", "metrics_addr": "127.0.0.1:{}"}}"#,
                ports[i],
                ports[5 + i],
                ports[10 + i]
            )
        })
        .collect();
    let five = d.dir.join("five.json");
    std::fs::write(
        &five,
        format!(r#"{{"replicas": [{}]}}"#, entries.join(", ")),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_replica"))
        .arg("--config")
        .arg(&five)
        .args(["--id", "0", "--insecure", "--data-dir"])
        .arg(d.dir.join("data/replica-0"))
        .output()
        .expect("run replica");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cluster of 3 replicas") && err.contains("lists 5"),
        "{err}"
    );
    assert!(!err.contains("corrupt"), "{err}");
}

/// `run.sh add` starts a replica that config.json does not list, with its addresses, and adds
/// it (`client member add`); `stop`, `status` and `start` then include it, and it restarts
/// without its addresses (its data directory keeps them).
#[test]
fn run_sh_adds_a_replica_not_in_the_config() {
    let d = Deployment::new(3);
    let out = d.run(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_status(&d, 0, Duration::from_secs(15));
    let ports = common::free_ports(3);
    let [peer, client, metrics] = [0, 1, 2].map(|i| format!("127.0.0.1:{}", ports[i]));
    let out = d.run(&["add", "3", &peer, &client, &metrics]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("epoch 1\n")
            && said.contains(&format!("3 {peer} {client}\n"))
            && said.contains("replica 3 joined"),
        "{said}"
    );
    // A second add of the same id is refused before anything starts.
    let out = d.run(&["add", "3", &peer, &client, &metrics]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("replica 3 exists already"),
        "{}",
        text(&out)
    );
    let out = d.run(&["status"]);
    assert!(text(&out).contains("replica 3: running"), "{}", text(&out));
    // Stop takes it too; start brings all four back, replica 3 without its flags.
    let pid = d.pid(3).expect("pid of replica 3");
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!alive(pid), "replica 3 still runs after stop");
    let out = d.run(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let pid = d.pid(3).expect("replica 3 started again");
    assert!(alive(pid), "{}", text(&out));
    let log = std::fs::read_to_string(d.dir.join("data/replica-3.log")).expect("log");
    assert!(
        log.matches("starting replica").count() == 2 && log.contains("added=true"),
        "{log}"
    );
}
