//! Containers: `run`, `ps`, `stop`, `rm`, and the two halves of a
//! container's life that are not the monitor's: preparing its bundle
//! (rootfs, network, config.json) and releasing everything afterwards.
//!
//! Every step of `prepare` is undone by `release`, which is idempotent and
//! tolerant of steps that never happened, so a failure anywhere (or a
//! `rm -f` after a crashed monitor) leaves no mount, netns, veth, lease or
//! cgroup behind.

use std::collections::HashMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use skiff_core::validate_container_name;
use skiff_image::store::Image;
use skiff_runtime::network::{Namespace, NamespaceMaker, Network};
use skiff_runtime::oci::OciRuntime;
use skiff_runtime::spec::{BindMount, EtcFiles, NetworkConfig, RunConfig};
use skiff_state::{ContainerRecord, Status};

use crate::cli::RunArgs;
use crate::context::{require_root, Context};
use skiff_state::now_ms;

/// What `prepare` made, for the monitor.
pub struct Prepared {
    pub ip: Option<Ipv4Addr>,
    /// The process the container runs: entrypoint and cmd, merged.
    pub command: Vec<String>,
}

pub fn run(ctx: &Context, args: RunArgs) -> Result<u8> {
    require_root("skiff run")?;
    if args.detach && args.interactive {
        bail!("-d and -i together are not supported: a detached container has no standard input");
    }
    if !args.publish.is_empty() && args.network != "bridge" {
        bail!(
            "-p needs the bridge network (--network {} has no address to publish)",
            args.network
        );
    }
    // The network namespace is made on a thread of its own meanwhile
    // (0.6 ms of kernel work): held by this process alone until the
    // record is in, it goes with the process should it die before.
    let namespace = (args.network == "bridge")
        .then(Namespace::spawn)
        .and_then(Result::ok);
    // And the state database is opened meanwhile, for the record.
    ctx.open_state_ahead();
    let image = crate::images::resolve_or_pull(ctx, &args.image)?;
    tracing::debug!("image resolved");
    let id = new_id()?;
    let name = match &args.name {
        Some(n) => {
            validate_container_name(n)?;
            n.clone()
        }
        None => generated_name(&id),
    };
    let env = collect_env(&args.env_file, &args.env)?;
    let mounts = parse_volumes(&args.volume)?;
    let listeners = crate::proxy::bind(&args.publish)?;
    let runtime = OciRuntime::new(&args.runtime, ctx.runtime_state_dir(&args.runtime))?;

    let record = ContainerRecord {
        command: args.command.clone(),
        ports: args.publish.clone(),
        auto_remove: args.rm,
        ..ContainerRecord::created(
            &id,
            &name,
            &args.image,
            &image.id.to_string(),
            &args.runtime,
        )
    };
    // The record comes first: whatever is made after it, a crash included,
    // is found from it and released.
    let state = ctx.state()?;
    state.insert_container(&record)?;
    tracing::debug!("record inserted");
    // From here on the container holds resources: Ctrl-C must not kill us
    // half-way, so signals wait until it runs (and are then forwarded) or
    // until everything is released again.
    let signals = crate::monitor::forwarded_signals();
    signals.thread_block().context("cannot block signals")?;
    let undo = |e: anyhow::Error| {
        let _ = runtime.kill(&record.id, libc::SIGKILL, true);
        release(ctx, &record.id, &runtime, true);
        e
    };
    let opts = BundleOptions {
        namespace,
        ..BundleOptions::from(&args)
    };
    let prepared = prepare(ctx, &record, &runtime, &image, opts, env, mounts).map_err(undo)?;
    tracing::debug!("bundle prepared");
    if let Some(sig) = crate::monitor::pending(&signals) {
        release(ctx, &record.id, &runtime, true);
        return Ok(128 + sig as u8);
    }
    if args.detach {
        // The monitor lives on, reparented to init once we exit, and finds
        // the address in the record.
        let ip = prepared.ip.map(|ip| ip.to_string());
        state
            .set_prepared(&record.id, ip.as_deref(), &prepared.command)
            .map_err(|e| undo(e.into()))?;
        drop(crate::monitor::spawn_detached(ctx, &record, listeners).map_err(undo)?);
        println!("{id}");
        Ok(0)
    } else {
        let opts = crate::monitor::Options {
            foreground: true,
            interactive: args.interactive,
            forward_signals: true,
            unrecorded_command: Some(prepared.command),
        };
        crate::monitor::run(ctx, &record, &runtime, prepared.ip, listeners, opts, None)
    }
}

