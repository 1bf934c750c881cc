//! RUN: one command in an isolated container on a stage's root filesystem.
//!
//! The container gets what `skiff run` gives (own pid, mount, ipc and uts
//! namespaces, Docker's capabilities, the default seccomp profile,
//! no-new-privileges, a pids limit) from the runtime's spec builder; only
//! the network differs. A build step needs package registries, and Skiff
//! does not touch the host's firewall to NAT its bridge, so by default RUN
//! shares the host's network namespace, as BuildKit's own worker does
//! without CNI; `--network none` gives it an empty namespace instead.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use skiff_runtime::oci::OciRuntime;
use skiff_runtime::spec::{build_spec, BindMount, EtcFiles, NetworkConfig, RunConfig};

/// The network a RUN step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunNetwork {
    /// The host's namespace (`--network host`, the default).
    #[default]
    Host,
    /// A private namespace with only `lo`.
    None,
}

impl std::str::FromStr for RunNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" | "default" => Ok(RunNetwork::Host),
            "none" => Ok(RunNetwork::None),
            other => Err(format!("unknown network {other:?}: expected host or none")),
        }
    }
}

/// What a RUN step runs and how.
pub struct RunStep<'a> {
    /// Container id, unique per step; also names its cgroup.
    pub id: &'a str,
    /// The mounted root filesystem.
    pub rootfs: &'a Path,
    /// A private directory for config.json and the /etc files.
    pub bundle: &'a Path,
    pub image: oci_spec::image::Config,
    pub argv: Vec<String>,
    /// Build arguments in scope, `K=V`; the image's ENV wins over them.
    pub args_env: Vec<String>,
    pub network: RunNetwork,
    /// `RUN --mount`s, as bind mounts of host directories.
    pub mounts: Vec<BindMount>,
}

/// How a RUN step ended.
pub struct RunOutcome {
    /// The exit code; 128+N for a signal.
    pub code: i32,
    /// The last lines of its output, for an error message.
    pub tail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spec(#[from] skiff_runtime::spec::SpecError),
    #[error("cannot run {runtime}: {source}")]
    Spawn { runtime: String, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Lines of output kept for the error message of a failed step.
const TAIL_LINES: usize = 20;

/// Runs the step to completion, handing its output (stdout and stderr, in
/// the order written) to `output` as it comes.
pub fn run_step(
    runtime: &OciRuntime,
    step: &RunStep,
    output: &mut dyn FnMut(&[u8]),
) -> Result<RunOutcome, RunError> {
    let etc = EtcFiles {
        hosts: step.bundle.join("hosts"),
        hostname: step.bundle.join("hostname"),
        resolv_conf: step.bundle.join("resolv.conf"),
    };
    let hostname = "skiff-build";
    std::fs::write(
        &etc.hosts,
        skiff_runtime::network::etc_hosts(hostname, None),
    )?;
    std::fs::write(&etc.hostname, format!("{hostname}\n"))?;
    std::fs::write(&etc.resolv_conf, skiff_runtime::network::resolv_conf())?;
    let image_keys: Vec<String> = step
        .image
        .env()
        .iter()
        .flatten()
        .filter_map(|e| e.split_once('=').map(|(k, _)| format!("{k}=")))
        .collect();
    let mut image = step.image.clone();
    // ARG values go first so that an ENV of the same name wins, as in Docker.
    let env: Vec<String> = step
        .args_env
        .iter()
        .filter(|a| !image_keys.iter().any(|k| a.starts_with(k.as_str())))
        .cloned()
        .chain(step.image.env().iter().flatten().cloned())
        .collect();
    image.set_env(Some(env));
    let cfg = RunConfig {
        image,
        entrypoint: Some(step.argv.clone()),
        cmd: None,
        env: Vec::new(),
        workdir: None,
        user: None,
        hostname: hostname.to_string(),
        memory: None,
        cpus_milli: None,
        pids_limit: None,
        mounts: step.mounts.clone(),
        network: match step.network {
            RunNetwork::Host => NetworkConfig::Host,
            RunNetwork::None => NetworkConfig::None,
        },
        terminal: false,
        cgroup_path: format!("/skiff/{}", step.id),
        etc_files: Some(etc),
    };
    let spec = build_spec(&cfg, step.rootfs)?;
    // The runtime creates what it mounts on (/proc, /dev, /etc/hosts, a
    // RUN --mount target) when the image lacks it; those stubs are not the
    // step's doing and must not end up in its layer.
    let mut stubs: Vec<String> = spec
        .mounts()
        .iter()
        .flatten()
        .flat_map(|m| crate::copy::missing_in_root(step.rootfs, &m.destination().to_string_lossy()))
        .collect();
    stubs.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    stubs.dedup();
    let json = serde_json::to_vec(&spec).map_err(io::Error::other)?;
    std::fs::write(step.bundle.join("config.json"), json)?;

    let (reader, writer) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let (reader, writer) = (std::fs::File::from(reader), std::fs::File::from(writer));
    let log = step.bundle.join("runtime.log");
    let mut cmd: Command =
        runtime.run_command(step.id, step.bundle, &step.bundle.join("pid"), &log);
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    let spawned = cmd.spawn();
    // The command holds the write ends; ours must be gone for EOF to come.
    drop(cmd);
    let mut child = spawned.map_err(|source| RunError::Spawn {
        runtime: runtime.name().to_string(),
        source,
    })?;
    let tail = pump(reader, output);
    let status = child.wait();
    let _ = runtime.delete(step.id, true);
    skiff_runtime::cgroups::remove_cgroup(&cfg.cgroup_path);
    for stub in &stubs {
        crate::copy::remove_stub_in_root(step.rootfs, stub);
    }
    let status = status?;
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    let mut tail = tail?;
    if code != 0 && tail.trim().is_empty() {
        // Nothing from the command: the runtime itself failed.
        tail = runtime.last_error(&log);
    }
    Ok(RunOutcome { code, tail })
}

/// Copies the step's output to `output`, keeping the last lines.
fn pump(mut reader: impl Read, output: &mut dyn FnMut(&[u8])) -> io::Result<String> {
    let mut lines: VecDeque<String> = VecDeque::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        output(&buf[..n]);
        partial.extend_from_slice(&buf[..n]);
        while let Some(i) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            lines.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
            if lines.len() > TAIL_LINES {
                lines.pop_front();
            }
        }
        // A line without a newline (a progress bar) must not grow forever.
        if partial.len() > 64 * 1024 {
            partial.drain(..partial.len() - 4096);
        }
    }
    if !partial.is_empty() {
        lines.push_back(String::from_utf8_lossy(&partial).trim_end().to_string());
        if lines.len() > TAIL_LINES {
            lines.pop_front();
        }
    }
    Ok(Vec::from(lines).join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let mut seen = Vec::new();
        let tail = pump(text.as_bytes(), &mut |b| seen.extend_from_slice(b)).unwrap();
        assert_eq!(seen, text.as_bytes());
        assert!(tail.starts_with("line 30\n"));
        assert!(tail.ends_with("line 49"));
        assert_eq!(pump(&b"no newline"[..], &mut |_| {}).unwrap(), "no newline");
    }
}
