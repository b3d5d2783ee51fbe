//! Hosts on one machine: Linux network namespaces joined by veth pairs to a bridge, one replica
//! process per namespace on its own IP address, clients in a namespace of their own.
//!
//! - **Names**: every namespace, bridge and veth of a run starts with `ek<pid><letter>` (the
//!   test process's pid, a letter per network it builds), at most 15 characters for interfaces,
//!   so parallel runs never collide. Leftovers of a run whose process is gone (a crash, a
//!   SIGKILL) are deleted when the next network is built.
//! - **Addresses**: 198.18.X.0/24 (RFC 2544's benchmarking range, never routed anywhere), X
//!   chosen per network among the /24s no route of the machine uses; host i is .(i+1), the
//!   clients' namespace .100, the bridge (the test process's own address, in the initial
//!   namespace) .254. Nothing leaves the bridge.
//! - **Partitions**: a host's link down (its veth on the bridge side), or blackhole routes in a
//!   namespace (one-way, or a split into groups: each side drops what it sends to the other).
//! - **Cleanup**: [`Net`]'s `Drop` kills what runs inside its namespaces and deletes them, the
//!   bridge and the per-namespace `/etc/netns/<ns>` files, also when a test panics.
#![allow(dead_code)]

pub mod kv;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Why the netns tests cannot run here, or None when they can (root, `ip netns` works).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Some(format!(
            "not root (uid {uid}): network namespaces need CAP_SYS_ADMIN"
        ));
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip` (iproute2): {e}")),
    }
}

/// Runs a command to completion (bounded), panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    match try_run(program, args) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

/// Runs a command to completion within 10 s; its stdout, or why it failed.
pub fn try_run(program: &str, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} {args:?}: no exit within 10 s"));
            }
            Err(e) => return Err(format!("{program} {args:?}: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One namespace on the bridge.
#[derive(Debug, Clone)]
pub struct NsHost {
    /// The namespace's name.
    pub ns: String,
    /// The veth end on the bridge (in the initial namespace): down = cut off.
    pub link: String,
    pub ip: Ipv4Addr,
}

/// A network of namespaces on one bridge. Dropping it deletes everything it made.
pub struct Net {
    pub prefix: String,
    pub bridge: String,
    /// Third octet of 198.18.X.0/24.
    pub subnet: u8,
    /// The replicas' hosts, in order.
    pub hosts: Vec<NsHost>,
    /// The clients' namespace.
    pub client: NsHost,
    /// Processes started in the namespaces, killed on drop.
    children: Vec<Child>,
}

static NETS: AtomicU8 = AtomicU8::new(0);

/// The prefix of everything this process creates: `ek<pid>`.
fn process_prefix() -> String {
    format!("ek{}", std::process::id())
}

/// The pid in a name made by [`Net`] (`ek<pid><letter>...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ek")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = rest[digits.len()..].chars().next()?;
    if digits.is_empty() || !after.is_ascii_lowercase() {
        return None;
    }
    digits.parse().ok()
}

