//! `docker save` archives and OCI image-layout archives: import into the
//! store, export from it.
//!
//! Import reads the (optionally gzip- or zstd-compressed) tar once, in order:
//! blobs stream straight into store ingests (verified against their names
//! when named by digest), small metadata files are kept in memory, and links
//! (docker save deduplicates layers with symlinks) are remembered. Then the
//! metadata is interpreted, wherever in the archive it was. Names are recorded
//! in one index.json update at the very end, so a truncated or corrupt
//! archive tags nothing; blobs already ingested are left for gc.
//!
//! Naming: a docker save entry is named by its `RepoTags`; an OCI layout
//! descriptor by `io.containerd.image.name`, else by an
//! `org.opencontainers.image.ref.name` that is a full reference. An image with
//! no name at all is recorded as `localhost/import:<12 hex of its id>` (Docker
//! would load it untagged; the store only keeps named images). An OCI
//! ref.name that is only a tag is an error: there is no repository to put it
//! in, and guessing one would be wrong.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use skiff_core::{Digest, ImageRef};

use crate::store::{media_type, Image, Ingest, Store, StoreError, MAX_METADATA_BLOB, REF_NAME};
use crate::unpack::{decompressed, peek, Compression, UnpackError};

/// The annotation containerd (and Docker ≥ 25) put the full image name in.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Total metadata (non-blob files) an archive may hold.
const MAX_METADATA_TOTAL: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: the archive is truncated or corrupt: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {why}", .path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("{}: {source}", .path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("exporting: {0}")]
    Export(#[source] StoreError),
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
}

/// What the first pass found in the archive, by normalised entry name.
#[derive(Default)]
struct Contents {
    blobs: HashMap<String, (Digest, u64)>,
    small: HashMap<String, Vec<u8>>,
    links: HashMap<String, String>,
}

impl Contents {
    /// Follows symlinks and hard links between entries.
    fn target<'a>(&'a self, mut name: &'a str) -> &'a str {
        for _ in 0..16 {
            match self.links.get(name) {
                Some(t) => name = t,
                None => break,
            }
        }
        name
    }

    fn blob(&self, name: &str) -> Option<&(Digest, u64)> {
        self.blobs.get(self.target(&normalise(name)))
    }

    fn bytes(&self, store: &Store, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = normalise(name);
        let name = self.target(&name);
        if let Some(b) = self.small.get(name) {
            return Ok(Some(b.clone()));
        }
        match self.blobs.get(name) {
            Some((d, _)) => store.read_blob(d).map(Some),
            None => Ok(None),
        }
    }
}

/// `./a//b/../c` → `a/c` (lexically; `..` at the top is dropped).
fn normalise(name: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

/// Metadata files are small and read into memory; everything else is a blob.
fn is_metadata(name: &str) -> bool {
    (name.ends_with(".json") && !name.contains('/'))
        || name == "oci-layout"
        || name == "repositories"
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n]).map_err(CopyError::Write)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CopyError::Read(e)),
        }
    }
}

/// Imports every image in a `docker save` or OCI image-layout archive at
/// `path` and returns the names recorded. See the module docs for naming.
pub fn import_archive(store: &Store, path: &Path) -> Result<Vec<(ImageRef, Image)>, ArchiveError> {
    let invalid = |why: String| ArchiveError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let in_store = |source: StoreError| ArchiveError::Store {
        path: path.to_path_buf(),
        source,
    };
    // Blobs ingested below are unreferenced until the end; gc must wait.
    let _lease = store.lease().map_err(in_store)?;
    let contents = spool(store, path)?;

    let names = if contents.small.contains_key("manifest.json") {
        docker_names(store, &contents).map_err(|e| e.into_archive(path))?
    } else if contents.small.contains_key("index.json") {
        oci_names(store, &contents).map_err(|e| e.into_archive(path))?
    } else {
        return Err(invalid(
            "neither manifest.json (docker save) nor index.json (OCI image layout) is in the archive; \
             is it an image archive, and complete?"
                .into(),
        ));
    };
    if names.is_empty() {
        return Err(invalid("the archive contains no images".into()));
    }
    let images = store.add_images(&names).map_err(|e| match e {
        StoreError::BlobMissing(d) => invalid(format!(
            "blob {d} is named by the archive's manifests but is not in it (truncated archive?)"
        )),
        other => in_store(other),
    })?;
    Ok(names.into_iter().map(|(r, _)| r).zip(images).collect())
}

