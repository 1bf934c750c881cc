//! The gateway's contract with clients and instances, against a real
//! daemon and the demo image (busybox httpd with CGI programs: `sleep`,
//! `count`, `env`; `/bin/upgrade-echo` and `/bin/keepalive-count`):
//! forwarded headers, request ids and traceparent, limits (431, 413), h2c,
//! protocol upgrades, keep-alive connections to instances, the
//! activator's bounded queue, and what an instance's death and a rollout
//! under load cost the clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{exchange, get, header, instances, Daemon};
use common::{require, Skiff};

fn metric(admin: u16, prefix: &str) -> u64 {
    let (_, _, text) = get(admin, "127.0.0.1", "/metrics");
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn headers_limits_h2c_and_upgrades() {
    require("curl", "curl");
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    s.ok(&["deploy", "hello", "--image", img]);

    // Forwarded headers, the client's request id and traceparent reach the
    // instance unchanged; the response carries the id.
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let req = format!(
        "GET /cgi-bin/env HTTP/1.1\r\nHost: hello.localhost:{gw}\r\nX-Request-Id: req-42\r\ntraceparent: {tp}\r\nConnection: close\r\n\r\n"
    );
    let (code, head, body) = exchange(gw, req.as_bytes());
    assert_eq!(code, 200, "{head}\n{body}");
    assert_eq!(header(&head, "x-request-id"), Some("req-42"), "{head}");
    for want in [
        "HTTP_X_REQUEST_ID=req-42".to_string(),
        format!("HTTP_TRACEPARENT={tp}"),
        "HTTP_X_FORWARDED_FOR=127.0.0.1".to_string(),
        "HTTP_X_FORWARDED_PROTO=http".to_string(),
        format!("HTTP_X_FORWARDED_HOST=hello.localhost:{gw}"),
    ] {
        assert!(body.contains(&want), "{want} missing in\n{body}");
    }
    // Without one, the gateway makes an id; by path, the prefix is passed on.
    let (code, head, body) = get(gw, "127.0.0.1", "/hello/cgi-bin/env");
    assert_eq!(code, 200, "{head}\n{body}");
    let id = header(&head, "x-request-id").expect("a request id");
    assert_eq!(id.len(), 32, "{head}");
    assert!(body.contains(&format!("HTTP_X_REQUEST_ID={id}")), "{body}");
    assert!(body.contains("HTTP_X_FORWARDED_PREFIX=/hello"), "{body}");

    // Limits: a 70 KB header → 431; a declared 40 MB body → 413 at once,
    // JSON, and no instance sees it; 1 MB goes through, counted.
    let big = "a".repeat(70_000);
    let req = format!("GET / HTTP/1.1\r\nHost: hello.localhost\r\nX-Big: {big}\r\n\r\n");
    let (code, head, _) = exchange(gw, req.as_bytes());
    assert_eq!(code, 431, "{head}");
    let req = "POST /cgi-bin/count HTTP/1.1\r\nHost: hello.localhost\r\nContent-Length: 40000000\r\nConnection: close\r\n\r\n";
    let (code, head, body) = exchange(gw, req.as_bytes());
    assert_eq!(code, 413, "{head}\n{body}");
    assert!(
        body.contains("\"error\"") && body.contains("32 MiB"),
        "{body}"
    );
    let mut req = b"POST /cgi-bin/count HTTP/1.1\r\nHost: hello.localhost\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 1_000_000));
    let (code, head, body) = exchange(gw, &req);
    // (chunked: the count is the one chunk)
    assert_eq!(code, 200, "{head}");
    assert!(body.contains("\r\n1000000\n"), "{body:?}");

    // h2c: HTTP/2 with prior knowledge, proxied to the HTTP/1.1 instance.
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", "--http2-prior-knowledge"])
        .arg(format!("http://127.0.0.1:{gw}/hello/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("Hello from Skiff"), "{text}");

    // An upgrade (websocket-style): 101, then bytes both ways.
    s.ok(&[
        "deploy",
        "echo",
        "--image",
        img,
        "--",
        "sh",
        "-c",
        "exec nc -ll -p $PORT -e /bin/upgrade-echo",
    ]);
    let mut c = TcpStream::connect(("127.0.0.1", gw)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(
        b"GET /chat HTTP/1.1\r\nHost: echo.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "closed in the head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(header(&head, "upgrade"), Some("echo"), "{head}");
    for msg in ["first\n", "second\n"] {
        c.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    drop(c);

    // What happened is on /metrics.
    assert!(
        metric(
            d.admin,
            "skiff_requests_total{service=\"hello\",revision=\"hello-00001\",code=\"200\"}"
        ) >= 3
    );
    assert_eq!(
        metric(
            d.admin,
            "skiff_requests_total{service=\"hello\",revision=\"hello-00001\",code=\"413\"}"
        ),
        1
    );
    assert!(
        metric(
            d.admin,
            "skiff_request_duration_seconds_count{service=\"hello\",revision=\"hello-00001\"}"
        ) >= 4
    );
    assert_eq!(
        metric(
            d.admin,
            "skiff_cold_starts_total{service=\"echo\",revision=\"echo-00001\"}"
        ),
        1
    );
    let (_, _, m) = get(d.admin, "127.0.0.1", "/metrics");
    assert!(m.contains("skiff_queue_depth{service=\"hello\""), "{m}");
    assert!(
        m.contains("skiff_instances{service=\"hello\",revision=\"hello-00001\",state=\"ready\"} 1"),
        "{m}"
    );
    // The public gateway does not serve the metrics.
    let (code, _, _) = get(gw, "127.0.0.1", "/metrics");
    assert_eq!(code, 404);
}

/// Clients that send their head slowly (slowloris) or a broken chunked
/// body hold up nobody: others are served meanwhile, and the broken body
/// gets one 400 JSON answer naming it, not a 502 blaming the instance,
/// which stays.
#[test]
fn slow_and_malformed_clients_do_not_stall_the_gateway() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    s.ok(&["deploy", "hello", "--image", img]);
    assert_eq!(get(gw, "hello.localhost", "/").0, 200);
    let names = || {
        let v: serde_json::Value =
            serde_json::from_str(&s.ok(&["describe", "hello", "--json"])).unwrap();
        let all = v["instances"].as_array().cloned().unwrap_or_default();
        all.iter()
            .map(|i| i["name"].to_string())
            .collect::<Vec<_>>()
    };
    let before = names();

    // 200 connections each with half a request head, never finished.
    let slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", gw)).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\nX-Slow: ")
                .unwrap();
            c
        })
        .collect();
    let t = Instant::now();
    for _ in 0..20 {
        let (code, head, body) = get(gw, "hello.localhost", "/");
        assert_eq!(code, 200, "{head}\n{body}");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A chunk size that is not hex: the client's fault, said as such.
    let (code, head, body) = exchange(
        gw,
        b"POST /cgi-bin/count HTTP/1.1\r\nHost: hello.localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
    );
    assert_eq!(code, 400, "{head}\n{body}");
    assert!(
        body.contains("\"error\"") && body.contains("bad request body"),
        "{body}"
    );
    assert_eq!(get(gw, "hello.localhost", "/").0, 200);
    assert_eq!(names(), before, "the instance was replaced");
    drop(slow);
    s.ok(&["delete", "hello"]);
}

/// Requests one after another reach the instance on one connection: the
/// gateway keeps it alive between them (whatever its clients do).
#[test]
fn connections_to_an_instance_are_kept_alive() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    s.ok(&[
        "deploy",
        "ka",
        "--image",
        img,
        "--",
        "sh",
        "-c",
        // (A pid 1 that stops at SIGTERM: no 10 s grace at the delete.)
        "trap 'exit 0' TERM; nc -ll -p $PORT -e /bin/keepalive-count & wait",
    ]);
    // The readiness probe's connection carries the first request (the
    // server's first connection), and the same connection all the others.
    for i in 0..5 {
        let (code, head, body) = get(d.gateway, "ka.localhost", "/");
        assert_eq!(code, 200, "{head}\n{body}");
        assert_eq!(
            body, "1",
            "request {i} came on another connection than the probe's"
        );
    }
    s.ok(&["delete", "ka"]);
}

#[test]
fn a_full_queue_gets_503_and_a_long_wait_504() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    // One instance, one request at a time: 100 may wait (the queue's floor).
    s.ok(&[
        "deploy",
        "slow",
        "--image",
        img,
        "--concurrency",
        "1",
        "--max",
        "1",
        "--timeout",
        "60s",
    ]);
    assert_eq!(get(gw, "slow.localhost", "/").0, 200);
    let busy = std::thread::spawn(move || get(gw, "slow.localhost", "/cgi-bin/sleep?3"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(d.admin, "skiff_autoscaler_actual_instances") == 0
        || !get(d.admin, "127.0.0.1", "/metrics").2.contains(
            "skiff_requests_total{service=\"slow\",revision=\"slow-00001\",code=\"200\"} 1",
        )
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let waiting: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || get(gw, "slow.localhost", "/").0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        d.admin,
        "skiff_queue_depth{service=\"slow\",revision=\"slow-00001\"}",
    ) < 100
    {
        assert!(Instant::now() < deadline, "the queue did not fill");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, head, body) = get(gw, "slow.localhost", "/");
    assert_eq!(code, 503, "{head}\n{body}");
    assert!(body.contains("queue is full"), "{body}");
    assert_eq!(busy.join().unwrap().0, 200);
    // The waiting requests are served one at a time after it.
    let codes: Vec<u16> = waiting.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");

    // A request that waits past the timeout gets 504.
    s.ok(&[
        "deploy",
        "short",
        "--image",
        img,
        "--concurrency",
        "1",
        "--max",
        "1",
        "--timeout",
        "2s",
    ]);
    assert_eq!(get(gw, "short.localhost", "/").0, 200);
    let busy = std::thread::spawn(move || get(gw, "short.localhost", "/cgi-bin/sleep?4").0);
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, body) = get(gw, "short.localhost", "/");
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("timeout"), "{body}");
    // (The busy one itself ran past the 2 s timeout: the instance answers
    // it all the same.)
    assert_eq!(busy.join().unwrap(), 200);
}

