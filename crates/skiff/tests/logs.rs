//! `skiff logs [-f] SERVICE`: every instance's output, prefixed by
//! instance, kept after scale to zero, gone with `skiff delete`. The demo
//! image's httpd (`-v`) logs each request's response to stderr
//! (`[ADDR]:PORT: response:200`): the first request here is answered 200,
//! the second 404, to tell them apart.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::daemon::{get, instances, Daemon};
use common::Skiff;

/// stdout and stderr of `skiff logs`, together.
fn logs(s: &Skiff, args: &[&str]) -> String {
    let out = s.run(args);
    assert!(out.status.success(), "skiff {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The line that mentions `what`, once `skiff logs NAME` has it.
fn wait_for_line(s: &Skiff, name: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = logs(s, &["logs", name]);
        if let Some(l) = out.lines().find(|l| l.contains(what)) {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no {what:?} in the logs:\n{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines from a pipe, as they come.
fn lines_of(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
}

fn expect_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(what) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no {what:?} from logs -f; got {seen:?}"),
        }
    }
}

#[test]
fn service_logs_outlive_instances_follow_new_ones_and_go_with_delete() {
    let s = Skiff::new();
    let img = s.load_demo();
    let d = Daemon::start(&s);
    let gw = d.gateway;
    s.ok(&[
        "deploy",
        "web",
        "--image",
        img,
        "--port",
        "8080",
        "--idle-timeout",
        "1s",
        "--timeout",
        "20s",
    ]);
    // Deployed, never started: a service, with nothing to print yet.
    assert_eq!(logs(&s, &["logs", "web"]), "");

    let (code, head, _) = get(gw, "web.localhost", "/");
    assert_eq!(code, 200, "{head}");
    let desc = s.ok(&["describe", "web", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&desc).unwrap();
    let first = v["instances"][0]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no instance: {desc}"))
        .to_string();
    let line = wait_for_line(&s, "web", "response:200");
    assert!(line.starts_with(&format!("{first} | ")), "{line}");
    // The instance is a container: its own logs are there too, unprefixed.
    let own = logs(&s, &["logs", &first]);
    assert!(
        own.lines()
            .any(|l| l.contains("response:200") && !l.contains(" | ")),
        "{own}"
    );

    // Scaled to zero: the instance is gone (what is left is the one
    // prepared for the next start, not running), its output is not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while instances(&s, "web") > 0 {
        assert!(Instant::now() < deadline, "not scaled to zero");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.ok(&["ps", "-q"]).trim(), "");
    let line = wait_for_line(&s, "web", "response:200");
    assert!(line.starts_with(&format!("{first} | ")), "{line}");
    let last = logs(&s, &["logs", "--tail", "1", "web"]);
    assert_eq!(last.lines().count(), 1, "{last}");

    // -f: what is there, then a new instance's output as it comes.
    let mut follow = s
        .cmd(&["logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiff logs -f");
    let (tx, rx) = mpsc::channel();
    lines_of(follow.stdout.take().unwrap(), tx.clone());
    lines_of(follow.stderr.take().unwrap(), tx);
    expect_line(&rx, "response:200");
    let (code, head, _) = get(gw, "web.localhost", "/missing");
    assert_eq!(code, 404, "{head}");
    let line = expect_line(&rx, "response:404");
    assert!(line.starts_with("web-00001-"), "{line}");
    assert!(
        !line.starts_with(&format!("{first} | ")),
        "a new instance: {line}"
    );
    assert!(
        follow.try_wait().unwrap().is_none(),
        "-f keeps following a service"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();

    // Delete: the logs go with the service.
    s.ok(&["delete", "web"]);
    assert!(!s.root.path().join("logs/web").exists());
    let e = s.fails(&["logs", "web"]);
    assert!(e.contains("no such container or service: web"), "{e}");
    assert_eq!(s.leftovers(), Vec::<String>::new());
}
