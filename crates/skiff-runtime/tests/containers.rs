//! Real containers through crun: output, exit codes, limits, confinement,
//! overlay, cgroup cleanup. Needs root and crun.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{code, stderr, stdout, Fixture};
use nix::sys::signal::Signal;
use oci_spec::runtime::Arch;
use skiff_runtime::oci::{ContainerIo, ContainerStatus, SECCOMP_BPF_ANNOTATION};
use skiff_runtime::{cgroups, rootfs, seccomp};

#[test]
fn cgroup_moves_skip_the_rcu_wait() {
    // Linux 6.0+ (this machine kind runs 6.x): the cgroup2 mount carries
    // favordynmods after the host is prepared.
    cgroups::prepare_host("crun").expect("prepare the host");
    assert!(cgroups::favor_dynmods());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .expect("a cgroup2 mount");
    assert!(line.contains("favordynmods"), "{line}");
}

#[test]
fn echo_and_exit_codes_pass_through() {
    let f = Fixture::new("echo");
    let out = f.run(&f.config(&["echo", "hi"]));
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "hi\n"),
        "{}",
        stderr(&out)
    );
    let out = f.run(&f.config(&["sh", "-c", "exit 3"]));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    // Environment, hostname, user and working directory as configured.
    let mut cfg = f.config(&["sh", "-c", "echo $HOSTNAME:$HOME:$FOO:$(id -u):$(pwd)"]);
    cfg.env = vec!["FOO=bar".into()];
    cfg.user = Some("nobody".into());
    cfg.workdir = Some("/tmp".into());
    let out = f.run(&cfg);
    assert_eq!(
        stdout(&out),
        "box:/nonexistent:bar:65534:/tmp\n",
        "{}",
        stderr(&out)
    );
}

