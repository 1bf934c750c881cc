//! `skiff serve`: the daemon. It owns the in-memory routing table (service
//! → its traffic split: revisions with percents and tags) and each
//! revision's instances; the
//! state database owns services, revisions and traffic, so a restarted
//! daemon routes again what was deployed.
//!
//! - `api`: the control API (HTTP/1.1 JSON on `$SKIFF_ROOT/skiff.sock`,
//!   and with `--control ADDR` on TCP behind a bearer token: `auth`)
//! - `gateway`: routing, the activator wait, the reverse proxy
//! - `instances`: starting, leasing and stopping a revision's instances

mod api;
mod auth;
mod gateway;
pub mod instances;
mod lambda;
mod metrics;
mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use skiff_core::{ServiceName, TrafficTarget};

use crate::context::{require_root, Context};
use instances::Revision;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// How often idle instances are looked for.
const TICK: Duration = Duration::from_millis(250);
/// A client must send its request head within this (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head larger than this gets 431.
const MAX_HEADERS: usize = 64 * 1024;

pub struct Daemon {
    pub root: Arc<PathBuf>,
    pub gateway: SocketAddr,
    /// Lambda-mode instances by address, for the Runtime API.
    pub hub: Arc<lambda::Hub>,
    /// When not empty, the Lambda API checks SigV4 signatures with these.
    pub aws_credentials: lambda::sigv4::Credentials,
    /// What every request to the TCP control listener must bear (`--control`).
    control_token: Option<String>,
    /// Service name → its traffic split (largest share first).
    routes: Mutex<HashMap<String, Vec<Target>>>,
    /// New revisions starting their first instance before taking traffic.
    gating: Mutex<Vec<Arc<Revision>>>,
    /// Deploys and deletes one at a time, so the table follows the database's order.
    changes: tokio::sync::Mutex<()>,
    pub client: Client<HttpConnector, Body>,
    /// Requests answered without a service, by status code.
    unrouted: Mutex<BTreeMap<u16, u64>>,
    /// xorshift64 state for the weighted choice of a revision and request ids.
    rng: AtomicU64,
}

/// One slice of a service's traffic, with the revision's instance pool.
#[derive(Clone)]
pub struct Target {
    pub rev: Arc<Revision>,
    pub percent: u8,
    pub tag: Option<String>,
}