/// Deletes namespaces, links and `/etc/netns` entries left by runs whose process is gone
/// (and, with `own`, by an earlier process that had this pid), killing what still runs in
/// those namespaces.
pub fn delete_leftovers(own: bool) {
    let me = std::process::id();
    let stale = |name: &str| {
        owner_pid(name).is_some_and(|pid| {
            (own && pid == me) || (pid != me && !Path::new(&format!("/proc/{pid}")).exists())
        })
    };
    let namespaces = try_run("ip", &["netns", "list"]).unwrap_or_default();
    for ns in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if stale(ns) {
            kill_inside(ns);
            let _ = try_run("ip", &["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
    }
    let links = try_run("ip", &["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // "12: ek123av0@if11: <...>"
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if stale(name) {
            let _ = try_run("ip", &["link", "del", name]);
        }
    }
}

/// SIGKILLs every process in namespace `ns` (ours: replicas of an earlier run).
fn kill_inside(ns: &str) {
    let pids = try_run("ip", &["netns", "pids", ns]).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) with a pid listed as inside our namespace and a valid signal.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// A /24 of 198.18.0.0/16 that no route of the machine covers yet.
fn free_subnet() -> u8 {
    let start = (std::process::id() as u8).wrapping_mul(7);
    let routes = try_run("ip", &["-4", "route", "show"]).unwrap_or_default();
    (0..=255u8)
        .map(|i| start.wrapping_add(i))
        .find(|x| !routes.contains(&format!("198.18.{x}.")))
        .expect("a free /24 in 198.18.0.0/16")
}

impl Net {
    /// Builds `hosts` namespaces for replicas and one for clients, all on a new bridge.
    pub fn new(hosts: usize) -> Net {
        assert!(hosts <= 90, "at most 90 hosts");
        let nth = NETS.fetch_add(1, Ordering::Relaxed);
        delete_leftovers(nth == 0);
        let letter = (b'a' + nth % 26) as char;
        let prefix = format!("{}{letter}", process_prefix());
        assert!(prefix.len() + 3 <= 15, "interface names fit 15 characters");
        let subnet = free_subnet();
        let bridge = format!("{prefix}br");
        let mut net = Net {
            prefix: prefix.clone(),
            bridge: bridge.clone(),
            subnet,
            hosts: Vec::new(),
            client: NsHost {
                ns: String::new(),
                link: String::new(),
                ip: Ipv4Addr::new(198, 18, subnet, 100),
            },
            children: Vec::new(),
        };
        // From here on Drop cleans up whatever was made, even if a later step panics.
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        let bridge_ip = format!("198.18.{subnet}.254/24");
        run("ip", &["addr", "add", &bridge_ip, "dev", &bridge]);
        run("ip", &["link", "set", &bridge, "up"]);
        for i in 0..hosts {
            let host = net.add_host(
                &format!("h{i}"),
                Ipv4Addr::new(198, 18, subnet, i as u8 + 1),
            );
            net.hosts.push(host);
        }
        net.client = net.add_host("c", Ipv4Addr::new(198, 18, subnet, 100));
        net
    }

    fn add_host(&self, tag: &str, ip: Ipv4Addr) -> NsHost {
        let ns = format!("{}{tag}", self.prefix);
        let link = format!("{}v{tag}", self.prefix);
        run("ip", &["netns", "add", &ns]);
        run(
            "ip",
            &[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        run("ip", &["link", "set", &link, "master", &self.bridge]);
        run("ip", &["link", "set", &link, "up"]);
        let cidr = format!("{ip}/24");
        run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        NsHost { ns, link, ip }
    }

    /// Every namespace: the replicas' hosts and the clients'.
    pub fn all(&self) -> impl Iterator<Item = &NsHost> {
        self.hosts.iter().chain(std::iter::once(&self.client))
    }

    /// Writes `/etc/hosts` as every namespace sees it (`ip netns exec` mounts
    /// `/etc/netns/<ns>/hosts` over it): `entries` are (name, address).
    pub fn write_hosts(&self, entries: &[(String, Ipv4Addr)]) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, ip) in entries {
            text.push_str(&format!("{ip} {name}\n"));
        }
        for h in self.all() {
            let dir = Path::new("/etc/netns").join(&h.ns);
            std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
            // Rewritten in place: `ip netns exec` bind-mounts this very file (its inode) over
            // /etc/hosts of the processes it starts, so a renamed new file would go unseen.
            std::fs::write(dir.join("hosts"), &text).expect("write hosts");
        }
    }

    /// Gives host `i` another address (`i`'s processes must be restarted to bind it, unless
    /// they listen on a wildcard).
    pub fn readdress(&mut self, i: usize, ip: Ipv4Addr) {
        let h = &self.hosts[i];
        let old = format!("{}/24", h.ip);
        let new = format!("{ip}/24");
        run("ip", &["-n", &h.ns, "addr", "del", &old, "dev", "eth0"]);
        run("ip", &["-n", &h.ns, "addr", "add", &new, "dev", "eth0"]);
        self.hosts[i].ip = ip;
    }

    /// Cuts host `i` off (link down on the bridge side) or puts it back.
    pub fn set_link(&self, h: &NsHost, up: bool) {
        run(
            "ip",
            &["link", "set", &h.link, if up { "up" } else { "down" }],
        );
    }

    /// In `from`'s namespace, drops everything it sends to `to` (a blackhole route): a one-way
    /// cut, seen from TCP as a dead path both ways (nothing `from` sends, acknowledgements
    /// included, arrives).
    pub fn drop_from(&self, from: &NsHost, to: Ipv4Addr) {
        let dst = format!("{to}/32");
        run("ip", &["-n", &from.ns, "route", "add", "blackhole", &dst]);
    }

    /// Undoes [`drop_from`](Self::drop_from).
    pub fn undrop_from(&self, from: &NsHost, to: Ipv4Addr) {
        let dst = format!("{to}/32");
        run("ip", &["-n", &from.ns, "route", "del", "blackhole", &dst]);
    }

    /// Starts `program args` inside `h`'s namespace, stderr to `log`; killed when the net
    /// drops (or by [`kill`](Self::kill)).
    pub fn spawn(&mut self, h: &NsHost, program: &Path, args: &[String], log: &Path) -> u32 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log");
        let child = Command::new("ip")
            .args(["netns", "exec", &h.ns])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn in namespace");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// SIGKILLs the process `pid` started by [`spawn`](Self::spawn) and reaps it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(at) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(at);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The path of a network namespace's handle (for `setns`).
    pub fn ns_path(h: &NsHost) -> PathBuf {
        Path::new("/var/run/netns").join(&h.ns)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let names: Vec<(String, String)> = self
            .all()
            .filter(|h| !h.ns.is_empty())
            .map(|h| (h.ns.clone(), h.link.clone()))
            .collect();
        for (ns, link) in names {
            kill_inside(&ns);
            let _ = try_run("ip", &["link", "del", &link]);
            let _ = try_run("ip", &["netns", "del", &ns]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
        }
        let _ = try_run("ip", &["link", "del", &self.bridge]);
    }
}

/// Runs `f` on a new thread that lives in `h`'s network namespace (sockets it opens are
/// there), on a tokio runtime of its own; returns its join handle.
pub fn in_namespace<T, F, Fut>(h: &NsHost, f: F) -> std::thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let path = Net::ns_path(h);
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open namespace file; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}
