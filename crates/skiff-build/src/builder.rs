//! The builder: runs a resolved Dockerfile's stages into an image in the
//! store.
//!
//! Every filesystem step (RUN, COPY, ADD, WORKDIR) runs on an overlay of
//! the stage's layers with a fresh upper directory; the upper directory
//! after the step *is* the step's layer, in the store's unpacked format, so
//! it is written once as a tar blob and then moved into the layer store
//! instead of being unpacked again. Metadata steps only change the config.
//!
//! Cache: each step has a chain key, the hash of its parent's key and of
//! what the step does (instruction, flags, heredocs, the ARGs a RUN sees,
//! the content digest of what a COPY copies, the key of a `--from` stage).
//! `build-cache/<key>.json` records the step's layer and creation time, so
//! an unchanged step is skipped and an unchanged build yields the same
//! image id.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use skiff_core::{Digest, ImageRef};
use skiff_image::store::{media_type, Image, Layer, Store, StoreError};
use skiff_runtime::oci::OciRuntime;
use skiff_runtime::rootfs::{mount_overlay_with, unmount};

use crate::ast::{Command, CommandLine, Instruction};
use crate::config::{clean_abs, ImageConfig};
use crate::context::BuildContext;
use crate::copy::{self, has_glob, CopyPlan, Source};
use crate::run::{
    run_argv, run_step, shebang_argv, shebang_script, MountKind, RunMount, RunNetwork, RunStep,
};
use crate::{parse, resolve, resolve_with_base_env, Stage};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile (`-f`), by default `CONTEXT/Dockerfile`.
    pub dockerfile: PathBuf,
    pub build_args: BTreeMap<String, String>,
    /// `--target`: the stage to stop at (default: the last).
    pub target: Option<String>,
    pub no_cache: bool,
    pub network: RunNetwork,
    /// The names the image gets; at least one.
    pub tags: Vec<ImageRef>,
}

/// What the builder needs from the rest of Skiff.
pub trait BuildHost {
    /// The image an external `FROM` or `COPY --from` names, pulled if needed.
    fn image(&mut self, name: &str) -> Result<Image, String>;
    /// A progress line (`STEP 2/5: RUN ...`, `--> Using cache`).
    fn progress(&mut self, line: &str);
    /// Output of a RUN step, as it comes.
    fn output(&mut self, bytes: &[u8]);
}

/// Why a build failed; the message names the file and line at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildFailure {
    /// The Dockerfile, the context or an option is wrong.
    #[error("{0}")]
    Input(String),
    /// A step could not be carried out.
    #[error("{file}:{line}: {instruction}: {message}")]
    Step {
        file: String,
        line: usize,
        instruction: String,
        message: String,
    },
    /// A RUN command exited non-zero.
    #[error("{file}:{line}: {instruction}: exited with code {code}\n{tail}")]
    Run {
        file: String,
        line: usize,
        instruction: String,
        code: i32,
        tail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of a build.
#[derive(Debug)]
pub struct Built {
    pub image: Image,
    /// Steps taken from the cache and steps run.
    pub cached: usize,
    pub ran: usize,
}

/// A stage's image as it is being built.
#[derive(Debug, Clone)]
struct StageState {
    config: ImageConfig,
    layers: Vec<Layer>,
    /// The cache key of everything so far.
    chain: Digest,
    /// CMD set in this stage (ENTRYPOINT keeps it then).
    cmd_set: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    created: String,
    layer: Option<CachedLayer>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedLayer {
    digest: String,
    diff_id: String,
    size: u64,
    media_type: String,
}

pub struct Builder<'a> {
    env: Env<'a>,
    host: &'a mut dyn BuildHost,
}

/// What steps need besides the host: the store, the runtime, scratch and
/// cache directories.
struct Env<'a> {
    store: &'a Store,
    runtime: &'a OciRuntime,
    /// `$SKIFF_ROOT/build`: one scratch directory per step.
    work_root: PathBuf,
    /// `$SKIFF_ROOT/build-cache`.
    cache_dir: PathBuf,
    /// `--no-cache`: steps are run (and their results recorded) anyway.
    no_cache: bool,
}

/// Overlay options that keep an upper directory a plain diff: no redirect
/// or metacopy xattrs standing in for content that is really in a lower.
/// `volatile`: the upper is read back and stored as a layer blob (synced
/// there), so the unmount need not sync the filesystem it lives on.
const DIFF_MOUNT_OPTIONS: &str = "redirect_dir=off,index=off,metacopy=off,volatile";