impl Daemon {
    fn split(&self, service: &str) -> Option<Vec<Target>> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
    }

    /// The revision for one request: weighted random over the split
    /// (xorshift64, seeded from the clock and pid; independent per request,
    /// so a 90/10 split is 90/10 on average, not in every window of ten).
    /// Shares of 0 are reachable only by their tag.
    fn pick(&self, service: &str) -> Option<Arc<Revision>> {
        let roll = (self.roll() % 100) as u32;
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let split = routes.get(service)?;
        let i = choose(split.iter().map(|t| t.percent), roll);
        split.get(i).map(|t| t.rev.clone())
    }

    /// xorshift64: fast, not for secrets. Concurrent requests may reuse a
    /// roll: harmless.
    fn roll(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    /// A new request id: 32 hex digits.
    fn request_id(&self) -> hyper::header::HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; 32];
        let n = (u128::from(self.roll()) << 64) | u128::from(self.roll());
        for (i, b) in id.iter_mut().enumerate() {
            *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
        }
        hyper::header::HeaderValue::from_bytes(&id).expect("hex is a valid header value")
    }

    fn unrouted(&self, code: u16) {
        *self
            .unrouted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// A function's revision for an invocation, and the version it is
    /// reported as: no qualifier or `$LATEST` → the traffic split (as
    /// `$LATEST`); a number → that revision; otherwise the revision tagged so.
    pub fn function_revision(
        &self,
        service: &str,
        qualifier: Option<&str>,
    ) -> Option<(Arc<Revision>, String)> {
        match qualifier {
            None | Some("$LATEST") => Some((self.pick(service)?, "$LATEST".to_string())),
            Some(q) => {
                let split = self.split(service)?;
                let number: Option<u32> = q.parse().ok();
                let t = split.iter().find(|t| match number {
                    Some(n) => t.rev.name.number() == n,
                    None => t.tag.as_deref() == Some(q),
                })?;
                Some((t.rev.clone(), t.rev.name.number().to_string()))
            }
        }
    }

    /// `TAG-NAME`: the revision tagged `TAG` in service `NAME`.
    fn pick_tagged(&self, host_label: &str) -> Option<Arc<Revision>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        host_label
            .match_indices('-')
            .filter_map(|(i, _)| {
                let (tag, service) = (&host_label[..i], &host_label[i + 1..]);
                routes
                    .get(service)?
                    .iter()
                    .find(|t| t.tag.as_deref() == Some(tag))
            })
            .map(|t| t.rev.clone())
            .next()
    }

    /// Replaces the service's split (none: takes it out); returns the
    /// revisions that left it, for the caller to retire.
    fn set_split(&self, service: &str, split: Option<Vec<Target>>) -> Vec<Arc<Revision>> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let old = match split {
            Some(new) => routes.insert(service.to_string(), new),
            None => routes.remove(service),
        }
        .unwrap_or_default();
        let kept = routes.get(service).cloned().unwrap_or_default();
        old.into_iter()
            .map(|t| t.rev)
            .filter(|r| !kept.iter().any(|k| Arc::ptr_eq(&k.rev, r)))
            .collect()
    }

    /// The split as targets, reusing the pools of revisions already routed
    /// (or `extra`); specs of new ones come from `specs`.
    fn targets(
        &self,
        service: &str,
        traffic: &[TrafficTarget],
        specs: Vec<skiff_state::RevisionRecord>,
        extra: Option<&Arc<Revision>>,
    ) -> Vec<Target> {
        let current = self.split(service).unwrap_or_default();
        traffic
            .iter()
            .filter_map(|t| {
                let rev = current
                    .iter()
                    .map(|c| &c.rev)
                    .chain(extra)
                    .find(|r| r.name == t.revision)
                    .cloned()
                    .or_else(|| {
                        let rec = specs.iter().find(|r| r.name == t.revision)?;
                        Some(Revision::new(
                            rec.name.clone(),
                            rec.spec.clone(),
                            self.root.clone(),
                            self.hub.clone(),
                        ))
                    })?;
                Some(Target {
                    rev,
                    percent: t.percent,
                    tag: t.tag.clone(),
                })
            })
            .collect()
    }

    /// Adds (or, `on` false, removes) a revision waiting for readiness.
    fn gate(&self, rev: &Arc<Revision>, on: bool) {
        let mut gating = self.gating.lock().unwrap_or_else(|e| e.into_inner());
        gating.retain(|r| !Arc::ptr_eq(r, rev));
        if on {
            gating.push(rev.clone());
        }
    }

    /// Every revision with instances to look after: routed or gating.
    fn revisions(&self) -> Vec<Arc<Revision>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let gating = self.gating.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Arc<Revision>> = gating.clone();
        all.extend(routes.values().flatten().map(|t| t.rev.clone()));
        all
    }
}

pub fn socket_path(ctx: &Context) -> PathBuf {
    ctx.root.join("skiff.sock")
}

/// What `skiff serve` was told.
pub struct ServeOptions {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    /// The control API on TCP too (with a bearer token).
    pub control: Option<SocketAddr>,
    /// An AWS shared-credentials file: the Lambda API then takes only
    /// requests signed (SigV4) with one of its keys.
    pub aws_credentials: Option<PathBuf>,
    /// Async worker threads (default: [`default_workers`]).
    pub workers: Option<usize>,
}

/// Async worker threads unless `--workers` says otherwise: one per CPU but
/// one, and at least one. Each worker is a thread the gateway's requests
/// hop between; on 2 CPUs one worker gives the gateway a p99 of 1.2-1.3 ms
/// under bench/serving's wrk load where two give 2.8-3.8 ms, at the same or
/// better throughput. Nothing on the async path blocks for long: SQLite,
/// crun, mounts, netlink and large Lambda payloads all go to blocking
/// threads, and each instance's monitor is a thread of its own.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

