//! Lambda mode: instances that speak the AWS Lambda Runtime API instead of
//! listening on `$PORT`. Each instance runs one invocation at a time (a
//! lease with concurrency 1); the caller's invocation is handed to the
//! instance's runtime client through its [`Slot`] when the client polls
//! `GET /runtime/invocation/next`, and the caller waits for what the
//! client posts back.
//!
//! - `runtime_api`: the Runtime API the containers call, on the bridge
//!   address (an instance is known by its source address, so one
//!   instance can never take or answer another's invocations)
//! - `invoke`: the Invoke API on the gateway, and `skiff invoke`'s path
//! - `manage`: create/get/list/update/delete-function for the `aws` CLI
//! - `sigv4`: signature checks on those, when the daemon has credentials
//! - `url`: plain HTTP to a function (the function URL event and response)

pub mod invoke;
pub mod manage;
pub mod runtime_api;
pub mod sigv4;
pub mod stream;
pub mod url;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::sync::{oneshot, watch, Notify};

/// Lambda's limit on a synchronous request or response payload.
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;
/// Lambda's limit on an asynchronous (Event) payload.
pub const MAX_EVENT_PAYLOAD: usize = 256 * 1024;
/// The account id in the ARNs Skiff hands out (as the AWS emulators use).
pub const ACCOUNT: &str = "000000000000";
/// Lambda's default memory size.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// How long an instance's init (up to its first poll) may take, as Lambda allows.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the caller gets back.
#[derive(Debug)]
pub enum Reply {
    /// `POST /runtime/invocation/{id}/response`.
    Response(Bytes),
    /// `POST /runtime/invocation/{id}/error`, or the platform's own error
    /// (timeout, the runtime exiting): an AWS error payload.
    Error { kind: String, body: Bytes },
    /// A response in streaming mode, still coming.
    Stream(stream::Streamed),
}

/// One invocation on its way to a runtime client.
pub struct Invocation {
    pub id: String,
    pub payload: Bytes,
    pub deadline_ms: u64,
    pub function_arn: String,
    pub trace_id: String,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
    pub reply: oneshot::Sender<Reply>,
}

/// Where an instance's runtime client is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet polled.
    Init,
    /// Polled at least once: ready for invocations.
    Ready,
    /// Posted `/runtime/init/error`, with what it said.
    InitFailed(String),
}

/// One instance's side of the Runtime API.
pub struct Slot {
    pub instance: String,
    state: Mutex<SlotState>,
    /// Wakes the runtime client's poll when an invocation arrives or the
    /// slot closes.
    arrived: Notify,
    pub phase: watch::Sender<Phase>,
}

#[derive(Default)]
struct SlotState {
    /// Sent, not yet taken by a poll (one at most: the lease sees to it).
    pending: Option<Invocation>,
    /// The invocation handed out and not yet answered.
    current: Option<(String, oneshot::Sender<Reply>)>,
    /// The instance is gone: nothing more is sent or taken.
    closed: bool,
}

/// Why the runtime's post was refused (the Runtime API's 400/403).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No invocation with that id is outstanding here.
    UnknownId,
}

impl Slot {
    pub fn new(instance: String) -> Arc<Slot> {
        Arc::new(Slot {
            instance,
            state: Mutex::new(SlotState::default()),
            arrived: Notify::new(),
            phase: watch::channel(Phase::Init).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands an invocation to the instance (the caller holds its lease);
    /// false if the instance is gone (the invocation is dropped).
    pub fn send(&self, inv: Invocation) -> bool {
        {
            let mut st = self.lock();
            if st.closed || st.pending.is_some() {
                return false;
            }
            st.pending = Some(inv);
        }
        self.arrived.notify_one();
        true
    }

    /// The runtime client's long poll: the next invocation, which becomes
    /// the current one (its reply goes back when the client posts a result
    /// for its id). `None` once the slot is closed.
    pub async fn next(&self) -> Option<Invocation> {
        self.phase.send_if_modified(|p| {
            let first = *p == Phase::Init;
            if first {
                *p = Phase::Ready;
            }
            first
        });
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                if let Some(inv) = st.pending.take() {
                    return Some(inv);
                }
            }
            arrived.await;
        }
    }

    /// Records the invocation handed out; its reply goes back when the
    /// client posts a result for its id.
    pub fn hand_out(&self, id: String, reply: oneshot::Sender<Reply>) {
        self.lock().current = Some((id, reply));
    }

    /// The client's result for `id`.
    pub fn answer(&self, id: &str, reply: Reply) -> Result<(), Refused> {
        let mut st = self.lock();
        match st.current.take() {
            Some((have, tx)) if have == id => {
                // The caller may have given up (timeout): nothing to do.
                let _ = tx.send(reply);
                Ok(())
            }
            other => {
                st.current = other;
                Err(Refused::UnknownId)
            }
        }
    }

    pub fn init_failed(&self, why: String) {
        self.phase.send_replace(Phase::InitFailed(why));
    }

    /// The instance is gone: every caller waiting on it hears so (their
    /// reply senders drop).
    pub fn close(&self) {
        let (pending, current) = {
            let mut st = self.lock();
            st.closed = true;
            (st.pending.take(), st.current.take())
        };
        // Dropped outside the lock: their callers wake to an error.
        drop((pending, current));
        self.arrived.notify_waiters();
    }
}

/// The daemon's registry of lambda instances by address, for the Runtime
/// API to find whose poll or post a request is.
pub struct Hub {
    slots: Mutex<HashMap<Ipv4Addr, Arc<Slot>>>,
    registered: Notify,
    /// Where containers reach the Runtime API (`AWS_LAMBDA_RUNTIME_API`).
    pub api: SocketAddr,
    pub region: String,
}

impl Hub {
    pub fn new(api: SocketAddr, region: String) -> Hub {
        Hub {
            slots: Mutex::new(HashMap::new()),
            registered: Notify::new(),
            api,
            region,
        }
    }

