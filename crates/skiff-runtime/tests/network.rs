//! Container networks on the real `skiff0` bridge: addresses, reachability
//! from the host and between containers, and teardown that leaves nothing.
//! Traffic stays on 10.89.0.0/16, i.e. on this machine. Needs root and crun.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{code, stderr, stdout, Fixture};
use nix::sys::signal::Signal;
use skiff_runtime::network::{etc_hosts, Attachment, Network, BRIDGE, BRIDGE_MAC};
use skiff_runtime::spec::{EtcFiles, NetworkConfig};

/// The veth pair dies with the namespace, asynchronously: allow a moment.
fn assert_gone(att: &Attachment) {
    let veth = Path::new("/sys/class/net").join(&att.host_veth);
    let deadline = Instant::now() + Duration::from_secs(5);
    while veth.exists() {
        assert!(Instant::now() < deadline, "veth {} left", att.host_veth);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!att.netns_path.exists(), "netns file left");
    let lease = Path::new(skiff_runtime::network::DEFAULT_IPAM_DIR).join(att.ip.to_string());
    let ours =
        std::fs::read(&lease).is_ok_and(|o| o == att.netns_path.as_os_str().as_encoded_bytes());
    assert!(!ours, "lease left");
}

/// Tears the namespaces of a test down even when it fails half-way.
struct Cleanup<'a>(&'a Network, Vec<(String, std::path::PathBuf)>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for (id, dir) in &self.1 {
            let _ = self.0.teardown_by_id(id, dir);
        }
    }
}

#[test]
fn a_container_gets_an_address_on_the_bridge_and_nothing_is_left() {
    let f = Fixture::new("net");
    let net = Network::new();
    let netns_dir = f.dir("netns");
    let _cleanup = Cleanup(&net, vec![(f.id.clone(), netns_dir.clone())]);
    let att = net.setup(&f.id, &netns_dir).unwrap();
    assert!(Path::new("/sys/class/net").join(&att.host_veth).exists());
    assert!(Path::new("/sys/class/net")
        .join(&att.host_veth)
        .join("master")
        .exists());
    assert!(Path::new("/sys/class/net").join(BRIDGE).exists());
    // The same id twice is refused, leaving the first untouched.
    assert!(net.setup(&f.id, &netns_dir).is_err());

    std::fs::write(f.dir("hosts"), etc_hosts("box", Some(att.ip))).unwrap();
    std::fs::write(f.dir("hostname"), "box\n").unwrap();
    std::fs::write(f.dir("resolv.conf"), "").unwrap();
    let mut cfg = f.config(&[
        "sh",
        "-c",
        "ip -4 -o addr show; ip route; ping -c 1 -W 2 10.89.0.1 >/dev/null && echo ping ok; cat /etc/hosts | tail -1",
    ]);
    cfg.network = NetworkConfig::Path(att.netns_path.clone());
    cfg.etc_files = Some(EtcFiles {
        hosts: Some(f.dir("hosts")),
        hostname: Some(f.dir("hostname")),
        resolv_conf: Some(f.dir("resolv.conf")),
    });
    let out = f.run(&cfg);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    assert!(
        text.contains("lo") && text.contains(&format!("eth0    inet {}/16", att.ip)),
        "{text}"
    );
    // Only the bridge's subnet is routed: nothing can leave the machine.
    let routes: Vec<&str> = text.lines().filter(|l| l.contains(" dev ")).collect();
    assert_eq!(routes.len(), 1, "{text}");
    assert!(routes[0].starts_with("10.89.0.0/16 dev eth0"), "{text}");
    assert!(text.contains("ping ok"), "{text}{}", stderr(&out));
    assert!(text.contains(&format!("{}\tbox", att.ip)), "{text}");

    net.teardown(&att).unwrap();
    assert_gone(&att);
    net.teardown(&att).unwrap();
    net.teardown_by_id(&f.id, &netns_dir).unwrap();
}

/// A bridge left to itself takes the lowest hardware address of its ports;
/// containers that cached the old one for the gateway then lose it.
#[test]
fn the_bridge_keeps_its_hardware_address_as_containers_come_and_go() {
    let f = Fixture::new("mac");
    let net = Network::new();
    let netns_dir = f.dir("netns");
    let ids: Vec<String> = (0..6).map(|i| format!("{}-{i}", f.id)).collect();
    let _cleanup = Cleanup(
        &net,
        ids.iter()
            .map(|id| (id.clone(), netns_dir.clone()))
            .collect(),
    );
    let want = BRIDGE_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let sys = Path::new("/sys/class/net").join(BRIDGE);
    let check = |when: &str| {
        let mac = std::fs::read_to_string(sys.join("address")).unwrap();
        assert_eq!(mac.trim(), want, "{when}");
        // 3: NET_ADDR_SET, chosen by us, so the bridge never recomputes it.
        let ty = std::fs::read_to_string(sys.join("addr_assign_type")).unwrap();
        assert_eq!(ty.trim(), "3", "{when}");
    };
    let mut atts = Vec::new();
    for id in &ids {
        atts.push(net.setup(id, &netns_dir).unwrap());
        check(&format!("after attaching {id}"));
    }
    for att in &atts {
        net.teardown(att).unwrap();
        check(&format!("after detaching {}", att.ip));
    }
}

