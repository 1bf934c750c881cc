//! Instances of a revision: starting one (a container record, a bundle,
//! a monitor thread running `crun run`, a readiness probe: TCP connect,
//! or an HTTP GET of the spec's readiness path), handing
//! out leases on ready ones, and stopping them (SIGTERM, grace, SIGKILL).
//!
//! Each instance is an ordinary container (`skiff ps` lists it, named
//! `REVISION-<5 hex>`) watched by a monitor thread of the daemon (see
//! [`crate::monitor`]), which records the exit and releases the rootfs,
//! network and cgroup, and (the record being auto-remove) drops the record
//! and the directory. Its output goes to `logs/<service>/<instance>.log`,
//! which outlives it (`skiff logs SERVICE`). The monitor says at once when
//! the container exits, so a crash takes the instance out of rotation.
//!
//! Instance records are marked with the owner `serve`. A daemon that was
//! killed leaves its containers running without a monitor; the next daemon
//! on the root removes them before it serves (`clean_stale`).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;
use skiff_control::autoscaler::{Autoscaler, Clock as _, ScalePolicy, SystemClock};
use skiff_core::{Mode, RevisionName, RevisionStatus, ServiceSpec};
use skiff_runtime::oci::OciRuntime;
use skiff_state::{ContainerRecord, OWNER_SERVE};
use tokio::sync::{oneshot, watch};

use super::lambda::{self, Hub, Slot};
use super::metrics::{self, RevisionMetrics};
use crate::container::{new_id, prepare, process_alive, release, BundleOptions};
use crate::context::Context;

/// SIGTERM, then this long before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
const LAMBDA_GRACE: Duration = Duration::from_secs(1);
/// Instance starts under way at once per revision, at most (a burst from
/// zero asks for dozens; started together on two cores, the first is
/// ready only when all are).
const PARALLEL_STARTS: usize = 4;
/// How often readiness is probed (a refused connect costs microseconds;
/// every millisecond of a cold start counts).
const PROBE_EVERY: Duration = Duration::from_millis(1);
const RUNTIME: &str = "crun";
/// A standby instance (see [`Revision::replenish`]) is dropped once its
/// revision has had no request for this long.
const STANDBY_IDLE: Duration = Duration::from_secs(600);
/// How long after a start its revision's next standby is prepared.
const STANDBY_DELAY: Duration = Duration::from_millis(50);

pub struct Instance {
    pub id: String,
    pub name: String,
    pub addr: SocketAddr,
    /// The gateway's connections to it.
    pub upstream: super::upstream::Upstream,
    inflight: AtomicUsize,
    /// Becomes true once the monitor (and so the container) has exited.
    exited: watch::Receiver<bool>,
    /// Lambda mode: the instance's side of the Runtime API.
    pub lambda: Option<Arc<Slot>>,
}

#[derive(Serialize)]
pub struct InstanceInfo {
    pub name: String,
    pub id: String,
    pub revision: String,
    pub address: String,
    pub state: &'static str,
    pub in_flight: usize,
}

/// Why a request could not get an instance.
pub enum Unavailable {
    /// The revision no longer takes traffic (deleted or replaced).
    Retired,
    StartFailed(String),
    Timeout(Duration),
    /// This many requests already wait: the activator's queue is full.
    QueueFull(usize),
}

/// How many requests may wait for one revision's instances: ten times
/// what all of its instances at `max` take at once (Knative's activator
/// sizes its queue the same way), within 100 and 10 000.
fn queue_limit(spec: &ServiceSpec) -> usize {
    if spec.concurrency == 0 || spec.max == 0 {
        return 10_000;
    }
    (10 * spec.concurrency as usize * spec.max as usize).clamp(100, 10_000)
}

/// One revision's instances and the requests waiting for them.
pub struct Revision {
    pub name: RevisionName,
    /// The name as the `X-Skiff-Revision` response header.
    pub header: hyper::header::HeaderValue,
    pub spec: ServiceSpec,
    root: Arc<PathBuf>,
    hub: Arc<Hub>,
    pool: Mutex<Pool>,
    /// The database says `ready` (once an instance first passed readiness).
    recorded_ready: AtomicBool,
    /// The KPA autoscaler, fed and consulted by the daemon's tick only
    /// (never on the request path); `None` if the spec made no valid policy.
    scaler: Mutex<Option<Autoscaler>>,
    clock: SystemClock,
    /// An instance prepared for the next start (HTTP mode): record,
    /// rootfs, network namespace and config made, only `crun run` left.
    /// `pool` may be locked inside it, never the other way round.
    standby: Mutex<Standby>,
    /// The last decision, for `/metrics`.
    pub desired: AtomicU32,
    pub panicking: AtomicBool,
    pub metrics: RevisionMetrics,
}

#[derive(Default)]
struct Standby {
    bundle: Option<Bundle>,
    /// One is being prepared.
    preparing: bool,
}

struct Pool {
    ready: Vec<Arc<Instance>>,
    /// Out of rotation, on their way down.
    stopping: Vec<Arc<Instance>>,
    starting: usize,
    /// Failed starts so far (after one, only a working instance scales out).
    failures: u64,
    in_flight: usize,
    /// Highest `in_flight` since the last tick (so requests that start and
    /// end between two ticks still count as activity).
    peak: usize,
    /// Requests waiting for an instance, first come first served (the
    /// activator's queue): a freed slot or a new instance goes to the
    /// front one. A sender whose request gave up is closed and skipped.
    queue: VecDeque<oneshot::Sender<Result<Arc<Instance>, Unavailable>>>,
    last_request: Instant,
    retired: bool,
}

