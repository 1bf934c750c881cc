//! The content store: an OCI image layout plus a cache of unpacked layers.
//!
//! ```text
//! <root>/oci-layout            {"imageLayoutVersion":"1.0.0"}
//! <root>/index.json            one manifest descriptor per reference, named by
//!                              org.opencontainers.image.ref.name = full normalised ref
//! <root>/blobs/sha256/<hex>    content, bytes exactly as received
//! <root>/layers/<diff-id hex>/ unpacked layers (overlayfs lower dirs), shared by images
//! <root>/tmp/                  in-progress writes; renamed into place when complete
//! <root>/lock                  flock: index.json changes and gc
//! <root>/gc.lock               flock: shared by leases, exclusive by gc
//! ```
//!
//! Several processes may use one store at once. Blobs and layer directories
//! are written under `tmp/` and renamed into place, so a reader only ever sees
//! complete ones and two writers of the same content both succeed. index.json
//! is read-modify-written under the exclusive `lock`. Garbage collection takes
//! `lock` too, so it never sees half an `add_image`; and it only runs when no
//! [`Lease`] is held, because blobs a pull has committed but not yet
//! referenced (the window before `add_image`) look exactly like garbage.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use skiff_core::{Digest, DigestWriter, ImageRef};
use tempfile::NamedTempFile;

use crate::unpack::{unpack_layer, UnpackError};

/// Manifests and configs larger than this are refused: they are read into memory.
pub const MAX_METADATA_BLOB: u64 = 16 << 20;
/// The index.json annotation that names an image.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Leftovers in `tmp/` untouched this long belong to a crashed process.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// Media types the store understands.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// Layer media types we can unpack (OCI, OCI non-distributable, Docker).
    pub fn is_layer(mt: &str) -> bool {
        matches!(
            mt,
            OCI_LAYER
                | OCI_LAYER_GZIP
                | OCI_LAYER_ZSTD
                | "application/vnd.oci.image.layer.nondistributable.v1.tar"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
                | DOCKER_LAYER
                | DOCKER_LAYER_GZIP
                | DOCKER_FOREIGN_LAYER
        )
    }

    pub fn is_index(mt: &str) -> bool {
        mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is not in the store")]
    BlobMissing(Digest),
    #[error(
        "blob {digest} is {size} bytes, over the {limit}-byte limit for manifests and configs"
    )]
    BlobTooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("blob {digest} is corrupt on disk: {why}")]
    BlobCorrupt { digest: Digest, why: String },
    #[error("manifest {digest}: {why}")]
    BadManifest { digest: Digest, why: String },
    #[error("image config {digest}: {why}")]
    BadConfig { digest: Digest, why: String },
    #[error("{digest} is a multi-platform image index, not an image manifest; pick a platform's manifest from it first")]
    ManifestList { digest: Digest },
    #[error("reference {reference} names digest {named}, but the manifest is {actual}")]
    RefDigestMismatch {
        reference: String,
        named: Digest,
        actual: Digest,
    },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("{prefix:?} is ambiguous: it matches {count} images; give more digits")]
    Ambiguous { prefix: String, count: usize },
    #[error("image {reference} ({id}) is in use by a container; remove the container first")]
    InUse { reference: String, id: Digest },
    #[error("layer {layer}: {source}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {layer} unpacks to diff_id {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("{}: {why}", .path.display())]
    BadIndex { path: PathBuf, why: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// An image in the store: a manifest, its config, and its layers bottom first.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config digest (what Docker calls the image id).
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob (usually compressed).
    pub digest: Digest,
    /// The digest of the uncompressed tar, from the config's rootfs.
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub reference: String,
    pub id: Digest,
    pub manifest_digest: Digest,
    pub created: Option<String>,
    /// Sum of the layer blob sizes.
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
    /// A lease was held (a pull or import in progress): nothing was collected.
    pub deferred: bool,
}

/// index.json. Unknown fields are kept so other tools' additions survive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexFile {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