/// The first pass: blobs into the store, metadata into memory.
fn spool(store: &Store, path: &Path) -> Result<Contents, ArchiveError> {
    let read = |source: io::Error| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |why: String| ArchiveError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let in_store = |source: StoreError| ArchiveError::Store {
        path: path.to_path_buf(),
        source,
    };
    let open_err = |source| ArchiveError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    if file.metadata().map_err(open_err)?.is_dir() {
        return Err(open_err(io::Error::other("is a directory, not an archive")));
    }
    let reader =
        decompressed(BufReader::with_capacity(256 * 1024, file), "").map_err(|e| match e {
            UnpackError::Stream(e) => read(e),
            other => read(io::Error::other(other.to_string())),
        })?;
    let mut archive = tar::Archive::new(reader);
    let mut contents = Contents::default();
    let mut metadata_total = 0u64;
    for entry in archive.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        let raw = entry.path_bytes().into_owned();
        let Ok(name) = String::from_utf8(raw) else {
            return Err(invalid("an entry name is not UTF-8".into()));
        };
        let name = normalise(&name);
        let bad_entry = |why: &str| invalid(format!("entry {name}: {why}"));
        match entry.header().entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let is_sym = entry.header().entry_type() == tar::EntryType::Symlink;
                let target = entry
                    .link_name_bytes()
                    .and_then(|t| String::from_utf8(t.into_owned()).ok())
                    .ok_or_else(|| bad_entry("link target missing or not UTF-8"))?;
                // Symlinks are relative to their directory, hard links to the archive root.
                let target = match (is_sym, name.rsplit_once('/')) {
                    (true, Some((dir, _))) if !target.starts_with('/') => {
                        normalise(&format!("{dir}/{target}"))
                    }
                    _ => normalise(&target),
                };
                contents.links.insert(name, target);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(rest) = name.strip_prefix("blobs/") {
                    let d = rest
                        .strip_prefix("sha256/")
                        .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                        .ok_or_else(|| {
                            bad_entry("blob name is not blobs/sha256/<64 hex digits>")
                        })?;
                    if !store.has_blob(&d) {
                        let ingest = store.ingest(&d).map_err(in_store)?;
                        fill(ingest, &mut entry).map_err(|e| match e {
                            FillError::Read(e) => read(e),
                            FillError::Store(StoreError::DigestMismatch { actual, .. }) => {
                                bad_entry(&format!(
                                    "content hashes to {actual}, not to its name (corrupt archive)"
                                ))
                            }
                            FillError::Store(e) => in_store(e),
                        })?;
                    }
                    let size = store.blob_size(&d).map_err(in_store)?;
                    contents.blobs.insert(name, (d, size));
                } else if is_metadata(&name) {
                    let size = entry.header().size().map_err(read)?;
                    metadata_total += size;
                    if size > MAX_METADATA_BLOB || metadata_total > MAX_METADATA_TOTAL {
                        return Err(bad_entry("metadata file too large"));
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut bytes).map_err(read)?;
                    contents.small.insert(name, bytes);
                } else if name.ends_with("/json") || name.ends_with("/VERSION") {
                    // Legacy per-layer metadata docker save still writes; unused.
                } else {
                    let ingest = store.ingest_unknown().map_err(in_store)?;
                    let (d, size) = fill(ingest, &mut entry).map_err(|e| match e {
                        FillError::Read(e) => read(e),
                        FillError::Store(e) => in_store(e),
                    })?;
                    contents.blobs.insert(name, (d, size));
                }
            }
            // Directories, PAX globals and anything else carry nothing we need.
            _ => {}
        }
    }
    // The rest of the stream (padding, a gzip trailer) must read cleanly too.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(read)?;
    Ok(contents)
}

