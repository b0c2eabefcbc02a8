//! A stand-in for systemd's notify socket (`NOTIFY_SOCKET`): what the
//! agent says to its service manager (READY=1, WATCHDOG=1, STATUS=…).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A stand-in for systemd's notify socket.
pub struct NotifySocket {
    sock: UnixDatagram,
    pub path: PathBuf,
}

impl NotifySocket {
    pub fn bind(path: PathBuf) -> NotifySocket {
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket { sock, path }
    }

    /// The next datagram, or `None` once `until` passes.
    pub fn recv(&self, until: Instant) -> Option<(Instant, String)> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    return Some((
                        Instant::now(),
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    ))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
    }

    /// Reads datagrams until one has the line `line`; returns it and what came before.
    pub fn wait_for_line(&self, line: &str, timeout: Duration) -> (String, Vec<String>) {
        let until = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            match self.recv(until) {
                Some((_, msg)) if msg.lines().any(|l| l == line) => return (msg, before),
                Some((_, msg)) => before.push(msg),
                None => {
                    panic!("no {line} on the notify socket within {timeout:?}; got: {before:?}")
                }
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