impl<'a> Builder<'a> {
    /// `root` is `$SKIFF_ROOT`; scratch and cache live under it, on the
    /// store's filesystem (a step's upper directory is renamed into it).
    pub fn new(
        root: &Path,
        store: &'a Store,
        runtime: &'a OciRuntime,
        host: &'a mut dyn BuildHost,
    ) -> Builder<'a> {
        Builder {
            env: Env {
                store,
                runtime,
                work_root: root.join("build"),
                cache_dir: root.join("build-cache"),
                no_cache: false,
            },
            host,
        }
    }

    pub fn build(&mut self, opts: &BuildOptions) -> Result<Built, BuildFailure> {
        let file = opts.dockerfile.display().to_string();
        let input = |e: &dyn std::fmt::Display| {
            BuildFailure::Input(
                e.to_string()
                    .replacen("Dockerfile:", &format!("{file}:"), 1),
            )
        };
        if opts.tags.is_empty() {
            return Err(BuildFailure::Input("a build needs a name (-t NAME)".into()));
        }
        let text = fs::read_to_string(&opts.dockerfile)
            .map_err(|e| BuildFailure::Input(format!("cannot read {file}: {e}")))?;
        let dockerfile = parse(&text).map_err(|e| input(&e))?;
        let ignore = PathBuf::from(format!("{file}.dockerignore"));
        let context = BuildContext::open(&opts.context, ignore.is_file().then_some(&*ignore))
            .map_err(|e| input(&e))?;
        let (os, arch) = skiff_image::registry::host_platform();
        let mut args = opts.build_args.clone();
        for (k, v) in [
            ("TARGETPLATFORM", format!("{os}/{arch}")),
            ("TARGETOS", os.clone()),
            ("TARGETARCH", arch.clone()),
            ("BUILDPLATFORM", format!("{os}/{arch}")),
            ("BUILDOS", os.clone()),
            ("BUILDARCH", arch.clone()),
        ] {
            args.entry(k.to_string()).or_insert(v);
        }

        // First pass: stage names and bases, to know what to pull.
        let draft = resolve(&dockerfile, &args).map_err(|e| input(&e))?;
        let target = match &opts.target {
            None => draft.len() - 1,
            Some(t) => {
                let t = t.to_ascii_lowercase();
                draft
                    .iter()
                    .position(|s| s.name.as_deref() == Some(t.as_str()))
                    .ok_or_else(|| {
                        BuildFailure::Input(format!("{file}: no stage named {t:?} (--target)"))
                    })?
            }
        };
        let order = build_order(&draft, target, &file)?;
        let mut images: HashMap<String, (Image, ImageConfig)> = HashMap::new();
        for &i in &order {
            let stage = &draft[i];
            let mut names = Vec::new();
            if stage_ref(&draft, &stage.base, i, true).is_none() && stage.base != "scratch" {
                names.push((stage.line, stage.base.clone()));
            }
            for step in &stage.steps {
                if let Some(from) = step.instruction.flag("from") {
                    if stage_ref(&draft, from, i, false).is_none() {
                        names.push((step.instruction.line, from.to_string()));
                    }
                }
            }
            for (line, name) in names {
                if images.contains_key(&name) {
                    continue;
                }
                let image = self
                    .host
                    .image(&name)
                    .map_err(|e| BuildFailure::Input(format!("{file}:{line}: {e}")))?;
                let bytes = self.env.store.read_blob(&image.id)?;
                let config = ImageConfig::from_base(&bytes).map_err(|e| {
                    BuildFailure::Input(format!("{file}:{line}: config of {name}: {e}"))
                })?;
                images.insert(name, (image, config));
            }
        }
        let base_env = |base: &str| images.get(base).map(|(_, c)| c.env()).unwrap_or_default();
        let mut stages =
            resolve_with_base_env(&dockerfile, &args, &base_env).map_err(|e| input(&e))?;
        // A base image's ONBUILD triggers run first in the stage built on
        // it, as if written right after its FROM (Docker's rule).
        for stage in &mut stages {
            let Some((_, config)) = images.get(&stage.base) else {
                continue;
            };
            let triggers = config.onbuild();
            if triggers.is_empty() || stage_ref(&draft, &stage.base, stage.index, true).is_some() {
                continue;
            }
            let text = format!("FROM {}\n{}\n", stage.base, triggers.join("\n"));
            let at = |e: &dyn std::fmt::Display| {
                BuildFailure::Input(format!(
                    "{file}:{}: ONBUILD trigger of {}: {e}",
                    stage.line, stage.base
                ))
            };
            let parsed = parse(&text).map_err(|e| at(&e))?;
            let resolved = resolve_with_base_env(&parsed, &args, &base_env).map_err(|e| at(&e))?;
            let mut steps: Vec<_> = resolved.into_iter().flat_map(|s| s.steps).collect();
            for step in &mut steps {
                step.instruction.line = stage.line;
                step.instruction.end_line = stage.line;
            }
            steps.append(&mut stage.steps);
            stage.steps = steps;
        }

        self.env.no_cache = opts.no_cache;
        // Nothing may collect our blobs and layers before the image is named.
        let _lease = self.env.store.lease()?;
        sweep_stale(&self.env.work_root, self.env.runtime);
        fs::create_dir_all(&self.env.cache_dir)
            .map_err(|e| BuildFailure::Input(format!("cannot create build cache: {e}")))?;

        let mut done: HashMap<usize, StageState> = HashMap::new();
        let mut counts = (0usize, 0usize);
        for &i in &order {
            let stage = &stages[i];
            let state = self.build_stage(
                &file,
                stage,
                &stages,
                &done,
                &images,
                &context,
                opts,
                &mut counts,
            )?;
            done.insert(i, state);
        }
        let Some(state) = done.remove(&target) else {
            return Err(BuildFailure::Input(format!(
                "{file}: target stage was not built"
            )));
        };
        let image = self.env.commit(&state, &opts.tags)?;
        Ok(Built {
            image,
            cached: counts.0,
            ran: counts.1,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn build_stage(
        &mut self,
        file: &str,
        stage: &Stage,
        stages: &[Stage],
        done: &HashMap<usize, StageState>,
        images: &HashMap<String, (Image, ImageConfig)>,
        context: &BuildContext,
        opts: &BuildOptions,
        counts: &mut (usize, usize),
    ) -> Result<StageState, BuildFailure> {
        let total = stage.steps.len() + 1;
        let label = stage
            .name
            .as_deref()
            .map(|n| format!(" AS {n}"))
            .unwrap_or_default();
        self.host
            .progress(&format!("STEP 1/{total}: FROM {}{label}", stage.base));
        let mut state = match stage_ref(stages, &stage.base, stage.index, true) {
            Some(j) => match done.get(&j) {
                Some(s) => StageState {
                    cmd_set: false,
                    ..s.clone()
                },
                None => {
                    return Err(BuildFailure::Input(format!(
                        "{file}:{}: stage {j} was not built before it was used",
                        stage.line
                    )))
                }
            },
            None if stage.base == "scratch" => {
                let (os, arch) = skiff_image::registry::host_platform();
                StageState {
                    config: ImageConfig::scratch(&os, &arch),
                    layers: Vec::new(),
                    chain: Digest::of(b"FROM scratch"),
                    cmd_set: false,
                }
            }
            None => {
                let Some((image, config)) = images.get(&stage.base) else {
                    return Err(BuildFailure::Input(format!(
                        "{file}:{}: image {} was not resolved",
                        stage.line, stage.base
                    )));
                };
                let mut config = config.clone();
                // Consumed by this stage (see `build`), not inherited further.
                config.clear_onbuild();
                StageState {
                    config,
                    layers: image.layers.clone(),
                    chain: Digest::of(format!("FROM {}", image.id).as_bytes()),
                    cmd_set: false,
                }
            }
        };

        for (n, step) in stage.steps.iter().enumerate() {
            let inst = &step.instruction;
            let text = describe(inst);
            self.host
                .progress(&format!("STEP {}/{total}: {text}", n + 2));
            let fail = |message: String| BuildFailure::Step {
                file: file.to_string(),
                line: inst.line,
                instruction: short(&text),
                message,
            };
            let mut key = serde_json::json!({
                "command": inst.command,
                "flags": inst.flags,
                "heredocs": inst.heredocs,
                "args": step.args,
            });
            match &inst.command {
                Command::Arg(_) => continue,
                Command::Run(cmd) => {
                    let network = match inst.flag("network") {
                        Some(n) => n.parse::<RunNetwork>().map_err(fail)?,
                        None => opts.network,
                    };
                    let workdir = state.config.workdir();
                    let mounts = inst
                        .flags
                        .iter()
                        .filter(|f| f.name == "mount")
                        .map(|f| {
                            RunMount::parse(
                                f.value.as_deref().unwrap_or(""),
                                context,
                                &self.env.cache_dir,
                                &workdir,
                            )
                        })
                        .collect::<Result<Vec<_>, String>>()
                        .map_err(fail)?;
                    // A bound file's content and the network are part of
                    // what the step does.
                    let bound: Vec<&str> =
                        mounts.iter().filter_map(RunMount::content_key).collect();
                    key["mounts"] = serde_json::json!(bound);
                    key["network"] = serde_json::json!(network == RunNetwork::None);
                    if inst.flag("security").is_some_and(|s| s != "sandbox") {
                        return Err(fail("--security=insecure is not supported".into()));
                    }
                    let mut mounts = mounts;
                    let argv = match shebang_script(cmd, &inst.heredocs) {
                        // BuildKit runs such a script as a file, by its #! line.
                        Some(h) => {
                            let target = format!("/dev/pipes/{}", h.name.replace('/', "_"));
                            mounts.push(RunMount {
                                kind: MountKind::Script(h.content.clone()),
                                target: target.clone(),
                            });
                            shebang_argv(&h.content, target)
                        }
                        None => run_argv(&state.config, cmd, &inst.heredocs),
                    };
                    let image = state.config.runtime_config();
                    let args_env: Vec<String> =
                        step.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let runtime = self.env.runtime;
                    let host = &mut *self.host;
                    let mut outcome = None;
                    let res =
                        self.env
                            .fs_step(&mut state, key, &text, counts, |rootfs, bundle, id| {
                                let binds = mounts
                                    .iter()
                                    .enumerate()
                                    .map(|(i, m)| m.bind(bundle, i))
                                    .collect::<io::Result<Vec<_>>>()
                                    .map_err(|e| e.to_string())?;
                                let step = RunStep {
                                    id,
                                    rootfs,
                                    bundle,
                                    image,
                                    argv,
                                    args_env,
                                    network,
                                    mounts: binds,
                                };
                                let res = run_step(runtime, &step, &mut |b| host.output(b))
                                    .map_err(|e| e.to_string())?;
                                let ok = res.code == 0;
                                outcome = Some(res);
                                Ok(ok)
                            });
                    match (res, outcome) {
                        (Ok(cached), _) => self.cached(cached),
                        (Err(StepFailed::Aborted), Some(res)) => {
                            return Err(BuildFailure::Run {
                                file: file.to_string(),
                                line: inst.line,
                                instruction: short(&text),
                                code: res.code,
                                tail: res.tail,
                            })
                        }
                        (Err(e), _) => return Err(fail(e.to_string())),
                    }
                }
                Command::Copy { sources, dest } | Command::Add { sources, dest } => {
                    let is_add = matches!(inst.command, Command::Add { .. });
                    let plan = self
                        .copy_plan(
                            inst, sources, dest, is_add, &state, stages, done, images, context,
                        )
                        .map_err(fail)?;
                    key["content"] = serde_json::json!(plan.content_key);
                    let store = self.env.store;
                    let cached = self
                        .env
                        .fs_step(&mut state, key, &text, counts, |rootfs, bundle, _| {
                            plan.apply(store, rootfs, bundle)?;
                            Ok(true)
                        })
                        .map_err(|e| fail(e.to_string()))?;
                    self.cached(cached);
                }
                Command::Workdir(dir) => {
                    let dir = state.config.apply_workdir(dir);
                    let owner = state.config.user();
                    let cached = self
                        .env
                        .fs_step(&mut state, key, &text, counts, |rootfs, _, _| {
                            // BuildKit creates WORKDIR owned by the current USER.
                            let ids = match &owner {
                                Some(u) => Some(
                                    skiff_runtime::spec::chown_ids(rootfs, u)
                                        .map_err(|e| e.to_string())?,
                                ),
                                None => None,
                            };
                            copy::mkdir_in_root(rootfs, &dir, ids).map_err(|e| e.to_string())?;
                            Ok(true)
                        })
                        .map_err(|e| fail(e.to_string()))?;
                    self.cached(cached);
                }
                other => {
                    apply_metadata(&mut state, other).map_err(fail)?;
                    key["config"] =
                        serde_json::json!(String::from_utf8_lossy(&state.config.to_bytes()));
                    self.env.meta_step(&mut state, key, &text);
                }
            }
        }
        Ok(state)
    }

    fn cached(&mut self, cached: bool) {
        if cached {
            self.host.progress("--> Using cache");
        }
    }
}

impl Env<'_> {
    fn chain_of(parent: &Digest, key: &serde_json::Value) -> Digest {
        let mut h = Sha256::new();
        h.update(parent.to_string().as_bytes());
        h.update(b"\n");
        h.update(key.to_string().as_bytes());
        Digest::parse(&format!("sha256:{}", hex::encode(h.finalize())))
            .unwrap_or_else(|_| parent.clone())
    }

    fn cache_path(&self, chain: &Digest) -> PathBuf {
        self.cache_dir.join(format!("{}.json", chain.hex()))
    }

    fn cache_get(&self, chain: &Digest, no_cache: bool) -> Option<CacheEntry> {
        if no_cache {
            return None;
        }
        let bytes = fs::read(self.cache_path(chain)).ok()?;
        let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        match &entry.layer {
            Some(l) => {
                let d = Digest::parse(&l.digest).ok()?;
                self.store.has_blob(&d).then_some(entry)
            }
            None => Some(entry),
        }
    }

    fn cache_put(&self, chain: &Digest, entry: &CacheEntry) {
        let path = self.cache_path(chain);
        let tmp = path.with_extension("tmp");
        let ok = serde_json::to_vec(entry)
            .map_err(io::Error::other)
            .and_then(|b| fs::write(&tmp, b))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = ok {
            tracing::warn!("cannot record build cache entry {}: {e}", path.display());
        }
    }

    /// A step that only changes the config (not counted as run or cached).
    fn meta_step(&self, state: &mut StageState, key: serde_json::Value, text: &str) {
        let chain = Self::chain_of(&state.chain, &key);
        let created = match self.cache_get(&chain, false) {
            Some(e) => e.created,
            None => {
                let entry = CacheEntry {
                    created: skiff_core::time::rfc3339(skiff_core::time::now_secs()),
                    layer: None,
                };
                self.cache_put(&chain, &entry);
                entry.created
            }
        };
        state.config.record(text, &created, None);
        state.chain = chain;
    }

    /// A step that changes the filesystem: from the cache, or by running
    /// `action(rootfs, bundle_dir, container_id)` on a fresh overlay.
    /// `action` returns false when the step failed in a way it reported
    /// itself (a RUN's exit code).
    fn fs_step(
        &mut self,
        state: &mut StageState,
        key: serde_json::Value,
        text: &str,
        counts: &mut (usize, usize),
        action: impl FnOnce(&Path, &Path, &str) -> Result<bool, String>,
    ) -> Result<bool, StepFailed> {
        let chain = Self::chain_of(&state.chain, &key);
        if let Some(entry) = self.cache_get(&chain, self.no_cache) {
            if let Some(l) = &entry.layer {
                let layer = Layer {
                    digest: parse_digest(&l.digest)?,
                    diff_id: parse_digest(&l.diff_id)?,
                    media_type: l.media_type.clone(),
                    size: l.size,
                };
                state.config.record(text, &entry.created, Some(&l.diff_id));
                state.layers.push(layer);
            } else {
                state.config.record(text, &entry.created, None);
            }
            state.chain = chain;
            counts.0 += 1;
            return Ok(true);
        }
        counts.1 += 1;
        let scratch = Scratch::new(&self.work_root)?;
        let mut lowers = Vec::with_capacity(state.layers.len().max(1));
        for l in &state.layers {
            lowers.push(self.store.layer_dir(l)?);
        }
        if lowers.is_empty() {
            let empty = scratch.dir.join("empty");
            fs::create_dir(&empty)?;
            lowers.push(empty);
        }
        let rootfs = scratch.dir.join("rootfs");
        let upper = scratch.dir.join("upper");
        mount_overlay_with(
            &lowers,
            &upper,
            &scratch.dir.join("work"),
            &rootfs,
            DIFF_MOUNT_OPTIONS,
        )?;
        let bundle = scratch.dir.join("bundle");
        fs::create_dir(&bundle)?;
        let id = format!("build-{}", scratch.id);
        let ok = action(&rootfs, &bundle, &id);
        unmount(&rootfs)?;
        if !ok.map_err(StepFailed::Other)? {
            return Err(StepFailed::Aborted);
        }
        let created = skiff_core::time::rfc3339(skiff_core::time::now_secs());
        let layer = if crate::layer::is_empty(&upper)? {
            None
        } else {
            let mut ingest = self.store.ingest_unknown()?;
            // gzip as Docker's layers are (registries and `docker load`
            // expect it), at the fastest level: a build waits for this.
            let mut gz = flate2::write::GzEncoder::new(&mut ingest, flate2::Compression::fast());
            let (diff_id, _) = crate::layer::write_layer(&upper, &mut gz)?;
            gz.finish()?;
            let (digest, size) = ingest.commit()?;
            self.store.adopt_layer_dir(&diff_id, &upper)?;
            Some(Layer {
                digest,
                diff_id,
                media_type: media_type::OCI_LAYER_GZIP.to_string(),
                size,
            })
        };
        let entry = CacheEntry {
            created: created.clone(),
            layer: layer.as_ref().map(|l| CachedLayer {
                digest: l.digest.to_string(),
                diff_id: l.diff_id.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
            }),
        };
        self.cache_put(&chain, &entry);
        let diff = layer.as_ref().map(|l| l.diff_id.to_string());
        state.config.record(text, &created, diff.as_deref());
        state.layers.extend(layer);
        state.chain = chain;
        Ok(false)
    }

    /// Writes the config and manifest and names the image.
    fn commit(&self, state: &StageState, tags: &[ImageRef]) -> Result<Image, BuildFailure> {
        let config = state.config.to_bytes();
        let config_digest = self.store.write_blob(&config)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {
                "mediaType": media_type::OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": state.layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest.to_string(),
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let bytes =
            serde_json::to_vec(&manifest).map_err(|e| BuildFailure::Input(e.to_string()))?;
        let md = self.store.write_blob(&bytes)?;
        let names: Vec<(ImageRef, Digest)> = tags.iter().map(|t| (t.clone(), md.clone())).collect();
        let mut images = self.store.add_images(&names)?;
        images
            .pop()
            .ok_or_else(|| BuildFailure::Input("no image name".into()))
    }
}

/// Why [`Env::fs_step`] did not produce a layer.
#[derive(Debug, thiserror::Error)]
enum StepFailed {
    /// The action reported its own failure (a RUN exit code).
    #[error("step failed")]
    Aborted,
    #[error("{0}")]
    Other(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] skiff_runtime::rootfs::RootfsError),
}

fn parse_digest(s: &str) -> Result<Digest, StepFailed> {
    Digest::parse(s).map_err(|e| StepFailed::Other(format!("build cache: {e}")))
}

impl<'a> Builder<'a> {
    #[allow(clippy::too_many_arguments)]
    fn copy_plan(
        &mut self,
        inst: &Instruction,
        sources: &[String],
        dest: &str,
        is_add: bool,
        state: &StageState,
        stages: &[Stage],
        done: &HashMap<usize, StageState>,
        images: &HashMap<String, (Image, ImageConfig)>,
        context: &BuildContext,
    ) -> Result<CopyPlan, String> {
        for f in &inst.flags {
            let known: &[&str] = if is_add {
                &["chown", "chmod", "link"]
            } else {
                &["from", "chown", "chmod", "link"]
            };
            if !known.contains(&f.name.as_str()) {
                return Err(format!("--{} is not supported", f.name));
            }
        }
        let chmod = inst
            .flag("chmod")
            .map(|m| {
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        format!("invalid --chmod={m}: expected an octal mode such as 0755")
                    })
            })
            .transpose()?;
        let workdir = state.config.workdir();
        let dest_abs = if dest.starts_with('/') {
            dest.to_string()
        } else {
            format!("{}/{dest}", workdir.trim_end_matches('/'))
        };
        let dest_is_dir = dest.ends_with('/')
            || dest.ends_with("/.")
            || dest == "."
            || sources.len() + inst.heredocs.len() > 1;
        let from = match inst.flag("from") {
            None => Source::Context,
            Some(name) => match stage_ref(stages, name, usize::MAX, false) {
                Some(j) => {
                    let s = done
                        .get(&j)
                        .ok_or_else(|| format!("stage {name} was not built before it was used"))?;
                    Source::Layers {
                        layers: s.layers.clone(),
                        key: s.chain.to_string(),
                    }
                }
                None => {
                    let (image, _) = images
                        .get(name)
                        .ok_or_else(|| format!("image {name} was not resolved"))?;
                    Source::Layers {
                        layers: image.layers.clone(),
                        key: image.id.to_string(),
                    }
                }
            },
        };
        // Each source is walked once: the walk is hashed for the cache key
        // and, on a miss, copied.
        let (paths, context_entries, content_key) = match &from {
            Source::Context => {
                let mut walks = Vec::new();
                for s in sources {
                    if s.contains("://") {
                        return Err(format!("ADD from a URL ({s}) is not supported yet"));
                    }
                    for rel in context.expand_source(s).map_err(|e| e.to_string())? {
                        let entries = context.walk(&rel).map_err(|e| e.to_string())?;
                        walks.push((rel, entries));
                    }
                }
                let digest = BuildContext::digest_walks(&walks).map_err(|e| e.to_string())?;
                let (paths, entries) = walks.into_iter().unzip();
                (paths, entries, digest.to_string())
            }
            Source::Layers { key, .. } => (
                sources.iter().map(PathBuf::from).collect(),
                Vec::new(),
                key.clone(),
            ),
        };
        Ok(CopyPlan {
            from,
            paths,
            context_entries,
            heredocs: inst.heredocs.clone(),
            dest: clean_abs(&dest_abs),
            dest_is_dir: dest_is_dir || has_glob(sources),
            chown: inst.flag("chown").map(str::to_string),
            chmod,
            is_add,
            content_key,
        })
    }
}

