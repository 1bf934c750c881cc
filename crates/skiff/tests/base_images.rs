//! The offline base images `scripts/base-images.sh` makes (a debootstrap'd
//! Debian, Python on it, the Lambda Python image with AWS's runtime
//! interface client), loaded and run. The first run on a machine builds
//! them (about a minute, from the Debian mirror and PyPI); later runs find
//! them in the cache (`SKIFF_BASE_CACHE`, default /var/cache/skiff-base).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{repo_root, Skiff};

const DEBIAN: &str = "docker.io/library/debian:bookworm-slim";
const PYTHON: &str = "docker.io/library/python:3.11-slim";
const LAMBDA: &str = "public.ecr.aws/lambda/python:3.11";

/// Reference → archive, as the script prints them; run once per test binary
/// (the script itself locks its cache against other processes).
fn base_images() -> &'static HashMap<String, PathBuf> {
    static ARCHIVES: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    ARCHIVES.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/base-images.sh"))
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "scripts/base-images.sh failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(r, p)| (r.to_string(), PathBuf::from(p)))
            .collect()
    })
}

fn load(s: &Skiff, reference: &str) -> PathBuf {
    let archive = base_images()
        .get(reference)
        .unwrap_or_else(|| panic!("base-images.sh printed no archive for {reference}"));
    assert!(archive.is_file(), "{} is missing", archive.display());
    let out = s.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains(reference), "load said: {out}");
    archive.clone()
}

#[test]
fn debian_slim() {
    let s = Skiff::new();
    load(&s, DEBIAN);
    let out = s.ok(&["run", "--rm", DEBIAN, "cat", "/etc/os-release"]);
    assert!(out.contains("VERSION_CODENAME=bookworm"), "{out}");
    // Cleaned: no apt lists or logs; apt itself works. Default Cmd is bash.
    let out = s.ok(&[
        "run",
        "--rm",
        DEBIAN,
        "sh",
        "-c",
        "ls /var/lib/apt/lists | grep -v partial | wc -l; find /var/log -type f | wc -l; apt-get --version | head -1",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["0", "0"], "{out}");
    assert!(lines[2].starts_with("apt "), "{out}");
    let out = s.ok(&["run", "--rm", DEBIAN]);
    assert_eq!(out, "");
}

#[test]
fn python_slim() {
    let s = Skiff::new();
    let archive = load(&s, PYTHON);
    let out = s.ok(&[
        "run",
        "--rm",
        PYTHON,
        "python",
        "-c",
        "import sys; print(sys.version)",
    ]);
    assert!(out.starts_with("3.11."), "{out}");
    let out = s.ok(&["run", "--rm", PYTHON, "pip", "--version"]);
    assert!(
        out.starts_with("pip ") && out.contains("(python 3.11)"),
        "{out}"
    );
    let out = s.ok(&[
        "run",
        "--rm",
        PYTHON,
        "sh",
        "-c",
        "echo $LANG $PYTHON_VERSION; python3 -c 'import ssl, sqlite3, venv; print(\"stdlib\")'",
    ]);
    assert!(out.starts_with("C.UTF-8 3.11."), "{out}");
    assert!(out.ends_with("stdlib\n"), "{out}");

    // pip installs into the system as in the official image (no PEP 668
    // refusal): a wheel the script downloaded, from a mounted directory.
    let wheels = archive.parent().unwrap().join("wheels");
    let wheel_dir = format!("{}:/wheels:ro", wheels.display());
    let out = s.ok(&[
        "run",
        "--rm",
        "-v",
        &wheel_dir,
        PYTHON,
        "sh",
        "-c",
        "pip install -q --root-user-action=ignore --no-index --find-links /wheels snapshot-restore-py \
         && python -c 'import snapshot_restore_py; print(\"installed\")'",
    ]);
    assert_eq!(out, "installed\n");
}

#[test]
fn lambda_python() {
    let s = Skiff::new();
    load(&s, LAMBDA);
    let out = s.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        LAMBDA,
        "-c",
        "import awslambdaric, awslambdaric.bootstrap, runtime_client, os; \
         print('ok', os.getcwd(), os.environ['LAMBDA_TASK_ROOT'], os.environ['LAMBDA_RUNTIME_DIR'])",
    ]);
    assert_eq!(out, "ok /var/task /var/task /var/runtime\n");

    // The entrypoint runs awslambdaric; without a Runtime API (and with no
    // emulator in the image) it says so and fails.
    let out = s.run(&["run", "--rm", LAMBDA, "app.handler"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AWS_LAMBDA_RUNTIME_API is not set"), "{err}");
    let out = s.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "cat",
        LAMBDA,
        "/lambda-entrypoint.sh",
    ]);
    assert!(out.contains("exec python3 -m awslambdaric \"$@\""), "{out}");
}

/// Built once, cached: a second run of the script builds nothing.
#[test]
fn cached_second_run() {
    let archives = base_images();
    let before: Vec<_> = archives.values().map(|p| modified(p)).collect();
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/base-images.sh"))
        .output()
        .expect("bash");
    assert!(out.status.success());
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    let after: Vec<_> = archives.values().map(|p| modified(p)).collect();
    assert_eq!(before, after);
    assert_eq!(archives.len(), 3, "{archives:?}");
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .expect("mtime")
}