/// What a bundle needs beyond the image, the environment and the mounts.
pub struct BundleOptions {
    /// bridge, none or host.
    pub network: String,
    /// Replaces the image's entrypoint (`Some(vec![])` clears it).
    pub entrypoint: Option<Vec<String>>,
    /// Empty: the image's own cmd.
    pub command: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub memory: Option<u64>,
    pub cpus: Option<u64>,
    pub pids_limit: Option<i64>,
    /// The bridge network's namespace, being made ahead (see `run`);
    /// `None`: made when needed.
    pub namespace: Option<NamespaceMaker>,
}

impl From<&RunArgs> for BundleOptions {
    fn from(args: &RunArgs) -> Self {
        BundleOptions {
            network: args.network.clone(),
            // `--entrypoint ""` clears it, as Docker's does.
            entrypoint: args.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    Vec::new()
                } else {
                    vec![e.clone()]
                }
            }),
            command: args.command.clone(),
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            memory: args.memory,
            cpus: args.cpus,
            pids_limit: args.pids_limit,
            namespace: None,
        }
    }
}

/// Lays out the container: its bundle (config.json, the overlay rootfs over
/// the image's layers), its /etc files and its network namespace.
pub fn prepare(
    ctx: &Context,
    record: &ContainerRecord,
    runtime: &OciRuntime,
    image: &Image,
    mut args: BundleOptions,
    env: Vec<String>,
    mounts: Vec<BindMount>,
) -> Result<Prepared> {
    let dir = ctx.container_dir(&record.id);
    let bundle = ctx.bundle_dir(&record.id);
    ctx.ensure_bundles_dir()?;
    let rootfs = bundle.join("rootfs");
    if let Some(containers) = dir.parent() {
        std::fs::create_dir_all(containers)
            .with_context(|| format!("cannot create {}", containers.display()))?;
    }
    // The container's directory, with its upper and work directories from
    // a skeleton in the trash; else made here, and those two made with
    // the rootfs's mount point by the overlay's mount (mount_overlay_with).
    if !crate::trash::reuse(&ctx.trash_dir(), &dir) {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut layers = ctx.store()?.layer_dirs(image)?;
    // Over a plain /etc goes a layer of the container's own, Docker's
    // "init layer" made per container: /etc with hostname, resolv.conf and
    // hosts, which images do not carry. Lower layers are read-only, so the
    // layer can live with the bundle on tmpfs: the container's writes to
    // these files are copied up to its upper directory on disk, as any
    // file's. Otherwise the runtime bind-mounts all three, creating the
    // targets.
    let etc_layer = etc_is_plain(&layers).then(|| bundle.join("etc-layer"));
    layers.extend(etc_layer.clone());
    let netns_dir = ctx.netns_dir();
    // On disk, not in the bundle on tmpfs: the container may write to
    // them (they are mounted read-write, as Docker's), and what it writes
    // must not fill the host's /run.
    let on_disk = |name: &str| etc_layer.is_none().then(|| dir.join(name));
    let etc = EtcFiles {
        hosts: on_disk("hosts"),
        hostname: on_disk("hostname"),
        resolv_conf: on_disk("resolv.conf"),
    };
    let network = match args.network.as_str() {
        "host" => NetworkConfig::Host,
        "none" => NetworkConfig::None,
        _ => NetworkConfig::Path(Network::netns_path(&record.id, &netns_dir)),
    };
    // A second thread mounts the rootfs and writes the config while this
    // one makes the network namespace: they need nothing from each other
    // but the namespace's path, known from the id, and the address, which
    // only /etc/hosts holds: told as soon as it is leased, before the
    // interface is made. The network, the longer of the two, stays on
    // this thread: a thread spawned by a busy one often waits in its
    // CPU's queue until the spawner sleeps (here a median 1 ms with the
    // other vCPU idle), while the network's netlink calls and its
    // namespace thread sleep early and let the layout run.
    let bridge = matches!(network, NetworkConfig::Path(_));
    let hostname = record.id[..12].to_string();
    let (address_tx, address_rx) = std::sync::mpsc::sync_channel(1);
    // (A receiver is not shared between threads but behind a lock.)
    let address_rx = std::sync::Mutex::new(address_rx);
    let address = || -> Result<Option<Ipv4Addr>> {
        if !bridge {
            return Ok(None);
        }
        // None comes only once the network has failed, which says why.
        let rx = address_rx.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(rx.recv().context("the network has no address")?))
    };
    let lay_out = || -> Result<Vec<String>> {
        let hostname_file = format!("{hostname}\n");
        let resolv_conf = skiff_runtime::network::resolv_conf();
        match &etc_layer {
            Some(layer) => {
                let hosts = skiff_runtime::network::etc_hosts(&hostname, address()?);
                write_etc_layer(layer, &hostname_file, &resolv_conf, &hosts)?
            }
            None => {
                std::fs::write(dir.join("hostname"), hostname_file)?;
                std::fs::write(dir.join("resolv.conf"), resolv_conf)?;
            }
        }
        let t0 = std::time::Instant::now();
        // `volatile`: a container's upper directory never outlives it (there
        // is no restart), so overlayfs need not sync it; without this,
        // unmounting the rootfs syncs the whole filesystem under
        // $SKIFF_ROOT (syncfs), a millisecond or more on every `run --rm`
        // and every scale-down. `uuid=off`: no uuid is written to the
        // upper directory at every mount (an xattr, on disk, that the
        // trash would drop again); it only serves file handles, which
        // need `index`, off here as by default.
        skiff_runtime::rootfs::mount_overlay_with(
            &layers,
            &dir.join("upper"),
            &dir.join("work"),
            &rootfs,
            "volatile,uuid=off",
        )?;
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "rootfs mounted");
        let cfg = RunConfig {
            image: image.config.config().clone().unwrap_or_default(),
            entrypoint: args.entrypoint.clone(),
            cmd: (!args.command.is_empty()).then(|| args.command.clone()),
            env: env.clone(),
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            hostname: hostname.clone(),
            memory: args.memory,
            cpus_milli: args.cpus,
            pids_limit: args.pids_limit,
            mounts: mounts.clone(),
            network: network.clone(),
            terminal: false,
            cgroup_path: cgroup_path(&record.id),
            etc_files: Some(etc.clone()),
        };
        let spec = skiff_runtime::spec::build_spec(&cfg, &rootfs)?;
        runtime.write_config(&bundle, &spec)?;
        // Before the runtime's first command, with time to spare: the
        // host's cgroups as it needs them (the monitor checks again before
        // starting it, by then cheaply).
        skiff_runtime::cgroups::prepare_host(runtime.name())?;
        Ok(spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default())
    };
    let (command, ip) = if bridge {
        std::thread::scope(|s| -> Result<_> {
            let laid_out = std::thread::Builder::new().spawn_scoped(s, lay_out);
            let t0 = std::time::Instant::now();
            let network = Network::new();
            let made = args.namespace.take().map(NamespaceMaker::join);
            // Dropped unused should the network fail first.
            let announce = move |ip| {
                let _ = address_tx.send(ip);
            };
            let attached = match made {
                Some(Ok(ns)) => network.setup_in(&record.id, &netns_dir, ns, announce),
                // Made here instead (a failure, the same again, says why).
                _ => network.setup_announcing(&record.id, &netns_dir, announce),
            };
            tracing::debug!(us = t0.elapsed().as_micros() as u64, "network set up");
            let command = match laid_out {
                Ok(h) => h
                    .join()
                    .map_err(|_| anyhow::anyhow!("laying out the container panicked"))?,
                // No thread to spare: one after the other.
                Err(_) => lay_out(),
            };
            // Both results are in hand: the caller's release undoes either.
            // The network's error first: without it, the layout has no
            // address either.
            let ip = attached?.ip;
            Ok((command?, Some(ip)))
        })?
    } else {
        (lay_out()?, None)
    };
    if let Some(hosts) = &etc.hosts {
        std::fs::write(hosts, skiff_runtime::network::etc_hosts(&hostname, ip))?;
    }
    Ok(Prepared { ip, command })
}

