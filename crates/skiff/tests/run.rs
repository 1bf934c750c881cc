//! `skiff run` and friends against real crun, real layers, real networks.

mod common;

use common::{free_port, http_get, images, walk, Skiff};

#[test]
fn run_echo_and_exit_codes() {
    let s = Skiff::new();
    let img = s.load_busybox();
    assert_eq!(s.ok(&["run", "--rm", img, "echo", "hi"]), "hi\n");
    // What lives as long as the kernel is on a tmpfs, even on a host
    // whose /run is not one (this kind of VM).
    let fs = nix::sys::statfs::statfs(&s.run_dir()).unwrap();
    assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);

    let out = s.run(&["run", "--rm", img, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));

    // Env, workdir, user, hostname.
    let out = s.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hello",
        "-w",
        "/tmp",
        "-u",
        "app",
        img,
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u):$(id -g) $HOME",
    ]);
    assert_eq!(out, "hello /tmp 1000:1000 /home/app\n");

    // The image's own default command (sh) with a command override through --entrypoint.
    let out = s.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "echo",
        img,
        "via",
        "entrypoint",
    ]);
    assert_eq!(out, "via entrypoint\n");

    // Non-rm containers are listed and keep their logs until removed.
    let out = s.run(&[
        "run",
        "--name",
        "kept",
        img,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        (&out.stdout[..], &out.stderr[..]),
        (&b"out\n"[..], &b"err\n"[..])
    );
    let ps = s.ok(&["ps", "-a"]);
    assert!(ps.contains("kept") && ps.contains("Exited (7)"), "{ps}");
    assert_eq!(s.ok(&["logs", "kept"]), "out\n");
    s.ok(&["rm", "kept"]);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn oci_and_docker_archives_plain_and_gzip() {
    let s = Skiff::new();
    let imgs = images();
    for f in [&imgs.busybox_oci, &imgs.demo_docker_gzip] {
        s.ok(&["load", "-i", f.to_str().unwrap()]);
    }
    let list = s.ok(&["images"]);
    assert!(
        list.contains("localhost/busybox-oci") && list.contains("localhost/demo-docker"),
        "{list}"
    );
    assert_eq!(
        s.ok(&[
            "run",
            "--rm",
            "localhost/busybox-oci",
            "cat",
            "/etc/hostname"
        ])
        .len(),
        13
    );
    assert!(s
        .ok(&[
            "run",
            "--rm",
            "localhost/demo-docker",
            "cat",
            "/www/index.html"
        ])
        .contains("Hello from Skiff"));
}

#[test]
fn detached_with_published_port_serves_http_and_leaves_nothing() {
    let s = Skiff::new();
    let img = s.load_demo();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let id = s.ok(&[
        "run", "-d", "--name", "web", "-p", &publish, "-m", "64m", "--cpus", "0.5", img,
    ]);
    assert_eq!(id.trim().len(), 64);
    let resp = http_get(port, "/", 50).expect("the demo answers on the published port");
    assert!(
        resp.contains("200 OK") && resp.contains("Hello from Skiff"),
        "{resp}"
    );

    let ps = s.ok(&["ps"]);
    assert!(
        ps.contains("web") && ps.contains(&format!("127.0.0.1:{port}->8080/tcp")),
        "{ps}"
    );
    // The port is taken: a second container cannot publish it, and nothing is left of it.
    let err = s.fails(&["run", "-d", "--name", "web2", "-p", &publish, img]);
    assert!(err.contains("cannot publish port"), "{err}");
    assert!(!s.ok(&["ps", "-a"]).contains("web2"));

    // httpd -v logs requests to stderr.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = s.cmd(&["logs", "web"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("response:200"),
        "{logs:?}"
    );

    let err = s.fails(&["rm", "web"]);
    assert!(err.contains("is running"), "{err}");
    s.ok(&["stop", "-t", "2", "web"]);
    assert!(s.ok(&["ps", "-a"]).contains("Exited"));
    s.ok(&["rm", "web"]);
    assert!(
        http_get(port, "/", 1).is_none(),
        "port still served after rm"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn memory_limit_kills_a_hog_with_137() {
    let s = Skiff::new();
    let img = s.load_busybox();
    // Grows a shell variable well past 32 MiB.
    let out = s.run(&[
        "run",
        "--rm",
        "-m",
        "32m",
        img,
        "sh",
        "-c",
        "x=0123456789abcdef; while true; do x=$x$x; done",
    ]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    // The CLI survived and the store is intact.
    assert_eq!(
        s.ok(&["run", "--rm", img, "echo", "still here"]),
        "still here\n"
    );
}

#[test]
fn a_container_that_writes_nothing_leaves_its_writable_layer_empty() {
    // /etc/hosts, /etc/hostname and /etc/resolv.conf, which images do not
    // carry, come from the container's etc layer, not from files made in
    // the upper directory; the image's own /etc is still there. Written
    // to, they are copied up like any file.
    let s = Skiff::new();
    let img = s.load_busybox();
    let out = s.ok(&["run", "--name", "quiet", img, "ls", "/etc"]);
    for f in ["hostname", "hosts", "passwd", "resolv.conf"] {
        assert!(out.lines().any(|l| l == f), "{f} missing from /etc: {out}");
    }
    let containers: Vec<_> = std::fs::read_dir(s.root.path().join("containers"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(containers.len(), 1);
    let upper = containers[0].path().join("upper");
    let written: Vec<_> = std::fs::read_dir(&upper).unwrap().flatten().collect();
    assert!(written.is_empty(), "{written:?}");
    let files: Vec<_> = std::fs::read_dir(containers[0].path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(!files.iter().any(|f| f == "hosts"), "{files:?}");
    let out = s.ok(&[
        "run",
        "--rm",
        img,
        "sh",
        "-c",
        "echo search example.org >> /etc/resolv.conf && tail -1 /etc/resolv.conf && stat -c %a /etc /etc/hostname",
    ]);
    assert_eq!(out, "search example.org\n755\n644\n");
    // The bundles (the container's environment, its mounted rootfs with
    // the image's setuid files) are root's alone, as the data directory is.
    use std::os::unix::fs::PermissionsExt;
    let bundles = std::fs::metadata(s.run_dir().join("containers")).unwrap();
    assert_eq!(bundles.permissions().mode() & 0o077, 0, "{bundles:?}");
    s.ok(&["rm", "quiet"]);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn what_a_removed_container_wrote_goes_at_once_its_empty_directories_at_the_next_start() {
    let s = Skiff::new();
    let img = s.load_busybox();
    // Wrote nothing: the directory is moved to the trash, its files gone.
    s.ok(&["run", "--rm", img, "true"]);
    let first = s.trash();
    assert_eq!(first.len(), 1, "{first:?}");
    let skeleton = walk(&s.root.path().join("trash").join(&first[0]));
    assert!(
        skeleton.iter().any(|p| p.ends_with("upper")),
        "{skeleton:?}"
    );
    for p in &skeleton {
        let m = p.symlink_metadata().unwrap();
        assert!(m.is_dir() || m.len() == 0, "{} holds data", p.display());
    }
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    // The next start takes the skeleton as its own directory (the same
    // inodes), and leaves it to the trash again.
    use std::os::unix::fs::MetadataExt;
    let upper_inode = |id: &str| {
        let upper = s.root.path().join("trash").join(id).join("upper");
        std::fs::metadata(upper).unwrap().ino()
    };
    let inode = upper_inode(&first[0]);
    s.ok(&["run", "--rm", img, "true"]);
    let second = s.trash();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);
    assert_eq!(upper_inode(&second[0]), inode);
    // A container's `/` is its upper directory: one changed there is not
    // the next container's.
    s.ok(&["run", "--rm", img, "chmod", "700", "/"]);
    let out = s.ok(&["run", "--rm", img, "stat", "-c", "%a %u", "/"]);
    assert_eq!(out.trim(), "755 0");
    // Wrote something: removed at once, data and all. Its start took the
    // trash's skeleton meanwhile.
    s.ok(&["run", "--rm", img, "sh", "-c", "echo data > /data"]);
    assert_eq!(s.trash(), Vec::<String>::new());
    // So does `rm` of a container that wrote to a file the image has.
    s.ok(&[
        "run",
        "--name",
        "w",
        img,
        "sh",
        "-c",
        "echo x >> /etc/passwd",
    ]);
    s.ok(&["rm", "w"]);
    assert_eq!(s.trash(), Vec::<String>::new());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn rm_force_stops_and_cleans_up() {
    let s = Skiff::new();
    let img = s.load_busybox();
    s.ok(&["run", "-d", "--name", "sleeper", img, "sleep", "1000"]);
    assert!(s.ok(&["ps"]).contains("sleeper"));
    // A name in use is refused once the network is already being made for
    // the new container: what was made for it goes again.
    let before = s.leftovers();
    let err = s.fails(&["run", "--rm", "--name", "sleeper", img, "true"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(s.leftovers(), before);
    assert_eq!(s.ok(&["ps", "-aq"]).lines().count(), 1);
    s.ok(&["rm", "-f", "sleeper"]);
    assert!(!s.ok(&["ps", "-a"]).contains("sleeper"));
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn bad_input_is_one_clear_error_and_changes_nothing() {
    let s = Skiff::new();
    let img = s.load_busybox();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--rm", "-m", "lots", img, "true"], "lots"),
        (&["run", "--rm", "-p", "99999:1", img, "true"], "99999"),
        (&["run", "--rm", img, "/no/such/binary"], "not found"),
        (
            &["run", "--rm", "--name", "bad/name", img, "true"],
            "container name",
        ),
        (
            &["run", "--rm", "-u", "nosuchuser", img, "true"],
            "nosuchuser",
        ),
        (
            &["run", "--rm", "NOT A REF", "true"],
            "invalid image reference",
        ),
        (&["load", "-i", "/nonexistent.tar"], "nonexistent.tar"),
        (&["logs", "nosuch"], "no such container"),
    ];
    for (args, needle) in cases {
        let err = s.fails(args);
        assert!(err.contains(needle), "skiff {args:?}: {err}");
    }
    assert!(s.ok(&["ps", "-aq"]).trim().is_empty());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    // A truncated archive loads nothing.
    let full = std::fs::read(&images().demo_docker_gzip).unwrap();
    let cut = s.root.path().join("cut.tar");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    s.fails(&["load", "-i", cut.to_str().unwrap()]);
    assert!(!s.ok(&["images"]).contains("demo-docker"));

    // An image in use cannot be removed; once its container is gone it can.
    s.ok(&["run", "--name", "user", img, "true"]);
    let err = s.fails(&["rmi", img]);
    assert!(err.contains("in use") || err.contains("used"), "{err}");
    s.ok(&["rm", "user"]);
    s.ok(&["rmi", img]);
    assert!(!s.ok(&["images"]).contains("localhost/busybox "));
}

#[test]
fn without_root_run_says_so() {
    let s = Skiff::new();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            common::BIN,
        ])
        .args(["run", "--rm", "busybox", "true"])
        .env("SKIFF_ROOT", s.root.path())
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs root"), "{err}");
}

/// A `docker save` archive whose one layer tries to write outside its
/// directory every way a tar can: `..`, absolute paths, through a symlink,
/// through a hardlink. Loading may succeed (blobs are just bytes) but
/// nothing may ever appear outside the store.
#[test]
fn hostile_layers_never_write_outside_the_store() {
    let s = Skiff::new();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let archive = s.root.path().join("hostile.tar");
    let script = r#"
import hashlib, io, json, sys, tarfile
target, out = sys.argv[1], sys.argv[2]
def entry(tar, name, data=b"pwned", type=tarfile.REGTYPE, link=""):
    i = tarfile.TarInfo(name); i.type = type; i.linkname = link; i.mode = 0o755
    i.size = len(data) if type == tarfile.REGTYPE else 0
    tar.addfile(i, io.BytesIO(data) if type == tarfile.REGTYPE else None)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
    entry(t, "bin", type=tarfile.DIRTYPE)
    entry(t, "../../../../../../.." + target + "/dotdot")
    entry(t, "escape", type=tarfile.SYMTYPE, link=target)
    entry(t, "escape/through-symlink")
    entry(t, "up", type=tarfile.SYMTYPE, link="../../../../../../../../.." + target)
    entry(t, "up/through-relative-symlink")
    entry(t, "hard", type=tarfile.LNKTYPE, link="../../../../../../../.." + target + "/victim")
    entry(t, "dev", type=tarfile.CHRTYPE)
layer = buf.getvalue()
diff = "sha256:" + hashlib.sha256(layer).hexdigest()
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
with tarfile.open(out, "w") as t:
    for name, data in [("layer.tar", layer), ("config.json", cfg),
                       ("manifest.json", json.dumps([{"Config": "config.json",
                        "RepoTags": ["localhost/hostile:latest"], "Layers": ["layer.tar"]}]).encode())]:
        i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
"#;
    std::fs::write(outside.path().join("victim"), "original").unwrap();
    let st = std::process::Command::new("python3")
        .args(["-c", script, &target, archive.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let loaded = s.run(&["load", "-i", archive.to_str().unwrap()]);
    if loaded.status.success() {
        // Unpacking happens on first use.
        let out = s.run(&["run", "--rm", "localhost/hostile", "true"]);
        assert!(!out.status.success(), "a hostile layer ran: {out:?}");
    }
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["victim"], "files appeared outside the store");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim")).unwrap(),
        "original"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn stdin_volumes_limits_networks_and_runtimes() {
    let s = Skiff::new();
    let img = s.load_busybox();

    // -i passes standard input through.
    let mut child = s
        .cmd(&["run", "--rm", "-i", img, "tr", "a-z", "A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");

    // -v binds a host directory, :ro makes it read-only.
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from host").unwrap();
    let rw = format!("{}:/data", host.path().display());
    assert_eq!(
        s.ok(&[
            "run",
            "--rm",
            "-v",
            &rw,
            img,
            "sh",
            "-c",
            "cat /data/in.txt; echo back > /data/out.txt"
        ]),
        "from host"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt")).unwrap(),
        "back\n"
    );
    let ro = format!("{}:/data:ro", host.path().display());
    let out = s.run(&[
        "run",
        "--rm",
        "-v",
        &ro,
        img,
        "sh",
        "-c",
        "echo x > /data/nope",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!host.path().join("nope").exists());

    // --pids-limit caps forks; the memory limit is visible to the container.
    let out = s.run(&[
        "run",
        "--rm",
        "--pids-limit",
        "8",
        img,
        "sh",
        "-c",
        "for i in $(seq 1 20); do sleep 5 & done; wait",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fork") || !out.status.success(),
        "{out:?}"
    );

    // Networks: bridge has eth0 with a 10.89 address; none has only lo; host sees the host's.
    let bridge = s.ok(&["run", "--rm", img, "ip", "-4", "addr"]);
    assert!(
        bridge.contains("eth0") && bridge.contains("10.89."),
        "{bridge}"
    );
    // /etc/hosts names the container at that address; with no network of
    // its own, at loopback.
    let script =
        "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1; hostname; tail -1 /etc/hosts";
    let out = s.ok(&["run", "--rm", img, "sh", "-c", script]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("10.89."), "{out}");
    assert_eq!(lines[2], format!("{}\t{}", lines[0], lines[1]), "{out}");
    let out = s.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        img,
        "sh",
        "-c",
        "hostname; tail -1 /etc/hosts",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[1], format!("127.0.0.1\t{}", lines[0]), "{out}");
    // An IPv4 network: no IPv6 on eth0 (no link-local address to reach
    // the host by), ::1 still on lo.
    let v6 = s.ok(&[
        "run",
        "--rm",
        img,
        "sh",
        "-c",
        "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; ip -6 addr",
    ]);
    // Only eth0: an interface made later gets a new namespace's default.
    let fresh = std::process::Command::new("unshare")
        .args(["-n", "cat", "/proc/sys/net/ipv6/conf/default/disable_ipv6"])
        .output()
        .unwrap();
    let default = String::from_utf8_lossy(&fresh.stdout).into_owned();
    assert!(
        v6.starts_with(&format!("1\n{default}")) && v6.contains("::1/128") && !v6.contains("fe80:"),
        "{v6} (a new namespace's default: {default})"
    );
    let none = s.ok(&["run", "--rm", "--network", "none", img, "ip", "-4", "addr"]);
    assert!(
        !none.contains("eth0") && none.contains("127.0.0.1"),
        "{none}"
    );
    let host_net = s.ok(&["run", "--rm", "--network", "host", img, "ip", "link"]);
    assert!(host_net.contains("skiff0"), "{host_net}");

    // Security defaults: no-new-privileges, seccomp, Docker's capabilities.
    let status = s.ok(&[
        "run",
        "--rm",
        img,
        "grep",
        "-E",
        "^(NoNewPrivs|Seccomp|CapBnd):",
        "/proc/self/status",
    ]);
    assert!(
        status.contains("NoNewPrivs:\t1") && status.contains("Seccomp:\t2"),
        "{status}"
    );
    assert!(status.contains("CapBnd:\t00000000a80425fb"), "{status}");
    // The filter is Docker's, whether crun got its rules or only the
    // compiled program: a new user namespace is refused, an allowed call
    // is not.
    let filtered = s.run(&["run", "--rm", img, "unshare", "-U", "true"]);
    assert_ne!(filtered.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&filtered.stderr).contains("Operation not permitted"),
        "{filtered:?}"
    );
    assert_eq!(s.ok(&["run", "--rm", img, "true"]), "");

    // runc can be selected instead of crun.
    common::require("runc", "runc");
    assert_eq!(
        s.ok(&["run", "--rm", "--runtime", "runc", img, "echo", "runc"]),
        "runc\n"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

/// The monitor keeps the signals it forwards blocked, Rust ignores
/// SIGPIPE, the test harness may ignore more, and glibc's posix_spawn
/// ignores its own two (32 and 33) in the child; none of it may reach the
/// container, which starts as under a daemon: nothing blocked, nothing
/// ignored. (crun resets the mask and signals 1-31 itself, but not 32 and
/// 33.) Both the foreground monitor and a detached one are checked.
#[test]
fn the_container_starts_with_no_signal_blocked_or_ignored() {
    let s = Skiff::new();
    let img = s.load_busybox();
    // grep itself, not `sh -c`: busybox's sh ignores SIGQUIT when it
    // execs its last command in place.
    let masks = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    let expected = "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n";
    let run = |how: &str| s.ok(&[&["run", how, img][..], &masks[..]].concat());
    assert_eq!(run("--rm"), expected);
    let id = run("-d");
    let id = id.trim();
    for _ in 0..100 {
        if s.ok(&["ps", "-a"]).contains("Exited (0)") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(s.ok(&["logs", id]), expected);
    s.ok(&["rm", id]);
}

#[test]
fn a_running_container_keeps_its_rootfs_once_the_host_lets_go_of_it() {
    let s = Skiff::new();
    let img = s.load_busybox();
    let script = "sleep 2; echo data > /f; cat /f; ls /bin/busybox";
    let id = s.ok(&["run", "-d", img, "sh", "-c", script]);
    let id = id.trim();
    // Once the container exists (well before it exits, 2 s on), the host
    // unmounts its copy of the rootfs.
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!("{id}/rootfs"))
    };
    let mut gone = false;
    for _ in 0..50 {
        if !mounted() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone, "the rootfs of {id} is still mounted on the host");
    for _ in 0..200 {
        if s.ok(&["ps", "-a"]).contains("Exited") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The container wrote and read its files after that, and its writes
    // are in its upper directory.
    assert!(s.ok(&["ps", "-a"]).contains("Exited (0)"));
    assert_eq!(s.ok(&["logs", id]), "data\n/bin/busybox\n");
    let upper = s.root.path().join("containers").join(id).join("upper/f");
    assert_eq!(std::fs::read_to_string(upper).unwrap(), "data\n");
    s.ok(&["rm", id]);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn sigterm_to_a_foreground_run_stops_the_container() {
    let s = Skiff::new();
    let img = s.load_busybox();
    let child = s
        .cmd(&[
            "run",
            "--rm",
            "--name",
            "fg",
            img,
            "sh",
            "-c",
            "trap 'echo bye; exit 4' TERM; while true; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if s.ok(&["ps"]).contains("fg") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
    assert!(
        s.ok(&["ps", "-a"]).lines().count() == 1,
        "--rm container left a record"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn save_load_round_trip_and_an_independent_reader_agrees() {
    let s = Skiff::new();
    let img = s.load_demo();
    let id = |s: &Skiff| -> String {
        let v: serde_json::Value = serde_json::from_str(&s.ok(&["images", "--json"])).unwrap();
        v.as_array().unwrap()[0]["id"].as_str().unwrap().to_string()
    };
    let original = id(&s);
    for format in ["docker", "oci"] {
        let out = s.root.path().join(format!("saved-{format}.tar"));
        s.ok(&["save", "--format", format, "-o", out.to_str().unwrap(), img]);
        let t = Skiff::new();
        t.ok(&["load", "-i", out.to_str().unwrap()]);
        assert_eq!(id(&t), original, "{format} round trip changed the image");
        assert!(t
            .ok(&["run", "--rm", img, "cat", "/www/index.html"])
            .contains("Skiff"));
        if format == "oci" {
            // skopeo (containers/image) reads what we wrote.
            common::require("skopeo", "skopeo");
            let o = std::process::Command::new("skopeo")
                .args([
                    "inspect",
                    "--raw",
                    &format!("oci-archive:{}", out.display()),
                ])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "skopeo: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(String::from_utf8_lossy(&o.stdout)
                .contains("application/vnd.oci.image.manifest.v1+json"));
        }
    }
    // A failed save leaves no partial archive behind.
    let bad = s.root.path().join("never.tar");
    s.fails(&[
        "save",
        "-o",
        bad.to_str().unwrap(),
        "localhost/nothing:here",
    ]);
    assert!(!bad.exists());
}

#[test]
fn logs_follow_streams_until_the_container_exits() {
    let s = Skiff::new();
    let img = s.load_busybox();
    s.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        img,
        "sh",
        "-c",
        "for i in 1 2 3; do echo tick $i; sleep 0.2; done",
    ]);
    let out = s.ok(&["logs", "-f", "ticker"]);
    assert_eq!(out, "tick 1\ntick 2\ntick 3\n");
    let ps: serde_json::Value = serde_json::from_str(&s.ok(&["ps", "-a", "--json"])).unwrap();
    assert_eq!(ps[0]["status"], "exited");
    assert_eq!(ps[0]["exit_code"], 0);
    s.ok(&["rm", "ticker"]);
}