pub fn serve(ctx: &Context, opts: ServeOptions) -> Result<u8> {
    require_root("skiff serve")?;
    // Creates the data directory and the database before anything listens.
    ctx.state()?;
    // One worker: the single-threaded scheduler, which does the same work
    // without the work-stealing one's cross-thread bookkeeping.
    let runtime = match opts.workers.unwrap_or_else(default_workers) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(ctx, opts));
    // Every instance has been stopped; nothing left worth waiting for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(ctx: &Context, opts: ServeOptions) -> Result<u8> {
    let (gateway_addr, admin_addr, control_addr) = (opts.gateway, opts.admin, opts.control);
    let aws_credentials = match &opts.aws_credentials {
        Some(p) => lambda::sigv4::Credentials::load(p).context("--aws-credentials")?,
        None => lambda::sigv4::Credentials::default(),
    };
    let sock = socket_path(ctx);
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        bail!(
            "another skiff daemon is serving {} (it answers on {})",
            ctx.root.display(),
            sock.display()
        );
    }
    match std::fs::remove_file(&sock) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e)
                .with_context(|| format!("cannot remove the stale socket {}", sock.display()))
        }
        _ => {}
    }
    let token = control_addr
        .map(|_| auth::load(&ctx.root))
        .transpose()
        .context("cannot set up the control token (--control)")?;
    // No daemon serves this root: instances still recorded were left by
    // one that was killed, and still hold addresses, mounts and leases.
    let root = ctx.root.clone();
    let cleaned = tokio::task::spawn_blocking(move || instances::clean_stale(&Context::new(root)))
        .await
        .context("cleaning up stale instances panicked")?
        .context("cannot clean up the instances of a previous daemon")?;
    if cleaned > 0 {
        eprintln!("skiff: removed {cleaned} instance(s) left by a previous daemon");
    }
    let gateway = tokio::net::TcpListener::bind(gateway_addr)
        .await
        .with_context(|| format!("cannot listen on {gateway_addr} (--gateway)"))?;
    let admin = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot listen on {admin_addr} (--admin)"))?;
    let control_tcp = match control_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (--control)"))?,
        ),
        None => None,
    };
    let control = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", sock.display()))?;
    }

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .build(connector);
    // The Runtime API for Lambda-mode instances, on the bridge (where
    // containers reach the host), on a port of its own per daemon.
    skiff_runtime::network::ensure_bridge_up()
        .context("cannot set up the skiff0 bridge for the Lambda Runtime API")?;
    let runtime_api = tokio::net::TcpListener::bind((skiff_runtime::network::GATEWAY, 0))
        .await
        .context("cannot listen for the Lambda Runtime API on the bridge")?;
    let hub = Arc::new(lambda::Hub::new(
        runtime_api.local_addr()?,
        std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_string()),
    ));
    let daemon = Arc::new(Daemon {
        root: Arc::new(ctx.root.clone()),
        hub: hub.clone(),
        aws_credentials,
        gateway: gateway.local_addr()?,
        control_token: token.as_ref().map(|(t, _)| t.clone()),
        routes: Mutex::new(HashMap::new()),
        gating: Mutex::new(Vec::new()),
        changes: tokio::sync::Mutex::new(()),
        client,
        unrouted: Mutex::new(BTreeMap::new()),
        rng: AtomicU64::new(seed()),
    });
    load_routes(&daemon).await?;

    let mut tasks = vec![
        tokio::spawn(accept_tcp(gateway, daemon.clone(), gateway::handle)),
        tokio::spawn(accept_tcp(admin, daemon.clone(), admin_handle)),
        tokio::spawn(accept_unix(control, daemon.clone())),
        tokio::spawn(autoscale(daemon.clone())),
        tokio::spawn(lambda::runtime_api::serve(runtime_api, hub)),
    ];
    let mut tcp = String::new();
    if let (Some(l), Some((_, from))) = (control_tcp, &token) {
        tcp = format!(" and http://{} (bearer token {from})", l.local_addr()?);
        tasks.push(tokio::spawn(accept_tcp(l, daemon.clone(), control_handle)));
    }
    eprintln!(
        "skiff: serving {} — gateway http://{}/ , admin http://{}/metrics , control {}{tcp}",
        ctx.root.display(),
        daemon.gateway,
        admin_addr,
        sock.display()
    );

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down: stopping every instance");
    for t in &tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&sock);
    let stops: Vec<_> = daemon
        .revisions()
        .into_iter()
        .map(|r| tokio::spawn(async move { r.retire().await }))
        .collect();
    for s in stops {
        let _ = s.await;
    }
    Ok(0)
}

/// The traffic split of every service in the database.
async fn load_routes(daemon: &Arc<Daemon>) -> Result<()> {
    let root = daemon.root.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<_>> {
        let ctx = Context::new(root.to_path_buf());
        let state = ctx.state()?;
        let mut found = Vec::new();
        for svc in state.list_services()? {
            let traffic = state.traffic(&svc.name)?;
            let revisions = state.list_revisions(&svc.name)?;
            if !traffic.is_empty() {
                found.push((svc.name, traffic, revisions));
            }
        }
        Ok(found)
    })
    .await??;
    for (name, traffic, revisions) in found {
        let split = daemon.targets(name.as_str(), &traffic, revisions, None);
        daemon.set_split(name.as_str(), Some(split));
    }
    Ok(())
}

/// The index whose share holds `roll` (0..100) when the shares are laid
/// end to end; shares summing short of 100 leave the rest to the first.
fn choose(percents: impl Iterator<Item = u8>, mut roll: u32) -> usize {
    for (i, p) in percents.enumerate() {
        if roll < u32::from(p) {
            return i;
        }
        roll -= u32::from(p);
    }
    0
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Every tick, each revision's autoscaler sizes its instances (scale up
/// under load, down and to zero after the idle timeout, never below `min`).
async fn autoscale(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for rev in daemon.revisions() {
            rev.autoscale();
        }
    }
}

