//! What `/metrics` reports, kept where it happens: each revision counts
//! its own requests (by status code), their latency and its cold starts;
//! the gateway counts requests it could not route. Rendered as Prometheus
//! text on the admin listener only, never on the public gateway.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Request latency buckets, in seconds (Knative's and Prometheus' usual
/// spread, from a cached response to a slow one).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Cold-start buckets, in seconds: tens of milliseconds (Skiff's own) to
/// many seconds (an image that takes long to listen).
const COLD_START_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket histogram, lock-free to record.
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// One revision's request figures.
pub struct RevisionMetrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    pub latency: Histogram,
    pub cold_start: Histogram,
}

impl Default for RevisionMetrics {
    fn default() -> Self {
        RevisionMetrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(LATENCY_BUCKETS),
            cold_start: Histogram::new(COLD_START_BUCKETS),
        }
    }
}

impl RevisionMetrics {
    /// A request answered (by the instance or by the gateway for it).
    pub fn request(&self, code: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
        self.latency.observe(took);
    }

    fn by_code(&self) -> Vec<(u16, u64)> {
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(c, n)| (*c, *n)).collect()
    }
}

/// One revision as `/metrics` sees it.
pub struct RevisionView<'a> {
    pub service: String,
    pub revision: String,
    pub metrics: &'a RevisionMetrics,
    pub ready: usize,
    pub starting: usize,
    pub stopping: usize,
    pub waiting: usize,
    pub desired: u32,
    pub panicking: bool,
}

/// The Prometheus text for every revision the daemon looks after, plus
/// the gateway's own counters.
pub fn render(revs: &[RevisionView<'_>], unrouted: &BTreeMap<u16, u64>) -> String {
    let mut out = String::new();
    let labels = |r: &RevisionView<'_>| {
        format!(
            "service=\"{}\",revision=\"{}\"",
            r.service, // DNS-1123 names: nothing to escape
            r.revision
        )
    };
    family(
        &mut out,
        "skiff_requests_total",
        "counter",
        "Requests by revision and status code (including the gateway's own 502/503/504 for it).",
    );
    for r in revs {
        for (code, n) in r.metrics.by_code() {
            let _ = writeln!(
                out,
                "skiff_requests_total{{{},code=\"{code}\"}} {n}",
                labels(r)
            );
        }
    }
    family(
        &mut out,
        "skiff_request_duration_seconds",
        "histogram",
        "Time from the request's arrival to the end of its response body.",
    );
    for r in revs {
        r.metrics
            .latency
            .render(&mut out, "skiff_request_duration_seconds", &labels(r));
    }
    family(
        &mut out,
        "skiff_cold_start_seconds",
        "histogram",
        "How long requests that found no instance waited for one to start (each such response carries X-Skiff-Cold-Start).",
    );
    for r in revs {
        r.metrics
            .cold_start
            .render(&mut out, "skiff_cold_start_seconds", &labels(r));
    }
    family(
        &mut out,
        "skiff_cold_starts_total",
        "counter",
        "Requests that waited for an instance to start.",
    );
    for r in revs {
        let n: u64 = r
            .metrics
            .cold_start
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(out, "skiff_cold_starts_total{{{}}} {n}", labels(r));
    }
    family(
        &mut out,
        "skiff_instances",
        "gauge",
        "Instances by revision and state (starting, ready, stopping).",
    );
    for r in revs {
        for (state, n) in [
            ("starting", r.starting),
            ("ready", r.ready),
            ("stopping", r.stopping),
        ] {
            let _ = writeln!(
                out,
                "skiff_instances{{{},state=\"{state}\"}} {n}",
                labels(r)
            );
        }
    }
    for (name, kind, help, get) in [
        (
            "skiff_queue_depth",
            "gauge",
            "Requests waiting for a free instance (the activator's queue).",
            (|r: &RevisionView<'_>| r.waiting as u64) as fn(&RevisionView<'_>) -> u64,
        ),
        (
            "skiff_autoscaler_desired_instances",
            "gauge",
            "Instances the autoscaler wants.",
            |r| u64::from(r.desired),
        ),
        (
            "skiff_autoscaler_actual_instances",
            "gauge",
            "Instances ready or starting, to compare with the desired count.",
            |r| (r.ready + r.starting) as u64,
        ),
        (
            "skiff_autoscaler_panic",
            "gauge",
            "1 while the revision's autoscaler is in panic mode.",
            |r| u64::from(r.panicking),
        ),
    ] {
        family(&mut out, name, kind, help);
        for r in revs {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(r), get(r));
        }
    }
    family(
        &mut out,
        "skiff_unrouted_requests_total",
        "counter",
        "Requests the gateway answered without reaching a service (unknown service, bad request).",
    );
    for (code, n) in unrouted {
        let _ = writeln!(out, "skiff_unrouted_requests_total{{code=\"{code}\"}} {n}");
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.01\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 3.055\n"), "{out}");
    }

    #[test]
    fn renders_every_family_once() {
        let m = RevisionMetrics::default();
        m.request(200, Duration::from_millis(2));
        m.request(200, Duration::from_millis(3));
        m.request(502, Duration::from_millis(1));
        m.cold_start.observe(Duration::from_millis(40));
        let view = RevisionView {
            service: "hello".into(),
            revision: "hello-00001".into(),
            metrics: &m,
            ready: 2,
            starting: 1,
            stopping: 0,
            waiting: 4,
            desired: 3,
            panicking: false,
        };
        let unrouted = BTreeMap::from([(404, 7)]);
        let out = render(&[view], &unrouted);
        let l = "service=\"hello\",revision=\"hello-00001\"";
        for want in [
            format!("skiff_requests_total{{{l},code=\"200\"}} 2"),
            format!("skiff_requests_total{{{l},code=\"502\"}} 1"),
            format!("skiff_request_duration_seconds_count{{{l}}} 3"),
            format!("skiff_cold_starts_total{{{l}}} 1"),
            format!("skiff_instances{{{l},state=\"ready\"}} 2"),
            format!("skiff_instances{{{l},state=\"starting\"}} 1"),
            format!("skiff_queue_depth{{{l}}} 4"),
            format!("skiff_autoscaler_desired_instances{{{l}}} 3"),
            format!("skiff_autoscaler_actual_instances{{{l}}} 3"),
            "skiff_unrouted_requests_total{code=\"404\"} 7".to_string(),
        ] {
            assert!(
                out.contains(&format!("{want}\n")),
                "{want} missing in\n{out}"
            );
        }
        assert_eq!(out.matches("# TYPE skiff_instances ").count(), 1);
    }
}