/// The container's own layer at `layer` (see `prepare`): `etc/` (root's,
/// 0755) with `hostname`, `resolv.conf` and `hosts`, all 0644 whatever
/// the umask.
fn write_etc_layer(
    layer: &Path,
    hostname: &str,
    resolv_conf: &str,
    hosts: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let etc = layer.join("etc");
    std::fs::create_dir_all(&etc)?;
    for d in [layer, &etc] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    for (name, content) in [
        ("hosts", hosts),
        ("hostname", hostname),
        ("resolv.conf", resolv_conf),
    ] {
        let mut f = std::fs::File::create(etc.join(name))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(content.as_bytes())?;
    }
    Ok(())
}

/// Whether `/etc` in the rootfs over `layers` (base first) is absent or a
/// directory the container's etc layer can go over unnoticed: root's, mode
/// 0755. The topmost layer's directory gives the merged one its owner and
/// mode, and a directory hides a symlink or a whiteout below it, so other
/// images go without the layer.
fn etc_is_plain(layers: &[PathBuf]) -> bool {
    use std::os::unix::fs::MetadataExt;
    layers
        .iter()
        .rev()
        .find_map(|l| std::fs::symlink_metadata(l.join("etc")).ok())
        .is_none_or(|m| m.is_dir() && m.uid() == 0 && m.gid() == 0 && m.mode() & 0o7777 == 0o755)
}

