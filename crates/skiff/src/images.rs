//! Image commands: pull, push, images, rmi, load, save, tag, login, logout.

use std::collections::HashSet;
use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use skiff_core::{Digest, ImageRef};
use skiff_image::auth::{CredentialStore, Credentials};
use skiff_image::registry::{RegistryClient, RegistryOptions};
use skiff_image::store::{Image, Store, StoreError};

use crate::context::Context;
use crate::progress::TermProgress;

fn parse_ref(s: &str) -> Result<ImageRef> {
    Ok(ImageRef::parse(s)?)
}

pub fn registry_client(ctx: &Context) -> Result<RegistryClient> {
    let insecure = std::env::var("SKIFF_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let opts = RegistryOptions {
        insecure,
        credentials: credential_store(ctx),
        platform: skiff_image::registry::host_platform(),
    };
    Ok(RegistryClient::new(opts)?)
}

fn credential_store(ctx: &Context) -> CredentialStore {
    CredentialStore::for_root(&ctx.root)
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(f))
}

/// Pulls `reference` into the store (used by `pull` and by `run` for a missing image).
pub fn pull_image(ctx: &Context, reference: &ImageRef, quiet: bool) -> Result<Image> {
    let store = ctx.store()?;
    let client = registry_client(ctx)?;
    let progress = TermProgress::new(quiet);
    let image = block_on(client.pull(store, reference, &progress))??;
    Ok(image)
}

pub fn pull(ctx: &Context, image: &str, quiet: bool) -> Result<()> {
    let r = parse_ref(image)?;
    let img = pull_image(ctx, &r, quiet)?;
    if !quiet {
        eprintln!("Digest: {}", img.manifest_digest);
    }
    println!("{r}");
    Ok(())
}

pub fn push(ctx: &Context, image: &str, quiet: bool) -> Result<()> {
    let r = parse_ref(image)?;
    let store = ctx.store()?;
    let img = store.resolve(&r)?;
    let client = registry_client(ctx)?;
    let progress = TermProgress::new(quiet);
    let digest = block_on(client.push(store, &img, &r, &progress))??;
    println!("{}: digest: {digest}", r.without_digest());
    Ok(())
}

pub fn list(ctx: &Context, quiet: bool, json: bool) -> Result<()> {
    let images = ctx.store()?.list()?;
    if json {
        let rows: Vec<_> = images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "reference": i.reference, "id": i.id.to_string(),
                    "digest": i.manifest_digest.to_string(), "created": i.created, "size": i.size,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if quiet {
        let mut seen = HashSet::new();
        for i in &images {
            if seen.insert(i.id.clone()) {
                println!("{}", i.id.short());
            }
        }
        return Ok(());
    }
    println!(
        "{:<50} {:<16} {:<14} {:<22} {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"
    );
    for i in &images {
        let (repo, tag) = match ImageRef::parse(&i.reference) {
            Ok(r) => (r.short_name(), r.tag.unwrap_or_else(|| "<none>".into())),
            Err(_) => (i.reference.clone(), "<none>".into()),
        };
        println!(
            "{:<50} {:<16} {:<14} {:<22} {:>10}",
            repo,
            tag,
            i.id.short(),
            i.created
                .as_deref()
                .unwrap_or("-")
                .chars()
                .take(19)
                .collect::<String>(),
            human_size(i.size)
        );
    }
    Ok(())
}

pub fn rmi(ctx: &Context, images: &[String]) -> Result<()> {
    let store = ctx.store()?;
    let in_use: HashSet<String> = ctx.state()?.image_ids_in_use()?.into_iter().collect();
    let used = |id: &Digest| in_use.contains(&id.to_string());
    for name in images {
        for line in store.remove(name, &used)? {
            println!("{line}");
        }
    }
    Ok(())
}

pub fn load(ctx: &Context, input: &Path, quiet: bool) -> Result<()> {
    let store = ctx.store()?;
    let loaded = skiff_image::archive::import_archive(store, input)
        .with_context(|| format!("cannot load {}", input.display()))?;
    for (r, img) in loaded {
        if quiet {
            println!("{}", img.id);
        } else {
            println!("Loaded image: {r} ({})", img.id.short());
        }
    }
    Ok(())
}

pub fn save(ctx: &Context, output: &Path, format: &str, images: &[String]) -> Result<()> {
    let store = ctx.store()?;
    let refs = images
        .iter()
        .map(|s| parse_ref(s).and_then(|r| store.resolve(&r).map(|_| r).map_err(Into::into)))
        .collect::<Result<Vec<_>>>()?;
    // Written beside the target and renamed, so a failed save leaves no partial archive.
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let file = std::io::BufWriter::new(tmp.as_file().try_clone()?);
    match format {
        "oci" => skiff_image::archive::export_oci(store, &refs, file)?,
        _ => skiff_image::archive::export_docker(store, &refs, file)?,
    }
    tmp.persist(output)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}

pub fn tag(ctx: &Context, source: &str, target: &str) -> Result<()> {
    let dst = parse_ref(target)?;
    if dst.digest.is_some() {
        bail!("cannot tag {target}: a target names a tag, not a digest");
    }
    ctx.store()?.tag(source, &dst)?;
    Ok(())
}

pub fn login(
    ctx: &Context,
    registry: &str,
    username: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    let registry = normalise_registry(registry);
    let username = match username {
        Some(u) => u,
        None => bail!("login {registry}: pass a user name with -u USER"),
    };
    if !password_stdin {
        bail!("login {registry}: pass the password on standard input with --password-stdin");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("login {registry}: the password on standard input is empty");
    }
    let creds = Credentials { username, password };
    let client = registry_client(ctx)?;
    block_on(client.check_login(&registry, &creds))??;
    credential_store(ctx).save(&registry, &creds)?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(ctx: &Context, registry: &str) -> Result<()> {
    let registry = normalise_registry(registry);
    if credential_store(ctx).remove(&registry)? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}

/// `https://index.docker.io/v1/`, `registry-1.docker.io` → `docker.io`; a URL → its host.
fn normalise_registry(r: &str) -> String {
    let host = r
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(r);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

/// Resolves a name the way `docker run` does: a local image by reference or
/// id, else a pull.
pub fn resolve_or_pull(ctx: &Context, name: &str) -> Result<Image> {
    let store: &Store = ctx.store()?;
    match store.resolve_str(name) {
        Ok(img) => Ok(img),
        Err(StoreError::NotFound(_)) => {
            let r = parse_ref(name)?;
            let quiet = !std::io::stderr().is_terminal();
            if !quiet {
                eprintln!("Unable to find image '{r}' locally");
            }
            // Without a terminal the line above is not printed, and a
            // registry error alone (say, no registry on localhost) would
            // hide that the image is simply missing here.
            pull_image(ctx, &r, quiet)
                .with_context(|| format!("image {r} is not in the local store; pulling it failed"))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