/// A request's hold on an instance; dropping it frees the slot.
pub struct Lease {
    rev: Arc<Revision>,
    pub instance: Arc<Instance>,
    /// Set when the request waited for an instance to start.
    pub cold: Option<Duration>,
}

impl Lease {
    pub fn rev(&self) -> &Arc<Revision> {
        &self.rev
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut pool = self.rev.lock();
        self.instance.inflight.fetch_sub(1, Ordering::SeqCst);
        pool.in_flight -= 1;
        pool.last_request = Instant::now();
        // The freed slot goes to the longest-waiting request.
        self.rev.dispatch(&mut pool);
    }
}

impl Revision {
    pub fn new(
        name: RevisionName,
        spec: ServiceSpec,
        root: Arc<PathBuf>,
        hub: Arc<Hub>,
    ) -> Arc<Revision> {
        let rev = Arc::new(Revision {
            // Revision names are DNS labels: always a valid header value.
            header: hyper::header::HeaderValue::from_str(&name.to_string())
                .expect("a revision name is a valid header value"),
            name,
            spec,
            root,
            hub,
            pool: Mutex::new(Pool {
                ready: Vec::new(),
                stopping: Vec::new(),
                starting: 0,
                failures: 0,
                in_flight: 0,
                peak: 0,
                queue: VecDeque::new(),
                last_request: Instant::now(),
                retired: false,
            }),
            recorded_ready: AtomicBool::new(false),
            standby: Mutex::default(),
            scaler: Mutex::new(None),
            clock: SystemClock::new(),
            desired: AtomicU32::new(0),
            panicking: AtomicBool::new(false),
            metrics: RevisionMetrics::default(),
        });
        let policy = ScalePolicy {
            min_scale: rev.spec.min,
            max_scale: rev.spec.max,
            idle_timeout: rev.spec.idle_timeout,
            ..ScalePolicy::with_concurrency(rev.spec.concurrency, None)
        };
        match Autoscaler::new(policy, rev.clock.now()) {
            Ok(a) => *rev.scaler.lock().unwrap_or_else(|e| e.into_inner()) = Some(a),
            Err(e) => {
                tracing::warn!(revision = %rev.name, "no autoscaler ({e}); idle timeout and min only")
            }
        }
        rev
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        // A panic while holding the lock leaves plain counters behind: keep going.
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A lease on the ready instance with the fewest requests in flight and
    /// room for one more. Without one (or with requests already waiting:
    /// first come, first served), the request joins the queue, starting
    /// an instance if there is none (the fast path of a cold start; the
    /// autoscaler's tick adds the rest), and waits at most the service
    /// timeout for a slot handed to it.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, Unavailable> {
        let (mut rx, cold, began) = {
            let mut pool = self.lock();
            if pool.retired {
                return Err(Unavailable::Retired);
            }
            if pool.queue.is_empty() {
                if let Some(instance) = self.free(&pool) {
                    self.take_slot(&mut pool, &instance);
                    return Ok(Lease {
                        rev: self.clone(),
                        instance,
                        cold: None,
                    });
                }
            }
            pool.queue.retain(|w| !w.is_closed());
            let limit = queue_limit(&self.spec);
            if pool.queue.len() >= limit {
                return Err(Unavailable::QueueFull(limit));
            }
            // Zero to one is the activator's; one to more the autoscaler's
            // (it counts the waiting requests): starting one here whenever
            // the instances are busy would start and stop them every tick.
            if pool.starting == 0 && pool.ready.is_empty() {
                pool.starting += 1;
                tokio::spawn(start(self.clone()));
            }
            let (tx, rx) = oneshot::channel();
            pool.queue.push_back(tx);
            // Waiting for a start is a cold start; waiting for a busy
            // instance to free a slot is queueing. (The wait's clock is
            // read only here, off the path of a request that finds a slot.)
            (rx, pool.starting > 0, tokio::time::Instant::now())
        };
        let deadline = began + self.wait_limit();
        let handed = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(handed)) => handed,
            // The queue was dropped with the revision.
            Ok(Err(_)) => Err(Unavailable::Retired),
            Err(_) => {
                // A slot may have been handed over just as time ran out:
                // take it rather than lose it.
                rx.close();
                match rx.try_recv() {
                    Ok(handed) => handed,
                    Err(_) => Err(Unavailable::Timeout(self.wait_limit())),
                }
            }
        };
        handed.map(|instance| Lease {
            rev: self.clone(),
            instance,
            cold: cold.then(|| began.elapsed()),
        })
    }

    /// The ready instance with the fewest requests in flight and room for
    /// one more.
    fn free(&self, pool: &Pool) -> Option<Arc<Instance>> {
        let cap = self.spec.concurrency as usize;
        pool.ready
            .iter()
            .filter(|i| cap == 0 || i.inflight.load(Ordering::SeqCst) < cap)
            .min_by_key(|i| i.inflight.load(Ordering::SeqCst))
            .cloned()
    }

    fn take_slot(&self, pool: &mut Pool, instance: &Instance) {
        instance.inflight.fetch_add(1, Ordering::SeqCst);
        pool.in_flight += 1;
        pool.peak = pool.peak.max(pool.in_flight);
        pool.last_request = Instant::now();
    }

    /// Hands free slots to waiting requests, oldest first; when requests
    /// still wait with no instance at all and none starting, starts one.
    fn dispatch(self: &Arc<Self>, pool: &mut Pool) {
        while let Some(front) = pool.queue.front() {
            if front.is_closed() {
                pool.queue.pop_front();
                continue;
            }
            let Some(instance) = self.free(pool) else {
                break;
            };
            let waiter = pool.queue.pop_front().expect("the queue has a front");
            self.take_slot(pool, &instance);
            if let Err(Ok(back)) = waiter.send(Ok(instance)) {
                // It gave up meanwhile: the slot is free again.
                back.inflight.fetch_sub(1, Ordering::SeqCst);
                pool.in_flight -= 1;
            }
        }
        if !pool.retired && !pool.queue.is_empty() && pool.starting == 0 && pool.ready.is_empty() {
            pool.starting += 1;
            tokio::spawn(start(self.clone()));
        }
    }

    /// Requests waiting for an instance now.
    fn waiting(pool: &Pool) -> usize {
        pool.queue.iter().filter(|w| !w.is_closed()).count()
    }

    /// How long a request may wait for an instance, and a start may take:
    /// the service timeout; for a Lambda function at least Lambda's init
    /// limit (its timeout bounds the invocation, not the init).
    fn wait_limit(&self) -> Duration {
        match self.spec.mode {
            // A little past the init limit, so that an init that fails by
            // it is what the waiting invocation hears.
            Mode::Lambda => self
                .spec
                .timeout
                .max(lambda::INIT_TIMEOUT + Duration::from_secs(2)),
            Mode::Http => self.spec.timeout,
        }
    }

    /// Kills an instance at once (a Lambda invocation ran past its
    /// timeout): out of rotation, SIGKILL, no drain.
    pub fn kill(self: &Arc<Self>, inst: &Arc<Instance>) {
        {
            let mut pool = self.lock();
            pool.ready.retain(|i| !Arc::ptr_eq(i, inst));
            if !pool.stopping.iter().any(|i| Arc::ptr_eq(i, inst)) {
                pool.stopping.push(inst.clone());
            }
        }
        let (root, id) = (self.root.clone(), inst.id.clone());
        tokio::spawn(async move { signal(&root, &id, libc::SIGKILL, true).await });
    }

    /// Keeps `min` instances up (one start at a time).
    pub fn ensure_min(self: &Arc<Self>) {
        let mut pool = self.lock();
        if !pool.retired
            && pool.starting == 0
            && pool.ready.len() < self.spec.min as usize
            && pool.failures == 0
        {
            pool.starting += 1;
            tokio::spawn(start(self.clone()));
        }
    }

    /// One autoscaler step (the daemon's tick): feeds it the requests in
    /// flight and waiting, then starts instances (in parallel, up to the
    /// decision and `max`) or drains and stops the excess (least loaded,
    /// newest first), never below `min`.
    pub fn autoscale(self: &Arc<Self>) {
        let (idle_for, ready) = {
            let pool = self.lock();
            (pool.last_request.elapsed(), pool.ready.clone())
        };
        for inst in ready {
            inst.upstream.close_idle();
        }
        if idle_for > STANDBY_IDLE && self.standby().bundle.is_some() {
            let rev = self.clone();
            tokio::spawn(async move { rev.drop_standby().await });
        }
        let mut guard = self.scaler.lock().unwrap_or_else(|e| e.into_inner());
        let Some(scaler) = guard.as_mut() else {
            self.scale_to_zero(Instant::now());
            self.ensure_min();
            return;
        };
        let now = self.clock.now();
        let (peak, in_flight, waiting, ready) = {
            let mut pool = self.lock();
            if pool.retired {
                return;
            }
            let peak = pool.peak;
            pool.peak = pool.in_flight;
            (peak, pool.in_flight, Self::waiting(&pool), pool.ready.len())
        };
        if peak > in_flight {
            scaler.record(now, peak as f64);
        }
        scaler.record(now, in_flight as f64);
        scaler.record_pending(now, u32::try_from(waiting).unwrap_or(u32::MAX));
        let d = scaler.decide(now, u32::try_from(ready).unwrap_or(u32::MAX));
        self.desired.store(d.desired, Ordering::Relaxed);
        self.panicking.store(d.panicking, Ordering::Relaxed);
        tracing::debug!(revision = %self.name, desired = d.desired, ready, in_flight, waiting, panicking = d.panicking, reason = d.reason, "autoscale");
        let desired = d.desired as usize;
        let mut excess = Vec::new();
        {
            let mut pool = self.lock();
            if pool.retired {
                return;
            }
            let have = pool.ready.len() + pool.starting;
            // After a failed start, only scale up from a working instance
            // (no crash loop; requests still start one themselves).
            if desired > have && (pool.failures == 0 || !pool.ready.is_empty()) {
                // Starts compete for the same cores: a few at a time gets
                // the first ones ready soonest (the next tick starts more).
                let room = PARALLEL_STARTS.saturating_sub(pool.starting);
                for _ in 0..(desired - have).min(room) {
                    pool.starting += 1;
                    tokio::spawn(start(self.clone()));
                }
            } else if desired < pool.ready.len() {
                let keep = desired.max(self.spec.min as usize);
                while pool.ready.len() > keep {
                    // Least loaded; among equals the newest (last pushed).
                    let (idx, _) = pool
                        .ready
                        .iter()
                        .enumerate()
                        .rev()
                        .min_by_key(|(_, i)| i.inflight.load(Ordering::SeqCst))
                        .expect("ready is not empty");
                    let inst = pool.ready.remove(idx);
                    pool.stopping.push(inst.clone());
                    excess.push(inst);
                }
            }
        }
        for inst in excess {
            tracing::info!(instance = %inst.name, desired, "autoscaler: stopping");
            tokio::spawn(stop(self.root.clone(), inst));
        }
    }

    /// Scale to zero (without an autoscaler): with `min` 0, no request in flight and none for the
    /// idle timeout, every ready instance leaves rotation and is stopped.
    pub fn scale_to_zero(self: &Arc<Self>, now: Instant) {
        let idle = {
            let mut pool = self.lock();
            if self.spec.min > 0
                || pool.in_flight > 0
                || pool.starting > 0
                || pool.ready.is_empty()
                || now.duration_since(pool.last_request) < self.spec.idle_timeout
            {
                return;
            }
            let idle = std::mem::take(&mut pool.ready);
            pool.stopping.extend(idle.iter().cloned());
            idle
        };
        for inst in idle {
            tracing::info!(instance = %inst.name, "idle: stopping");
            tokio::spawn(stop(self.root.clone(), inst));
        }
    }

    /// Takes the revision out of service: waiting requests fail, every
    /// instance is stopped; returns once all have exited.
    pub async fn retire(self: &Arc<Self>) {
        let all: Vec<Arc<Instance>> = {
            let mut pool = self.lock();
            pool.retired = true;
            let ready = std::mem::take(&mut pool.ready);
            pool.stopping.extend(ready);
            for waiter in pool.queue.drain(..) {
                let _ = waiter.send(Err(Unavailable::Retired));
            }
            pool.stopping.clone()
        };
        let stops: Vec<_> = all
            .into_iter()
            .map(|i| tokio::spawn(stop(self.root.clone(), i)))
            .collect();
        for s in stops {
            let _ = s.await;
        }
        // A start still under way sees `retired` when it finishes and stops
        // its instance; a standby being prepared is released when it is made.
        while self.lock().starting > 0 || self.standby().preparing {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.drop_standby().await;
    }

    fn standby(&self) -> MutexGuard<'_, Standby> {
        self.standby.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prepares the next start's instance ahead of it, unless one is ready
    /// or on its way: a cold start then only runs `crun run` and waits for
    /// the port (about 3 ms less: no record to write, no rootfs to mount,
    /// no network namespace to make). Called after each start, so only
    /// revisions that get traffic hold one (a thousand services deployed
    /// and never called hold none); dropped after [`STANDBY_IDLE`] without
    /// requests, and with the revision. Lambda functions get none (their
    /// instance registers with the Runtime API as it is made).
    fn replenish(self: &Arc<Self>) {
        if self.spec.mode != Mode::Http {
            return;
        }
        {
            let mut standby = self.standby();
            if standby.bundle.is_some() || standby.preparing || self.lock().retired {
                return;
            }
            standby.preparing = true;
        }
        let rev = self.clone();
        tokio::spawn(async move {
            // The start that called this is serving its first requests now,
            // the request that waited for it among them: preparing (a
            // mount, a network namespace, files) at once took the CPU from
            // them: 3.4 ms from "ready" to that response's head, not 0.2.
            tokio::time::sleep(STANDBY_DELAY).await;
            if rev.lock().retired {
                rev.standby().preparing = false;
                return;
            }
            let r = rev.clone();
            let made = tokio::task::spawn_blocking(move || prepare_instance(&r.root, &r)).await;
            let unwanted = {
                let mut standby = rev.standby();
                standby.preparing = false;
                match made {
                    Ok(Ok(b)) if !rev.lock().retired => {
                        standby.bundle = Some(b);
                        None
                    }
                    Ok(Ok(b)) => Some(b),
                    Ok(Err(e)) => {
                        tracing::warn!(revision = %rev.name, "cannot prepare a standby instance: {e:#}");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(revision = %rev.name, "preparing a standby instance panicked: {e}");
                        None
                    }
                }
            };
            if let Some(b) = unwanted {
                b.discard(&rev).await;
            }
        });
    }

    async fn drop_standby(self: &Arc<Self>) {
        let bundle = self.standby().bundle.take();
        if let Some(b) = bundle {
            b.discard(self).await;
        }
    }

    pub fn instances(&self) -> Vec<InstanceInfo> {
        let pool = self.lock();
        let info = |i: &Arc<Instance>, state| InstanceInfo {
            name: i.name.clone(),
            id: i.id.clone(),
            revision: self.name.to_string(),
            address: i.addr.to_string(),
            state,
            in_flight: i.inflight.load(Ordering::SeqCst),
        };
        let mut out: Vec<InstanceInfo> = pool.ready.iter().map(|i| info(i, "ready")).collect();
        out.extend(pool.stopping.iter().map(|i| info(i, "stopping")));
        out
    }

    pub fn ready_count(&self) -> usize {
        self.lock().ready.len()
    }

    /// The revision's figures for `/metrics`.
    pub fn view(&self) -> metrics::RevisionView<'_> {
        let pool = self.lock();
        metrics::RevisionView {
            service: self.name.service().to_string(),
            revision: self.name.to_string(),
            metrics: &self.metrics,
            ready: pool.ready.len(),
            starting: pool.starting,
            stopping: pool.stopping.len(),
            waiting: Self::waiting(&pool),
            desired: self.desired.load(Ordering::Relaxed),
            panicking: self.panicking.load(Ordering::Relaxed),
        }
    }

    /// Takes an instance that refused a connection out of rotation and
    /// stops it (the app closed its port, or the container is on its way
    /// out and its monitor has not said so yet); the autoscaler or the
    /// next request replaces it.
    pub fn evict(self: &Arc<Self>, inst: &Arc<Instance>) {
        let found = {
            let mut pool = self.lock();
            let before = pool.ready.len();
            pool.ready.retain(|i| !Arc::ptr_eq(i, inst));
            let found = pool.ready.len() != before;
            if found {
                pool.stopping.push(inst.clone());
            }
            self.dispatch(&mut pool);
            found
        };
        if found {
            tracing::warn!(instance = %inst.name, "refused a connection: out of rotation");
            tokio::spawn(stop(self.root.clone(), inst.clone()));
        }
    }

    /// Evicts the instance if its port no longer accepts a connection (a
    /// request's connection to it broke: it may have died, and its
    /// monitor may not have said so yet).
    pub fn check(self: &Arc<Self>, inst: &Arc<Instance>) {
        let (rev, inst) = (self.clone(), inst.clone());
        tokio::spawn(async move {
            let probe = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(inst.addr),
            );
            if !matches!(probe.await, Ok(Ok(_))) {
                rev.evict(&inst);
            }
        });
    }

    /// The instance left (crashed, or was stopped): out of every list.
    fn forget(self: &Arc<Self>, inst: &Arc<Instance>) {
        let crashed = {
            let mut pool = self.lock();
            let before = pool.ready.len();
            pool.ready.retain(|i| !Arc::ptr_eq(i, inst));
            pool.stopping.retain(|i| !Arc::ptr_eq(i, inst));
            // Requests waiting on it get a replacement started.
            self.dispatch(&mut pool);
            pool.ready.len() != before
        };
        if crashed {
            tracing::warn!(instance = %inst.name, "instance exited; out of rotation");
        }
    }
}