pub fn cgroup_path(id: &str) -> String {
    format!("/skiff/{id}")
}

/// Releases what a container holds; with `remove`, also its directories
/// (the bundle and what it wrote) and its record. Idempotent; failures are
/// logged, not returned, because every step must be tried even when an
/// earlier one fails.
pub fn release(ctx: &Context, id: &str, runtime: &OciRuntime, remove: bool) {
    if let Err(e) = runtime.delete(id, true) {
        tracing::debug!(id, "runtime delete: {e}");
    }
    let (dir, bundle, trash) = (ctx.container_dir(id), ctx.bundle_dir(id), ctx.trash_dir());
    // Never delete through a rootfs still mounted: its directories and
    // the record stay, for a later release to finish.
    let remove = remove && unmount_rootfs(ctx, id);
    std::thread::scope(|s| {
        // The directory on disk (upper and work: 0.7 ms here, unless only
        // a skeleton for the trash is left) goes on a second thread while
        // the network and the cgroup are released on this one (or after
        // them, should no thread start), unless the monitor removed it
        // already (see `release_held`).
        let removing = (remove && dir.exists()).then(|| {
            std::thread::Builder::new()
                .spawn_scoped(s, || crate::trash::discard(id, &dir, &trash))
                .ok()
        });
        if let Err(e) = Network::new().teardown_by_id(id, &ctx.netns_dir()) {
            tracing::warn!(id, "network teardown: {e}");
        }
        skiff_runtime::cgroups::remove_cgroup(&cgroup_path(id));
        if remove {
            remove_dir(id, &bundle);
            match removing.flatten() {
                Some(removing) => {
                    let _ = removing.join();
                }
                None => crate::trash::discard(id, &dir, &trash),
            }
        }
    });
    tracing::debug!("rootfs, network, cgroup and directories released");
    if remove {
        if let Ok(state) = ctx.state() {
            if let Err(e) = state.remove_container(id) {
                tracing::warn!(id, "remove record: {e}");
            }
        }
    }
}

/// What a container holds on the host once its processes are gone, while
/// its runtime may still clean up after it: the rootfs mount, the network
/// and, when the container is to go, what it wrote. [`release`] later
/// finds them gone and does the rest.
pub fn release_held(ctx: &Context, id: &str, remove: bool) {
    let unmounted = unmount_rootfs(ctx, id);
    if let Err(e) = Network::new().teardown_by_id(id, &ctx.netns_dir()) {
        tracing::warn!(id, "network teardown: {e}");
    }
    if remove && unmounted {
        crate::trash::discard(id, &ctx.container_dir(id), &ctx.trash_dir());
    }
}