fn apply_metadata(state: &mut StageState, cmd: &Command) -> Result<(), String> {
    let c = &mut state.config;
    match cmd {
        Command::Env(kvs) => c.apply_env(kvs),
        Command::Label(kvs) => c.apply_labels(kvs),
        Command::Expose(ports) => c.apply_expose(ports)?,
        Command::Volume(paths) => c.apply_volumes(paths),
        Command::User(u) => {
            if u.is_empty() {
                return Err("USER requires a user".into());
            }
            c.set_user(u)
        }
        Command::Stopsignal(s) => {
            skiff_runtime::oci::parse_signal(s).map_err(|e| e.to_string())?;
            c.set_stop_signal(s)
        }
        Command::Healthcheck(h) => c.set_healthcheck(h),
        Command::Shell(argv) => c.set_shell(argv),
        Command::Cmd(cl) => {
            c.set_cmd(cl);
            state.cmd_set = true;
        }
        Command::Entrypoint(cl) => c.set_entrypoint(cl, state.cmd_set),
        Command::Maintainer(m) => c.set_author(m),
        Command::Onbuild(inst) => c.add_onbuild(&describe(inst)),
        _ => {}
    }
    Ok(())
}

/// An instruction as history's `created_by` and progress show it.
fn describe(inst: &Instruction) -> String {
    let flags: String = inst
        .flags
        .iter()
        .map(|f| match &f.value {
            Some(v) => format!("--{}={} ", f.name, v),
            None => format!("--{} ", f.name),
        })
        .collect();
    let cl = |c: &CommandLine| match c {
        CommandLine::Exec(argv) => serde_json::to_string(argv).unwrap_or_default(),
        CommandLine::Shell(s) => s.clone(),
    };
    let kvs = |kvs: &[crate::KeyValue]| {
        kvs.iter()
            .map(|kv| match &kv.value {
                Some(v) => format!("{}={}", kv.key, v),
                None => kv.key.clone(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let body = match &inst.command {
        Command::From { image, name } => match name {
            Some(n) => format!("{image} AS {n}"),
            None => image.clone(),
        },
        Command::Run(c) | Command::Cmd(c) | Command::Entrypoint(c) => cl(c),
        Command::Shell(argv) => serde_json::to_string(argv).unwrap_or_default(),
        Command::Label(k) | Command::Env(k) | Command::Arg(k) => kvs(k),
        Command::Maintainer(m) => m.clone(),
        Command::Expose(w) | Command::Volume(w) => w.join(" "),
        Command::Add { sources, dest } | Command::Copy { sources, dest } => {
            let mut words: Vec<String> = sources.clone();
            words.extend(inst.heredocs.iter().map(|h| format!("<<{}", h.name)));
            words.push(dest.clone());
            words.join(" ")
        }
        Command::User(s) | Command::Workdir(s) | Command::Stopsignal(s) => s.clone(),
        Command::Onbuild(i) => describe(i),
        Command::Healthcheck(h) => match h {
            crate::Healthcheck::None => "NONE".into(),
            crate::Healthcheck::Cmd { command, .. } => format!("CMD {}", cl(command)),
        },
    };
    format!("{} {flags}{body}", inst.command.keyword())
}

/// First line of a step, for error messages.
fn short(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.chars().count() > 80 {
        format!("{}...", first.chars().take(77).collect::<String>())
    } else {
        first.to_string()
    }
}

/// The stage `name` refers to: a stage name, or with `by_index` false
/// also a number. `FROM` may only name an earlier stage (`before`); a
/// later name is an image, as in Docker.
fn stage_ref(stages: &[Stage], name: &str, before: usize, from_line: bool) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    let limit = if from_line { before } else { stages.len() };
    if let Some(i) = stages[..limit.min(stages.len())]
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        return Some(i);
    }
    if !from_line {
        if let Ok(i) = name.parse::<usize>() {
            return (i < stages.len()).then_some(i);
        }
    }
    None
}

/// The stages `target` needs, dependencies first; a cycle of `--from`
/// references is an error naming the stages.
fn build_order(stages: &[Stage], target: usize, file: &str) -> Result<Vec<usize>, BuildFailure> {
    fn visit(
        stages: &[Stage],
        i: usize,
        path: &mut Vec<usize>,
        out: &mut Vec<usize>,
        file: &str,
    ) -> Result<(), BuildFailure> {
        if out.contains(&i) {
            return Ok(());
        }
        if let Some(pos) = path.iter().position(|&p| p == i) {
            let names: Vec<String> = path[pos..]
                .iter()
                .chain([&i])
                .map(|&s| stages[s].name.clone().unwrap_or_else(|| s.to_string()))
                .collect();
            return Err(BuildFailure::Input(format!(
                "{file}:{}: circular dependency between stages: {}",
                stages[i].line,
                names.join(" -> ")
            )));
        }
        path.push(i);
        let stage = &stages[i];
        let mut deps: Vec<usize> = stage_ref(stages, &stage.base, i, true)
            .into_iter()
            .collect();
        for step in &stage.steps {
            if let Some(from) = step.instruction.flag("from") {
                match stage_ref(stages, from, i, false) {
                    Some(j) if j == i => {
                        return Err(BuildFailure::Input(format!(
                            "{file}:{}: COPY --from={from} refers to its own stage",
                            step.instruction.line
                        )))
                    }
                    Some(j) => deps.push(j),
                    None if from.parse::<usize>().is_ok() => {
                        return Err(BuildFailure::Input(format!(
                            "{file}:{}: COPY --from={from}: there is no stage {from}",
                            step.instruction.line
                        )))
                    }
                    None => {}
                }
            }
        }
        for d in deps {
            visit(stages, d, path, out, file)?;
        }
        path.pop();
        out.push(i);
        Ok(())
    }
    let mut out = Vec::new();
    visit(stages, target, &mut Vec::new(), &mut out, file)?;
    Ok(out)
}

/// A step's scratch directory, unmounted and removed when dropped. A lock
/// file marks it as in use, so a later build can sweep the leftovers of
/// one that was killed.
struct Scratch {
    id: String,
    dir: PathBuf,
    _lock: Option<nix::fcntl::Flock<fs::File>>,
}

impl Scratch {
    fn new(root: &Path) -> io::Result<Scratch> {
        fs::create_dir_all(root)?;
        let mut b = [0u8; 6];
        fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        let id = hex::encode(b);
        // Made under a dot name and renamed once locked, so a sweep never
        // sees it unlocked.
        let new = root.join(format!(".new-{id}"));
        fs::create_dir(&new)?;
        let lock = fs::File::create(new.join(".lock"))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        let dir = root.join(&id);
        fs::rename(&new, &dir)?;
        Ok(Scratch {
            id,
            dir,
            _lock: Some(lock),
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_scratch(&self.dir);
    }
}

fn remove_scratch(dir: &Path) {
    for m in ["bundle/from", "rootfs"] {
        let _ = unmount(&dir.join(m));
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }
}

/// Removes scratch directories of builds that died (their lock is free),
/// with the RUN container and cgroup such a build may have left. The lock
/// is held while removing, so a build cannot take the directory meanwhile.
fn sweep_stale(root: &Path, runtime: &OciRuntime) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `.new-*`: still being made by `Scratch::new`.
        if name.starts_with('.') {
            continue;
        }
        let dir = e.path();
        let lock = fs::File::open(dir.join(".lock")).ok().and_then(|f| {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
        });
        if lock.is_none() && dir.join(".lock").exists() {
            continue;
        }
        let id = format!("build-{name}");
        let _ = runtime.delete(&id, true);
        skiff_runtime::cgroups::remove_cgroup(&format!("/skiff/{id}"));
        remove_scratch(&dir);
        drop(lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(text: &str) -> Vec<Stage> {
        resolve(&parse(text).unwrap(), &BTreeMap::<String, String>::new()).unwrap()
    }

    #[test]
    fn order_follows_from_and_copy_from_and_finds_cycles() {
        let s = stages(
            "FROM scratch AS a\nFROM a AS b\nFROM scratch AS c\nCOPY --from=b /x /x\nFROM scratch AS unused\n",
        );
        assert_eq!(build_order(&s, 2, "Dockerfile").unwrap(), vec![0, 1, 2]);
        assert_eq!(build_order(&s, 3, "Dockerfile").unwrap(), vec![3]);
        let s = stages(
            "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n",
        );
        let e = build_order(&s, 1, "Dockerfile").unwrap_err().to_string();
        assert!(
            e.contains("circular dependency between stages: b -> a -> b"),
            "{e}"
        );
        let s = stages("FROM scratch\nCOPY --from=7 /x /x\n");
        assert!(build_order(&s, 0, "Dockerfile").is_err());
    }

    #[test]
    fn describes_instructions() {
        let df = parse("FROM scratch\nCOPY --chown=1:1 a b /d/\nENV A=1 B=2\nCMD [\"x\", \"y\"]\n")
            .unwrap();
        let texts: Vec<String> = df.instructions[1..].iter().map(describe).collect();
        assert_eq!(
            texts,
            vec![
                "COPY --chown=1:1 a b /d/",
                "ENV A=1 B=2",
                "CMD [\"x\",\"y\"]"
            ]
        );
    }
}
