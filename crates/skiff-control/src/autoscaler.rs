//! Knative-KPA-style concurrency autoscaler.
//!
//! One [`Autoscaler`] per revision. The caller feeds it observed concurrency
//! ([`Autoscaler::record`]: requests in flight on instances;
//! [`Autoscaler::record_pending`]: requests queued in the activator) and asks
//! for a [`Decision`] periodically. Nothing here sleeps, spawns or reads the
//! wall clock: every call takes `now` from a [`Clock`], so tests run on
//! simulated time.
//!
//! Between non-zero counts the KPA rules apply (stable/panic windows, rate
//! limits, min/max). Scale to zero is governed separately by `idle_timeout`
//! measured from the last request activity, so a revision with `min_scale
//! == 0` reaches zero shortly after the timeout rather than after the timeout
//! plus the averaging window (see DESIGN.md, `--idle-timeout`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Milliseconds since an arbitrary, clock-specific origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Millis(pub u64);

impl Millis {
    pub fn from_secs(s: u64) -> Self {
        Millis(s.saturating_mul(1000))
    }

    /// Time elapsed since `earlier`; zero if `earlier` is in the future.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    fn bucket(self) -> u64 {
        self.0 / 1000
    }
}

impl std::ops::Add<Duration> for Millis {
    type Output = Millis;
    fn add(self, d: Duration) -> Millis {
        Millis(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// Source of monotonic time for the autoscaler's caller.
pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

/// Monotonic clock whose origin is its creation.
#[derive(Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        Millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// Clock moved by hand, for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        ManualClock {
            ms: AtomicU64::new(start.0),
        }
    }

    pub fn set(&self, t: Millis) {
        self.ms.store(t.0, Ordering::SeqCst);
    }

    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let cur = self.ms.load(Ordering::SeqCst);
        self.ms.store(cur.saturating_add(add), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.ms.load(Ordering::SeqCst))
    }
}

/// Knative's default soft target when concurrency is unlimited.
const DEFAULT_SOFT_TARGET: f64 = 100.0;
/// Averages are kept in one-second buckets; one hour bounds the ring at 3600.
const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// Scaling knobs for one revision. Field names match Knative's annotations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalePolicy {
    /// Soft concurrency target per instance; `None` derives it from
    /// `container_concurrency` (or 100 when that is unlimited).
    pub target_concurrency: Option<f64>,
    /// Hard cap of concurrent requests per instance; 0 = unlimited.
    pub container_concurrency: u32,
    /// Fraction of the target to aim for, in (0, 1].
    pub target_utilization: f64,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// Panic when panic-window demand reaches this multiple of ready capacity.
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub min_scale: u32,
    /// 0 = unbounded.
    pub max_scale: u32,
    /// Time without any request after which a `min_scale == 0` revision goes to zero.
    pub idle_timeout: Duration,
    /// Instances to start when scaling up from zero.
    pub activation_scale: u32,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        ScalePolicy {
            target_concurrency: None,
            container_concurrency: 0,
            target_utilization: 0.7,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            min_scale: 0,
            max_scale: 0,
            idle_timeout: Duration::from_secs(30),
            activation_scale: 1,
        }
    }
}

/// Why a [`ScalePolicy`] was rejected; every variant names the field.
#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    #[error("{field} must be a finite number greater than {min}, got {value}")]
    NotAbove {
        field: &'static str,
        min: f64,
        value: f64,
    },
    #[error("target_utilization must be in (0, 1], got {0}")]
    Utilization(f64),
    #[error("{field} must be between 1 s and 1 h, got {value:?}")]
    Window {
        field: &'static str,
        value: Duration,
    },
    #[error("panic_window ({panic:?}) must not be longer than stable_window ({stable:?})")]
    PanicLongerThanStable { panic: Duration, stable: Duration },
    #[error("min_scale ({min}) must not exceed max_scale ({max})")]
    MinAboveMax { min: u32, max: u32 },
    #[error("activation_scale must be at least 1, and not above max_scale ({max}); got {value}")]
    ActivationScale { value: u32, max: u32 },
}

impl ScalePolicy {
    /// Defaults with the given hard cap and optional soft target (what
    /// `--concurrency` and `--target` set).
    pub fn with_concurrency(container_concurrency: u32, target_concurrency: Option<f64>) -> Self {
        ScalePolicy {
            container_concurrency,
            target_concurrency,
            ..Self::default()
        }
    }