/// Takes container `id`'s rootfs off the host once the container exists:
/// it is mounted there for the runtime to make the container, whose
/// mount namespace keeps a copy of its own (crun and runc write the pid
/// file once the container is made; an unknown runtime, gVisor's say, may
/// serve files from the host's mount, and keeps it until the end). Lazily
/// unmounted while the container runs, the mount no longer adds its
/// unmount (an RCU grace period) to the container's exit, where it also
/// waited for the container's own mounts to go: -0.40 ms [-0.58, -0.18]
/// of `skiff run --rm IMG true` here (bench/ab-start). The container's
/// writes stay under its upper directory; `release` finds the rootfs
/// unmounted already.
pub fn detach_rootfs(ctx: &Context, id: &str, runtime: &OciRuntime) {
    if matches!(runtime.name(), "crun" | "runc") {
        unmount_rootfs(ctx, id);
    }
}

/// Unmounts container `id`'s rootfs; whether it is unmounted. (A
/// container prepared by an older Skiff has its rootfs in its container
/// directory.)
fn unmount_rootfs(ctx: &Context, id: &str) -> bool {
    let mut unmounted = true;
    for rootfs in [
        ctx.bundle_dir(id).join("rootfs"),
        ctx.container_dir(id).join("rootfs"),
    ] {
        if let Err(e) = skiff_runtime::rootfs::unmount(&rootfs) {
            tracing::warn!(id, "unmount rootfs: {e}");
            unmounted = false;
        }
    }
    unmounted
}

pub fn remove_dir(id: &str, dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(id, "remove {}: {e}", dir.display());
        }
    }
}

pub fn ps(ctx: &Context, all: bool, quiet: bool, json: bool) -> Result<()> {
    let state = ctx.state()?;
    let rows: Vec<ContainerRecord> = state
        .list_containers()?
        .into_iter()
        .filter_map(|c| reconcile(ctx, c))
        .filter(|c| all || c.status == Status::Running)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if quiet {
        for c in &rows {
            println!("{}", &c.id[..12]);
        }
        return Ok(());
    }
    println!(
        "{:<14}{:<34}{:<24}{:<16}{:<30}{:<26}NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"
    );
    let now = now_ms();
    for c in &rows {
        let status = match c.status {
            Status::Created => "Created".to_string(),
            Status::Running => "Up".to_string(),
            Status::Exited => format!(
                "Exited ({}) {} ago",
                c.exit_code.unwrap_or(-1),
                ago(now - c.finished_ms.unwrap_or(now))
            ),
        };
        let ports = c
            .ports
            .iter()
            .map(|p| format!("{}:{}->{}/tcp", p.host_ip, p.host_port, p.container_port))
            .collect::<Vec<_>>()
            .join(", ");
        let cmd = c.command.join(" ");
        println!(
            "{:<14}{:<34}{:<24}{:<16}{:<30}{:<26}{}",
            &c.id[..12],
            truncate(&c.image, 32),
            truncate(&format!("\"{cmd}\""), 22),
            format!("{} ago", ago(now - c.created_ms)),
            status,
            ports,
            c.name
        );
    }
    Ok(())
}

/// A record whose monitor (or creator) is gone — killed, or the machine
/// rebooted — is brought in line: a Running one is shown, and stored, as
/// exited; a Created one never ran and is released and dropped (`None`).
fn reconcile(ctx: &Context, mut c: ContainerRecord) -> Option<ContainerRecord> {
    if c.status == Status::Exited || c.monitor_pid.is_some_and(process_alive) {
        return Some(c);
    }
    tracing::warn!(id = %c.id, "the container's monitor is gone; cleaning up after it");
    if let Ok(rt) = OciRuntime::new(&c.runtime, ctx.runtime_state_dir(&c.runtime)) {
        let _ = rt.kill(&c.id, libc::SIGKILL, true);
        release(ctx, &c.id, &rt, c.status == Status::Created);
    }
    if c.status == Status::Created {
        return None;
    }
    let now = now_ms();
    if let Ok(state) = ctx.state() {
        let _ = state.set_exited(&c.id, 137, now);
    }
    c.status = Status::Exited;
    c.exit_code = Some(137);
    c.finished_ms = Some(now);
    Some(c)
}