/// Starts one instance and puts it in rotation once it is ready. The start
/// counts as under way until an instance that came up for a revision
/// retired meanwhile is stopped again, so `retire` waits for it.
async fn start(rev: Arc<Revision>) {
    let t0 = Instant::now();
    let result = launch(&rev).await;
    let retired = rev.lock().retired;
    if let (true, Ok(inst)) = (retired, &result) {
        stop(rev.root.clone(), inst.clone()).await;
    }
    let mut ready = false;
    {
        let mut pool = rev.lock();
        pool.starting -= 1;
        match result {
            Ok(_) if retired => {}
            Ok(inst) => {
                tracing::info!(instance = %inst.name, ms = t0.elapsed().as_millis() as u64, "instance ready");
                pool.ready.push(inst.clone());
                ready = true;
                tokio::spawn(watch_exit(rev.clone(), inst));
                rev.dispatch(&mut pool);
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(revision = %rev.name, "instance failed to start: {why}");
                pool.failures += 1;
                // With nothing to serve them and nothing else starting, the
                // waiting requests hear why now rather than at their timeout.
                if pool.ready.is_empty() && pool.starting == 0 {
                    for waiter in pool.queue.drain(..) {
                        let _ = waiter.send(Err(Unavailable::StartFailed(why.clone())));
                    }
                }
            }
        }
    }
    if ready {
        rev.replenish();
    }
    if ready && !rev.recorded_ready.swap(true, Ordering::SeqCst) {
        let r = rev.clone();
        tokio::task::spawn_blocking(move || {
            let ctx = Context::new(r.root.to_path_buf());
            let done = ctx
                .state()
                .and_then(|st| Ok(st.set_revision_status(&r.name, RevisionStatus::Ready, None)?));
            if let Err(e) = done {
                tracing::warn!(revision = %r.name, "cannot record readiness: {e:#}");
            }
        });
    }
}

