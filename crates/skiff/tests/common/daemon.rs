//! A real `skiff serve` for the daemon tests, and small HTTP helpers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Skiff};

/// The daemon, stopped (SIGTERM, then SIGKILL) however the test ends.
pub struct Daemon {
    pub child: Child,
    pub gateway: u16,
    pub admin: u16,
}

impl Daemon {
    pub fn start(s: &Skiff) -> Daemon {
        Daemon::start_with(s, &[])
    }

    /// With more `skiff serve` flags, e.g. `--control ADDR`.
    pub fn start_with(s: &Skiff, extra: &[&str]) -> Daemon {
        let gateway = free_port();
        let admin = free_port();
        let (gateway_addr, admin_addr) =
            (format!("127.0.0.1:{gateway}"), format!("127.0.0.1:{admin}"));
        let mut args = vec!["serve", "--gateway", &gateway_addr, "--admin", &admin_addr];
        args.extend_from_slice(extra);
        let child = s
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn skiff serve");
        let sock = s.root.path().join("skiff.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(sock.exists() && TcpStream::connect(("127.0.0.1", gateway)).is_ok()) {
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            gateway,
            admin,
        }
    }

    /// SIGTERM; true if it exited within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Daemon {
    /// SIGKILL, as a crash would: nothing gets to clean up.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().expect("reap the daemon");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.terminate(Duration::from_secs(15)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `request` (raw bytes, `Connection: close`) to `port` on
/// 127.0.0.1; the status, the head as sent and the body. The server may
/// answer (413, 431) before it has read everything.
pub fn exchange(port: u16, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let wrote = s.write_all(request);
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    let mut buf = String::from_utf8_lossy(&buf).into_owned();
    if buf.is_empty() {
        // Nothing came back: say how, for the failure's message.
        buf = format!("\r\n\r\n(no response: write {wrote:?}, read {read:?})");
    }
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Status, head (lowercased) and body of a GET with a Host header.
pub fn get(port: u16, host: &str, path: &str) -> (u16, String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = exchange(port, req.as_bytes());
    (status, head.to_ascii_lowercase(), body)
}

/// `POST PATH` with a Host header, a JSON body and more headers.
pub fn post(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    exchange(port, &raw)
}

/// A header's value in a head (names compared without case).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

pub fn instances(s: &Skiff, name: &str) -> usize {
    let out = s.ok(&["describe", name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("describe --json is JSON");
    v["instances"].as_array().map_or(0, |a| a.len())
}