pub fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM still means it exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn find(ctx: &Context, name: &str) -> Result<ContainerRecord> {
    ctx.state()?
        .find_container(name)?
        .with_context(|| format!("no such container: {name}"))
}

/// Waits until the monitor has recorded the container's exit.
fn wait_exited(ctx: &Context, id: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        match ctx.state()?.find_container(id)? {
            None => return Ok(true),
            Some(c) if c.status != Status::Running => return Ok(true),
            Some(c) if !c.monitor_pid.is_some_and(process_alive) => return Ok(false),
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stop(ctx: &Context, names: &[String], grace_secs: u64) -> Result<()> {
    for name in names {
        let c = find(ctx, name)?;
        if c.status == Status::Running {
            stop_one(ctx, &c, Duration::from_secs(grace_secs))?;
        }
        println!("{name}");
    }
    Ok(())
}

fn stop_one(ctx: &Context, c: &ContainerRecord, grace: Duration) -> Result<()> {
    let rt = OciRuntime::new(&c.runtime, ctx.runtime_state_dir(&c.runtime))?;
    // The container may already be on its way out: a failed TERM is fine.
    let _ = rt.kill(&c.id, libc::SIGTERM, false);
    if wait_exited(ctx, &c.id, grace)? {
        return Ok(());
    }
    let _ = rt.kill(&c.id, libc::SIGKILL, true);
    if !wait_exited(ctx, &c.id, Duration::from_secs(10))? {
        // No monitor to record the exit: do its work.
        release(ctx, &c.id, &rt, false);
        ctx.state()?.set_exited(&c.id, 137, now_ms())?;
    }
    Ok(())
}

pub fn rm(ctx: &Context, names: &[String], force: bool) -> Result<()> {
    for name in names {
        let Some(c) = reconcile(ctx, find(ctx, name)?) else {
            println!("{name}");
            continue;
        };
        if c.status == Status::Created {
            bail!("container {name} is still starting: try again in a moment");
        }
        if c.status == Status::Running {
            if !force {
                bail!("container {name} is running: stop it first, or use rm -f");
            }
            stop_one(ctx, &c, Duration::ZERO)?;
        }
        let rt = OciRuntime::new(&c.runtime, ctx.runtime_state_dir(&c.runtime))?;
        release(ctx, &c.id, &rt, true);
        println!("{name}");
    }
    Ok(())
}

fn ago(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=59 => format!("{s} seconds"),
        60..=3599 => format!("{} minutes", s / 60),
        3600..=86399 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

pub fn new_id() -> Result<String> {
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// `adjective_noun`, picked by the id, as Docker names unnamed containers.
fn generated_name(id: &str) -> String {
    const ADJ: [&str; 16] = [
        "brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nimble",
        "quiet", "swift", "tender", "vivid", "wise", "zen",
    ];
    const NOUN: [&str; 16] = [
        "albatross",
        "bream",
        "cormorant",
        "dory",
        "eider",
        "fulmar",
        "gannet",
        "heron",
        "ibis",
        "kittiwake",
        "loon",
        "murre",
        "osprey",
        "petrel",
        "skua",
        "tern",
    ];
    let b = u32::from_str_radix(&id[..6], 16).unwrap_or(0) as usize;
    format!("{}_{}_{}", ADJ[b % 16], NOUN[(b >> 4) % 16], &id[6..10])
}

/// `--env-file` lines, then `-e` flags; later wins (the runtime dedups by key).
/// `K` alone copies K from this environment, if set, as Docker does.
fn collect_env(files: &[PathBuf], flags: &[String]) -> Result<Vec<String>> {
    let mut env = Vec::new();
    let host: HashMap<String, String> = std::env::vars().collect();
    let mut push = |entry: &str, origin: &dyn Fn() -> String| -> Result<()> {
        let key = entry.split('=').next().unwrap_or_default();
        if key.is_empty() || key.contains(char::is_whitespace) || key.contains('\0') {
            bail!(
                "{}: invalid environment variable {entry:?}: expected K=V",
                origin()
            );
        }
        if entry.contains('=') {
            env.push(entry.to_string());
        } else if let Some(v) = host.get(key) {
            env.push(format!("{key}={v}"));
        }
        Ok(())
    };
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read env file {}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            push(line, &|| format!("{}:{}", f.display(), i + 1))?;
        }
    }
    for e in flags {
        push(e, &|| "-e".to_string())?;
    }
    Ok(env)
}

/// `-v HOST:CTR[:ro|rw]`; the host path must exist (no silent creation of
/// directories outside the data directory).
fn parse_volumes(specs: &[String]) -> Result<Vec<BindMount>> {
    specs
        .iter()
        .map(|s| {
            let parts: Vec<&str> = s.split(':').collect();
            let (host, ctr, readonly) = match parts.as_slice() {
                [h, c] => (*h, *c, false),
                [h, c, "ro"] => (*h, *c, true),
                [h, c, "rw"] => (*h, *c, false),
                _ => bail!("-v {s:?}: expected HOST:CONTAINER[:ro|rw]"),
            };
            if !host.starts_with('/') || !ctr.starts_with('/') {
                bail!("-v {s:?}: both paths must be absolute");
            }
            if ctr == "/" || ctr.split('/').any(|c| c == "..") {
                bail!("-v {s:?}: the container path must be a directory below / without '..'");
            }
            let source = Path::new(host)
                .canonicalize()
                .with_context(|| format!("-v {s:?}: host path {host} does not exist"))?;
            Ok(BindMount {
                source,
                destination: ctr.to_string(),
                readonly,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etc_layer_goes_only_over_a_plain_etc() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let layer = |name: &str| {
            let p = d.path().join(name);
            std::fs::create_dir(&p).unwrap();
            p
        };
        let etc = |l: &Path, mode: u32| {
            std::fs::create_dir(l.join("etc")).unwrap();
            std::fs::set_permissions(l.join("etc"), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let (base, top, other, last) = (layer("base"), layer("top"), layer("other"), layer("last"));
        assert!(etc_is_plain(std::slice::from_ref(&base)), "no /etc at all");
        etc(&base, 0o755);
        assert!(etc_is_plain(&[base.clone(), top.clone()]));
        // The topmost layer that has an /etc decides.
        std::os::unix::fs::symlink("/nix/store/etc", top.join("etc")).unwrap();
        assert!(!etc_is_plain(&[base.clone(), top.clone()]));
        etc(&other, 0o755);
        assert!(etc_is_plain(&[base.clone(), top.clone(), other.clone()]));
        // Its owner and mode would be the etc layer's.
        etc(&last, 0o775);
        assert!(!etc_is_plain(&[
            base.clone(),
            top.clone(),
            other.clone(),
            last.clone()
        ]));
        std::fs::set_permissions(last.join("etc"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(last.join("etc"), Some(1000), Some(1000)).unwrap();
        assert!(!etc_is_plain(&[base, top, other, last]));
    }

    #[test]
    fn env_and_volumes() {
        std::env::set_var("SKIFF_TEST_COPY", "copied");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        std::fs::write(&f, "# comment\nA=1\n\nB=2\n").unwrap();
        let env = collect_env(
            std::slice::from_ref(&f),
            &["B=3".into(), "SKIFF_TEST_COPY".into(), "UNSET_X".into()],
        )
        .unwrap();
        assert_eq!(env, ["A=1", "B=2", "B=3", "SKIFF_TEST_COPY=copied"]);
        std::fs::write(&f, "A=1\n=bad\n").unwrap();
        let e = collect_env(std::slice::from_ref(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:"), "{e}");

        let v = parse_volumes(&[format!("{}:/data:ro", dir.path().display())]).unwrap();
        assert!(v[0].readonly);
        assert!(parse_volumes(&["relative:/x".into()]).is_err());
        assert!(parse_volumes(&["/nonexistent-skiff:/x".into()]).is_err());
        assert!(parse_volumes(&["/tmp:/".into()]).is_err());
        assert!(parse_volumes(&["/tmp:/x:rx".into()]).is_err());
    }

    #[test]
    fn ids_and_names() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        let n = generated_name(&id);
        assert!(validate_container_name(&n).is_ok(), "{n}");
    }
}
