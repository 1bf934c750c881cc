//! Lambda mode against a real daemon: the demo image's `/bin/lambda-echo`
//! is a custom runtime (busybox wget speaking the Runtime API), invoked
//! through the Invoke API on the gateway and with `skiff invoke`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::daemon::{header, instances, json, post, Daemon};
use common::Skiff;

/// The Invoke API: `POST /2015-03-31/functions/{fun}/invocations`.
fn invoke(gw: u16, fun: &str, headers: &[(&str, &str)], payload: &[u8]) -> (u16, String, String) {
    post(
        gw,
        &format!("127.0.0.1:{gw}"),
        &format!("/2015-03-31/functions/{fun}/invocations"),
        headers,
        payload,
    )
}

#[test]
fn invoke_api_results_errors_timeouts_and_concurrency() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    s.ok(&[
        "deploy",
        "echo",
        "--image",
        img,
        "--mode",
        "lambda",
        "--timeout",
        "5s",
        "--max",
        "3",
        "--",
        "/bin/lambda-echo",
    ]);

    // RequestResponse: the runtime's answer, the standard environment.
    let (code, head, body) = invoke(gw, "echo", &[], br#"{"n":1}"#);
    assert_eq!(code, 200, "{head}\n{body}");
    assert_eq!(json(&body)["echo"]["n"], 1);
    assert_eq!(json(&body)["function"], "echo");
    assert_eq!(header(&head, "x-amz-executed-version"), Some("$LATEST"));
    assert!(header(&head, "x-amz-function-error").is_none(), "{head}");
    // The log tail: base64 of the lines printed during the invocation.
    let (code, head, _) = invoke(gw, "echo", &[("X-Amz-Log-Type", "Tail")], br#"{"print":1}"#);
    assert_eq!(code, 200);
    let tail = header(&head, "x-amz-log-result").expect("a log tail");
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("echo {tail} | base64 -d")])
        .output()
        .unwrap();
    let tail = String::from_utf8_lossy(&out.stdout);
    assert!(tail.contains("handling "), "{tail}");
    assert!(tail.starts_with("START RequestId: "), "{tail}");

    // `skiff invoke`: result on stdout, log tail on stderr.
    let out = s.run(&["invoke", "echo", "--payload", r#"{"print":"cli"}"#]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(json(&stdout)["echo"]["print"], "cli");
    assert!(stderr.contains("START RequestId: "), "{stderr}");
    assert!(stderr.contains("handling "), "{stderr}");
    assert!(stderr.contains("REPORT RequestId: "), "{stderr}");

    // A function error: 200, X-Amz-Function-Error, the runtime's payload.
    let (code, head, body) = invoke(gw, "echo", &[], br#"{"fail":1}"#);
    assert_eq!(code, 200, "{head}");
    assert_eq!(header(&head, "x-amz-function-error"), Some("Unhandled"));
    assert_eq!(json(&body)["errorType"], "EchoError");
    let out = s.run(&["invoke", "echo", "--payload", r#"{"fail":1}"#]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // AWS's errors: unknown function, bad qualifier, bad payloads.
    let (code, head, body) = invoke(gw, "nope", &[], b"{}");
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        header(&head, "x-amzn-errortype"),
        Some("ResourceNotFoundException")
    );
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("function:nope"));
    let (code, _, _) = invoke(gw, "echo%3A7", &[], b"{}");
    assert_eq!(code, 404);
    let (code, head, _) = invoke(gw, "echo", &[], b"{not json");
    assert_eq!(code, 400);
    assert_eq!(
        header(&head, "x-amzn-errortype"),
        Some("InvalidRequestContentException")
    );
    let big = vec![b' '; 6 * 1024 * 1024 + 10];
    let (code, head, _) = invoke(gw, "echo", &[], &big);
    assert_eq!(code, 413, "{head}");
    let (code, _, _) = invoke(gw, "echo", &[("X-Amz-Invocation-Type", "Sometimes")], b"{}");
    assert_eq!(code, 400);
    // DryRun: 204, nothing runs.
    let (code, _, _) = invoke(gw, "echo", &[("X-Amz-Invocation-Type", "DryRun")], b"{}");
    assert_eq!(code, 204);
    // Event: 202 at once; it runs (its log line shows up).
    let (code, head, _) = invoke(
        gw,
        "echo",
        &[("X-Amz-Invocation-Type", "Event")],
        br#"{"print":"event"}"#,
    );
    assert_eq!(code, 202, "{head}");
    let id = header(&head, "x-amzn-requestid").unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.ok(&["logs", "echo"]).contains(&id) {
        assert!(
            Instant::now() < deadline,
            "the event never ran: {}",
            s.ok(&["logs", "echo"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Concurrent invocations: one at a time per instance, so several
    // instances, never more than --max; all answered.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || invoke(gw, "echo", &[], format!("{{\"i\":{i}}}").as_bytes()))
        })
        .collect();
    let mut peak = 0;
    for c in calls {
        let (code, head, body) = c.join().unwrap();
        assert_eq!(code, 200, "{head}\n{body}");
        peak = peak.max(instances(&s, "echo"));
    }
    assert!(peak <= 3, "{peak} instances for --max 3");

    // A timeout: AWS's error, the instance killed, the next call served.
    let t0 = Instant::now();
    let (code, head, body) = invoke(gw, "echo", &[], br#"{"sleep":1}"#);
    let took = t0.elapsed();
    assert_eq!(code, 200, "{head}");
    assert_eq!(header(&head, "x-amz-function-error"), Some("Unhandled"));
    let v = json(&body);
    assert_eq!(v["errorType"], "Sandbox.Timedout", "{body}");
    assert!(
        v["errorMessage"]
            .as_str()
            .unwrap()
            .ends_with("Task timed out after 5.00 seconds"),
        "{body}"
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let (code, _, body) = invoke(gw, "echo", &[], br#"{"after":"timeout"}"#);
    assert_eq!(
        (code, json(&body)["echo"]["after"].as_str()),
        (200, Some("timeout"))
    );

    // The runtime exits mid-invocation: Runtime.ExitError, then recovery.
    let (code, head, body) = invoke(gw, "echo", &[], br#"{"exit":1}"#);
    assert_eq!(code, 200, "{head}");
    assert_eq!(json(&body)["errorType"], "Runtime.ExitError", "{body}");
    let (code, _, _) = invoke(gw, "echo", &[], b"{}");
    assert_eq!(code, 200);

    // A response over 6 MB: the runtime gets 413, the caller Lambda's error.
    // Its own function, with time to spare: making and posting 8 MiB with
    // busybox on a loaded CI machine once took longer than echo's 5 s.
    s.ok(&[
        "deploy",
        "big",
        "--image",
        img,
        "--mode",
        "lambda",
        "--timeout",
        "30s",
        "--",
        "/bin/lambda-echo",
    ]);
    let (code, head, body) = invoke(gw, "big", &[], br#"{"big":1}"#);
    let logs = || s.run(&["logs", "--tail", "40", "big"]);
    assert_eq!(code, 200, "{head}\n{:?}", logs());
    assert_eq!(header(&head, "x-amz-function-error"), Some("Unhandled"));
    assert_eq!(
        json(&body)["errorType"],
        "Function.ResponseSizeTooLarge",
        "{body}\n{:?}",
        logs()
    );
    let (code, _, _) = invoke(gw, "big", &[], b"{}");
    assert_eq!(code, 200);

    // A result that is not JSON is passed on as it is (as Lambda does for
    // custom runtimes); a post for an id that is not outstanding gets 400
    // and changes nothing.
    let (code, _, body) = invoke(gw, "echo", &[], br#"{"badjson":1}"#);
    assert_eq!((code, body.as_str()), (200, "this is not json"));
    let (code, _, body) = invoke(gw, "echo", &[], br#"{"wrongid":1}"#);
    assert_eq!(
        (code, json(&body)["after"].as_str()),
        (200, Some("wrongid")),
        "{body}"
    );
    // (wget says so on stderr, which `skiff logs` keeps on stderr.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = s.run(&["logs", "echo"]);
        let errors = String::from_utf8_lossy(&out.stderr).into_owned();
        if errors.contains("HTTP/1.1 400") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runtime saw no 400: {errors}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Plain HTTP to the function: a v2.0 event in, the result out.
    let (code, head, body) = common::daemon::get(gw, "echo.localhost", "/some/path?x=1&x=2");
    assert_eq!(code, 200, "{head}\n{body}");
    let ev = &json(&body)["echo"];
    assert_eq!(ev["version"], "2.0", "{body}");
    assert_eq!(ev["rawPath"], "/some/path");
    assert_eq!(ev["queryStringParameters"]["x"], "1,2");
    assert_eq!(ev["requestContext"]["http"]["method"], "GET");
    let (code, head, body) = common::daemon::get(gw, "127.0.0.1", "/echo/shaped");
    assert_eq!((code, body.as_str()), (201, "made"), "{head}");
    assert!(
        head.contains("x-fn: yes") && head.contains("set-cookie: a=1"),
        "{head}"
    );
    let (code, _, body) = common::daemon::get(gw, "echo.localhost", "/fail");
    assert_eq!(code, 502, "{body}");

    // The Runtime API answers only the instances' own addresses.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ss -Htln | awk '{print $4}' | grep '^10.89.0.1:'")
        .output()
        .unwrap();
    for addr in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(mut c) = TcpStream::connect(addr) {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.write_all(
                b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            let mut resp = String::new();
            let _ = c.read_to_string(&mut resp);
            assert!(
                resp.starts_with("HTTP/1.1 403") || resp.is_empty(),
                "{addr}: {resp}"
            );
        }
    }
    s.ok(&["delete", "echo"]);
}

#[test]
fn init_errors_reach_the_caller() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    s.ok(&[
        "deploy",
        "broken",
        "--image",
        img,
        "--mode",
        "lambda",
        "--",
        "sh",
        "-c",
        r#"wget -q -O- --post-data '{"errorMessage":"No module named app","errorType":"Runtime.ImportModuleError"}' "http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/init/error"; exit 1"#,
    ]);
    let (code, head, body) = invoke(d.gateway, "broken", &[], b"{}");
    assert_eq!(code, 200, "{head}\n{body}");
    assert_eq!(header(&head, "x-amz-function-error"), Some("Unhandled"));
    let v = json(&body);
    assert_eq!(v["errorType"], "Runtime.InitError", "{body}");
    assert!(
        v["errorMessage"]
            .as_str()
            .unwrap()
            .contains("No module named app"),
        "{body}"
    );
    // A runtime that never asks for an invocation: its init times out
    // (Lambda's 10 s), the caller hears so.
    s.ok(&[
        "deploy", "silent", "--image", img, "--mode", "lambda", "--", "sleep", "600",
    ]);
    let t0 = Instant::now();
    let (code, head, body) = invoke(d.gateway, "silent", &[], b"{}");
    assert_eq!(code, 200, "{head}\n{body}");
    assert_eq!(json(&body)["errorType"], "Runtime.InitError", "{body}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());

    // An HTTP-mode service is not a function.
    s.ok(&["deploy", "web", "--image", img]);
    let (code, _, body) = invoke(d.gateway, "web", &[], b"{}");
    assert_eq!(code, 404, "{body}");
}

#[test]
fn event_failures_reach_the_destination_after_retries() {
    let s = Skiff::new();
    let img = s.load_demo();
    let _daemon = Daemon::start(&s);
    // The destination: an HTTP endpoint in this test.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = format!("http://{}/failed", sink.local_addr().unwrap());
    s.ok(&[
        "deploy",
        "flaky",
        "--image",
        img,
        "--mode",
        "lambda",
        "--event-retries",
        "1",
        "--on-failure",
        &dest,
        "--",
        "/bin/lambda-echo",
    ]);
    let e = s.fails(&[
        "deploy",
        "bad",
        "--image",
        img,
        "--mode",
        "lambda",
        "--event-retries",
        "5",
    ]);
    assert!(e.contains("event_retries"), "{e}");
    let out = s.run(&[
        "invoke",
        "flaky",
        "--async",
        "--payload",
        r#"{"fail":1,"print":1}"#,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Queued"));

    sink.set_nonblocking(false).unwrap();
    let (mut conn, _) = {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(sink.accept());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let logs = s.run(&["logs", "flaky"]);
                panic!(
                    "no destination record within 20 s; the function's log:\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                )
            })
            .unwrap()
    };
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the whole body (Content-Length) is in.
    loop {
        let n = conn.read(&mut buf).unwrap();
        req.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&req);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
        assert!(n > 0, "closed early");
    }
    conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        .unwrap();
    let text = String::from_utf8_lossy(&req).into_owned();
    assert!(text.starts_with("POST /failed "), "{text}");
    let record = json(text.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(record["requestPayload"]["fail"], 1);
    assert_eq!(record["responsePayload"]["errorType"], "EchoError");
    // Both tries ran.
    assert_eq!(s.ok(&["logs", "flaky"]).matches("handling ").count(), 2);
}