async fn watch_exit(rev: Arc<Revision>, inst: Arc<Instance>) {
    let mut rx = inst.exited.clone();
    let _ = rx.wait_for(|e| *e).await;
    rev.forget(&inst);
    gone(&rev, &inst);
}

/// What an exited instance leaves to tidy here: its Runtime API slot.
fn gone(rev: &Revision, inst: &Instance) {
    if let (Some(slot), std::net::IpAddr::V4(ip)) = (&inst.lambda, inst.addr.ip()) {
        slot.close();
        rev.hub.unregister(ip, slot);
    }
}

/// Creates and starts the container, then probes its port until it accepts
/// a connection, it exits, or the service timeout passes.
async fn launch(rev: &Arc<Revision>) -> Result<Arc<Instance>> {
    let standby = rev.standby().bundle.take();
    let created = match standby {
        // Prepared: only the monitor's thread to start, which does not
        // block (only a failure to start it releases the bundle here).
        Some(b) => start_monitor(&rev.root, rev, b)?,
        None => {
            let r = rev.clone();
            tokio::task::spawn_blocking(move || {
                start_monitor(&r.root, &r, prepare_instance(&r.root, &r)?)
            })
            .await
            .context("instance start panicked")??
        }
    };
    let Created {
        id,
        name,
        ip,
        mut started,
        exited,
        lambda,
    } = created;
    let addr = SocketAddr::from((ip, rev.spec.port));
    let inst = Arc::new(Instance {
        id,
        name,
        addr,
        upstream: super::upstream::Upstream::new(addr),
        inflight: AtomicUsize::new(0),
        exited,
        lambda,
    });
    if inst.lambda.is_some() {
        let ready = lambda_init(&inst).await;
        if ready.is_err() {
            stop(rev.root.clone(), inst.clone()).await;
            gone(rev, &inst);
        }
        return ready.map(|_| inst);
    }
    // Probed from the moment the monitor runs: the server may listen
    // before the monitor has recorded that the container started. The
    // first moments from a blocking thread, every 250 µs: tokio's timer
    // ticks in whole milliseconds, and a start takes about 7. The probe's
    // connection carries the first request.
    if rev.spec.readiness_path.is_none() {
        let exited = inst.exited.clone();
        let quick = tokio::task::spawn_blocking(move || quick_probe(addr, &exited));
        if let Ok(Some(conn)) = quick.await {
            inst.upstream.adopt(conn).await;
            return Ok(inst);
        }
    }
    let deadline = Instant::now() + rev.spec.timeout;
    loop {
        if *inst.exited.borrow() {
            // A container that never started says why through `started`.
            if let Ok(Err(why)) = started.try_recv() {
                anyhow::bail!("instance {}: {why}", inst.name);
            }
            anyhow::bail!(
                "instance {} exited before anything listened on port {}",
                inst.name,
                rev.spec.port
            );
        }
        let probe = tokio::time::timeout(
            Duration::from_millis(200),
            probe(&inst.upstream, rev.spec.readiness_path.as_deref()),
        );
        if let Ok(true) = probe.await {
            return Ok(inst);
        }
        if rev.lock().retired {
            stop(rev.root.clone(), inst).await;
            anyhow::bail!("revision {} was retired while it started", rev.name);
        }
        if Instant::now() >= deadline {
            let why = format!(
                "instance {} did not listen on port {} within {:?}",
                inst.name, rev.spec.port, rev.spec.timeout
            );
            stop(rev.root.clone(), inst).await;
            anyhow::bail!(why);
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// A Lambda instance is ready once its runtime client first polls for an
/// invocation (its init is done); it fails if it reports an init error,
/// exits, or takes longer than Lambda's init limit.
async fn lambda_init(inst: &Arc<Instance>) -> Result<()> {
    let slot = inst.lambda.as_ref().expect("a lambda instance");
    let mut phase = slot.phase.subscribe();
    let mut exited = inst.exited.clone();
    let limit = lambda::INIT_TIMEOUT;
    let waited = tokio::time::timeout(limit, async {
        tokio::select! {
            p = phase.wait_for(|p| *p != lambda::Phase::Init) => p.map(|p| p.clone()).ok(),
            _ = exited.wait_for(|e| *e) => None,
        }
    })
    .await;
    match waited {
        Ok(Some(lambda::Phase::Ready)) => Ok(()),
        Ok(Some(lambda::Phase::InitFailed(why))) => {
            anyhow::bail!("instance {}: init failed: {why}", inst.name)
        }
        Ok(_) => anyhow::bail!(
            "instance {} exited before its runtime client asked for an invocation (is the image a Lambda image?)",
            inst.name
        ),
        Err(_) => anyhow::bail!(
            "instance {}: the runtime client did not ask for an invocation within {limit:?}",
            inst.name
        ),
    }
}

/// A connection to `addr` if it accepts one within the first 100 ms of a
/// start (none as soon as the instance exits).
fn quick_probe(addr: SocketAddr, exited: &watch::Receiver<bool>) -> Option<std::net::TcpStream> {
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until && !*exited.borrow() {
        if let Ok(conn) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(20)) {
            return Some(conn);
        }
        std::thread::sleep(Duration::from_micros(250));
    }
    None
}

/// Readiness: the port accepts a connection and, with a path, a GET of
/// it answers 2xx or 3xx (as Kubernetes' httpGet probe counts success).
/// A plain TCP probe's connection is kept for the first request.
async fn probe(upstream: &super::upstream::Upstream, path: Option<&str>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = upstream.addr();
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let Some(path) = path else {
        if let Ok(conn) = conn.into_std() {
            upstream.adopt(conn).await;
        }
        return true;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: skiff-probe\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    // The status line is all we need: `HTTP/1.1 200 OK`.
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match conn.read(&mut head[n..]).await {
            Ok(0) | Err(_) => return false,
            Ok(m) => n += m,
        }
    }
    let code = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse::<u16>().ok());
    head.starts_with(b"HTTP/1.") && code.is_some_and(|c| (200..400).contains(&c))
}

/// A started instance, for `launch` to probe.
struct Created {
    id: String,
    name: String,
    ip: Ipv4Addr,
    /// The monitor's word on whether the container started.
    started: oneshot::Receiver<Result<(), String>>,
    /// Becomes true when the monitor is done: the container exited and
    /// everything it held is released.
    exited: watch::Receiver<bool>,
    lambda: Option<Arc<Slot>>,
}

/// An instance ready to be started: its record, its bundle (rootfs,
/// network namespace, config) and, for a Lambda function, its place in the
/// Runtime API. Prepared ahead of time as a revision's standby.
struct Bundle {
    record: ContainerRecord,
    runtime: OciRuntime,
    ip: Ipv4Addr,
    slot: Option<Arc<Slot>>,
}

impl Bundle {
    /// Releases everything it holds (a standby no longer wanted), on a
    /// blocking thread.
    async fn discard(self, rev: &Arc<Revision>) {
        let rev = rev.clone();
        let _ = tokio::task::spawn_blocking(move || self.release(&rev)).await;
    }

    /// Releases everything it holds; blocks (unmounts, netlink, SQLite).
    fn release(&self, rev: &Revision) {
        if let Some(slot) = &self.slot {
            rev.hub.unregister(self.ip, slot);
        }
        let ctx = Context::new(rev.root.to_path_buf());
        release(&ctx, &self.record.id, &self.runtime, true);
    }
}

/// The blocking first half of a start: record and bundle.
fn prepare_instance(root: &Path, rev: &Revision) -> Result<Bundle> {
    let t0 = Instant::now();
    // Made meanwhile, as `skiff run` does (see `container::run`).
    let namespace = skiff_runtime::Namespace::spawn().ok();
    let ctx = Context::new(root.to_path_buf());
    let spec = &rev.spec;
    let image = crate::images::resolve_or_pull(&ctx, &spec.image)?;
    let id = new_id()?;
    let name = format!("{}-{}", rev.name, &id[..5]);
    let runtime = OciRuntime::new(RUNTIME, ctx.runtime_state_dir(RUNTIME))?;
    let command = spec.command.clone().unwrap_or_default();
    // The instance's output outlives it, within the service's budget.
    let service = rev.name.service();
    if let Err(e) = crate::logs::prune_service_logs(&ctx, service) {
        tracing::warn!(%service, "cannot prune the logs: {e:#}");
    }
    let log = ctx.service_logs_dir(service).join(format!("{name}.log"));
    let record = ContainerRecord {
        command: command.clone(),
        auto_remove: true,
        owner: Some(OWNER_SERVE.to_string()),
        // A root whose path is not UTF-8 keeps the default: the container's directory.
        log_path: log.to_str().map(String::from),
        // The daemon is its creator (and will be its monitor): while it
        // lives, nobody takes the record for one a dead creator left.
        monitor_pid: Some(std::process::id() as i32),
        ..ContainerRecord::created(&id, &name, &spec.image, &image.id.to_string(), RUNTIME)
    };
    let state = ctx.state()?;
    state.insert_container(&record)?;
    let undo = |e: anyhow::Error| {
        let _ = runtime.kill(&id, libc::SIGKILL, true);
        release(&ctx, &id, &runtime, true);
        e
    };
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("PORT={}", spec.port));
    env.push(format!("K_SERVICE={service}"));
    env.push(format!("K_REVISION={}", rev.name));
    env.push(format!("K_CONFIGURATION={service}"));
    let lambda_mode = spec.mode == Mode::Lambda;
    // Lambda's default memory size, when none was asked for.
    let memory = match (spec.memory, lambda_mode) {
        (None, true) => Some(lambda::DEFAULT_MEMORY),
        (m, _) => m,
    };
    if lambda_mode {
        // `_HANDLER` is the CMD (`app.handler`), the image's or the override.
        let cmd = match &spec.command {
            Some(c) => c.first().cloned(),
            None => image
                .config
                .config()
                .as_ref()
                .and_then(|c| c.cmd().as_ref())
                .and_then(|c| c.first().cloned()),
        };
        env.extend(lambda::environment(
            &rev.hub,
            service.as_str(),
            "$LATEST",
            &name,
            cmd.as_deref(),
            memory.unwrap_or(lambda::DEFAULT_MEMORY) >> 20,
        ));
    }
    let opts = BundleOptions {
        network: "bridge".to_string(),
        entrypoint: spec.entrypoint.clone(),
        command,
        workdir: spec.workdir.clone(),
        user: None,
        memory,
        cpus: spec.cpus_milli,
        pids_limit: None,
        namespace,
    };
    let recorded = t0.elapsed();
    let prepared = prepare(&ctx, &record, &runtime, &image, opts, env, Vec::new()).map_err(undo)?;
    let bundled = t0.elapsed();
    let ip = prepared
        .ip
        .context("the bridge network gave the instance no address")
        .map_err(undo)?;
    state
        .set_prepared(&id, Some(&ip.to_string()), &prepared.command)
        .map_err(|e| undo(e.into()))?;
    // Known to the Runtime API before the runtime client can call it.
    let slot = lambda_mode.then(|| {
        let slot = Slot::new(name.clone());
        rev.hub.register(ip, slot.clone());
        slot
    });
    // Where a cold start's time goes (SKIFF_LOG=debug).
    tracing::debug!(
        instance = %name,
        recorded_us = recorded.as_micros() as u64,
        bundled_us = bundled.as_micros() as u64,
        "instance prepared"
    );
    Ok(Bundle {
        record,
        runtime,
        ip,
        slot,
    })
}