/// A client connection: its address, and that address as an
/// `X-Forwarded-For` value, written once per connection rather than for
/// every request on it.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub forwarded_for: hyper::header::HeaderValue,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            forwarded_for: hyper::header::HeaderValue::from_str(&addr.ip().to_string())
                .expect("an address is a valid header value"),
        }
    }
}

/// Serves HTTP/1.1 and h2c on `listener` with `handler`. (Generic, not a
/// boxed future per request: hyper keeps one slot per connection for it.)
async fn accept_tcp<F, Fut>(listener: tokio::net::TcpListener, daemon: Arc<Daemon>, handler: F)
where
    F: Fn(Arc<Daemon>, Peer, Request<Incoming>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let d = daemon.clone();
        tokio::spawn(async move {
            let peer = Peer::new(addr);
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(d.clone(), peer.clone(), req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            // HTTP/1.1, or h2c (HTTP/2 with prior knowledge, as gRPC
            // clients and `curl --http2-prior-knowledge` speak it).
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Small responses (most) go out as one flat write rather than
            // an iovec of head and body: +2-3% req/s under wrk here; a large
            // body is copied once more, which its bandwidth does not notice.
            builder
                .http1()
                .writev(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADERS);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEADERS as u32)
                .max_concurrent_streams(256);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(peer = %addr, "connection: {e}");
            }
        });
    }
}

async fn accept_unix(listener: tokio::net::UnixListener, daemon: Arc<Daemon>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let d = daemon.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let d = d.clone();
                async move { Ok::<_, Infallible>(api::handle(d, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

/// The control API over TCP: only with the bearer token, checked before
/// anything else (the unix socket is root's alone and needs none).
async fn control_handle(
    daemon: Arc<Daemon>,
    _peer: Peer,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(token) = daemon.control_token.as_deref() else {
        return json_error(StatusCode::UNAUTHORIZED, "no control token is set");
    };
    if let Some(refused) = auth::refused(&req, token) {
        return refused;
    }
    api::handle(daemon, req).await
}

/// `/metrics` (Prometheus text) and `/healthz`.
async fn admin_handle(daemon: Arc<Daemon>, _peer: Peer, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        "/metrics" => {
            let revs = daemon.revisions();
            let unrouted = daemon
                .unrouted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let out = render_metrics(&revs, &unrouted);
            text(StatusCode::OK, out)
        }
        _ => json_error(StatusCode::NOT_FOUND, "not found: try /metrics"),
    }
}

/// Each revision's pool is counted at the moment of the scrape.
fn render_metrics(revs: &[Arc<Revision>], unrouted: &BTreeMap<u16, u64>) -> String {
    let views: Vec<_> = revs.iter().map(|r| r.view()).collect();
    metrics::render(&views, unrouted)
}

/// A header's value, if it is text.
pub(crate) fn header_str<'a>(h: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Sets a header; a value that cannot be one (a control character from a
/// client or a function) is left out rather than failing the response.
pub(crate) fn set_header(
    h: &mut hyper::HeaderMap,
    name: impl hyper::header::IntoHeaderName,
    value: &str,
) {
    if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Why a body could not be read whole.
pub(crate) enum ReadError {
    /// More than the limit came.
    TooLarge,
    /// The client went away, or sent garbage.
    Broken(String),
}

/// The whole body, at most `limit` bytes.
pub(crate) async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Broken(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(buf))
}

/// A received body as ours (one error type for every body we pass on).
pub(crate) fn incoming(body: Incoming) -> Body {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// An empty body (boxed without an allocation: the body is zero-sized).
pub(crate) fn empty() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn json_error(status: StatusCode, why: impl std::fmt::Display) -> Response<Body> {
    json(status, &serde_json::json!({ "error": why.to_string() }))
}

/// The whole split to the one new revision.
fn all_traffic_to(rev: &skiff_core::RevisionName) -> Vec<TrafficTarget> {
    vec![TrafficTarget {
        revision: rev.clone(),
        percent: 100,
        tag: None,
    }]
}

pub(crate) fn service_name(s: &str) -> Option<ServiceName> {
    ServiceName::new(s).ok()
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn weighted_choice() {
        let picks: Vec<usize> = (0..100)
            .map(|r| choose([90, 0, 10].into_iter(), r))
            .collect();
        assert_eq!(picks.iter().filter(|i| **i == 0).count(), 90);
        assert_eq!(picks.iter().filter(|i| **i == 2).count(), 10);
        assert!(!picks.contains(&1), "a 0% share is never picked");
        assert_eq!(choose([100].into_iter(), 99), 0);
        assert_eq!(choose(std::iter::empty(), 5), 0);
    }
}
