//! systemd readiness: under `Type=notify` systemd considers the replica started (and
//! `systemctl start` returns) once it sends `READY=1` to the Unix datagram socket named by
//! `$NOTIFY_SOCKET`. The protocol is one datagram, so a few lines over std's `UnixDatagram`
//! replace a crate. Without `$NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Tells systemd the replica serves, with a one-line status for `systemctl status`. A failure
/// is logged, never fatal: the replica serves either way.
pub fn ready(status: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy().into_owned();
    let message = format!("READY=1\nSTATUS={}", status.replace('\n', " "));
    match send(&socket, &message) {
        Ok(()) => tracing::debug!(%socket, "told systemd the replica is ready"),
        Err(e) => tracing::warn!(%socket, error = %e, "cannot notify systemd (NOTIFY_SOCKET)"),
    }
}

/// Sends `message` as one datagram to `socket`: a path, or `@name` for an abstract socket.
pub fn send(socket: &str, message: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(message.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_datagram_reaches_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("epaxos-notify-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        send(path.to_str().expect("utf8"), "READY=1\nSTATUS=x").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
        let _ = std::fs::remove_dir_all(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("epaxos-notify-{}", rand::random::<u64>());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        send(&format!("@{name}"), "READY=1").expect("send abstract");
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