/// How a load ended: failures, samples of them, and the clients (each
/// returns how many it got served).
type Load = (
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
    Vec<std::thread::JoinHandle<usize>>,
);

/// Clients in a loop until `stop`; counts what failed, with samples.
fn load(gw: u16, host: &'static str, clients: usize, stop: Arc<AtomicBool>) -> Load {
    let failed = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads = (0..clients)
        .map(|_| {
            let (stop, failed, samples) = (stop.clone(), failed.clone(), samples.clone());
            std::thread::spawn(move || {
                let mut ok = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (code, head, body) = get(gw, host, "/");
                    if code == 200 {
                        ok += 1;
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        samples.lock().unwrap().push(format!("{head}\n{body}"));
                    }
                }
                ok
            })
        })
        .collect();
    (failed, samples, threads)
}

#[test]
fn no_request_lost_to_a_rollout_and_only_in_flight_ones_to_a_crash() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    s.ok(&["deploy", "steady", "--image", img, "--min", "1"]);
    assert_eq!(get(gw, "steady.localhost", "/").0, 200);

    // Constant load while a new revision rolls out: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, samples, threads) = load(gw, "steady.localhost", 4, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    s.ok(&[
        "deploy", "steady", "--image", img, "--min", "1", "-e", "V=2",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        samples.lock().unwrap()
    );
    assert!(served > 20, "served {served}");
    let (_, head, _) = get(gw, "steady.localhost", "/");
    assert!(head.contains("x-skiff-revision: steady-00002"), "{head}");

    // An instance dies mid-request: that request gets 502 JSON, the
    // others keep being served, the instance is replaced.
    let slow = std::thread::spawn(move || get(gw, "steady.localhost", "/cgi-bin/sleep?5"));
    std::thread::sleep(Duration::from_millis(500));
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, samples, threads) = load(gw, "steady.localhost", 3, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let ps: serde_json::Value = serde_json::from_str(&s.ok(&["ps", "--json"])).unwrap();
    let pids: Vec<i64> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("steady-00002-"))
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "{ps}");
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let (code, head, body) = slow.join().unwrap();
    assert_eq!(code, 502, "{head}\n{body}");
    assert!(body.contains("\"error\""), "{body}");
    // Replaced: `--min 1` is kept and requests are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while instances(&s, "steady") != 1 || get(gw, "steady.localhost", "/").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "{}",
            s.ok(&["describe", "steady"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // Requests that were on the dying instance when it died fail like the
    // slow one (at most one per client, and one each may race the
    // detection); requests that find it refusing are retried elsewhere.
    let lost = failed.load(Ordering::Relaxed);
    assert!(lost <= 6, "{lost} failed: {:?}", samples.lock().unwrap());
    assert!(served > 10, "served {served}");
}

/// The autoscaler scales down while a lighter load goes on: the instances
/// it stops are drained first, so no request fails. (Slow: the KPA's 60 s
/// stable window must pass before it scales down.)
#[test]
fn no_request_lost_while_scaling_down_under_load() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    s.ok(&[
        "deploy",
        "ebb",
        "--image",
        img,
        "--concurrency",
        "1",
        "--max",
        "4",
        "--idle-timeout",
        "5m",
    ]);
    // Heavy: six clients until at least three instances are up.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, samples, threads) = load(gw, "ebb.localhost", 6, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while instances(&s, "ebb") < 3 {
        assert!(Instant::now() < deadline, "{}", s.ok(&["describe", "ebb"]));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| {
        t.join().unwrap();
    });
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        samples.lock().unwrap()
    );
    let peak = instances(&s, "ebb");

    // Light: one client, on and on, while the autoscaler brings the count
    // down once its stable window has passed.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, samples, threads) = load(gw, "ebb.localhost", 1, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(100);
    while instances(&s, "ebb") >= peak {
        assert!(
            Instant::now() < deadline,
            "no scale-down from {peak}: {}",
            s.ok(&["describe", "ebb"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Some more requests across the stops.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        samples.lock().unwrap()
    );
    assert!(served > 50, "served {served}");
    assert!(instances(&s, "ebb") < peak);
}
