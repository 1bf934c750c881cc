//! The control API on TCP (`skiff serve --control`): only with the bearer
//! token; the CLI reaches it with SKIFF_HOST and SKIFF_TOKEN.

mod common;

use std::process::Output;

use common::daemon::{exchange, get, Daemon};
use common::{free_port, Skiff};

/// Status, head (lowercased) and body of one request to the control port.
fn request(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, head, body) = exchange(port, req.as_bytes());
    (status, head.to_ascii_lowercase(), body)
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("the error is JSON");
    v["error"].as_str().expect("{\"error\": ...}").to_string()
}

/// The CLI against `host`, with `token` as SKIFF_TOKEN if given.
fn cli(s: &Skiff, host: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = s.cmd(args);
    c.env("SKIFF_HOST", host);
    if let Some(t) = token {
        c.env("SKIFF_TOKEN", t);
    }
    c.output().expect("spawn skiff")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Failed, with one line on stderr; returns it.
fn fails(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected, got: {err}"
    );
    err
}

#[test]
fn control_over_tcp_needs_the_token() {
    let s = Skiff::new();
    let img = s.load_demo();
    let port = free_port();
    let d = Daemon::start_with(&s, &["--control", &format!("127.0.0.1:{port}")]);

    // The token was made on first need: 32 random bytes in hex, root's alone.
    let path = s.root.path().join("control.token");
    let token = std::fs::read_to_string(&path).expect("control.token");
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let bearer = format!("Bearer {token}");
    let spec = r#"{"image": "localhost/demo:latest", "port": 8080}"#;

    // No token: 401 with a JSON error, and nothing deployed.
    let (code, head, body) = request(port, "GET", "/v1/services", None, "");
    assert_eq!(code, 401, "{head}\n{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(error_of(&body).contains("missing bearer token"), "{body}");
    let (code, _, body) = request(port, "POST", "/v1/services/hello/revisions", None, spec);
    assert_eq!(code, 401, "{body}");
    // Wrong token, or not a bearer one: 401 too.
    for auth in [
        "Bearer 0000000000000000000000000000000000000000000000000000000000000000",
        &format!("Basic {token}"),
        token,
    ] {
        let (code, head, body) = request(
            port,
            "POST",
            "/v1/services/hello/revisions",
            Some(auth),
            spec,
        );
        assert_eq!(code, 401, "{auth}: {head}\n{body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(!error_of(&body).is_empty());
    }
    let (code, _, body) = request(
        port,
        "DELETE",
        "/v1/services/hello",
        Some("Bearer nope"),
        "",
    );
    assert_eq!(code, 401, "{body}");
    assert_eq!(s.ok(&["services", "--json"]).trim(), "[]");

    // The right token: the same API as on the socket.
    let (code, _, body) = request(port, "GET", "/v1/services", Some(&bearer), "");
    assert_eq!((code, body.trim()), (200, "[]"));

    // Malformed JSON: 400 naming the problem, nothing created.
    let (code, _, body) = request(
        port,
        "POST",
        "/v1/services/hello/revisions",
        Some(&bearer),
        r#"{"image": "#,
    );
    assert_eq!(code, 400, "{body}");
    let e = error_of(&body);
    assert!(e.contains("service spec") && e.contains("EOF"), "{e}");
    let (code, _, body) = request(port, "GET", "/v1/services/hello", Some(&bearer), "");
    assert_eq!(code, 404, "{body}");
    assert_eq!(s.ok(&["services", "--json"]).trim(), "[]");

    // Neither the gateway nor the admin listener serves the control API.
    let (code, _, body) = get(d.gateway, "127.0.0.1", "/v1/services");
    assert_eq!(code, 404, "{body}");
    let (code, _, body) = get(d.admin, "127.0.0.1", "/v1/services");
    assert_eq!(code, 404, "{body}");

    // The CLI over TCP: deploys, lists, and the service answers.
    let host = format!("tcp://127.0.0.1:{port}");
    let out = ok(cli(
        &s,
        &host,
        Some(token),
        &[
            "deploy",
            "hello",
            "--image",
            img,
            "--port",
            "8080",
            "--timeout",
            "20s",
        ],
    ));
    assert!(out.contains("hello-00001"), "{out}");
    let list = ok(cli(&s, &host, Some(token), &["services"]));
    assert!(list.contains("hello-00001"), "{list}");
    let (code, head, body) = get(d.gateway, &format!("hello.localhost:{}", d.gateway), "/");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(body.contains("Hello from Skiff"), "{body}");
    // A deploy merged from a revision that is no longer the newest is
    // refused whole (409), not applied over the one in between.
    let stale = |base: &str| {
        let path = format!("/v1/services/hello/revisions?traffic=none&base={base}");
        request(port, "POST", &path, Some(&bearer), spec)
    };
    let (code, _, body) = stale("hello-00001");
    assert_eq!(code, 201, "{body}");
    let (code, _, body) = stale("hello-00001");
    assert_eq!(code, 409, "{body}");
    assert!(error_of(&body).contains("now at hello-00002"), "{body}");
    let (code, _, body) = request(port, "GET", "/v1/services/hello", Some(&bearer), "");
    assert_eq!(code, 200);
    assert!(!body.contains("hello-00003"), "{body}");
    // --host does the same as SKIFF_HOST.
    let mut c = s.cmd(&["--host", &host, "describe", "hello", "--json"]);
    let desc = ok(c.env("SKIFF_TOKEN", token).output().unwrap());
    assert!(desc.contains("hello-00001"), "{desc}");

    // Without a token, with a wrong one, or nothing listening: one line.
    let e = fails(cli(&s, &host, None, &["services"]));
    assert!(
        e.contains("SKIFF_TOKEN") && e.contains("control.token"),
        "{e}"
    );
    let e = fails(cli(
        &s,
        &host,
        Some("wrong-token-but-long"),
        &["delete", "hello"],
    ));
    assert!(e.contains("wrong bearer token"), "{e}");
    let closed = format!("tcp://127.0.0.1:{}", free_port());
    let e = fails(cli(&s, &closed, Some(token), &["services"]));
    assert!(
        e.contains("skiff daemon not running") && e.contains(&closed),
        "{e}"
    );
    let e = fails(cli(&s, "127.0.0.1:1", Some(token), &["services"]));
    assert!(e.contains("tcp://HOST:PORT"), "{e}");

    // The wrong token changed nothing; the right one deletes.
    assert!(s.ok(&["services"]).contains("hello"));
    ok(cli(&s, &host, Some(token), &["delete", "hello"]));
    assert_eq!(s.ok(&["services", "--json"]).trim(), "[]");
}

#[test]
fn serve_refuses_a_short_token() {
    let s = Skiff::new();
    let out = s
        .cmd(&[
            "serve",
            "--gateway",
            &format!("127.0.0.1:{}", free_port()),
            "--admin",
            &format!("127.0.0.1:{}", free_port()),
            "--control",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env("SKIFF_TOKEN", "short")
        .output()
        .expect("spawn skiff serve");
    let e = fails(out);
    assert!(
        e.contains("SKIFF_TOKEN") && e.contains("at least 16"),
        "{e}"
    );
    assert!(!s.root.path().join("control.token").exists());
}