/// The second half of a start: the monitor thread, which runs the
/// container. It does not block, unless the thread cannot be started: the
/// bundle is then released here.
fn start_monitor(root: &Path, rev: &Revision, bundle: Bundle) -> Result<Created> {
    let (id, name, ip) = (
        bundle.record.id.clone(),
        bundle.record.name.clone(),
        bundle.ip,
    );
    let (tell, started) = oneshot::channel();
    let (exit_tx, exited) = watch::channel(false);
    let monitor = {
        let (root, record, runtime) = (
            root.to_path_buf(),
            bundle.record.clone(),
            bundle.runtime.clone(),
        );
        std::thread::Builder::new()
            .name(format!("monitor {name}"))
            .spawn(move || {
                let ctx = Context::new(root);
                let opts = crate::monitor::Options {
                    foreground: false,
                    interactive: false,
                    forward_signals: false,
                    unrecorded_command: None,
                };
                let notify: crate::monitor::Notify = Box::new(move |r| drop(tell.send(r)));
                let run = crate::monitor::run(
                    &ctx,
                    &record,
                    &runtime,
                    Some(ip),
                    Vec::new(),
                    opts,
                    Some(notify),
                );
                if let Err(e) = run {
                    tracing::debug!(instance = %record.name, "monitor: {e:#}");
                }
                let _ = exit_tx.send(true);
            })
    };
    if let Err(e) = monitor {
        bundle.release(rev);
        return Err(anyhow::Error::new(e).context("cannot start the monitor thread"));
    }
    Ok(Created {
        id,
        name,
        ip,
        started,
        exited,
        lambda: bundle.slot,
    })
}

