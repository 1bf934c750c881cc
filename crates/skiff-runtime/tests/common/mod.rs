//! Fixtures for the integration tests: they run real containers with crun,
//! so they need root and crun and fail (never skip) without them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use skiff_runtime::spec::{build_spec, NetworkConfig, RunConfig};
use skiff_runtime::{cgroups, rootfs, OciRuntime};

pub const BUSYBOX: &str = "/usr/bin/busybox";

/// Panics with how to fix it when the host cannot run containers.
pub fn require_host() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run containers and need root (run them with sudo)"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} missing: apt-get install busybox-static"
    );
    if let Err(e) = OciRuntime::new("crun", "/tmp") {
        panic!("{e}");
    }
    cgroups::prepare_host("crun").expect("prepare the host's cgroups for crun");
}

/// A busybox image layer: the static binary, a link per applet, passwd,
/// group, and a page for httpd.
pub fn busybox_layer(dir: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "www", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::write(dir.join("www/index.html"), "hello from skiff\n").unwrap();
}

/// One container's directory: a busybox layer, an overlay rootfs on it,
/// its bundle, and a private crun state root. Dropping it deletes the
/// container and unmounts everything.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub id: String,
    pub rt: OciRuntime,
}

impl Fixture {
    pub fn new(name: &str) -> Fixture {
        require_host();
        let tmp = tempfile::Builder::new()
            .prefix("skiff-rt-")
            .tempdir()
            .unwrap();
        let id = format!("skiff-test-{name}-{}", std::process::id());
        let rt = OciRuntime::new("crun", tmp.path().join("state")).unwrap();
        let f = Fixture { tmp, id, rt };
        busybox_layer(&f.layer());
        rootfs::mount_overlay(&[f.layer()], &f.dir("upper"), &f.dir("work"), &f.rootfs()).unwrap();
        f
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn layer(&self) -> PathBuf {
        self.dir("layer")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir("rootfs")
    }

    pub fn bundle(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    pub fn cgroup_path(&self) -> String {
        format!("/skiff-test/{}", self.id)
    }

    pub fn config(&self, args: &[&str]) -> RunConfig {
        RunConfig {
            image: Default::default(),
            entrypoint: None,
            cmd: Some(args.iter().map(|s| s.to_string()).collect()),
            env: vec![],
            workdir: None,
            user: None,
            hostname: "box".into(),
            memory: None,
            cpus_milli: None,
            pids_limit: None,
            mounts: vec![],
            network: NetworkConfig::None,
            terminal: false,
            cgroup_path: self.cgroup_path(),
            etc_files: None,
        }
    }

    /// Writes the config as Skiff does (for crun: with the seccomp filter
    /// precompiled) and returns the spec as built.
    pub fn write_spec(&self, cfg: &RunConfig) -> oci_spec::runtime::Spec {
        let spec = build_spec(cfg, &self.rootfs()).unwrap();
        self.rt.write_config(&self.bundle(), &spec).unwrap();
        spec
    }

    /// `crun run` in the foreground with the output captured.
    pub fn run(&self, cfg: &RunConfig) -> Output {
        self.write_spec(cfg);
        self.run_written()
    }

    pub fn run_written(&self) -> Output {
        self.rt
            .run_command(
                &self.id,
                &self.bundle(),
                &self.bundle().join("pid"),
                &self.bundle().join("runtime.log"),
            )
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.rt.delete(&self.id, true);
        let _ = rootfs::unmount(&self.rootfs());
        cgroups::remove_cgroup(&self.cgroup_path());
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}
