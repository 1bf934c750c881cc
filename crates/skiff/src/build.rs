//! `skiff build` and the build half of `skiff deploy --source`: the CLI
//! side of skiff-build's builder (names, base images, progress, output).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use skiff_build::{BuildHost, BuildOptions, Builder, RunNetwork};
use skiff_core::ImageRef;
use skiff_image::store::Image;
use skiff_runtime::oci::OciRuntime;

use crate::cli::BuildArgs;
use crate::context::{require_root, Context};

/// Progress and RUN output go to stderr (stdout gets only the image id),
/// unless quiet.
struct CliHost<'a> {
    ctx: &'a Context,
    quiet: bool,
}

impl BuildHost for CliHost<'_> {
    fn image(&mut self, name: &str) -> Result<Image, String> {
        crate::images::resolve_or_pull(self.ctx, name).map_err(|e| format!("{e:#}"))
    }
    fn progress(&mut self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
    fn output(&mut self, bytes: &[u8]) {
        if !self.quiet {
            let _ = std::io::stderr().write_all(bytes);
        }
    }
}

pub fn build(ctx: &Context, args: BuildArgs) -> Result<u8> {
    let tags = args
        .tag
        .iter()
        .map(|t| ImageRef::parse(t).with_context(|| format!("-t {t}")))
        .collect::<Result<Vec<_>>>()?;
    let output = args.output.as_deref().map(parse_output).transpose()?;
    let image = run_build(ctx, &args, tags.clone())?;
    if let Some((format, path)) = output {
        let names: Vec<String> = tags.iter().map(ToString::to_string).collect();
        crate::images::save(ctx, &path, format, &names)?;
        if !args.quiet {
            eprintln!("Wrote {format} archive {}", path.display());
        }
    }
    println!("{}", image.id);
    Ok(0)
}

/// `--output oci:FILE` or `docker:FILE`.
fn parse_output(s: &str) -> Result<(&'static str, PathBuf)> {
    match s.split_once(':') {
        Some(("oci", p)) if !p.is_empty() => Ok(("oci", PathBuf::from(p))),
        Some(("docker", p)) if !p.is_empty() => Ok(("docker", PathBuf::from(p))),
        _ => bail!("--output {s:?}: expected oci:FILE or docker:FILE"),
    }
}

fn run_build(ctx: &Context, args: &BuildArgs, tags: Vec<ImageRef>) -> Result<Image> {
    require_root("skiff build")?;
    if !args.context.is_dir() {
        bail!("build context {}: not a directory", args.context.display());
    }
    let dockerfile = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let mut build_args = BTreeMap::new();
    for a in &args.build_arg {
        match a.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            // `--build-arg K` takes K from this environment, as Docker's.
            None => match std::env::var(a) {
                Ok(v) => build_args.insert(a.clone(), v),
                Err(_) => continue,
            },
        };
    }
    let network: RunNetwork = args.network.parse().map_err(anyhow::Error::msg)?;
    let runtime = OciRuntime::new(&args.runtime, ctx.runtime_state_dir(&args.runtime))?;
    skiff_runtime::cgroups::prepare_host(runtime.name())?;
    let opts = BuildOptions {
        context: args.context.clone(),
        dockerfile,
        build_args,
        target: args.target.clone(),
        no_cache: args.no_cache,
        network,
        tags,
    };
    let store = ctx.store()?;
    let mut host = CliHost {
        ctx,
        quiet: args.quiet,
    };
    let started = std::time::Instant::now();
    let built = Builder::new(&ctx.root, store, &runtime, &mut host).build(&opts)?;
    if !args.quiet {
        let names: Vec<String> = opts.tags.iter().map(ToString::to_string).collect();
        eprintln!(
            "Built {} as {} in {:.1}s ({} steps run, {} cached)",
            built.image.id.short(),
            names.join(", "),
            started.elapsed().as_secs_f64(),
            built.ran,
            built.cached
        );
    }
    Ok(built.image)
}

/// Builds `dir`'s Dockerfile for `deploy NAME --source DIR`; the image is
/// named after the service and its id, so every revision keeps its own.
pub fn build_source(ctx: &Context, service: &str, dir: &Path) -> Result<String> {
    let quiet = !std::io::stderr().is_terminal();
    let args = BuildArgs {
        tag: Vec::new(),
        file: None,
        build_arg: Vec::new(),
        target: None,
        no_cache: false,
        network: "host".into(),
        output: None,
        quiet,
        runtime: std::env::var("SKIFF_RUNTIME").unwrap_or_else(|_| "crun".into()),
        context: dir.to_path_buf(),
    };
    let latest = ImageRef::parse(&format!("localhost/source/{service}:latest"))?;
    let image = run_build(ctx, &args, vec![latest])?;
    let pinned = format!("localhost/source/{service}:{}", &image.id.hex()[..12]);
    ctx.store()?
        .tag(&image.id.to_string(), &ImageRef::parse(&pinned)?)?;
    Ok(pinned)
}