    pub fn register(&self, ip: Ipv4Addr, slot: Arc<Slot>) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip, slot);
        self.registered.notify_waiters();
    }

    /// Forgets the instance at `ip`, if `slot` is still the one there: an
    /// address freed by an exited instance may already serve a new one.
    pub fn unregister(&self, ip: Ipv4Addr, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.get(&ip).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&ip);
        }
    }

    /// The slot of the instance at `ip`. A runtime client may poll before
    /// its start is registered (the container runs as soon as it is
    /// created): wait for it a little.
    pub async fn find(&self, ip: Ipv4Addr) -> Option<Arc<Slot>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let registered = self.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            if let Some(s) = self
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ip)
            {
                return Some(s.clone());
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return None;
            }
        }
    }

    pub fn function_arn(&self, name: &str) -> String {
        format!("arn:aws:lambda:{}:{ACCOUNT}:function:{name}", self.region)
    }
}

/// The standard Lambda environment for an instance of `function`.
pub fn environment(
    hub: &Hub,
    function: &str,
    version: &str,
    instance: &str,
    handler: Option<&str>,
    memory_mb: u64,
) -> Vec<String> {
    let date = chrono_date();
    let mut env = vec![
        format!("AWS_LAMBDA_RUNTIME_API={}", hub.api),
        format!("AWS_LAMBDA_FUNCTION_NAME={function}"),
        format!("AWS_LAMBDA_FUNCTION_VERSION={version}"),
        format!("AWS_LAMBDA_FUNCTION_MEMORY_SIZE={memory_mb}"),
        format!("AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/{function}"),
        format!("AWS_LAMBDA_LOG_STREAM_NAME={date}/[{version}]{instance}"),
        "AWS_LAMBDA_INITIALIZATION_TYPE=on-demand".to_string(),
        format!("AWS_REGION={}", hub.region),
        format!("AWS_DEFAULT_REGION={}", hub.region),
        "LAMBDA_TASK_ROOT=/var/task".to_string(),
        "LAMBDA_RUNTIME_DIR=/var/runtime".to_string(),
        "TZ=:UTC".to_string(),
    ];
    if let Some(h) = handler {
        env.push(format!("_HANDLER={h}"));
    }
    env
}

/// Today as `YYYY/MM/DD` (UTC), for log stream names.
fn chrono_date() -> String {
    let days = skiff_state::now_ms() / 86_400_000;
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}/{m:02}/{d:02}")
}

pub use skiff_core::time::civil_from_days;

/// A random v4 UUID, as Lambda's request ids are.
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    if getrandom(&mut b).is_err() {
        // Unique enough without the kernel's randomness: time and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&skiff_state::now_ms().to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// An X-Ray trace header for an invocation that came without one.
pub fn trace_id() -> String {
    let mut b = [0u8; 20];
    let _ = getrandom(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let secs = skiff_state::now_ms() / 1000;
    format!(
        "Root=1-{secs:08x}-{};Parent={};Sampled=0",
        &h[..24],
        &h[24..40]
    )
}

/// `%XX` escapes decoded (and `+` as a space in a query string).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) if plus_is_space => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kernel's randomness, without opening a file (this runs on the
/// async threads, once per invocation).
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: getrandom(2) writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_ids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, request_id());
        assert!(trace_id().starts_with("Root=1-"));
        assert_eq!(percent_decode("hello%3A3", false), "hello:3");
        assert_eq!(percent_decode("%24LATEST", false), "$LATEST");
        assert_eq!(percent_decode("a+b%21%", true), "a b!%");
        assert_eq!(percent_decode("a+b", false), "a+b");
    }

    #[tokio::test]
    async fn a_slot_hands_out_and_takes_answers_for_its_own_id_only() {
        let slot = Slot::new("f-00001-abcde".into());
        let (tx, rx) = oneshot::channel();
        let inv = Invocation {
            id: "id-1".into(),
            payload: Bytes::from_static(b"{}"),
            deadline_ms: 0,
            function_arn: String::new(),
            trace_id: String::new(),
            client_context: None,
            cognito_identity: None,
            reply: tx,
        };
        assert!(slot.send(inv));
        let got = slot.next().await.unwrap();
        assert_eq!(*slot.phase.borrow(), Phase::Ready);
        slot.hand_out(got.id.clone(), got.reply);
        assert_eq!(
            slot.answer("other", Reply::Response(Bytes::new())),
            Err(Refused::UnknownId)
        );
        slot.answer("id-1", Reply::Response(Bytes::from_static(b"42")))
            .unwrap();
        match rx.await.unwrap() {
            Reply::Response(b) => assert_eq!(&b[..], b"42"),
            other => panic!("{other:?}"),
        }
        // Answered: a second answer is refused.
        assert!(slot.answer("id-1", Reply::Response(Bytes::new())).is_err());
        // Closed: waiting callers hear it.
        let (tx, rx) = oneshot::channel::<Reply>();
        slot.hand_out("id-2".into(), tx);
        slot.close();
        assert!(rx.await.is_err());
    }
}