#[test]
fn memory_hog_is_oom_killed_with_137() {
    let f = Fixture::new("oom");
    let mut cfg = f.config(&[
        "sh",
        "-c",
        "x=0123456789abcdef0123456789abcdef; while true; do x=$x$x; done",
    ]);
    cfg.memory = Some(32 << 20);
    let started = Instant::now();
    let out = f.run(&cfg);
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn oom_kill_is_counted_before_delete() {
    let f = Fixture::new("oomcount");
    let mut cfg = f.config(&[
        "sh",
        "-c",
        "x=0123456789abcdef; while true; do x=$x$x; done",
    ]);
    cfg.memory = Some(16 << 20);
    f.write_spec(&cfg);
    let pid_file = f.dir("pid");
    f.rt.create(&f.id, &f.bundle(), &pid_file, ContainerIo::default())
        .unwrap();
    f.rt.start(&f.id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.rt.state(&f.id).unwrap().map(|s| s.status) != Some(ContainerStatus::Stopped) {
        assert!(Instant::now() < deadline, "container did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cgroups::memory_oom_kills(&f.cgroup_path()).unwrap_or(0) >= 1);
    f.rt.delete(&f.id, false).unwrap();
    assert_eq!(f.rt.state(&f.id).unwrap(), None);
}

#[test]
fn pids_limit_stops_fork_bombs() {
    let f = Fixture::new("pids");
    let mut cfg = f.config(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 40 ]; do sleep 5 & i=$((i+1)); done; echo all forked",
    ]);
    cfg.pids_limit = Some(10);
    let out = f.run(&cfg);
    assert!(!stdout(&out).contains("all forked"), "{}", stdout(&out));
    assert!(stderr(&out).contains("fork"), "{}", stderr(&out));
}

#[test]
fn seccomp_and_privileges_are_docker_defaults() {
    let f = Fixture::new("seccomp");
    let out = f.run(&f.config(&["cat", "/proc/self/status"]));
    let status = stdout(&out);
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // The 14 default capabilities, as a bit mask.
    assert!(status.contains("CapEff:\t00000000a80425fb"), "{status}");

    // A new user namespace needs no capability, only the seccomp profile
    // forbids it: the same command without the profile succeeds.
    let cfg = f.config(&["unshare", "-U", "true"]);
    let out = f.run(&cfg);
    assert_ne!(code(&out), 0, "unshare must be denied");
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    let mut spec = f.write_spec(&cfg);
    if let Some(linux) = spec.linux_mut() {
        linux.set_seccomp(None);
    }
    std::fs::write(
        f.bundle().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let out = f.run_written();
    assert_eq!(
        code(&out),
        0,
        "control run without seccomp: {}",
        stderr(&out)
    );

    // Masked and read-only paths.
    let out = f.run(&f.config(&[
        "sh",
        "-c",
        "cat /proc/kcore | wc -c; echo 1 > /proc/sys/kernel/domainname",
    ]));
    assert_eq!(stdout(&out).trim(), "0");
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn precompiled_seccomp_filter_is_the_one_crun_builds() {
    let f = Fixture::new("bpf");
    let mut spec = f.write_spec(&f.config(&["true"]));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.bundle().join("config.json")).unwrap()).unwrap();
    assert!(
        written["annotations"][SECCOMP_BPF_ANNOTATION].is_string(),
        "crun gets the filter precompiled"
    );
    assert!(
        written["linux"]["seccomp"].is_null(),
        "and not the rules, which it would ignore"
    );

    // A profile no other test compiles (compiled programs are kept per
    // process): Docker's with 32-bit x86 as well.
    let profile = seccomp::profile_for(&[seccomp::NATIVE_ARCH, Arch::ScmpArchX86]).unwrap();
    let cache = f.dir("seccomp-cache");
    let ours = seccomp::compile(&profile, Some(&cache)).unwrap();
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one cached program, no temporary left");
    assert!(std::fs::read(files[0].path()).unwrap() == *ours);

    // The same profile as rules: crun compiles them itself and keeps the
    // program in its state directory.
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(profile));
    std::fs::write(
        f.bundle().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    f.rt.create(&f.id, &f.bundle(), &f.dir("pid"), ContainerIo::default())
        .unwrap();
    let crun = std::fs::read(f.rt.state_root().join(&f.id).join("seccomp.bpf")).unwrap();
    f.rt.delete(&f.id, true).unwrap();
    assert_eq!(crun.len(), ours.len(), "program length");
    assert!(crun == *ours, "the precompiled program differs from crun's");
}

#[test]
fn writes_land_in_the_upper_layer() {
    let f = Fixture::new("overlay");
    let out = f.run(&f.config(&["sh", "-c", "echo new > /etc/motd; rm /www/index.html"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(f.dir("upper/etc/motd")).unwrap(),
        "new\n"
    );
    assert!(
        f.layer().join("www/index.html").exists(),
        "the layer must stay untouched"
    );
    assert!(!f.rootfs().join("www/index.html").exists());
}

#[test]
fn many_layers_with_long_paths_mount() {
    common::require_host();
    let tmp = tempfile::tempdir().unwrap();
    // 60 layers × ~110 bytes of path pass the one-page limit of mount data.
    let deep = tmp.path().join("x".repeat(60));
    let layers: Vec<_> = (0..60)
        .map(|i| {
            let l = deep.join(format!("sha256-{:064x}", i));
            std::fs::create_dir_all(&l).unwrap();
            std::fs::write(l.join("file"), format!("{i}")).unwrap();
            std::fs::write(l.join(format!("only{i}")), "").unwrap();
            l
        })
        .collect();
    let target = tmp.path().join("mnt");
    rootfs::mount_overlay(
        &layers,
        &tmp.path().join("u"),
        &tmp.path().join("w"),
        &target,
    )
    .unwrap();
    let top = std::fs::read_to_string(target.join("file"));
    let bottom = target.join("only0").exists();
    rootfs::unmount(&target).unwrap();
    rootfs::unmount(&target).unwrap(); // idempotent
    assert_eq!(top.unwrap(), "59", "the last layer is the top one");
    assert!(bottom);
}

#[test]
fn cgroups_are_removed_after_delete() {
    let f = Fixture::new("cgroup");
    let mut cfg = f.config(&["sleep", "60"]);
    cfg.memory = Some(64 << 20);
    f.write_spec(&cfg);
    f.rt.create(&f.id, &f.bundle(), &f.dir("pid"), ContainerIo::default())
        .unwrap();
    f.rt.start(&f.id).unwrap();
    let state = f.rt.state(&f.id).unwrap().unwrap();
    assert_eq!(state.status, ContainerStatus::Running);
    assert!(state.pid > 0);
    assert!(f.rt.list().unwrap().iter().any(|c| c.id == f.id));
    let dirs = cgroups::cgroup_dirs(&f.cgroup_path());
    assert!(dirs.iter().any(|d| d.exists()), "no cgroup in {dirs:?}");
    // `sleep` as pid 1 ignores SIGTERM: only SIGKILL ends it.
    f.rt.kill(&f.id, Signal::SIGKILL as i32, true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.rt.state(&f.id).unwrap().map(|s| s.status) != Some(ContainerStatus::Stopped) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Signalling a dead container fails fast instead of hanging.
    assert!(f.rt.kill(&f.id, Signal::SIGKILL as i32, false).is_err());
    f.rt.delete(&f.id, true).unwrap();
    f.rt.delete(&f.id, true).unwrap();
    // A leftover, as a crash would leave it: removed in every hierarchy.
    for d in &dirs {
        if d.parent().is_some_and(Path::exists) {
            let _ = std::fs::create_dir_all(d.join("child"));
        }
    }
    cgroups::remove_cgroup(&f.cgroup_path());
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn missing_executable_is_reported_before_the_runtime() {
    let f = Fixture::new("noexe");
    let err = skiff_runtime::build_spec(&f.config(&["nosuch"]), &f.rootfs()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "executable \"nosuch\" not found in the image (PATH={})",
            skiff_runtime::spec::DEFAULT_PATH
        )
    );
}

#[test]
fn prepare_host_is_idempotent() {
    common::require_host();
    cgroups::prepare_host("crun").unwrap();
    cgroups::prepare_host("/usr/bin/crun").unwrap();
    cgroups::prepare_host("runc").unwrap();
    if cgroups::mode() == cgroups::CgroupMode::Hybrid {
        let left = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap();
        assert_eq!(left.trim(), "");
    }
}
