//! `skiff serve` + `deploy`: a real daemon, real crun, the demo image.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{get, instances, Daemon};
use common::Skiff;

#[test]
fn deploy_route_scale_to_zero_delete() {
    let s = Skiff::new();
    let img = s.load_demo();

    // Without a daemon: one clear line.
    let e = s.fails(&["services"]);
    assert!(e.contains("skiff daemon not running"), "{e}");

    let mut d = Daemon::start(&s);
    let gw = d.gateway;

    // Bad input: one line, nothing created.
    let e = s.fails(&["deploy", "Bad_Name", "--image", img]);
    assert!(e.contains("Bad_Name"), "{e}");
    let e = s.fails(&[
        "deploy", "hello", "--image", img, "--min", "5", "--max", "2",
    ]);
    assert!(e.contains("min"), "{e}");
    let e = s.fails(&["deploy", "hello", "--image", "localhost:1/nope:latest"]);
    assert!(!e.is_empty());
    assert_eq!(s.ok(&["services", "--json"]).trim(), "[]");

    s.ok(&[
        "deploy",
        "hello",
        "--image",
        img,
        "--port",
        "8080",
        "--idle-timeout",
        "2s",
        "--timeout",
        "20s",
    ]);
    let list = s.ok(&["services"]);
    assert!(list.contains("hello-00001"), "{list}");

    // Cold start by host, then warm by path (prefix stripped).
    let (code, head, body) = get(gw, &format!("hello.localhost:{gw}"), "/");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(body.contains("Hello from Skiff"), "{body}");
    assert!(head.contains("x-skiff-cold-start:"), "{head}");
    let (code, head, body) = get(gw, "127.0.0.1", "/hello/");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(body.contains("Hello from Skiff"), "{body}");
    assert!(!head.contains("x-skiff-cold-start"), "{head}");

    let desc = s.ok(&["describe", "hello", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&desc).unwrap();
    assert_eq!(v["revisions"][0]["name"], "hello-00001", "{desc}");
    assert_eq!(v["traffic"][0]["percent"], 100, "{desc}");
    let inst = &v["instances"][0];
    assert!(
        inst["address"]
            .as_str()
            .is_some_and(|a| a.ends_with(":8080")),
        "{desc}"
    );
    assert!(
        inst["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("hello-00001-")),
        "{desc}"
    );
    // The instance is an ordinary container.
    assert!(s.ok(&["ps"]).contains("hello-00001-"));

    // Idle for 2 s: scaled to zero soon after.
    let deadline = Instant::now() + Duration::from_secs(6);
    while instances(&s, "hello") > 0 {
        assert!(
            Instant::now() < deadline,
            "not scaled to zero: {}",
            s.ok(&["describe", "hello"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And back on the next request.
    let (code, head, body) = get(gw, &format!("hello.localhost:{gw}"), "/");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(head.contains("x-skiff-cold-start:"), "{head}");

    // Unknown service: 404 JSON.
    let (code, head, body) = get(gw, "nope.localhost", "/");
    assert_eq!(code, 404, "{head}\n{body}");
    assert!(head.contains("application/json"), "{head}");
    assert!(body.contains("\"error\""), "{body}");

    // An image that serves nothing (busybox's sh exits at once): 503 JSON saying why.
    let bb = s.load_busybox();
    s.ok(&["deploy", "broken", "--image", bb, "--timeout", "10s"]);
    let (code, head, body) = get(gw, "broken.localhost", "/");
    assert_eq!(code, 503, "{head}\n{body}");
    assert!(body.contains("no instance could start"), "{body}");
    s.ok(&["delete", "broken"]);

    // Delete: stops the instances, 404 after, nothing left behind.
    s.ok(&["delete", "hello"]);
    let (code, _, _) = get(gw, "127.0.0.1", "/hello/");
    assert_eq!(code, 404);
    let e = s.fails(&["describe", "hello"]);
    assert!(e.contains("no service"), "{e}");
    assert_eq!(s.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(s.leftovers(), Vec::<String>::new());

    // A second daemon on the same root is refused.
    let out = s.run(&[
        "serve",
        "--gateway",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another skiff daemon"));

    // SIGTERM: instances stopped, socket gone.
    s.ok(&["deploy", "hello", "--image", img, "--min", "1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while instances(&s, "hello") == 0 {
        assert!(
            Instant::now() < deadline,
            "--min 1 never started an instance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.terminate(Duration::from_secs(15)),
        "the daemon ignored SIGTERM"
    );
    assert!(!s.root.path().join("skiff.sock").exists());
    assert_eq!(s.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(s.leftovers(), Vec::<String>::new());

    // A new daemon serves what was deployed.
    let d = Daemon::start(&s);
    let (code, head, body) = get(d.gateway, "127.0.0.1", "/hello/");
    assert_eq!(code, 200, "{head}\n{body}");
    s.ok(&["delete", "hello"]);
    assert_eq!(s.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// kill -9 of the daemon leaves its instances running without a monitor;
/// the next daemon on the root removes them, then serves.
#[test]
fn restart_after_sigkill_cleans_stale_instances() {
    let s = Skiff::new();
    let img = s.load_demo();
    let mut d = Daemon::start(&s);
    s.ok(&[
        "deploy", "hello", "--image", img, "--port", "8080", "--min", "1",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while instances(&s, "hello") == 0 {
        assert!(
            Instant::now() < deadline,
            "--min 1 never started an instance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let desc = s.ok(&["describe", "hello", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&desc).unwrap();
    let old = v["instances"][0]["name"].as_str().unwrap().to_string();
    let addr: std::net::SocketAddr = v["instances"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    d.kill9();
    // The instance outlives the daemon, still listening.
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "the instance died with the daemon"
    );

    let d = Daemon::start(&s);
    let ps = s.ok(&["ps", "-a"]);
    assert!(!ps.contains(&old), "{old} survived the restart:\n{ps}");
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "{old} still listens after the restart"
    );
    let (code, head, body) = get(d.gateway, "127.0.0.1", "/hello/");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(body.contains("Hello from Skiff"), "{body}");

    s.ok(&["delete", "hello"]);
    drop(d);
    assert_eq!(s.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// How many of `n` requests each revision served (by `X-Skiff-Revision`).
fn split_of(port: u16, host: &str, n: usize) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for _ in 0..n {
        let (code, head, body) = get(port, host, "/");
        assert_eq!(code, 200, "{head}\n{body}");
        let rev = head
            .lines()
            .find_map(|l| l.strip_prefix("x-skiff-revision:"))
            .unwrap_or_else(|| panic!("no x-skiff-revision header:\n{head}"))
            .trim()
            .to_string();
        *seen.entry(rev).or_insert(0) += 1;
    }
    seen
}

fn revision_json(s: &Skiff, name: &str, rev: &str) -> serde_json::Value {
    let out = s.ok(&["revisions", name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("revisions --json is JSON");
    v.as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == rev))
        .cloned()
        .unwrap_or_else(|| panic!("no revision {rev}:\n{out}"))
}

/// Readiness-gated rollout, weighted splits, bad splits refused whole,
/// rollback, tags, and a failed revision that never takes traffic.
#[test]
fn traffic_splits_and_gated_rollout() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    let host = "split.localhost";
    let deploy = |extra: &[&str]| {
        let mut args = vec!["deploy", "split", "--image", img, "--port", "8080"];
        args.extend_from_slice(extra);
        s.ok(&args);
    };

    deploy(&["--timeout", "20s"]);
    // The second revision takes all traffic once it is ready (deploy waits).
    deploy(&["--timeout", "20s", "--env", "REV=two"]);
    let r2 = revision_json(&s, "split", "split-00002");
    assert_eq!(r2["status"], "ready", "{r2}");
    assert_eq!(r2["percent"], 100, "{r2}");
    let seen = split_of(gw, host, 10);
    assert_eq!(seen.get("split-00002"), Some(&10), "{seen:?}");

    s.ok(&["traffic", "split", "split-00001=90,split-00002=10"]);
    let seen = split_of(gw, host, 200);
    let two = seen.get("split-00002").copied().unwrap_or(0);
    assert!((5..=40).contains(&two), "not ~90/10: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 200, "{seen:?}");

    // Bad splits: one clear line each, nothing changed.
    let e = s.fails(&["traffic", "split", "split-00001=100,split-00002=10"]);
    assert!(e.contains("sum to 110"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = s.fails(&["traffic", "split", "split-00001=90,split-00009=10"]);
    assert!(e.contains("unknown revision split-00009"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert_eq!(revision_json(&s, "split", "split-00001")["percent"], 90);
    assert_eq!(revision_json(&s, "split", "split-00002")["percent"], 10);

    // Rollback, with the new revision still reachable by its tag.
    s.ok(&[
        "traffic",
        "split",
        "split-00001=100",
        "--tag",
        "next=split-00002",
    ]);
    let seen = split_of(gw, host, 30);
    assert_eq!(seen.get("split-00001"), Some(&30), "{seen:?}");
    let seen = split_of(gw, "next-split.localhost", 3);
    assert_eq!(seen.get("split-00002"), Some(&3), "{seen:?}");
    // A split without --tag keeps the tags; --clear-tags drops them.
    s.ok(&["traffic", "split", "split-00001=100"]);
    let seen = split_of(gw, "next-split.localhost", 3);
    assert_eq!(seen.get("split-00002"), Some(&3), "{seen:?}");
    s.ok(&["traffic", "split", "split-00001=100", "--clear-tags"]);
    assert_eq!(get(gw, "next-split.localhost", "/").0, 404);
    let e = s.fails(&[
        "traffic",
        "split",
        "split-00001=100",
        "--tag",
        "a=split-00002",
        "--tag",
        "b=split-00002",
    ]);
    assert!(e.contains("one tag"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    // --no-traffic: created, not serving. What the flags do not say is
    // kept from the latest revision (as `gcloud run deploy`); --env adds.
    deploy(&["--no-traffic", "--env", "MORE=yes"]);
    assert_eq!(revision_json(&s, "split", "split-00003")["percent"], 0);
    let desc: serde_json::Value =
        serde_json::from_str(&s.ok(&["describe", "split", "--json"])).unwrap();
    let spec = &desc["revisions"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "split-00003"))
        .unwrap_or_else(|| panic!("no split-00003: {desc}"))["spec"];
    assert_eq!(spec["timeout_ms"], 20_000, "{spec}");
    assert_eq!(
        spec["env"],
        serde_json::json!([["REV", "two"], ["MORE", "yes"]]),
        "{spec}"
    );

    // A revision that cannot start: deploy fails, traffic stays, describe says why.
    let bb = s.load_busybox();
    let e = s.fails(&[
        "deploy",
        "split",
        "--image",
        bb,
        "--port",
        "8080",
        "--timeout",
        "10s",
    ]);
    assert!(e.contains("split-00004 failed"), "{e}");
    let r4 = revision_json(&s, "split", "split-00004");
    assert_eq!(r4["status"], "failed", "{r4}");
    assert_eq!(r4["percent"], 0, "{r4}");
    let desc = s.ok(&["describe", "split"]);
    assert!(
        desc.contains("failed") && desc.contains("reason:"),
        "{desc}"
    );
    let seen = split_of(gw, host, 5);
    assert_eq!(seen.get("split-00001"), Some(&5), "{seen:?}");
    // A failed revision gets no share.
    let e = s.fails(&["traffic", "split", "split-00004=100"]);
    assert!(e.contains("split-00004"), "{e}");

    s.ok(&["delete", "split"]);
    drop(d);
    assert_eq!(s.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

#[test]
fn autoscaler_scales_out_under_load_and_back_to_zero() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    s.ok(&[
        "deploy",
        "busy",
        "--image",
        img,
        "--port",
        "8080",
        "--concurrency",
        "1",
        "--max",
        "4",
        "--idle-timeout",
        "2s",
        "--timeout",
        "20s",
    ]);

    // Eight clients in a loop against one request per instance, for 2 s
    // or, on a slow machine, until a second instance is up (at most 15 s).
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (code, head, body) = get(gw, "busy.localhost", "/");
                    assert_eq!(code, 200, "{head}\n{body}");
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let (mut peak, mut wanted) = (0, 0);
    while started.elapsed() < Duration::from_secs(2)
        || (peak < 2 && started.elapsed() < Duration::from_secs(15))
    {
        peak = peak.max(instances(&s, "busy"));
        // The decision is on /metrics beside the ready instances.
        let (_, _, metrics) = get(d.admin, "127.0.0.1", "/metrics");
        let line = metrics
            .lines()
            .find(|l| l.starts_with("skiff_autoscaler_desired_instances{service=\"busy\""))
            .unwrap_or_else(|| panic!("no desired gauge: {metrics}"));
        assert!(
            metrics.contains("skiff_autoscaler_panic{service=\"busy\""),
            "{metrics}"
        );
        let n: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();
        wanted = wanted.max(n);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let served: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    peak = peak.max(instances(&s, "busy"));
    assert!(served > 0);
    assert!((2..=4).contains(&wanted), "desired peaked at {wanted}");
    assert!(
        peak > 1 && peak <= 4,
        "peak {peak} instances: {}",
        s.ok(&["describe", "busy"])
    );

    // Load gone: back to zero a little after the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(8);
    while instances(&s, "busy") > 0 {
        assert!(
            Instant::now() < deadline,
            "not scaled to zero: {}",
            s.ok(&["describe", "busy"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.ok(&["delete", "busy"]);
}

/// The containers `ps -a --json` lists with this status.
fn with_status(s: &Skiff, status: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&s.ok(&["ps", "-a", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == status)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// After a start, the next instance is prepared ahead (a created
/// container, not an instance); the next cold start runs that one, a new
/// one is prepared, and `delete` releases it.
#[test]
fn a_standby_instance_takes_the_next_cold_start() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    s.ok(&[
        "deploy",
        "hello",
        "--image",
        img,
        "--port",
        "8080",
        "--idle-timeout",
        "300ms",
    ]);
    assert!(
        with_status(&s, "created").is_empty(),
        "no standby before any traffic"
    );
    let (code, head, body) = get(d.gateway, "hello.localhost", "/");
    assert_eq!(code, 200, "{head}\n{body}");
    let standby = |s: &Skiff| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let created = with_status(s, "created");
            if let [one] = created.as_slice() {
                return one.clone();
            }
            assert!(created.len() < 2, "more than one standby: {created:?}");
            assert!(Instant::now() < deadline, "no standby was prepared");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let next = standby(&s);
    assert_eq!(
        s.ok(&["describe", "hello", "--json"])
            .matches(&next)
            .count(),
        0
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while instances(&s, "hello") > 0 {
        assert!(Instant::now() < deadline, "never scaled to zero");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, head, body) = get(d.gateway, "hello.localhost", "/");
    assert_eq!(code, 200, "{head}\n{body}");
    let desc: serde_json::Value =
        serde_json::from_str(&s.ok(&["describe", "hello", "--json"])).unwrap();
    assert_eq!(desc["instances"][0]["name"], next.as_str(), "{desc}");
    assert_ne!(standby(&s), next, "a new standby after the start");

    s.ok(&["delete", "hello"]);
    assert_eq!(s.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(s.leftovers(), Vec::<String>::new());
}