/// Lets requests in flight finish (at most the service timeout is not
/// known here: a minute), then SIGTERM, the grace period, SIGKILL.
pub async fn stop(root: Arc<PathBuf>, inst: Arc<Instance>) {
    let drain_until = Instant::now() + Duration::from_secs(60);
    while inst.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut rx = inst.exited.clone();
    signal(&root, &inst.id, libc::SIGTERM, false).await;
    // A Lambda runtime client is not told to stop (Lambda kills it), and
    // as pid 1 it ignores SIGTERM: no point waiting long.
    let grace = if inst.lambda.is_some() {
        LAMBDA_GRACE
    } else {
        GRACE
    };
    if tokio::time::timeout(grace, rx.wait_for(|e| *e))
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(instance = %inst.name, "no exit {grace:?} after SIGTERM: killing");
    signal(&root, &inst.id, libc::SIGKILL, true).await;
    if tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|e| *e))
        .await
        .is_err()
    {
        // The monitor is stuck: release what the container holds ourselves.
        let (root, id) = (root.clone(), inst.id.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let ctx = Context::new(root.to_path_buf());
            if let Ok(rt) = OciRuntime::new(RUNTIME, ctx.runtime_state_dir(RUNTIME)) {
                release(&ctx, &id, &rt, true);
            }
        })
        .await;
    }
}