impl IndexEntry {
    fn name(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

/// The name an image is recorded under: a digest reference drops its tag
/// (the digest is what was asked for, as Docker records it).
fn ref_key(r: &ImageRef) -> String {
    match &r.digest {
        Some(d) => format!("{}/{}@{d}", r.registry, r.repository),
        None => r.to_string(),
    }
}

/// Protects blobs written but not yet referenced from [`Store::gc`]; hold
/// one from the first blob of a pull, import or build until `add_image`.
#[derive(Debug)]
pub struct Lease {
    _lock: Flock<File>,
}

/// A blob being written. Bytes go to a file in `tmp/`; [`Ingest::commit`]
/// verifies the digest and renames it into `blobs/`. Dropping an uncommitted
/// ingest removes the file.
pub struct Ingest {
    expected: Option<Digest>,
    writer: DigestWriter<BufWriter<NamedTempFile>>,
    blobs: PathBuf,
    /// gc waits while a blob is being written; callers that commit several
    /// blobs before `add_image` should still hold their own [`Lease`].
    _lease: Lease,
}

impl Ingest {
    /// The digest this ingest must match, if it was given one.
    pub fn expected(&self) -> Option<&Digest> {
        self.expected.as_ref()
    }

    /// Verifies and stores the blob; returns its digest and length. On a
    /// mismatch nothing is stored.
    pub fn commit(self) -> Result<(Digest, u64), StoreError> {
        let Ingest {
            expected,
            writer,
            blobs,
            _lease,
        } = self;
        let (buf, digest, len) = writer.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| io_err("writing blob", &blobs)(e.into_error()))?;
        if let Some(expected) = expected {
            if expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected,
                    actual: digest,
                });
            }
        }
        let dest = blobs.join(digest.hex());
        tmp.as_file()
            .sync_all()
            .map_err(io_err("syncing blob", tmp.path()))?;
        tmp.persist(&dest)
            .map_err(|e| io_err("storing blob", &dest)(e.error))?;
        sync_dir(&blobs)?;
        Ok((digest, len))
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// The content store. Cheap to clone; holds no open files.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating the layout if it is missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store { root: root.into() };
        for dir in [
            store.root.clone(),
            store.blobs_dir(),
            store.layers_dir(),
            store.tmp_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            store.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !store.index_path().exists() {
            let _lock = store.lock()?;
            // Re-checked under the lock: another process may have created it
            // (and added images) since.
            if !store.index_path().exists() {
                store.write_index(&IndexFile {
                    schema_version: 2,
                    media_type: Some(media_type::OCI_INDEX.to_string()),
                    manifests: Vec::new(),
                    other: Default::default(),
                })?;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(d)).is_ok_and(|m| m.is_file())
    }

    /// The stored size of a blob.
    pub fn blob_size(&self, d: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(d);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobMissing(d.clone()))
            }
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// Opens a stored blob for reading (streaming layers out).
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::BlobMissing(d.clone())
            } else {
                io_err("opening", &path)(e)
            }
        })
    }

    /// Reads a small blob (manifest, config, index) and checks its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let file = self.open_blob(d)?;
        let size = file.metadata().map_err(io_err("reading", &path))?.len();
        if size > MAX_METADATA_BLOB {
            return Err(StoreError::BlobTooLarge {
                digest: d.clone(),
                size,
                limit: MAX_METADATA_BLOB,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(MAX_METADATA_BLOB)
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(StoreError::BlobCorrupt {
                digest: d.clone(),
                why: format!("its content hashes to {actual}"),
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` as a blob (atomically) and returns its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut ingest = self.ingest(&d)?;
        ingest
            .write_all(bytes)
            .map_err(io_err("writing blob into", &self.tmp_dir()))?;
        Ok(ingest.commit()?.0)
    }

    /// Starts streaming a blob whose digest is known.
    pub fn ingest(&self, expected: &Digest) -> Result<Ingest, StoreError> {
        self.new_ingest(Some(expected.clone()))
    }

    /// Starts streaming a blob whose digest is not known in advance (it is
    /// stored under whatever it hashes to).
    pub fn ingest_unknown(&self) -> Result<Ingest, StoreError> {
        self.new_ingest(None)
    }

    fn new_ingest(&self, expected: Option<Digest>) -> Result<Ingest, StoreError> {
        let lease = self.lease()?;
        let tmp = tempfile::Builder::new()
            .prefix("ingest-")
            .tempfile_in(self.tmp_dir())
            .map_err(io_err("creating a temporary file in", &self.tmp_dir()))?;
        Ok(Ingest {
            expected,
            writer: DigestWriter::new(BufWriter::with_capacity(256 * 1024, tmp)),
            blobs: self.blobs_dir(),
            _lease: lease,
        })
    }

    /// Takes a lease: [`Store::gc`] collects nothing while any is held.
    pub fn lease(&self) -> Result<Lease, StoreError> {
        let lock = self.flock("gc.lock", FlockArg::LockShared)?;
        // A blocking lock only returns None on EWOULDBLOCK, which it never gives.
        lock.map(|l| Lease { _lock: l })
            .ok_or_else(|| io_err("locking", &self.root.join("gc.lock"))(errno(Errno::EWOULDBLOCK)))
    }

    /// Records `name` → `manifest` after checking that the manifest, its
    /// config and all its layers are present and valid. Replaces whatever the
    /// name pointed at.
    pub fn add_image(&self, name: &ImageRef, manifest: &Digest) -> Result<Image, StoreError> {
        let mut images = self.add_images(&[(name.clone(), manifest.clone())])?;
        images
            .pop()
            .ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    /// [`Store::add_image`] for several names at once: all are validated
    /// before index.json changes, and it changes once, so either every name
    /// is recorded or none is.
    pub fn add_images(&self, names: &[(ImageRef, Digest)]) -> Result<Vec<Image>, StoreError> {
        let _lock = self.lock()?;
        let mut images = Vec::with_capacity(names.len());
        for (name, md) in names {
            if let Some(named) = &name.digest {
                if named != md {
                    return Err(StoreError::RefDigestMismatch {
                        reference: name.to_string(),
                        named: named.clone(),
                        actual: md.clone(),
                    });
                }
            }
            images.push(self.load_image(md)?);
        }
        let mut index = self.read_index()?;
        for ((name, md), image) in names.iter().zip(&images) {
            let key = ref_key(name);
            index.manifests.retain(|e| e.name() != Some(&key));
            let mut other = serde_json::Map::new();
            other.insert(
                "platform".into(),
                serde_json::json!({
                    "architecture": image.config.architecture().to_string(),
                    "os": image.config.os().to_string(),
                }),
            );
            index.manifests.push(IndexEntry {
                media_type: image
                    .manifest
                    .media_type()
                    .as_ref()
                    .map_or(media_type::OCI_MANIFEST.to_string(), |m| m.to_string()),
                digest: md.clone(),
                size: self.blob_size(md)?,
                annotations: BTreeMap::from([(REF_NAME.to_string(), key)]),
                other,
            });
        }
        self.write_index(&index)?;
        Ok(images)
    }

    /// Parses and validates the image whose manifest is `md`.
    pub fn load_image(&self, md: &Digest) -> Result<Image, StoreError> {
        let bytes = self.read_blob(md)?;
        let bad = |why: String| StoreError::BadManifest {
            digest: md.clone(),
            why,
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u64>,
            media_type: Option<String>,
            manifests: Option<Value>,
            config: Option<Value>,
        }
        let probe: Probe =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a JSON manifest: {e}")))?;
        if probe
            .media_type
            .as_deref()
            .is_some_and(media_type::is_index)
            || (probe.manifests.is_some() && probe.config.is_none())
        {
            return Err(StoreError::ManifestList { digest: md.clone() });
        }
        if let Some(mt) = probe.media_type.as_deref() {
            if mt != media_type::OCI_MANIFEST && mt != media_type::DOCKER_MANIFEST {
                return Err(bad(format!("unsupported manifest media type {mt}")));
            }
        }
        if probe.schema_version != Some(2) {
            return Err(bad(
                "schemaVersion is not 2 (Docker schema 1 manifests are not supported)".into(),
            ));
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let cdesc = manifest.config();
        let cmt = cdesc.media_type().to_string();
        if cmt != media_type::OCI_CONFIG && cmt != media_type::DOCKER_CONFIG {
            return Err(bad(format!(
                "config media type {cmt} is not a container image config (an OCI artifact?)"
            )));
        }
        let id = Digest::parse(cdesc.digest().as_ref()).map_err(|e| bad(e.to_string()))?;
        let cbytes = self.read_blob(&id)?;
        if cbytes.len() as u64 != cdesc.size() {
            return Err(bad(format!(
                "config {id} is {} bytes, but the manifest says {}",
                cbytes.len(),
                cdesc.size()
            )));
        }
        let config: ImageConfiguration =
            serde_json::from_slice(&cbytes).map_err(|e| StoreError::BadConfig {
                digest: id.clone(),
                why: e.to_string(),
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(bad(format!(
                "{} layers, but its config lists {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (i, (l, diff)) in manifest.layers().iter().zip(diff_ids).enumerate() {
            let mt = l.media_type().to_string();
            if !media_type::is_layer(&mt) {
                return Err(bad(format!("layer {i} has unsupported media type {mt}")));
            }
            let digest = Digest::parse(l.digest().as_ref()).map_err(|e| bad(e.to_string()))?;
            let size = self.blob_size(&digest)?;
            if size != l.size() {
                return Err(bad(format!(
                    "layer {digest} is {size} bytes in the store, but the manifest says {}",
                    l.size()
                )));
            }
            let diff_id = Digest::parse(diff).map_err(|e| StoreError::BadConfig {
                digest: id.clone(),
                why: format!("diff_id {i}: {e}"),
            })?;
            layers.push(Layer {
                digest,
                diff_id,
                media_type: mt,
                size,
            });
        }
        Ok(Image {
            id,
            manifest_digest: md.clone(),
            manifest,
            config,
            layers,
        })
    }

    /// Finds an image by tag reference, or by manifest digest
    /// (`repo@sha256:…`: any recorded image with that manifest).
    pub fn resolve(&self, r: &ImageRef) -> Result<Image, StoreError> {
        let index = self.read_index()?;
        let hit = match &r.digest {
            Some(d) => index.manifests.iter().find(|e| &e.digest == d),
            None => {
                let key = r.to_string();
                index.manifests.iter().find(|e| e.name() == Some(&key))
            }
        };
        match hit {
            Some(e) => self.load_image(&e.digest),
            None => Err(StoreError::NotFound(r.to_string())),
        }
    }

    /// Resolves what a user typed, as Docker does: a reference first, then a
    /// prefix (at least 4 hex digits, optionally `sha256:`) of an image id or
    /// manifest digest that matches exactly one image.
    pub fn resolve_str(&self, s: &str) -> Result<Image, StoreError> {
        if let Ok(r) = ImageRef::parse(s) {
            match self.resolve(&r) {
                Err(StoreError::NotFound(_)) => {}
                other => return other,
            }
        }
        let index = self.read_index()?;
        let ids = self.entry_ids(&index);
        match self.match_prefix(s, &index, &ids)? {
            Some((_, md)) => self.load_image(&md),
            None => Err(StoreError::NotFound(s.to_string())),
        }
    }

    /// The config digest of each index entry (None where unreadable).
    fn entry_ids(&self, index: &IndexFile) -> Vec<Option<Digest>> {
        index
            .manifests
            .iter()
            .map(|e| {
                let bytes = self.read_blob(&e.digest).ok()?;
                let v: Value = serde_json::from_slice(&bytes).ok()?;
                Digest::parse(v.pointer("/config/digest")?.as_str()?).ok()
            })
            .collect()
    }

    /// The unique (image id, manifest digest) whose id or manifest digest
    /// starts with the hex prefix `s`.
    fn match_prefix(
        &self,
        s: &str,
        index: &IndexFile,
        ids: &[Option<Digest>],
    ) -> Result<Option<(Digest, Digest)>, StoreError> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() < 4
            || hex.len() > 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Ok(None);
        }
        let mut found: BTreeMap<&Digest, &Digest> = BTreeMap::new();
        for (e, id) in index.manifests.iter().zip(ids) {
            let Some(id) = id else { continue };
            if id.hex().starts_with(hex) || e.digest.hex().starts_with(hex) {
                found.entry(id).or_insert(&e.digest);
            }
        }
        if found.len() > 1 {
            return Err(StoreError::Ambiguous {
                prefix: s.to_string(),
                count: found.len(),
            });
        }
        Ok(found
            .into_iter()
            .next()
            .map(|(id, md)| (id.clone(), md.clone())))
    }

    /// Every named image, sorted by reference. Broken entries are logged and skipped.
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for e in &index.manifests {
            let Some(name) = e.name() else { continue };
            match self.load_image(&e.digest) {
                Ok(img) => out.push(ImageSummary {
                    reference: name.to_string(),
                    size: img.layers.iter().map(|l| l.size).sum(),
                    created: img.config.created().clone(),
                    id: img.id,
                    manifest_digest: img.manifest_digest,
                }),
                Err(err) => tracing::warn!(reference = name, %err, "skipping broken image"),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Gives the image `src` (anything [`Store::resolve_str`] accepts) the name `dst`.
    pub fn tag(&self, src: &str, dst: &ImageRef) -> Result<(), StoreError> {
        let image = self.resolve_str(src)?;
        self.add_image(dst, &image.manifest_digest).map(drop)
    }

    /// Removes a name (a reference), or every name of an image (an id or
    /// digest prefix), then collects garbage. Refuses with
    /// [`StoreError::InUse`], changing nothing, when an image would lose its
    /// last name while `in_use(id)`. Returns Docker-style lines:
    /// `Untagged: <ref>` per name removed, `Deleted: <id>` per image gone.
    pub fn remove(
        &self,
        r: &str,
        in_use: &dyn Fn(&Digest) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let lines = {
            let _lock = self.lock()?;
            let mut index = self.read_index()?;
            let ids = self.entry_ids(&index);
            let mut hit = vec![false; index.manifests.len()];
            if let Ok(rf) = ImageRef::parse(r) {
                let key = ref_key(&rf);
                // `repo@digest` also names a tag of that repo pointing at the digest.
                let same_repo = |e: &IndexEntry| {
                    e.name()
                        .and_then(|n| ImageRef::parse(n).ok())
                        .is_some_and(|n| n.registry == rf.registry && n.repository == rf.repository)
                };
                for (d, e) in hit.iter_mut().zip(&index.manifests) {
                    *d = e.name() == Some(&key)
                        || (rf.digest.as_ref() == Some(&e.digest) && same_repo(e));
                }
            }
            if !hit.contains(&true) {
                if let Some((id, _)) = self.match_prefix(r, &index, &ids)? {
                    for (d, eid) in hit.iter_mut().zip(&ids) {
                        *d = eid.as_ref() == Some(&id);
                    }
                }
            }
            if !hit.contains(&true) {
                return Err(StoreError::NotFound(r.to_string()));
            }
            let kept: HashSet<&Digest> = ids
                .iter()
                .zip(&hit)
                .filter_map(|(id, d)| if *d { None } else { id.as_ref() })
                .collect();
            let gone: BTreeSet<&Digest> = ids
                .iter()
                .zip(&hit)
                .filter_map(|(id, d)| if *d { id.as_ref() } else { None })
                .filter(|id| !kept.contains(id))
                .collect();
            for id in &gone {
                if in_use(id) {
                    return Err(StoreError::InUse {
                        reference: r.to_string(),
                        id: (*id).clone(),
                    });
                }
            }
            let mut lines: Vec<String> = index
                .manifests
                .iter()
                .zip(&hit)
                .filter(|(_, d)| **d)
                .filter_map(|(e, _)| e.name().map(|n| format!("Untagged: {n}")))
                .collect();
            lines.extend(gone.iter().map(|id| format!("Deleted: {id}")));
            let mut keep = hit.iter().map(|d| !d);
            index.manifests.retain(|_| keep.next().unwrap_or(true));
            self.write_index(&index)?;
            lines
        };
        // The names are gone either way; a failed collection is retried by the next one.
        if let Err(err) = self.gc() {
            tracing::warn!(%err, "garbage collection after removing {r} failed");
        }
        Ok(lines)
    }

    /// Deletes blobs and unpacked layers that no index.json entry reaches,
    /// and `tmp/` leftovers older than a day. Does nothing (and says so in
    /// the report) while a [`Lease`] is held.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _lock = self.lock()?;
        let Some(_gc_lock) = self.flock("gc.lock", FlockArg::LockExclusiveNonblock)? else {
            tracing::info!("garbage collection deferred: a pull or import holds a lease");
            return Ok(GcReport {
                deferred: true,
                ..GcReport::default()
            });
        };
        let index = self.read_index()?;
        let mut blobs = HashSet::new();
        let mut layers = HashSet::new();
        for e in &index.manifests {
            self.trace(&e.digest, &mut blobs, &mut layers, 0)?;
        }
        let mut report = GcReport::default();

        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
            let entry = entry.map_err(io_err("reading", &dir))?;
            let name = entry.file_name();
            let Some(d) = name
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            else {
                continue;
            };
            if blobs.contains(&d) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    report.blobs_removed += 1;
                    report.bytes_freed += size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &entry.path())(e)),
            }
        }

        let dir = self.layers_dir();
        for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
            let entry = entry.map_err(io_err("reading", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if layers.contains(name) || Digest::parse(&format!("sha256:{name}")).is_err() {
                continue;
            }
            // Renamed away first, so a concurrent layer_dirs either finds the
            // whole layer or none of it.
            let trash = self.tmp_dir().join(format!("gc-{name}"));
            fs::rename(entry.path(), &trash).map_err(io_err("removing", &entry.path()))?;
            report.bytes_freed += tree_size(&trash);
            fs::remove_dir_all(&trash).map_err(io_err("removing", &trash))?;
            report.layers_removed += 1;
        }

        let dir = self.tmp_dir();
        for entry in fs::read_dir(&dir)
            .map_err(io_err("reading", &dir))?
            .flatten()
        {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP);
            let ours = entry.file_name().to_string_lossy().starts_with("gc-");
            if stale || ours {
                let p = entry.path();
                let res = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(err) = res {
                    tracing::warn!(path = %p.display(), %err, "could not remove stale temporary");
                }
            }
        }
        Ok(report)
    }

    /// Marks what `d` reaches. Conservative: anything but a missing blob
    /// aborts gc, since an unreadable manifest could hide live layers.
    fn trace(
        &self,
        d: &Digest,
        blobs: &mut HashSet<Digest>,
        layers: &mut HashSet<String>,
        depth: u8,
    ) -> Result<(), StoreError> {
        if !blobs.insert(d.clone()) || depth > 2 {
            return Ok(());
        }
        let json = |d: &Digest| -> Result<Option<Value>, StoreError> {
            match self.read_blob(d) {
                Ok(b) => {
                    serde_json::from_slice(&b)
                        .map(Some)
                        .map_err(|e| StoreError::BadManifest {
                            digest: d.clone(),
                            why: format!("not JSON ({e}); garbage collection stopped"),
                        })
                }
                Err(StoreError::BlobMissing(_)) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let Some(v) = json(d)? else { return Ok(()) };
        let digest_of = |x: &Value| {
            x.get("digest")
                .and_then(Value::as_str)
                .and_then(|s| Digest::parse(s).ok())
        };
        for m in v
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(c) = digest_of(m) {
                self.trace(&c, blobs, layers, depth + 1)?;
            }
        }
        for l in v
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(l) = digest_of(l) {
                blobs.insert(l);
            }
        }
        if let Some(c) = v.get("config").and_then(digest_of) {
            blobs.insert(c.clone());
            if let Some(cv) = json(&c)? {
                let diffs = cv.pointer("/rootfs/diff_ids").and_then(Value::as_array);
                for diff in diffs.into_iter().flatten() {
                    if let Some(dd) = diff.as_str().and_then(|s| Digest::parse(s).ok()) {
                        layers.insert(dd.hex().to_string());
                    }
                }
            }
        }
        Ok(())
    }

    /// The unpacked layer directories of `image`, lowest first (the order of
    /// the manifest; overlayfs wants them reversed in `lowerdir=`). Each layer
    /// is unpacked once, keyed by diff_id, and shared between images.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, StoreError> {
        image.layers.iter().map(|l| self.layer_dir(l)).collect()
    }

    /// The unpacked directory of one layer, unpacking its blob first if needed.
    pub fn layer_dir(&self, layer: &Layer) -> Result<PathBuf, StoreError> {
        let dir = self.layers_dir().join(layer.diff_id.hex());
        if !dir.is_dir() {
            self.unpack(layer, &dir)?;
        }
        Ok(dir)
    }

    /// Publishes `dir`, an overlayfs-format directory whose tar form hashes
    /// to `diff_id` (a build step's upper directory), as that layer's
    /// unpacked directory, so it is never unpacked from its blob again.
    /// `dir` must be on the store's filesystem; it is moved, or dropped
    /// when the layer is already there.
    pub fn adopt_layer_dir(&self, diff_id: &Digest, dir: &Path) -> Result<PathBuf, StoreError> {
        let target = self.layers_dir().join(diff_id.hex());
        if !target.is_dir() {
            self.publish_layer_dir(dir, &target)?;
        }
        Ok(target)
    }

    /// Moves the complete tree `from` to `to` in `layers/`. The rename
    /// publishes it as complete, so its contents are synced first. When
    /// another process published the same layer first, `from` stays where
    /// it is and false is returned.
    fn publish_layer_dir(&self, from: &Path, to: &Path) -> Result<bool, StoreError> {
        let fd = File::open(from).map_err(io_err("opening", from))?;
        nix::unistd::syncfs(&fd).map_err(|e| io_err("syncing", from)(errno(e)))?;
        match fs::rename(from, to) {
            Ok(()) => sync_dir(&self.layers_dir()).map(|()| true),
            Err(_) if to.is_dir() => Ok(false),
            Err(e) => Err(io_err("renaming a layer to", to)(e)),
        }
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn unpack(&self, layer: &Layer, dir: &Path) -> Result<(), StoreError> {
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.tmp_dir())
            .map_err(io_err("creating a temporary directory in", &self.tmp_dir()))?;
        // TempDir is 0700; the layer root becomes the container's "/".
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting mode of", tmp.path()))?;
        let blob = self.open_blob(&layer.digest)?;
        let actual = unpack_layer(
            BufReader::with_capacity(256 * 1024, blob),
            &layer.media_type,
            tmp.path(),
        )
        .map_err(|source| StoreError::Unpack {
            layer: layer.digest.clone(),
            source,
        })?;
        if actual != layer.diff_id {
            return Err(StoreError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual,
            });
        }
        // Not moved: another process unpacked the same layer first, and
        // ours is dropped with `tmp`.
        if self.publish_layer_dir(tmp.path(), dir)? {
            let _ = tmp.keep();
        }
        Ok(())
    }

    fn flock(&self, name: &str, arg: FlockArg) -> Result<Option<Flock<File>>, StoreError> {
        let path = self.root.join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("opening lock file", &path))?;
        loop {
            match Flock::lock(file, arg) {
                Ok(lock) => return Ok(Some(lock)),
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(io_err("locking", &path)(errno(e))),
            }
        }
    }

    /// The exclusive store lock. flock is per open file, so this must never
    /// be taken twice on one call path (it would wait for itself).
    fn lock(&self) -> Result<Flock<File>, StoreError> {
        self.flock("lock", FlockArg::LockExclusive)?
            .ok_or_else(|| io_err("locking", &self.root.join("lock"))(errno(Errno::EWOULDBLOCK)))
    }

    /// index.json is replaced by rename, so reading needs no lock.
    fn read_index(&self) -> Result<IndexFile, StoreError> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadIndex {
            path,
            why: e.to_string(),
        })
    }

    /// Callers hold [`Store::lock`].
    fn write_index(&self, index: &IndexFile) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| StoreError::BadIndex {
            path: self.index_path(),
            why: e.to_string(),
        })?;
        self.write_atomic(&self.index_path(), &bytes)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let mut tmp = NamedTempFile::new_in(self.tmp_dir())
            .map_err(io_err("creating a temporary file in", &self.tmp_dir()))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io_err("writing", tmp.path()))?;
        // NamedTempFile is 0600; these files are meant to be readable.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(io_err("setting mode of", tmp.path()))?;
        tmp.persist(path)
            .map_err(|e| io_err("replacing", path)(e.error))?;
        sync_dir(&self.root)
    }
}

/// Bytes of regular files under `dir` (not following links).
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Stores a one-layer image; returns (manifest digest, image id).
    fn put_image(store: &Store, files: &[(&str, &[u8])], docker: bool) -> (Digest, Digest) {
        let layer = layer_tar(files);
        let ld = store.write_blob(&layer).unwrap();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer)]},
        }))
        .unwrap();
        let cd = store.write_blob(&config).unwrap();
        let (mt, cmt, lmt) = if docker {
            (
                media_type::DOCKER_MANIFEST,
                media_type::DOCKER_CONFIG,
                media_type::DOCKER_LAYER,
            )
        } else {
            (
                media_type::OCI_MANIFEST,
                media_type::OCI_CONFIG,
                media_type::OCI_LAYER,
            )
        };
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": mt,
            "config": {"mediaType": cmt, "digest": cd, "size": config.len()},
            "layers": [{"mediaType": lmt, "digest": ld, "size": layer.len()}],
        }))
        .unwrap();
        (store.write_blob(&manifest).unwrap(), cd)
    }

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    fn tmp_is_empty(store: &Store) -> bool {
        fs::read_dir(store.root().join("tmp")).unwrap().count() == 0
    }

    #[test]
    fn blobs_and_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("images")).unwrap();
        assert!(store.root().join("oci-layout").is_file());
        let d = store.write_blob(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert!(store.has_blob(&d));
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");

        let wrong = Digest::of(b"other");
        let mut ing = store.ingest(&wrong).unwrap();
        ing.write_all(b"not other").unwrap();
        match ing.commit() {
            Err(StoreError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, Digest::of(b"not other"));
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
        assert!(!store.has_blob(&wrong) && !store.has_blob(&Digest::of(b"not other")));
        assert!(tmp_is_empty(&store));

        // Dropped without commit: nothing left behind.
        let mut ing = store.ingest(&wrong).unwrap();
        ing.write_all(b"partial").unwrap();
        drop(ing);
        assert!(tmp_is_empty(&store));

        let mut ing = store.ingest_unknown().unwrap();
        ing.write_all(b"streamed").unwrap();
        assert_eq!(ing.commit().unwrap(), (Digest::of(b"streamed"), 8));

        // Corruption on disk is noticed.
        fs::write(store.blob_path(&d), b"tampered").unwrap();
        assert!(matches!(
            store.read_blob(&d),
            Err(StoreError::BlobCorrupt { .. })
        ));
        let missing = Digest::of(b"missing");
        assert!(matches!(
            store.read_blob(&missing),
            Err(StoreError::BlobMissing(_))
        ));
    }

    #[test]
    fn add_resolve_list_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (md, id) = put_image(&store, &[("bin/sh", b"sh")], false);
        let img = store.add_image(&r("busybox"), &md).unwrap();
        assert_eq!(
            (img.id.clone(), img.manifest_digest.clone()),
            (id.clone(), md.clone())
        );
        assert_eq!(img.layers.len(), 1);

        let by_tag = store
            .resolve(&r("docker.io/library/busybox:latest"))
            .unwrap();
        assert_eq!(by_tag.manifest_digest, md);
        let by_digest = store.resolve(&r(&format!("busybox@{md}"))).unwrap();
        assert_eq!(by_digest.id, id);
        assert_eq!(store.resolve_str(&id.hex()[..6]).unwrap().id, id);
        assert_eq!(
            store
                .resolve_str(&format!("sha256:{}", &id.hex()[..12]))
                .unwrap()
                .id,
            id
        );
        assert_eq!(store.resolve_str(&md.hex()[..8]).unwrap().id, id);
        assert!(matches!(
            store.resolve_str("busybox:2"),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.resolve_str(&id.hex()[..3]),
            Err(StoreError::NotFound(_))
        ));

        // Docker schema 2 manifests are images too.
        let (dmd, _) = put_image(&store, &[("x", b"x")], true);
        store.add_image(&r("localhost:5000/app:v1"), &dmd).unwrap();
        store.tag("localhost:5000/app:v1", &r("app:copy")).unwrap();
        assert_eq!(store.resolve(&r("app:copy")).unwrap().manifest_digest, dmd);
        // A digest-only name is recorded as such.
        store
            .add_image(&r(&format!("ghcr.io/a/b@{md}")), &md)
            .unwrap();

        let list = store.list().unwrap();
        let names: Vec<&str> = list.iter().map(|s| s.reference.as_str()).collect();
        assert_eq!(
            names,
            [
                "docker.io/library/app:copy",
                "docker.io/library/busybox:latest",
                &format!("ghcr.io/a/b@{md}"),
                "localhost:5000/app:v1"
            ]
        );
        assert_eq!(list[1].created.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(list[1].size, img.layers[0].size);

        // Retagging replaces what the tag pointed at.
        store.add_image(&r("busybox"), &dmd).unwrap();
        assert_eq!(store.resolve(&r("busybox")).unwrap().manifest_digest, dmd);
    }

    #[test]
    fn add_image_validates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (md, _) = put_image(&store, &[("f", b"1")], false);
        let img = store.load_image(&md).unwrap();
        fs::remove_file(store.blob_path(&img.layers[0].digest)).unwrap();
        assert!(matches!(
            store.add_image(&r("a"), &md),
            Err(StoreError::BlobMissing(_))
        ));

        let list = store
            .write_blob(
                &serde_json::to_vec(&json!({
                    "schemaVersion": 2, "mediaType": media_type::OCI_INDEX,
                    "manifests": [{"mediaType": media_type::OCI_MANIFEST, "digest": md, "size": 1}],
                }))
                .unwrap(),
            )
            .unwrap();
        assert!(matches!(
            store.add_image(&r("a"), &list),
            Err(StoreError::ManifestList { .. })
        ));
        let (md2, _) = put_image(&store, &[("f", b"2")], false);
        assert!(matches!(
            store.add_image(&r(&format!("a@{md}")), &md2),
            Err(StoreError::RefDigestMismatch { .. })
        ));
        let artifact = store
            .write_blob(
                &serde_json::to_vec(&json!({
                    "schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": md2, "size": 1},
                    "layers": [],
                }))
                .unwrap(),
            )
            .unwrap();
        let err = store.add_image(&r("a"), &artifact).unwrap_err();
        assert!(
            err.to_string().contains("not a container image config"),
            "{err}"
        );
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn remove_respects_in_use_and_gc_collects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, a_id) = put_image(&store, &[("shared", b"s"), ("a", b"a")], false);
        let (b, b_id) = put_image(&store, &[("b", b"b")], false);
        store.add_image(&r("a:1"), &a).unwrap();
        store.add_image(&r("a:2"), &a).unwrap();
        store.add_image(&r("b"), &b).unwrap();
        let a_dirs = store
            .layer_dirs(&store.resolve(&r("a:1")).unwrap())
            .unwrap();
        let b_img = store.resolve(&r("b")).unwrap();
        let b_dirs = store.layer_dirs(&b_img).unwrap();
        let stray = store.write_blob(b"stray").unwrap();

        let busy = |id: &Digest| *id == a_id || *id == b_id;
        // Not the last name of `a`: fine even in use.
        let lines = store.remove("a:1", &busy).unwrap();
        assert_eq!(lines, ["Untagged: docker.io/library/a:1"]);
        // The last one: refused, nothing changed.
        let err = store.remove("a:2", &busy).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(store.resolve(&r("a:2")).is_ok());

        // Stray blob went with the first remove's gc.
        assert!(!store.has_blob(&stray));
        // While a lease is held, gc collects nothing.
        let stray = store.write_blob(b"stray again").unwrap();
        let lease = store.lease().unwrap();
        assert!(store.gc().unwrap().deferred);
        assert!(store.has_blob(&stray));
        drop(lease);
        // So does an ingest in progress.
        let ingest = store.ingest_unknown().unwrap();
        assert!(store.gc().unwrap().deferred);
        drop(ingest);

        let lines = store.remove(&b_id.hex()[..10], &|_| false).unwrap();
        assert_eq!(
            lines,
            [
                "Untagged: docker.io/library/b:latest".to_string(),
                format!("Deleted: {b_id}")
            ]
        );
        assert!(!store.has_blob(&stray));
        assert!(!store.has_blob(&b) && !store.has_blob(&b_id));
        assert!(!store.has_blob(&b_img.layers[0].digest));
        assert!(!b_dirs[0].exists());
        assert!(a_dirs[0].is_dir());
        let a_img = store.resolve(&r("a:2")).unwrap();
        assert!(
            store.has_blob(&a) && store.has_blob(&a_id) && store.has_blob(&a_img.layers[0].digest)
        );
        assert!(matches!(
            store.resolve_str("b"),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.remove("b", &|_| false),
            Err(StoreError::NotFound(_))
        ));

        // A second gc finds nothing more.
        assert_eq!(store.gc().unwrap(), GcReport::default());
    }

    #[test]
    fn layer_dirs_unpack_once_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (md, _) = put_image(&store, &[("etc/hostname", b"skiff")], false);
        let img = store.add_image(&r("x"), &md).unwrap();
        // Concurrent first use: both callers get the same complete layer.
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (store, img) = (store.clone(), img.clone());
                std::thread::spawn(move || store.layer_dirs(&img).unwrap())
            })
            .collect();
        let dirs: Vec<Vec<PathBuf>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(dirs.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(fs::read(dirs[0][0].join("etc/hostname")).unwrap(), b"skiff");
        assert_eq!(
            fs::metadata(&dirs[0][0]).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(tmp_is_empty(&store));

        // A layer whose content does not match the config's diff_id.
        let mut bad = img.clone();
        bad.layers[0].diff_id = Digest::of(b"something else");
        let err = store.layer_dirs(&bad).unwrap_err();
        assert!(matches!(err, StoreError::DiffIdMismatch { .. }), "{err}");
        assert!(!store
            .root()
            .join("layers")
            .join(Digest::of(b"something else").hex())
            .exists());
        assert!(tmp_is_empty(&store));
    }
}
