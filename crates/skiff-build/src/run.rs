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

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use skiff_core::Digest;
use skiff_runtime::oci::OciRuntime;
use skiff_runtime::spec::{build_spec, BindMount, EtcFiles, NetworkConfig, RunConfig};

use crate::ast::{CommandLine, Heredoc};
use crate::config::{clean_abs, ImageConfig};
use crate::context::BuildContext;

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
    #[error(transparent)]
    Oci(#[from] skiff_runtime::OciError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A `RUN --mount`: a cache directory kept across builds, a read-only
/// bind of part of the context, or an empty scratch directory (tmpfs).
pub(crate) struct RunMount {
    pub(crate) kind: MountKind,
    pub(crate) target: String,
}

pub(crate) enum MountKind {
    /// Host directory, read-only or not.
    Host(PathBuf, bool),
    /// Part of the build context (its walk), copied into the bundle.
    Context {
        entries: Vec<crate::context::Entry>,
        digest: String,
    },
    /// A fresh empty directory in the step's bundle.
    Scratch,
    /// An executable file with this content (a heredoc script).
    Script(String),
}

impl RunMount {
    /// `type=cache,target=/root/.cache/pip[,id=ID][,uid=U,gid=G,mode=M]`,
    /// `type=bind,source=S,target=T` (from the context), `type=tmpfs,target=T`;
    /// a relative target is below `workdir`.
    pub(crate) fn parse(
        spec: &str,
        context: &BuildContext,
        cache_dir: &Path,
        workdir: &str,
    ) -> Result<RunMount, String> {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            fields.insert(k.trim(), v.trim());
        }
        let target = fields
            .get("target")
            .or_else(|| fields.get("dst"))
            .or_else(|| fields.get("destination"))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("--mount={spec}: needs a target="))?;
        let target = if target.starts_with('/') {
            clean_abs(target)
        } else {
            clean_abs(&format!("{workdir}/{target}"))
        };
        let number = |key: &str, radix: u32, default: u32| -> Result<u32, String> {
            match fields.get(key) {
                None => Ok(default),
                Some(v) => u32::from_str_radix(v, radix)
                    .map_err(|_| format!("--mount={spec}: {key}={v} is not a number")),
            }
        };
        let kind = match fields.get("type").copied().unwrap_or("bind") {
            "cache" => {
                let id = fields.get("id").copied().unwrap_or(&target);
                let dir = cache_dir
                    .join("mounts")
                    .join(Digest::of(id.as_bytes()).hex());
                fs::create_dir_all(&dir).map_err(|e| format!("--mount={spec}: {e}"))?;
                // BuildKit's defaults: root-owned, 0755; a build running as
                // another USER says uid=/gid=/mode=.
                let (uid, gid) = (number("uid", 10, 0)?, number("gid", 10, 0)?);
                let mode = number("mode", 8, 0o755)?;
                use std::os::unix::fs::PermissionsExt;
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                    .and_then(|()| {
                        fs::set_permissions(&dir, fs::Permissions::from_mode(mode & 0o7777))
                    })
                    .map_err(|e| format!("--mount={spec}: {e}"))?;
                MountKind::Host(dir, false)
            }
            "bind" => {
                if fields.contains_key("from") {
                    return Err(format!("--mount={spec}: from= is not supported yet"));
                }
                let source = fields
                    .get("source")
                    .or_else(|| fields.get("src"))
                    .copied()
                    .unwrap_or(".");
                let found = context.expand_source(source).map_err(|e| e.to_string())?;
                let [rel] = found.as_slice() else {
                    return Err(format!("--mount={spec}: source must name one path"));
                };
                // What .dockerignore leaves, copied: the step never sees an
                // excluded file, and no link is followed at mount time.
                let walk = [(rel.clone(), context.walk(rel).map_err(|e| e.to_string())?)];
                let digest = BuildContext::digest_walks(&walk).map_err(|e| e.to_string())?;
                let [(_, entries)] = walk;
                MountKind::Context {
                    entries,
                    digest: digest.to_string(),
                }
            }
            "tmpfs" => MountKind::Scratch,
            other => return Err(format!("--mount=type={other} is not supported")),
        };
        Ok(RunMount { kind, target })
    }

    /// What the mounted content adds to the step's cache key.
    pub(crate) fn content_key(&self) -> Option<&str> {
        match &self.kind {
            MountKind::Context { digest, .. } => Some(digest),
            _ => None,
        }
    }

    pub(crate) fn bind(
        &self,
        bundle: &Path,
        n: usize,
    ) -> io::Result<skiff_runtime::spec::BindMount> {
        let (source, readonly) = match &self.kind {
            MountKind::Host(p, ro) => (p.clone(), *ro),
            MountKind::Context { entries, .. } => {
                let dir = bundle.join(format!("bind-{n}"));
                fs::create_dir(&dir)?;
                crate::copy::copy_entries(&dir, entries, "/src", &Default::default())?;
                (dir.join("src"), true)
            }
            MountKind::Scratch => {
                let dir = bundle.join(format!("tmpfs-{n}"));
                fs::create_dir(&dir)?;
                (dir, false)
            }
            MountKind::Script(content) => {
                use std::os::unix::fs::PermissionsExt;
                let file = bundle.join(format!("script-{n}"));
                fs::write(&file, content)?;
                fs::set_permissions(&file, fs::Permissions::from_mode(0o755))?;
                (file, true)
            }
        };
        Ok(skiff_runtime::spec::BindMount {
            source,
            destination: self.target.clone(),
            readonly,
        })
    }
}