    /// Per-instance concurrency the autoscaler aims for, as Knative's
    /// `ResolveMetricTarget`: a soft target never exceeds the hard cap.
    pub fn effective_target(&self) -> f64 {
        let cc = f64::from(self.container_concurrency);
        let base = match (self.target_concurrency, self.container_concurrency) {
            (None, 0) => DEFAULT_SOFT_TARGET,
            (None, _) => cc,
            (Some(t), 0) => t,
            (Some(t), _) => t.min(cc),
        };
        // Knative's floor: a target of 0 would divide by zero.
        (base * self.target_utilization).max(0.01)
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        fn above(field: &'static str, value: f64, min: f64) -> Result<(), PolicyError> {
            if value.is_finite() && value > min {
                Ok(())
            } else {
                Err(PolicyError::NotAbove { field, min, value })
            }
        }
        fn window(field: &'static str, value: Duration) -> Result<(), PolicyError> {
            if value >= Duration::from_secs(1) && value <= MAX_WINDOW {
                Ok(())
            } else {
                Err(PolicyError::Window { field, value })
            }
        }
        if let Some(t) = self.target_concurrency {
            above("target_concurrency", t, 0.0)?;
        }
        let u = self.target_utilization;
        if !(u.is_finite() && u > 0.0 && u <= 1.0) {
            return Err(PolicyError::Utilization(u));
        }
        window("stable_window", self.stable_window)?;
        window("panic_window", self.panic_window)?;
        if self.panic_window > self.stable_window {
            return Err(PolicyError::PanicLongerThanStable {
                panic: self.panic_window,
                stable: self.stable_window,
            });
        }
        above("panic_threshold", self.panic_threshold, 1.0)?;
        above("max_scale_up_rate", self.max_scale_up_rate, 1.0)?;
        above("max_scale_down_rate", self.max_scale_down_rate, 1.0)?;
        if self.max_scale > 0 && self.min_scale > self.max_scale {
            return Err(PolicyError::MinAboveMax {
                min: self.min_scale,
                max: self.max_scale,
            });
        }
        if self.activation_scale == 0
            || (self.max_scale > 0 && self.activation_scale > self.max_scale)
        {
            return Err(PolicyError::ActivationScale {
                value: self.activation_scale,
                max: self.max_scale,
            });
        }
        Ok(())
    }
}

/// One scaling decision, with the inputs that explain it (for logs/metrics).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub desired: u32,
    pub ready: u32,
    pub panicking: bool,
    pub stable_avg: f64,
    pub panic_avg: f64,
    /// Effective per-instance target the averages were divided by.
    pub target: f64,
    /// The rule that determined `desired`.
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    sec: u64,
    sum: f64,
    n: u32,
}

