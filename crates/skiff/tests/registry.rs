//! `skiff push` / `pull` / `login` against a real registry (Debian's
//! docker-registry), plain and with htpasswd auth.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, require, Skiff};

struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        require("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut auth = String::new();
        if let Some((user, pass)) = htpasswd {
            require("htpasswd", "apache2-utils");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap();
            assert!(out.status.success());
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                file.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry");
        // Owned by the guard from here on, so a failed start is killed too.
        let registry = Registry {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {port}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn push_then_pull_into_a_fresh_root_and_run() {
    let reg = Registry::start(None);
    let a = Skiff::new();
    let img = a.load_busybox();
    let remote = format!("127.0.0.1:{}/tests/busybox:v1", reg.port);
    a.ok(&["tag", img, &remote]);
    let pushed = a.ok(&["push", "-q", &remote]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");

    let b = Skiff::new();
    b.ok(&["pull", "-q", &remote]);
    assert_eq!(
        b.ok(&["run", "--rm", &remote, "echo", "pulled"]),
        "pulled\n"
    );
    // `run` pulls what it lacks, as docker run does.
    let c = Skiff::new();
    assert_eq!(c.ok(&["run", "--rm", &remote, "echo", "auto"]), "auto\n");

    let err = b.fails(&["pull", &format!("127.0.0.1:{}/tests/nothing:v1", reg.port)]);
    assert!(err.contains("not found"), "{err}");
    let dead = free_port();
    let err = b.fails(&["pull", &format!("127.0.0.1:{dead}/x:1")]);
    assert!(err.contains(&dead.to_string()), "{err}");
}

#[test]
fn htpasswd_registry_needs_login() {
    let reg = Registry::start(Some(("skiff", "s3cret")));
    let s = Skiff::new();
    let img = s.load_busybox();
    let host = format!("127.0.0.1:{}", reg.port);
    let remote = format!("{host}/private/busybox:v1");
    s.ok(&["tag", img, &remote]);
    let err = s.fails(&["push", &remote]);
    assert!(err.contains("login"), "{err}");

    let login = |pass: &str| {
        let mut c = s.cmd(&["login", &host, "-u", "skiff", "--password-stdin"]);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pass.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(!login("wrong").status.success());
    assert!(
        !Path::new(&s.root.path().join("auth.json")).exists() || {
            let t = std::fs::read_to_string(s.root.path().join("auth.json")).unwrap();
            !t.contains(&host)
        }
    );
    let ok = login("s3cret\n");
    assert!(ok.status.success(), "{ok:?}");
    s.ok(&["push", "-q", &remote]);
    s.ok(&["rmi", &remote]);
    s.ok(&["pull", "-q", &remote]);
    s.ok(&["logout", &host]);
    s.ok(&["rmi", &remote]);
    let err = s.fails(&["pull", &remote]);
    assert!(err.contains("login"), "{err}");
}