/// The argv of a RUN: exec form as is; shell form under the SHELL, with
/// heredocs as BuildKit runs them (a lone `<<EOF` is the script itself;
/// otherwise the shell gets the command and the bodies and handles the
/// redirection).
pub(crate) fn run_argv(
    config: &ImageConfig,
    cmd: &CommandLine,
    heredocs: &[Heredoc],
) -> Vec<String> {
    match cmd {
        CommandLine::Exec(argv) => argv.clone(),
        CommandLine::Shell(text) => {
            let script = if heredocs.len() == 1 && is_lone_marker(text.trim(), &heredocs[0]) {
                heredocs[0].content.clone()
            } else if heredocs.is_empty() {
                text.clone()
            } else {
                let mut s = text.clone();
                for h in heredocs {
                    s.push('\n');
                    s.push_str(&h.content);
                    s.push_str(&h.name);
                }
                s
            };
            config.argv(&CommandLine::Shell(script))
        }
    }
}

/// The heredoc of a RUN that is only `<<EOF` and whose body starts with `#!`.
pub(crate) fn shebang_script<'h>(
    cmd: &CommandLine,
    heredocs: &'h [Heredoc],
) -> Option<&'h Heredoc> {
    match (cmd, heredocs) {
        (CommandLine::Shell(text), [h]) if is_lone_marker(text.trim(), h) => {
            h.content.starts_with("#!").then_some(h)
        }
        _ => None,
    }
}

/// What the kernel would run for `script` at `path`: the interpreter, its
/// one optional argument (the rest of the `#!` line), then the path. Spelt
/// out so the runtime's spec builder can check the interpreter exists.
pub(crate) fn shebang_argv(script: &str, path: String) -> Vec<String> {
    let line = script
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("#!")
        .trim();
    let mut argv: Vec<String> = match line.split_once([' ', '\t']) {
        Some((interp, arg)) if !arg.trim().is_empty() => vec![interp.into(), arg.trim().into()],
        _ => vec![line.to_string()],
    };
    argv.push(path);
    argv
}

fn is_lone_marker(text: &str, h: &Heredoc) -> bool {
    let rest = text.trim_start_matches("<<").trim_start_matches('-');
    let rest = rest.trim_matches(|c| c == '"' || c == '\'');
    text.starts_with("<<") && rest == h.name
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
    let hosts = step.bundle.join("hosts");
    let etc = EtcFiles {
        hosts: Some(hosts.clone()),
        hostname: Some(step.bundle.join("hostname")),
        resolv_conf: Some(step.bundle.join("resolv.conf")),
    };
    let hostname = "skiff-build";
    std::fs::write(&hosts, skiff_runtime::network::etc_hosts(hostname, None))?;
    std::fs::write(step.bundle.join("hostname"), format!("{hostname}\n"))?;
    std::fs::write(
        step.bundle.join("resolv.conf"),
        skiff_runtime::network::resolv_conf(),
    )?;
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
    runtime.write_config(step.bundle, &spec)?;

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
    fn run_heredocs_as_buildkit() {
        let c = ImageConfig::scratch("linux", "amd64");
        let h = Heredoc {
            name: "EOF".into(),
            content: "echo a\necho b\n".into(),
            expand: true,
            chomp: false,
            fd: None,
        };
        let argv = run_argv(
            &c,
            &CommandLine::Shell("<<EOF".into()),
            std::slice::from_ref(&h),
        );
        assert_eq!(argv, vec!["/bin/sh", "-c", "echo a\necho b\n"]);
        let argv = run_argv(&c, &CommandLine::Shell("python3 <<EOF".into()), &[h]);
        assert_eq!(argv[2], "python3 <<EOF\necho a\necho b\nEOF");
        assert_eq!(
            shebang_argv(
                "#!/usr/bin/env python3\nprint(1)\n",
                "/dev/pipes/EOF".into()
            ),
            vec!["/usr/bin/env", "python3", "/dev/pipes/EOF"]
        );
        assert_eq!(
            shebang_argv("#!/bin/sh\n", "/p".into()),
            vec!["/bin/sh", "/p"]
        );
    }

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
