//! Helpers for the CLI integration tests: a private `SKIFF_ROOT` per test,
//! images made by `scripts/mkimage.py` (no container tool), free ports.
#![allow(dead_code)]

pub mod daemon;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_skiff");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Fails (never skips) when a prerequisite is missing, saying how to get it.
pub fn require(cmd: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{cmd} is missing: apt-get install {package} (scripts/deps.sh does)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start containers and need root"
    );
}

pub struct Skiff {
    pub root: tempfile::TempDir,
}

impl Skiff {
    pub fn new() -> Skiff {
        require("crun", "crun");
        require("python3", "python3");
        Skiff {
            root: tempfile::Builder::new()
                .prefix("skiff-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("SKIFF_ROOT", self.root.path())
            .env_remove("SKIFF_LOG")
            // SKIFF_TEST_LOG=skiff=debug: the daemons' debug log, to chase a failure.
            .envs(std::env::var("SKIFF_TEST_LOG").map(|v| ("SKIFF_LOG", v)))
            // The CLI talks to this root's own daemon, whatever the caller's shell says.
            .env_remove("SKIFF_HOST")
            .env_remove("SKIFF_TOKEN")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn skiff")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "skiff {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure with exactly one line on stderr; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "skiff {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line expected, got: {err}"
        );
        err
    }

    pub fn load_busybox(&self) -> &'static str {
        self.ok(&[
            "load",
            "-q",
            "-i",
            images().busybox_docker.to_str().unwrap(),
        ]);
        "localhost/busybox:latest"
    }

    pub fn load_demo(&self) -> &'static str {
        self.ok(&["load", "-q", "-i", images().demo_oci_gzip.to_str().unwrap()]);
        "localhost/demo:latest"
    }

    /// What this root holds that must go when its containers go. The
    /// trash may keep a removed container's empty skeleton until the next
    /// start, never data.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let root = self.root.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        found.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&root))
                .map(|l| format!("mount: {l}")),
        );
        let containers = self.root.path().join("containers");
        let bundles = self.run_dir().join("containers");
        let netns = self.run_dir().join("netns");
        for dir in [containers, bundles, netns] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                found.extend(rd.flatten().map(|e| e.path().display().to_string()));
            }
        }
        // In the trash, only the skeleton of a container that wrote
        // nothing: its empty upper directory and overlayfs's own; and
        // overlayfs's `work/work` that a start set aside (`.work-<id>`).
        const SKELETON: [&str; 6] = [
            "upper",
            "work",
            "work/work",
            "work/work/incompat",
            "work/work/incompat/volatile",
            "work/work/incompat/volatile/dirty",
        ];
        let trash = self.root.path().join("trash");
        for entry in self.trash() {
            let dir = trash.join(&entry);
            let prefix = if entry.starts_with(".work-") {
                "work/work/"
            } else {
                ""
            };
            for p in walk(&dir) {
                let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
                let rel = format!("{prefix}{rel}");
                let empty = p
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_dir() || (m.is_file() && m.len() == 0));
                if !SKELETON.contains(&rel.as_str()) || !empty {
                    found.push(format!("not a skeleton in the trash: {}", p.display()));
                }
            }
        }
        found
    }

    /// The entries of the trash (see trash.rs), by container id.
    pub fn trash(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path().join("trash"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where this root keeps what lives only as long as the kernel: the
    /// same rule as the binary's (`/run/skiff/<12 hex of sha256(root)>`).
    pub fn run_dir(&self) -> PathBuf {
        use sha2::Digest;
        let root = std::fs::canonicalize(self.root.path()).expect("canonical root");
        let hex: String = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Path::new("/run/skiff").join(&hex[..12])
    }
}

impl Drop for Skiff {
    fn drop(&mut self) {
        // Leave nothing running behind a failed test.
        if let Ok(out) = self.cmd(&["ps", "-aq"]).output() {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.cmd(&args).output();
            }
        }
        // What lived on tmpfs for this root goes with it (a netns still
        // mounted there makes this fail, and the leak shows in `leftovers`).
        let _ = std::fs::remove_dir_all(self.run_dir());
    }
}

pub struct Images {
    pub dir: tempfile::TempDir,
    pub busybox_docker: PathBuf,
    pub busybox_oci: PathBuf,
    pub demo_oci_gzip: PathBuf,
    pub demo_docker_gzip: PathBuf,
}

/// Made once per test binary.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        require("busybox", "busybox-static");
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |name: &str, file: &str, extra: &[&str]| {
            let out = dir.path().join(file);
            let status = Command::new("python3")
                .arg(repo_root().join("scripts/mkimage.py"))
                .args(["--name", name])
                .args(extra)
                .arg(&out)
                .status()
                .expect("python3");
            assert!(status.success(), "mkimage.py {name} failed");
            out
        };
        Images {
            busybox_docker: make(
                "localhost/busybox:latest",
                "bb-docker.tar",
                &["--format", "docker"],
            ),
            busybox_oci: make(
                "localhost/busybox-oci:latest",
                "bb-oci.tar",
                &["--format", "oci"],
            ),
            demo_oci_gzip: make(
                "localhost/demo:latest",
                "demo-oci.tar",
                &["--format", "oci", "--gzip", "--demo"],
            ),
            demo_docker_gzip: make(
                "localhost/demo-docker:latest",
                "demo-docker.tar",
                &["--format", "docker", "--gzip", "--demo"],
            ),
            dir,
        }
    })
}

/// Every path under `dir`, depth first; none if it does not exist.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A plain HTTP/1.0 GET; the response body, once the server answers.
pub fn http_get(port: u16, path: &str, tries: u32) -> Option<String> {
    use std::io::{Read, Write};
    for _ in 0..tries {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = String::new();
                if s.read_to_string(&mut buf).is_ok() && buf.starts_with("HTTP/") {
                    return Some(buf);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// The archive of one offline base image (`debian`, `python` or `lambda`),
/// made by scripts/base-images.sh if missing (cached outside the clone).
pub fn base_image(which: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/base-images.sh"))
        .arg(which)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "scripts/base-images.sh {which} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let archive = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(_, path)| PathBuf::from(path))
        .next_back()
        .unwrap_or_else(|| panic!("base-images.sh {which} printed no archive"));
    assert!(archive.is_file(), "{} is missing", archive.display());
    archive
}

/// Loads `name`: the `base` archive plus one layer holding each `(host
/// file, image path)` of `adds`, with `cmd` (JSON) as its Cmd
/// (scripts/mkimage.py --base/--add).
pub fn load_layered(s: &Skiff, name: &str, base: &Path, adds: &[(&Path, &str)], cmd: &str) {
    let out = tempfile::tempdir().expect("tempdir");
    let archive = out.path().join("image.tar");
    let mut mk = Command::new("python3");
    mk.arg(repo_root().join("scripts/mkimage.py"))
        .args(["--name", name, "--format", "docker", "--base"])
        .arg(base);
    for (src, dest) in adds {
        mk.arg("--add").arg(format!("{}:{dest}", src.display()));
    }
    let made = mk
        .args(["--cmd", cmd])
        .arg(&archive)
        .status()
        .expect("python3");
    assert!(
        made.success(),
        "mkimage.py --base {} failed",
        base.display()
    );
    s.ok(&["load", "-q", "-i", archive.to_str().unwrap()]);
}