/// Autoscaler state for one revision.
#[derive(Debug)]
pub struct Autoscaler {
    policy: ScalePolicy,
    target: f64,
    /// Per-second buckets covering the stable window, indexed by `sec % len`.
    ring: Vec<Bucket>,
    panic_secs: u64,
    last_sec: Option<u64>,
    in_flight: f64,
    pending: f64,
    last_active: Millis,
    /// Last time the panic condition held; `Some` means panic mode.
    panic_last_over: Option<Millis>,
    max_panic: u32,
    last_desired: u32,
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// `ceil` into u32, tolerant of float noise (35/7 must give 5, not 6).
fn ceil_u32(x: f64) -> u32 {
    if x.is_finite() && x > 0.0 {
        (x - 1e-9).ceil().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

fn sanitize(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

impl Autoscaler {
    /// `now` starts the idle clock: a new revision nobody calls goes to zero
    /// `idle_timeout` after creation.
    pub fn new(policy: ScalePolicy, now: Millis) -> Result<Self, PolicyError> {
        policy.validate()?;
        let len = secs_ceil(policy.stable_window) as usize;
        Ok(Autoscaler {
            target: policy.effective_target(),
            ring: vec![Bucket::default(); len],
            panic_secs: secs_ceil(policy.panic_window),
            policy,
            last_sec: None,
            in_flight: 0.0,
            pending: 0.0,
            last_active: now,
            panic_last_over: None,
            max_panic: 0,
            last_desired: 0,
        })
    }

    pub fn policy(&self) -> &ScalePolicy {
        &self.policy
    }

    /// Last time a request was in flight or queued.
    pub fn last_active(&self) -> Millis {
        self.last_active
    }

    /// Current demand: in flight on instances plus queued in the activator.
    pub fn demand(&self) -> f64 {
        self.in_flight + self.pending
    }

    /// Total requests in flight on this revision's instances (call on every
    /// request start/end, or on a periodic scrape).
    pub fn record(&mut self, now: Millis, in_flight_total: f64) {
        let before = self.demand();
        self.in_flight = sanitize(in_flight_total);
        self.observe(now, before);
    }

    /// Requests the activator is holding for this revision. They count as
    /// demand, so a burst against zero instances sizes the scale-up.
    pub fn record_pending(&mut self, now: Millis, queued: u32) {
        let before = self.demand();
        self.pending = f64::from(queued);
        self.observe(now, before);
    }

    fn observe(&mut self, now: Millis, before: f64) {
        let value = self.demand();
        // A request ending is activity too: idle time counts from the end.
        if value > 0.0 || before > 0.0 {
            self.last_active = self.last_active.max(now);
        }
        let len = self.ring.len() as u64;
        // Buckets never move backwards, even if the caller's clock does.
        let sec = self.last_sec.map_or(now.bucket(), |l| l.max(now.bucket()));
        if let Some(last) = self.last_sec {
            // The gauge held its previous level through seconds with no call.
            for s in (last + 1).max(sec.saturating_sub(len - 1))..sec {
                self.ring[(s % len) as usize] = Bucket {
                    sec: s,
                    sum: before,
                    n: 1,
                };
            }
        }
        let b = &mut self.ring[(sec % len) as usize];
        if b.n == 0 || b.sec != sec {
            *b = Bucket {
                sec,
                sum: 0.0,
                n: 0,
            };
        }
        b.sum += value;
        b.n += 1;
        self.last_sec = Some(sec);
    }

    /// Mean demand over the last `secs` seconds. Leading seconds with no
    /// data or zero demand are skipped, as Knative restarts its averages
    /// after a quiet window: a burst against an idle revision is seen at
    /// full size at once instead of diluted by the preceding silence.
    fn window_avg(&self, now_sec: u64, secs: u64) -> f64 {
        let Some(last) = self.last_sec else {
            return 0.0;
        };
        let len = self.ring.len() as u64;
        let hi = now_sec.max(last);
        let lo = hi.saturating_sub(secs - 1);
        let (mut sum, mut n, mut started) = (0.0, 0u32, false);
        for s in lo..=hi {
            let v = if s > last {
                Some(self.demand())
            } else {
                let b = self.ring[(s % len) as usize];
                (b.n > 0 && b.sec == s).then(|| b.sum / f64::from(b.n))
            };
            started |= v.is_some_and(|v| v > 0.0);
            if started {
                sum += v.unwrap_or(0.0);
                n += 1;
            }
        }
        if n == 0 {
            0.0
        } else {
            sum / f64::from(n)
        }
    }

    /// Desired instance count given `ready` instances now.
    pub fn decide(&mut self, now: Millis, ready: u32) -> Decision {
        let p = &self.policy;
        let demand = self.demand();
        if demand > 0.0 {
            self.last_active = self.last_active.max(now);
        }
        let stable_avg = self.window_avg(now.bucket(), self.ring.len() as u64);
        let panic_avg = self.window_avg(now.bucket(), self.panic_secs);
        // At zero ready, capacity and rate limits are computed as for one
        // instance so that scaling from zero is possible at all.
        let ready_f = f64::from(ready.max(1));
        let want_stable = stable_avg / self.target;
        let want_panic = panic_avg / self.target;
        let max_up = ceil_u32(ready_f * p.max_scale_up_rate);
        let max_down = (f64::from(ready) / p.max_scale_down_rate).floor() as u32;
        let (raw_stable, raw_panic) = (ceil_u32(want_stable), ceil_u32(want_panic));

        if want_panic / ready_f >= p.panic_threshold {
            if self.panic_last_over.is_none() {
                tracing::info!(panic_avg, ready, "autoscaler entering panic mode");
                // Never scale below what is running while panicking.
                self.max_panic = ready;
            }
            self.panic_last_over = Some(now);
        } else if let Some(t) = self.panic_last_over {
            if now.since(t) >= p.stable_window {
                tracing::info!(stable_avg, ready, "autoscaler leaving panic mode");
                self.panic_last_over = None;
                self.max_panic = 0;
            }
        }

        let (mut desired, mut reason);
        if self.panic_last_over.is_some() {
            let d = raw_panic.clamp(max_down, max_up);
            reason = if raw_panic > max_up {
                "panic: capped by max_scale_up_rate"
            } else if self.max_panic > d {
                "panic: holding peak, no scale-down while panicking"
            } else {
                "panic: panic-window average / target"
            };
            self.max_panic = self.max_panic.max(d);
            desired = self.max_panic;
        } else {
            desired = raw_stable.clamp(max_down, max_up);
            reason = if raw_stable > max_up {
                "stable: capped by max_scale_up_rate"
            } else if raw_stable < max_down {
                "stable: scale-down limited by max_scale_down_rate"
            } else {
                "stable: stable-window average / target"
            };
        }

        let idle = demand == 0.0 && now.since(self.last_active) >= p.idle_timeout;
        if p.min_scale == 0 && idle {
            // Idle overrides the (lagging) averages and the scale-down rate.
            desired = 0;
            reason = "idle: no requests for idle_timeout";
            self.panic_last_over = None;
            self.max_panic = 0;
        } else if ready == 0 && demand > 0.0 && desired < p.activation_scale {
            desired = p.activation_scale;
            reason = "activation: request waiting at zero instances";
        } else if desired == 0 && ready > 0 {
            // Averages reach zero on their own schedule; only idle_timeout
            // may take the last instance away.
            desired = 1;
            reason = "holding one instance until idle_timeout";
        }
        if desired > 0 && desired < p.activation_scale {
            desired = p.activation_scale;
            reason = "activation_scale";
        }
        if desired < p.min_scale {
            desired = p.min_scale;
            reason = "min_scale";
        }
        if p.max_scale > 0 && desired > p.max_scale {
            desired = p.max_scale;
            reason = "max_scale";
        }

        let d = Decision {
            desired,
            ready,
            panicking: self.panic_last_over.is_some(),
            stable_avg,
            panic_avg,
            target: self.target,
            reason,
        };
        if desired != self.last_desired {
            tracing::info!(
                from = self.last_desired,
                to = desired,
                ready,
                stable_avg,
                panic_avg,
                panicking = d.panicking,
                reason,
                "autoscaler scale change"
            );
        } else {
            tracing::debug!(
                desired,
                ready,
                stable_avg,
                panic_avg,
                panicking = d.panicking,
                reason,
                "autoscaler decision"
            );
        }
        self.last_desired = desired;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Millis {
        Millis::from_secs(s)
    }

    fn scaler(p: ScalePolicy) -> Autoscaler {
        Autoscaler::new(p, secs(0)).unwrap()
    }

    /// Record `level` once per second in [from, to).
    fn load(a: &mut Autoscaler, from: u64, to: u64, level: f64) {
        for t in from..to {
            a.record(secs(t), level);
        }
    }

    #[test]
    fn effective_target_follows_knative() {
        assert!((ScalePolicy::with_concurrency(10, None).effective_target() - 7.0).abs() < 1e-9);
        assert!((ScalePolicy::default().effective_target() - 70.0).abs() < 1e-9);
        let soft = ScalePolicy::with_concurrency(0, Some(20.0));
        assert!((soft.effective_target() - 14.0).abs() < 1e-9);
        // A soft target above the hard cap is capped by it.
        let capped = ScalePolicy::with_concurrency(10, Some(50.0));
        assert!((capped.effective_target() - 7.0).abs() < 1e-9);
    }

    #[test]
    fn steady_load_35_with_target_7_gives_5() {
        let mut a = scaler(ScalePolicy::with_concurrency(10, None));
        load(&mut a, 0, 61, 35.0);
        let d = a.decide(secs(60), 5);
        assert_eq!(d.desired, 5, "{d:?}");
        assert!(!d.panicking);
        assert!((d.stable_avg - 35.0).abs() < 1e-9);
    }

    #[test]
    fn burst_from_zero_panics_holds_then_exits() {
        let p = ScalePolicy {
            max_scale: 50,
            ..ScalePolicy::with_concurrency(10, None)
        };
        let mut a = scaler(p);
        // 200 clients hit a zero-scaled revision: all queued in the activator.
        a.record_pending(secs(0), 200);
        let d = a.decide(secs(0), 0);
        // ceil(200 / 7) = 29, under --max 50 and the 1000x rate cap.
        assert_eq!(d.desired, 29, "{d:?}");
        assert!(d.panicking);
        // Instances start over the next seconds; demand stays at 200.
        for t in 1..5 {
            a.record_pending(secs(t), 0);
            a.record(secs(t), 200.0);
            assert_eq!(a.decide(secs(t), 0).desired, 29);
        }
        // From t=5 all 29 are ready: 200/7/29 < 2, the panic condition is
        // gone (last held at t=4). At t=10 load drops to 50.
        load(&mut a, 5, 10, 200.0);
        load(&mut a, 10, 64, 50.0);
        for t in 5..64 {
            let d = a.decide(secs(t), 29);
            assert!(d.panicking, "t={t} {d:?}");
            assert_eq!(d.desired, 29, "no scale-down while panicking, t={t}");
        }
        // A full stable window after the last panic condition: back to
        // stable mode, and scale-down limited to halving.
        a.record(secs(64), 50.0);
        let d = a.decide(secs(64), 29);
        assert!(!d.panicking, "{d:?}");
        assert_eq!(d.desired, 14, "{d:?}");
    }

    #[test]
    fn burst_capped_by_max_scale() {
        let p = ScalePolicy {
            max_scale: 10,
            ..ScalePolicy::with_concurrency(10, None)
        };
        let mut a = scaler(p);
        a.record_pending(secs(0), 200);
        let d = a.decide(secs(0), 0);
        assert_eq!((d.desired, d.reason), (10, "max_scale"));
    }

    #[test]
    fn scale_down_halves_per_decision() {
        // min 1 keeps idle scale-to-zero out of the way.
        let p = ScalePolicy {
            min_scale: 1,
            ..ScalePolicy::with_concurrency(10, None)
        };
        let mut a = scaler(p);
        load(&mut a, 0, 60, 140.0);
        assert_eq!(a.decide(secs(59), 20).desired, 20);
        load(&mut a, 60, 121, 7.0);
        let mut ready = 20;
        let mut seen = vec![];
        for t in 120..125 {
            let d = a.decide(secs(t), ready);
            assert!(!d.panicking);
            seen.push(d.desired);
            ready = d.desired;
        }
        assert_eq!(seen, [10, 5, 2, 1, 1]);
    }

    #[test]
    fn idle_scales_to_zero_right_after_timeout() {
        let mut a = scaler(ScalePolicy::with_concurrency(10, None));
        load(&mut a, 0, 10, 20.0);
        // The last request ends at t=10.5; idle_timeout is 30 s.
        a.record(Millis(10_500), 0.0);
        let mut t = Millis(10_500);
        while t < Millis(40_500) {
            let d = a.decide(t, 3);
            assert!(d.desired >= 1, "zero too early at {t:?}: {d:?}");
            t = t + Duration::from_millis(100);
        }
        // The 60 s stable average still says "3", but idle wins.
        let d = a.decide(Millis(40_500), 3);
        assert!(d.stable_avg > 0.0);
        assert_eq!(
            (d.desired, d.reason),
            (0, "idle: no requests for idle_timeout")
        );
        // And it stays at zero; the lagging average does not bring it back.
        assert_eq!(a.decide(Millis(45_000), 0).desired, 0);
    }

    #[test]
    fn long_request_is_activity() {
        let mut a = scaler(ScalePolicy::with_concurrency(10, None));
        a.record(secs(0), 1.0);
        // No calls for 100 s, but the request is still in flight.
        assert_eq!(a.decide(secs(100), 1).desired, 1);
    }

    #[test]
    fn sparse_event_recording_holds_the_level() {
        // Called only on request start/end: the level persists in between.
        let mut a = scaler(ScalePolicy::with_concurrency(10, None));
        a.record(secs(0), 35.0);
        let d = a.decide(secs(60), 5);
        assert_eq!(d.desired, 5, "{d:?}");
        assert!((d.stable_avg - 35.0).abs() < 1e-9);
    }

    #[test]
    fn request_after_scale_to_zero_reactivates() {
        let mut a = scaler(ScalePolicy::with_concurrency(10, None));
        load(&mut a, 0, 5, 3.0);
        a.record(secs(5), 0.0);
        assert_eq!(a.decide(secs(35), 1).desired, 0);
        a.record_pending(secs(36), 1);
        let d = a.decide(secs(36), 0);
        assert_eq!(d.desired, 1, "{d:?}");
        assert_eq!(a.last_active(), secs(36));
    }

    #[test]
    fn min_scale_is_a_floor_even_when_idle() {
        let p = ScalePolicy {
            min_scale: 2,
            ..ScalePolicy::with_concurrency(10, None)
        };
        let mut a = scaler(p);
        assert_eq!(a.decide(secs(0), 0).desired, 2);
        load(&mut a, 0, 5, 1.0);
        a.record(secs(5), 0.0);
        for t in 5..300 {
            assert_eq!(a.decide(secs(t), 2).desired, 2);
        }
    }

    #[test]
    fn max_scale_is_a_ceiling() {
        let p = ScalePolicy {
            max_scale: 3,
            ..ScalePolicy::with_concurrency(10, None)
        };
        let mut a = scaler(p);
        load(&mut a, 0, 61, 100.0);
        let d = a.decide(secs(60), 3);
        assert_eq!((d.desired, d.reason), (3, "max_scale"));
    }

    #[test]
    fn cold_start_on_first_pending_request() {
        let mut a = scaler(ScalePolicy::with_concurrency(10, None));
        // Freshly deployed, nobody calling: stays at zero.
        let d = a.decide(secs(1), 0);
        assert_eq!(d.desired, 0, "{d:?}");
        a.record_pending(secs(2), 1);
        let d = a.decide(secs(2), 0);
        assert_eq!(d.desired, 1, "{d:?}");
        assert!(!d.panicking);
    }

    #[test]
    fn new_revision_without_traffic_goes_to_zero() {
        let mut a = scaler(ScalePolicy::with_concurrency(10, None));
        // Deployed with one instance (initial scale), never called.
        assert_eq!(a.decide(secs(29), 1).desired, 1);
        assert_eq!(a.decide(secs(30), 1).desired, 0);
    }

    #[test]
    fn empty_window_is_zero() {
        let mut a = scaler(ScalePolicy::default());
        let d = a.decide(secs(0), 0);
        assert_eq!((d.desired, d.stable_avg, d.panic_avg), (0, 0.0, 0.0));
    }

    #[test]
    fn bad_input_samples_are_ignored() {
        let mut a = scaler(ScalePolicy::with_concurrency(10, None));
        a.record(secs(0), f64::NAN);
        a.record(secs(0), -5.0);
        assert_eq!(a.decide(secs(0), 0).desired, 0);
    }

    #[test]
    fn policy_validation_names_the_field() {
        let base = ScalePolicy::default;
        let cases: Vec<(ScalePolicy, &str)> = vec![
            (
                ScalePolicy {
                    target_concurrency: Some(f64::NAN),
                    ..base()
                },
                "target_concurrency",
            ),
            (
                ScalePolicy {
                    target_concurrency: Some(-1.0),
                    ..base()
                },
                "target_concurrency",
            ),
            (
                ScalePolicy {
                    target_utilization: 1.5,
                    ..base()
                },
                "target_utilization",
            ),
            (
                ScalePolicy {
                    stable_window: Duration::ZERO,
                    ..base()
                },
                "stable_window",
            ),
            (
                ScalePolicy {
                    panic_window: Duration::ZERO,
                    ..base()
                },
                "panic_window",
            ),
            (
                ScalePolicy {
                    panic_window: Duration::from_secs(120),
                    ..base()
                },
                "panic_window",
            ),
            (
                ScalePolicy {
                    panic_threshold: 1.0,
                    ..base()
                },
                "panic_threshold",
            ),
            (
                ScalePolicy {
                    max_scale_up_rate: f64::INFINITY,
                    ..base()
                },
                "max_scale_up_rate",
            ),
            (
                ScalePolicy {
                    max_scale_down_rate: 0.5,
                    ..base()
                },
                "max_scale_down_rate",
            ),
            (
                ScalePolicy {
                    min_scale: 5,
                    max_scale: 2,
                    ..base()
                },
                "min_scale",
            ),
            (
                ScalePolicy {
                    activation_scale: 0,
                    ..base()
                },
                "activation_scale",
            ),
        ];
        for (p, field) in cases {
            let err = p.validate().expect_err(field);
            assert!(err.to_string().contains(field), "{field}: {err}");
            assert!(Autoscaler::new(p, secs(0)).is_err());
        }
        assert_eq!(base().validate(), Ok(()));
    }

    #[test]
    fn manual_clock_moves_by_hand() {
        let c = ManualClock::new(secs(1));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), Millis(2500));
        c.set(secs(10));
        assert_eq!(c.now(), secs(10));
        let s = SystemClock::new();
        assert!(s.now() <= s.now());
    }
}