async fn signal(root: &Arc<PathBuf>, id: &str, sig: i32, all: bool) {
    let (root, id) = (root.clone(), id.to_string());
    let _ = tokio::task::spawn_blocking(move || {
        let ctx = Context::new(root.to_path_buf());
        match OciRuntime::new(RUNTIME, ctx.runtime_state_dir(RUNTIME)) {
            // Already on its way out: a failed signal is fine.
            Ok(rt) => {
                let _ = rt.kill(&id, sig, all);
            }
            Err(e) => tracing::warn!("{e:#}"),
        }
    })
    .await;
}

/// Removes every instance a previous daemon on this root left behind (it
/// was killed, so it could not stop them): SIGKILL each, wait for its
/// monitor to exit (the record being auto-remove, the monitor releases
/// everything and drops it), and release what is still held when the
/// monitor is gone or stuck. Call it only while no other daemon serves the
/// root. Returns how many were found.
pub fn clean_stale(ctx: &Context) -> Result<usize> {
    let state = ctx.state()?;
    let stale = state.list_containers_owned_by(OWNER_SERVE)?;
    if stale.is_empty() {
        return Ok(0);
    }
    let runtime = OciRuntime::new(RUNTIME, ctx.runtime_state_dir(RUNTIME))?;
    for c in &stale {
        tracing::warn!(instance = %c.name, "left by a previous daemon: stopping it");
        // Already gone (or never started): a failed kill is fine.
        let _ = runtime.kill(&c.id, libc::SIGKILL, true);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in &stale {
        // The pid read before the kill: once the exit is recorded the
        // record no longer names its monitor, which may still be releasing.
        // (A record still in creation names the dead daemon, whose pid may
        // now be ours.)
        let monitor = c.monitor_pid.filter(|p| *p != std::process::id() as i32);
        while monitor.is_some_and(process_alive) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if state.find_container(&c.id)?.is_some() {
            // No monitor (or a stuck one) to finish the job: do its work.
            release(ctx, &c.id, &runtime, true);
        }
    }
    Ok(stale.len())
}