enum FillError {
    Read(io::Error),
    Store(StoreError),
}

fn fill(mut ingest: Ingest, from: &mut impl Read) -> Result<(Digest, u64), FillError> {
    copy(from, &mut ingest).map_err(|e| match e {
        CopyError::Read(e) => FillError::Read(e),
        CopyError::Write(e) => FillError::Store(StoreError::Io {
            what: "writing a blob from the archive",
            path: PathBuf::from("tmp"),
            source: e,
        }),
    })?;
    ingest.commit().map_err(FillError::Store)
}

/// Errors of the second pass, before the archive path is attached.
enum NameError {
    Invalid(String),
    Store(StoreError),
}

impl From<StoreError> for NameError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BlobMissing(d) => NameError::Invalid(format!(
                "blob {d} is named by the archive's manifests but is not in it (truncated archive?)"
            )),
            other => NameError::Store(other),
        }
    }
}

impl NameError {
    fn into_archive(self, path: &Path) -> ArchiveError {
        match self {
            NameError::Invalid(why) => ArchiveError::Invalid {
                path: path.to_path_buf(),
                why,
            },
            NameError::Store(source) => ArchiveError::Store {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// The name of an image that has none.
fn unnamed(id: &Digest) -> ImageRef {
    ImageRef {
        registry: "localhost".into(),
        repository: "import".into(),
        tag: Some(id.short().to_string()),
        digest: None,
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

#[derive(Serialize, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// One image of a docker save `manifest.json`.
#[derive(Serialize, Deserialize)]
struct SaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn config_digest(store: &Store, manifest: &Digest) -> Result<Digest, NameError> {
    let v: Value = serde_json::from_slice(&store.read_blob(manifest)?)
        .map_err(|e| NameError::Invalid(format!("manifest {manifest}: {e}")))?;
    v.pointer("/config/digest")
        .and_then(Value::as_str)
        .and_then(|s| Digest::parse(s).ok())
        .ok_or_else(|| NameError::Invalid(format!("manifest {manifest} has no config digest")))
}

fn docker_names(store: &Store, c: &Contents) -> Result<Vec<(ImageRef, Digest)>, NameError> {
    let raw = c
        .small
        .get("manifest.json")
        .map(Vec::as_slice)
        .unwrap_or_default();
    let entries: Vec<SaveEntry> = serde_json::from_slice(raw)
        .map_err(|e| NameError::Invalid(format!("manifest.json: {e}")))?;
    // Docker ≥ 25 also writes an OCI layout; reusing its manifests keeps the
    // registry's manifest digests (so `image@sha256:…` still resolves).
    let mut by_config: HashMap<Digest, Digest> = HashMap::new();
    if let Some(index) = c.small.get("index.json") {
        if let Ok(index) = serde_json::from_slice::<IndexJson>(index) {
            for m in index
                .manifests
                .iter()
                .filter(|m| !media_type::is_index(&m.media_type))
            {
                if let Ok(cd) = config_digest(store, &m.digest) {
                    by_config.insert(cd, m.digest.clone());
                }
            }
        }
    }
    let mut names = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ctx = |why: String| NameError::Invalid(format!("manifest.json image {i}: {why}"));
        let config_bytes = c
            .bytes(store, &e.config)?
            .ok_or_else(|| ctx(format!("config {} is not in the archive", e.config)))?;
        let config_id = store.write_blob(&config_bytes)?;
        let manifest = match by_config.get(&config_id) {
            Some(md) if store.load_image(md).is_ok() => md.clone(),
            _ => synthesise(store, c, e, &config_bytes, &config_id).map_err(|e| match e {
                NameError::Invalid(why) => ctx(why),
                other => other,
            })?,
        };
        let tags = e.repo_tags.as_deref().unwrap_or_default();
        if tags.is_empty() {
            names.push((unnamed(&config_id), manifest.clone()));
        }
        for t in tags {
            let r = ImageRef::parse(t).map_err(|err| ctx(format!("RepoTags: {err}")))?;
            names.push((r, manifest.clone()));
        }
    }
    Ok(names)
}

/// Writes an OCI manifest for a docker save entry and returns its digest.
fn synthesise(
    store: &Store,
    c: &Contents,
    e: &SaveEntry,
    config_bytes: &[u8],
    config_id: &Digest,
) -> Result<Digest, NameError> {
    let config: ImageConfiguration = serde_json::from_slice(config_bytes)
        .map_err(|err| NameError::Invalid(format!("config {}: {err}", e.config)))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != e.layers.len() {
        return Err(NameError::Invalid(format!(
            "{} layers listed but the config has {} diff_ids",
            e.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (name, diff) in e.layers.iter().zip(diff_ids) {
        let (d, size) = c
            .blob(name)
            .ok_or_else(|| NameError::Invalid(format!("layer {name} is not in the archive")))?;
        let file = store.open_blob(d).map_err(NameError::Store)?;
        let (head, _) = peek(file, 4).map_err(|e| {
            NameError::Store(StoreError::Io {
                what: "reading",
                path: store.blob_path(d),
                source: e,
            })
        })?;
        let mt = match Compression::sniff(&head) {
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
            Compression::None => {
                // Uncompressed: the blob is its own diff_id, so check it now.
                if d.to_string() != *diff {
                    return Err(NameError::Invalid(format!(
                        "layer {name} hashes to {d}, but the config's diff_id is {diff}"
                    )));
                }
                media_type::OCI_LAYER
            }
        };
        layers.push(Descriptor {
            media_type: mt.into(),
            digest: d.clone(),
            size: *size,
            annotations: BTreeMap::new(),
            platform: None,
        });
    }
    let manifest = ManifestJson {
        schema_version: 2,
        media_type: media_type::OCI_MANIFEST,
        config: Descriptor {
            media_type: media_type::OCI_CONFIG.into(),
            digest: config_id.clone(),
            size: config_bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| NameError::Invalid(e.to_string()))?;
    Ok(store.write_blob(&bytes)?)
}

/// The name an OCI layout descriptor gives its image (see the module docs).
fn oci_name(annotations: &BTreeMap<String, String>) -> Result<Option<ImageRef>, String> {
    let parse = |s: &str| ImageRef::parse(s).map(Some).map_err(|e| e.to_string());
    match (annotations.get(CONTAINERD_NAME), annotations.get(REF_NAME)) {
        (Some(full), _) => parse(full),
        (None, Some(r)) if r.contains(['/', ':', '@']) => parse(r),
        (None, Some(tag)) => Err(format!(
            "it is named only by the tag {tag:?} ({REF_NAME}) with no repository; \
             re-create the archive with a full name (for example `skopeo copy … oci-archive:FILE:REPO:TAG`)"
        )),
        (None, None) => Ok(None),
    }
}

/// The platform name of the machine we run on, as OCI spells it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn pick_platform(store: &Store, index: &Digest) -> Result<Digest, NameError> {
    let idx: IndexJson = serde_json::from_slice(&store.read_blob(index)?)
        .map_err(|e| NameError::Invalid(format!("image index {index}: {e}")))?;
    let arch = host_arch();
    let usable = |m: &&Descriptor| !media_type::is_index(&m.media_type);
    idx.manifests
        .iter()
        .filter(usable)
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| match idx.manifests.as_slice() {
            [only] if only.platform.is_none() && usable(&only) => Some(only),
            _ => None,
        })
        .map(|m| m.digest.clone())
        .ok_or_else(|| NameError::Invalid(format!("image index {index} has no linux/{arch} image")))
}

fn oci_names(store: &Store, c: &Contents) -> Result<Vec<(ImageRef, Digest)>, NameError> {
    let layout = c.small.get("oci-layout").ok_or_else(|| {
        NameError::Invalid("index.json without oci-layout: not an OCI image layout".into())
    })?;
    let version = serde_json::from_slice::<Value>(layout)
        .ok()
        .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_string))
        .ok_or_else(|| NameError::Invalid("oci-layout has no imageLayoutVersion".into()))?;
    if version != "1.0.0" {
        tracing::warn!(%version, "unknown OCI layout version; importing anyway");
    }
    let raw = c
        .small
        .get("index.json")
        .map(Vec::as_slice)
        .unwrap_or_default();
    let index: IndexJson =
        serde_json::from_slice(raw).map_err(|e| NameError::Invalid(format!("index.json: {e}")))?;
    let mut names = Vec::new();
    for (i, d) in index.manifests.iter().enumerate() {
        let name = oci_name(&d.annotations).map_err(|why| {
            NameError::Invalid(format!("index.json manifest {i} ({}): {why}", d.digest))
        })?;
        let manifest = if media_type::is_index(&d.media_type) {
            pick_platform(store, &d.digest)?
        } else {
            d.digest.clone()
        };
        let name = match name {
            Some(n) => n,
            None => unnamed(&config_digest(store, &manifest)?),
        };
        names.push((name, manifest));
    }
    Ok(names)
}

/// Writes the images named by `refs` as an OCI image-layout tar. Each
/// manifest descriptor carries the full name (`io.containerd.image.name`)
/// and, for tagged names, the tag (`org.opencontainers.image.ref.name`),
/// which is what containerd, Docker ≥ 25 and skopeo read.
pub fn export_oci(store: &Store, refs: &[ImageRef], out: impl Write) -> Result<(), ArchiveError> {
    export(store, refs, out, false)
}

/// Writes the images as a `docker save` tar that `docker load` (old and new)
/// and [`import_archive`] read: Docker ≥ 25's layout, an OCI layout plus
/// `manifest.json`. Layers are written as stored (possibly compressed), which
/// `docker load` accepts.
pub fn export_docker(
    store: &Store,
    refs: &[ImageRef],
    out: impl Write,
) -> Result<(), ArchiveError> {
    export(store, refs, out, true)
}

fn export(
    store: &Store,
    refs: &[ImageRef],
    out: impl Write,
    docker: bool,
) -> Result<(), ArchiveError> {
    let images = refs
        .iter()
        .map(|r| Ok((r, store.resolve(r).map_err(ArchiveError::Export)?)))
        .collect::<Result<Vec<_>, ArchiveError>>()?;
    let mut tar = tar::Builder::new(out);
    append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, dir, io::empty())
            .map_err(ArchiveError::Write)?;
    }
    let mut written = HashSet::new();
    for (_, img) in &images {
        let blobs = [&img.manifest_digest, &img.id]
            .into_iter()
            .chain(img.layers.iter().map(|l| &l.digest));
        for d in blobs {
            if !written.insert(d.clone()) {
                continue;
            }
            let file = store.open_blob(d).map_err(ArchiveError::Export)?;
            let size = store.blob_size(d).map_err(ArchiveError::Export)?;
            let mut h = header(tar::EntryType::Regular, 0o644, size);
            tar.append_data(
                &mut h,
                format!("blobs/sha256/{}", d.hex()),
                BufReader::new(file),
            )
            .map_err(ArchiveError::Write)?;
        }
    }
    let mut manifests = Vec::new();
    for (r, img) in &images {
        let mut annotations = BTreeMap::from([(CONTAINERD_NAME.to_string(), r.to_string())]);
        if let (Some(tag), None) = (&r.tag, &r.digest) {
            annotations.insert(REF_NAME.to_string(), tag.clone());
        }
        manifests.push(Descriptor {
            media_type: img
                .manifest
                .media_type()
                .as_ref()
                .map_or(media_type::OCI_MANIFEST.to_string(), |m| m.to_string()),
            digest: img.manifest_digest.clone(),
            size: store
                .blob_size(&img.manifest_digest)
                .map_err(ArchiveError::Export)?,
            annotations,
            platform: Some(Platform {
                architecture: img.config.architecture().to_string(),
                os: img.config.os().to_string(),
            }),
        });
    }
    let index = IndexJson {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.into()),
        manifests,
    };
    append(&mut tar, "index.json", &to_json(&index)?)?;
    if docker {
        // One entry per image, with all the tags it is exported under.
        let mut entries: Vec<(Digest, SaveEntry)> = Vec::new();
        for (r, img) in &images {
            let tag = match (&r.tag, &r.digest) {
                (Some(t), None) => Some(format!("{}:{t}", r.short_name())),
                _ => None,
            };
            match entries.iter_mut().find(|(id, _)| *id == img.id) {
                Some((_, e)) => e.repo_tags.get_or_insert_with(Vec::new).extend(tag),
                None => entries.push((
                    img.id.clone(),
                    SaveEntry {
                        config: format!("blobs/sha256/{}", img.id.hex()),
                        repo_tags: Some(tag.into_iter().collect()),
                        layers: img
                            .layers
                            .iter()
                            .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                            .collect(),
                    },
                )),
            }
        }
        let entries: Vec<SaveEntry> = entries.into_iter().map(|(_, e)| e).collect();
        append(&mut tar, "manifest.json", &to_json(&entries)?)?;
    }
    tar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(ArchiveError::Write)
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ArchiveError> {
    serde_json::to_vec(v).map_err(|e| ArchiveError::Write(io::Error::other(e)))
}

/// A deterministic header: no owner names, no times, so exports of the same
/// images are byte-identical.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> Result<(), ArchiveError> {
    let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
    tar.append_data(&mut h, name, bytes)
        .map_err(ArchiveError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    enum E {
        File(Vec<u8>),
        Link(&'static str),
    }

    fn build(entries: Vec<(String, E)>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, e) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match e {
                E::File(data) => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &name, &data[..]).unwrap();
                }
                E::Link(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &name, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn config(diff_ids: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<String> = diff_ids.iter().map(|l| Digest::of(l).to_string()).collect();
        serde_json::to_vec(&json!({
            "architecture": host_arch(), "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ids},
        }))
        .unwrap()
    }

    /// A legacy `docker save`: per-layer directories, a symlinked duplicate
    /// layer, a gzip layer, an untagged image, manifest.json last.
    fn docker_save() -> Vec<u8> {
        let l1 = layer(&[("hello", b"hello from l1")]);
        let l2 = layer(&[("dir/world", b"world"), (".wh.hello", b"")]);
        let l3 = layer(&[("other", b"other image")]);
        let c1 = config(&[&l1, &l2, &l1]);
        let c2 = config(&[&l3]);
        let (c1n, c2n) = (
            format!("{}.json", Digest::of(&c1).hex()),
            format!("{}.json", Digest::of(&c2).hex()),
        );
        let manifest = json!([
            {"Config": c1n, "RepoTags": ["app:1", "localhost:5000/app:2"],
             "Layers": ["l1/layer.tar", "l2/layer.tar", "l3/layer.tar"]},
            {"Config": c2n, "RepoTags": null, "Layers": ["l4/layer.tar"]},
        ]);
        build(vec![
            ("l1/VERSION".into(), E::File(b"1.0".to_vec())),
            ("l1/layer.tar".into(), E::File(l1)),
            ("l2/layer.tar".into(), E::File(gzip(&l2))),
            ("l3/layer.tar".into(), E::Link("../l1/layer.tar")),
            ("l4/layer.tar".into(), E::File(l3)),
            (c1n, E::File(c1)),
            (c2n, E::File(c2)),
            (
                "manifest.json".into(),
                E::File(serde_json::to_vec(&manifest).unwrap()),
            ),
        ])
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn imports_docker_save_plain_and_gzipped() {
        let tar = docker_save();
        for bytes in [tar.clone(), gzip(&tar)] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("store")).unwrap();
            let file = write(dir.path(), "save.tar", &bytes);
            let imported = import_archive(&store, &file).unwrap();
            let names: Vec<String> = imported.iter().map(|(r, _)| r.to_string()).collect();
            let id2 = &imported[2].1.id;
            assert_eq!(
                names,
                [
                    "docker.io/library/app:1".to_string(),
                    "localhost:5000/app:2".to_string(),
                    format!("localhost/import:{}", id2.short()),
                ]
            );
            let img = store.resolve(&r("app:1")).unwrap();
            assert_eq!(img.layers[1].media_type, media_type::OCI_LAYER_GZIP);
            let dirs = store.layer_dirs(&img).unwrap();
            assert_eq!(dirs.len(), 3);
            assert_eq!(dirs[0], dirs[2], "same diff_id, one directory");
            assert_eq!(fs::read(dirs[0].join("hello")).unwrap(), b"hello from l1");
            assert_eq!(fs::read(dirs[1].join("dir/world")).unwrap(), b"world");
            let other = store.resolve_str(&id2.hex()[..8]).unwrap();
            assert_eq!(
                fs::read(store.layer_dirs(&other).unwrap()[0].join("other")).unwrap(),
                b"other image"
            );
            assert!(fs::read_dir(store.root().join("tmp"))
                .unwrap()
                .next()
                .is_none());
        }
    }

    /// An OCI layout with a full ref.name, a containerd name, and a
    /// multi-platform index whose other platform's blobs are absent.
    fn oci_layout(tag_only: bool) -> Vec<u8> {
        let mut blobs: Vec<(String, E)> = Vec::new();
        let mut blob = |bytes: Vec<u8>| {
            let d = Digest::of(&bytes);
            let size = bytes.len();
            blobs.push((format!("blobs/sha256/{}", d.hex()), E::File(bytes)));
            json!({"digest": d, "size": size})
        };
        let mut image = |files: &[(&str, &[u8])], gz: bool| {
            let l = layer(files);
            let c = config(&[&l]);
            let (lmt, lbytes) = if gz {
                (media_type::OCI_LAYER_GZIP, gzip(&l))
            } else {
                (media_type::OCI_LAYER, l)
            };
            let mut ld = blob(lbytes);
            ld["mediaType"] = json!(lmt);
            let mut cd = blob(c);
            cd["mediaType"] = json!(media_type::OCI_CONFIG);
            let m = json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST, "config": cd, "layers": [ld]});
            let mut md = blob(serde_json::to_vec(&m).unwrap());
            md["mediaType"] = json!(media_type::OCI_MANIFEST);
            md
        };
        let mut a = image(&[("a", b"A")], false);
        let mut b = image(&[("b", b"B")], true);
        let mut host = image(&[("host", b"H")], true);
        host["platform"] = json!({"architecture": host_arch(), "os": "linux"});
        let missing = json!({"mediaType": media_type::OCI_MANIFEST, "digest": Digest::of(b"absent"), "size": 10,
            "platform": {"architecture": "s390x-not-here", "os": "linux"}});
        let index = json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [missing, host]});
        let mut multi = blob(serde_json::to_vec(&index).unwrap());
        multi["mediaType"] = json!(media_type::OCI_INDEX);
        multi["annotations"] = json!({CONTAINERD_NAME: "multi:latest", REF_NAME: "latest"});
        a["annotations"] = if tag_only {
            json!({REF_NAME: "1.0"})
        } else {
            json!({REF_NAME: "docker.io/library/oci:1"})
        };
        b["annotations"] = json!({CONTAINERD_NAME: "example.com/x:2", REF_NAME: "2"});
        let top = json!({"schemaVersion": 2, "manifests": [a, b, multi]});
        let mut entries = vec![
            (
                "oci-layout".to_string(),
                E::File(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ),
            (
                "index.json".to_string(),
                E::File(serde_json::to_vec(&top).unwrap()),
            ),
        ];
        entries.extend(blobs);
        build(entries)
    }

    #[test]
    fn imports_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let file = write(dir.path(), "oci.tar", &gzip(&oci_layout(false)));
        let imported = import_archive(&store, &file).unwrap();
        let names: Vec<String> = imported.iter().map(|(r, _)| r.to_string()).collect();
        assert_eq!(
            names,
            [
                "docker.io/library/oci:1",
                "example.com/x:2",
                "docker.io/library/multi:latest"
            ]
        );
        for (name, file, content) in [
            ("oci:1", "a", "A"),
            ("example.com/x:2", "b", "B"),
            ("multi", "host", "H"),
        ] {
            let img = store.resolve(&r(name)).unwrap();
            let dirs = store.layer_dirs(&img).unwrap();
            assert_eq!(fs::read_to_string(dirs[0].join(file)).unwrap(), content);
        }

        // A bare tag is not a name: an error, and nothing recorded.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let file = write(dir.path(), "oci.tar", &oci_layout(true));
        let err = import_archive(&store, &file).unwrap_err();
        assert!(err.to_string().contains("only by the tag \"1.0\""), "{err}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn truncated_or_corrupt_archives_record_nothing() {
        let tar = docker_save();
        let gz = gzip(&tar);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("half", tar[..tar.len() / 2].to_vec()),
            ("mid-entry", tar[..tar.len() - 1500].to_vec()),
            ("gzip half", gz[..gz.len() / 2].to_vec()),
            ("gzip tail", gz[..gz.len() - 4].to_vec()),
            ("empty", Vec::new()),
        ];
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("store")).unwrap();
            let file = write(dir.path(), "bad.tar", &bytes);
            let err = import_archive(&store, &file).unwrap_err();
            assert!(!err.to_string().is_empty());
            assert!(store.list().unwrap().is_empty(), "{what}: {err}");
        }

        // A blob whose content does not match its name.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let name = format!("blobs/sha256/{}", Digest::of(b"x").hex());
        let file = write(
            dir.path(),
            "bad.tar",
            &build(vec![(name.clone(), E::File(b"y".to_vec()))]),
        );
        let err = import_archive(&store, &file).unwrap_err();
        assert!(err.to_string().contains(&name), "{err}");
        assert!(!store.has_blob(&Digest::of(b"x")));
    }

    #[test]
    fn export_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a")).unwrap();
        import_archive(&store, &write(dir.path(), "save.tar", &docker_save())).unwrap();
        let app = store.resolve(&r("app:1")).unwrap();
        let refs = [r("app:1"), r("localhost:5000/app:2")];
        for docker in [true, false] {
            let mut out = Vec::new();
            if docker {
                export_docker(&store, &refs, &mut out).unwrap();
            } else {
                export_oci(&store, &refs, &mut out).unwrap();
            }
            let other = Store::open(dir.path().join(format!("b{docker}"))).unwrap();
            let imported = import_archive(&other, &write(dir.path(), "out.tar", &out)).unwrap();
            let names: Vec<String> = imported.iter().map(|(r, _)| r.to_string()).collect();
            assert_eq!(names, ["docker.io/library/app:1", "localhost:5000/app:2"]);
            let back = other.resolve(&r("app:1")).unwrap();
            assert_eq!(back.manifest_digest, app.manifest_digest, "docker={docker}");
            let dirs = other.layer_dirs(&back).unwrap();
            assert_eq!(fs::read(dirs[1].join("dir/world")).unwrap(), b"world");
            // Deterministic: the same export twice is byte-identical.
            let mut again = Vec::new();
            export(&store, &refs, &mut again, docker).unwrap();
            assert!(out == again, "export is not deterministic");
        }
        assert!(matches!(
            export_oci(&store, &[r("nope")], Vec::new()),
            Err(ArchiveError::Export(StoreError::NotFound(_)))
        ));
    }
}