#[test]
fn the_host_and_other_containers_reach_a_server() {
    let server = Fixture::new("httpd");
    let client = Fixture::new("wget");
    let net = Network::new();
    let netns_dir = server.dir("netns");
    let _cleanup = Cleanup(
        &net,
        vec![
            (server.id.clone(), netns_dir.clone()),
            (client.id.clone(), netns_dir.clone()),
        ],
    );
    let a = net.setup(&server.id, &netns_dir).unwrap();
    let b = net.setup(&client.id, &netns_dir).unwrap();
    assert_ne!(a.ip, b.ip);

    let mut cfg = server.config(&["httpd", "-f", "-p", "8080", "-h", "/www"]);
    cfg.network = NetworkConfig::Path(a.netns_path.clone());
    cfg.user = Some("nobody".into());
    server.write_spec(&cfg);
    let mut child = server
        .rt
        .run_command(
            &server.id,
            &server.bundle(),
            &server.bundle().join("pid"),
            &server.bundle().join("runtime.log"),
        )
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let addr = SocketAddr::from((a.ip, 8080));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "httpd not reachable at {addr}: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.ends_with("hello from skiff\n"), "{reply}");

    // busybox-static's wget crashes in glibc's NSS code inside a bare
    // rootfs; nc speaks the request by hand.
    let script = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} 8080 | tail -1",
        a.ip
    );
    let mut cfg = client.config(&["sh", "-c", &script]);
    cfg.network = NetworkConfig::Path(b.netns_path.clone());
    let out = client.run(&cfg);
    assert_eq!(
        stdout(&out),
        "hello from skiff\n",
        "{} (exit {})",
        stderr(&out),
        code(&out)
    );

    server
        .rt
        .kill(&server.id, Signal::SIGKILL as i32, false)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137), "crun run reports 128+SIGKILL");

    // A leftover known only by id, as after a crash.
    net.teardown_by_id(&server.id, &netns_dir).unwrap();
    net.teardown_by_id(&client.id, &netns_dir).unwrap();
    assert_gone(&a);
    assert_gone(&b);
    net.teardown_by_id(&client.id, &netns_dir).unwrap();
}

#[test]
fn network_none_has_only_loopback() {
    let f = Fixture::new("nonet");
    let out = f.run(&f.config(&["sh", "-c", "ls /sys/class/net"]));
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["lo"],
        "{}",
        stderr(&out)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints what each step of `skiff run` costs here (run with --nocapture).
#[test]
fn timings() {
    let f = Fixture::new("timing");
    let net = Network::new();
    let netns_dir = f.dir("netns");
    let n = 15;
    let (mut spec, mut mount, mut setup, mut teardown, mut run_true, mut run_true_net) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let cfg = f.config(&["true"]);
    for i in 0..n {
        let t = Instant::now();
        let s = skiff_runtime::build_spec(&cfg, &f.rootfs()).unwrap();
        spec.push(t.elapsed());

        let target = f.dir(&format!("m{i}"));
        let t = Instant::now();
        skiff_runtime::rootfs::mount_overlay(
            &[f.layer()],
            &f.dir(&format!("u{i}")),
            &f.dir(&format!("w{i}")),
            &target,
        )
        .unwrap();
        mount.push(t.elapsed());
        skiff_runtime::rootfs::unmount(&target).unwrap();

        std::fs::write(
            f.bundle().join("config.json"),
            serde_json::to_vec(&s).unwrap(),
        )
        .unwrap();
        let t = Instant::now();
        let out = f.run_written();
        run_true.push(t.elapsed());
        assert_eq!(code(&out), 0, "{}", stderr(&out));

        let id = format!("{}-{i}", f.id);
        let t = Instant::now();
        let att = net.setup(&id, &netns_dir).unwrap();
        setup.push(t.elapsed());

        let mut c = cfg.clone();
        c.network = NetworkConfig::Path(att.netns_path.clone());
        f.write_spec(&c);
        let t = Instant::now();
        let out = f.run_written();
        run_true_net.push(t.elapsed());
        assert_eq!(code(&out), 0, "{}", stderr(&out));

        let t = Instant::now();
        net.teardown(&att).unwrap();
        teardown.push(t.elapsed());
    }
    println!("median of {n} on this host:");
    println!("  build_spec            {:?}", median(spec));
    println!("  mount_overlay         {:?}", median(mount));
    println!("  network setup         {:?}", median(setup));
    println!("  network teardown      {:?}", median(teardown));
    println!("  crun run true         {:?}", median(run_true));
    println!("  crun run true (netns) {:?}", median(run_true_net));
}
