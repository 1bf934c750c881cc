//! A function on AWS's Rust runtime (the `lambda_runtime` crate) against a
//! real daemon: tests/fixtures/rust-lambda, built here with cargo (into the
//! build cache, so a machine pays once) and added to the offline debian base
//! image (scripts/base-images.sh). The same image also serves the same logic
//! in HTTP mode (`bootstrap --http`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{header, instances, json, post, Daemon};
use common::{base_image, load_layered, repo_root, Skiff};

/// The Invoke API: `POST /2015-03-31/functions/{fun}/invocations`.
fn invoke(gw: u16, fun: &str, payload: &[u8]) -> (u16, String, String) {
    post(
        gw,
        &format!("127.0.0.1:{gw}"),
        &format!("/2015-03-31/functions/{fun}/invocations"),
        &[],
        payload,
    )
}

/// Builds the fixture (release, its own Cargo.lock) and returns `bootstrap`.
fn build_fixture() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/skiff-target"))
        .join("rust-lambda");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(repo_root().join("tests/fixtures/rust-lambda/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building tests/fixtures/rust-lambda failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("release/bootstrap")
}

/// `localhost/rustfn:latest`: the debian base plus `/var/runtime/bootstrap`.
fn make_image(s: &Skiff) {
    let base = base_image("debian");
    let bootstrap = build_fixture();
    load_layered(
        s,
        "localhost/rustfn:latest",
        &base,
        &[(&bootstrap, "/var/runtime/bootstrap")],
        r#"["/var/runtime/bootstrap"]"#,
    );
}

const BOTO_STREAM: &str = r#"import sys, boto3
c = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test")
r = c.invoke_with_response_stream(FunctionName="rustfn", Payload=b'{"stream": 3}')
chunks, complete = [], None
for ev in r["EventStream"]:
    if "PayloadChunk" in ev:
        chunks.append(ev["PayloadChunk"]["Payload"])
    if "InvokeComplete" in ev:
        complete = ev["InvokeComplete"]
data = b"".join(chunks)
assert data.endswith(b"chunk 0\nchunk 1\nchunk 2\n"), data
assert complete is not None and not complete.get("ErrorCode"), complete
r = c.invoke_with_response_stream(FunctionName="rustfn", Payload=b'{"fail": true}')
done = [ev["InvokeComplete"] for ev in r["EventStream"] if "InvokeComplete" in ev]
assert done and done[0].get("ErrorCode"), done
print("stream ok")
"#;

#[test]
fn a_lambda_runtime_function_in_lambda_and_http_mode() {
    let s = Skiff::new();
    make_image(&s);
    let d = Daemon::start(&s);
    let gw = d.gateway;
    s.ok(&[
        "deploy",
        "rustfn",
        "--image",
        "localhost/rustfn:latest",
        "--mode",
        "lambda",
        "--timeout",
        "5s",
        "--max",
        "4",
    ]);

    // RequestResponse: the handler's result, with the runtime's context.
    let (code, head, body) = invoke(gw, "rustfn", br#"{"n":1}"#);
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(header(&head, "x-amz-function-error").is_none(), "{head}");
    let v = json(&body);
    assert_eq!(v["echo"]["n"], 1, "{body}");
    assert_eq!(v["function"], "rustfn", "{body}");
    let id = v["request_id"].as_str().expect("a request id");
    assert_eq!(header(&head, "x-amzn-requestid"), Some(id), "{head}");

    // A handler error: the Rust runtime posts /error with its Diagnostic.
    let (code, head, body) = invoke(gw, "rustfn", br#"{"fail":true}"#);
    assert_eq!(code, 200, "{head}\n{body}");
    assert_eq!(header(&head, "x-amz-function-error"), Some("Unhandled"));
    let v = json(&body);
    assert_eq!(v["errorMessage"], "asked to fail", "{body}");
    assert!(
        v["errorType"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    // The instance lives on after an error.
    let (code, _, body) = invoke(gw, "rustfn", br#"{"after":"error"}"#);
    assert_eq!(
        (code, json(&body)["echo"]["after"].as_str()),
        (200, Some("error"))
    );

    // Eight at once (each sleeps, so they overlap): all answered, by at
    // most --max instances.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                invoke(
                    gw,
                    "rustfn",
                    format!("{{\"i\":{i},\"sleep_ms\":300}}").as_bytes(),
                )
            })
        })
        .collect();
    let mut peak = 0;
    let mut ids = std::collections::HashSet::new();
    for (i, c) in calls.into_iter().enumerate() {
        let (code, head, body) = c.join().unwrap();
        assert_eq!(code, 200, "{head}\n{body}");
        let v = json(&body);
        assert_eq!(v["echo"]["i"], i, "{body}");
        ids.insert(v["request_id"].as_str().unwrap().to_string());
        peak = peak.max(instances(&s, "rustfn"));
    }
    assert_eq!(ids.len(), 8, "request ids repeat: {ids:?}");
    assert!(peak <= 4, "{peak} instances for --max 4");

    // `skiff invoke`.
    let out = s.run(&["invoke", "rustfn", "--payload", r#"{"x":1}"#]);
    assert!(out.status.success(), "{out:?}");
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["echo"]["x"], 1, "{v}");
    assert_eq!(v["function"], "rustfn");
    let out = s.run(&["invoke", "rustfn", "--payload", r#"{"fail":true}"#]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Response streaming. A plain Invoke gets it whole (the prelude gone).
    let (code, head, body) = invoke(gw, "rustfn", br#"{"stream":2}"#);
    assert_eq!((code, body.as_str()), (200, "chunk 0\nchunk 1\n"), "{head}");
    // A function URL gets the prelude's status and headers, then the
    // chunks as they are made (100 ms apart), not all at the end.
    let mut c = TcpStream::connect(("127.0.0.1", gw)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET /stream/4 HTTP/1.1\r\nHost: rustfn.localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    let mut first_chunk = None;
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first_chunk.is_none() && String::from_utf8_lossy(&got).contains("chunk 0") {
            first_chunk = Some(Instant::now());
        }
    }
    let spread = first_chunk.expect("no chunk 0").elapsed();
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-streamed: yes"),
        "{text}"
    );
    for i in 0..4 {
        assert!(text.contains(&format!("chunk {i}\n")), "{text}");
    }
    assert!(
        spread >= Duration::from_millis(200),
        "all at once ({spread:?}): {text}"
    );
    // InvokeWithResponseStream through boto3 (event-stream frames, CRCs checked).
    let python = std::path::Path::new("/var/cache/skiff-venv/bin/python");
    assert!(
        python.is_file(),
        "run scripts/pytools.sh (scripts/test.sh does)"
    );
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(BOTO_STREAM)
        .arg(format!("http://127.0.0.1:{gw}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The same image and logic in HTTP mode, through the gateway.
    s.ok(&[
        "deploy",
        "rusthttp",
        "--image",
        "localhost/rustfn:latest",
        "--",
        "/var/runtime/bootstrap",
        "--http",
    ]);
    let (code, head, body) = post(gw, "rusthttp.localhost", "/", &[], br#"{"n":2}"#);
    assert_eq!(code, 200, "{head}\n{body}");
    let v = json(&body);
    assert_eq!(v["echo"]["n"], 2, "{body}");
    assert_eq!(v["function"], "rusthttp", "{body}");
    let (code, _, body) = post(gw, "rusthttp.localhost", "/", &[], br#"{"fail":true}"#);
    assert_eq!(code, 500, "{body}");
    assert_eq!(json(&body)["errorMessage"], "asked to fail");

    s.ok(&["delete", "rustfn"]);
    s.ok(&["delete", "rusthttp"]);
}
