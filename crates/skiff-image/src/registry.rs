//! A client for the OCI distribution spec (Docker registry HTTP API v2):
//! pull an image into the [`Store`], push one from it, check a login.
//!
//! Everything fetched is verified before it is kept: manifests against the
//! digest that named them, blobs against their descriptor's size and digest
//! (the store's ingest refuses a mismatch). Blobs stream to disk chunk by
//! chunk; only manifests and token responses, both size-capped, are read
//! into memory.
//!
//! Auth follows the registry's `WWW-Authenticate` challenge: anonymous
//! first, then HTTP Basic or a Bearer token from the realm it names
//! (Docker's token protocol), cached per registry and scope.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use oci_spec::image::ImageManifest;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;
use skiff_core::{Digest, ImageRef};
use tokio::io::AsyncReadExt as _;

use crate::auth::{AuthError, CredentialStore, Credentials};
use crate::progress::Progress;
use crate::store::{Image, Store, StoreError};

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What we accept for a manifest request, in the order we prefer.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The cap containerd and the distribution registry apply to manifests: a
/// hostile registry must not make us buffer gigabytes.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Token responses are JWTs of a few KiB; error bodies are smaller still.
const MAX_TOKEN_BYTES: u64 = 1 << 20;
const MAX_ERROR_BYTES: u64 = 64 << 10;
/// Parallel blob transfers: enough to hide latency, few enough not to
/// starve a small machine or trip registry rate limits.
const CONCURRENT_BLOBS: usize = 3;
const UPLOAD_CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registry name {0:?}")]
    InvalidRegistry(String),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("cannot reach registry {host}: {cause}")]
    Unreachable { host: String, cause: String },
    #[error("connection to registry {host} failed: {cause}")]
    Transport { host: String, cause: String },
    #[error("image {reference} not found in {registry} (manifest unknown)")]
    NotFound { reference: String, registry: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{what} has digest {actual}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: u64 },
    #[error("malformed {what}: {why}")]
    Malformed { what: String, why: String },
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{reference} has no image for {platform} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{what}: registry {host} answered HTTP {status}: {message}")]
    Status {
        host: String,
        what: String,
        status: u16,
        message: String,
    },
    #[error(transparent)]
    Credentials(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl RegistryError {
    /// Worth one more try: the network or a gateway hiccuped.
    fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    fn malformed(what: impl fmt::Display, why: impl fmt::Display) -> Self {
        RegistryError::Malformed {
            what: what.to_string(),
            why: why.to_string(),
        }
    }

    fn size(what: impl fmt::Display, expected: u64, actual: u64) -> Self {
        RegistryError::SizeMismatch {
            what: what.to_string(),
            expected,
            actual,
        }
    }

    fn io(what: impl fmt::Display, source: io::Error) -> Self {
        RegistryError::Io {
            what: what.to_string(),
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries (`host` or `host:port`) to speak plain HTTP to, beyond
    /// the loopback ones that always are. Unlike Docker, HTTPS is not tried
    /// first for these: an insecure registry is plain HTTP only.
    pub insecure: Vec<String>,
    /// Where `skiff login` credentials live.
    pub credentials: CredentialStore,
    /// `(os, architecture)` picked from multi-platform images, in Go's
    /// spelling (`("linux", "amd64")`).
    pub platform: (String, String),
}

/// This machine's platform in the GOOS/GOARCH names image indexes use.
pub fn host_platform() -> (String, String) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux".to_string(), arch.to_string())
}

pub struct RegistryClient {
    http: Client,
    opts: RegistryOptions,
    /// Authorization header values by (API host, scope).
    auth_cache: Mutex<HashMap<(String, String), CachedAuth>>,
}

#[derive(Clone)]
struct CachedAuth {
    header: String,
    expires: Option<Instant>,
}

/// One registry conversation: where, as whom, for what.
struct Target {
    /// The registry as the user names it (`docker.io`): for messages and credentials.
    registry: String,
    /// The host the API is on (`registry-1.docker.io`).
    host: String,
    base: Url,
    /// `""` for registry-wide requests (`GET /v2/`).
    repository: String,
    /// Docker token scope (`repository:team/app:pull`), `""` for none.
    scope: String,
    creds: Option<Credentials>,
    /// Off for `check_login`, which must prove the given credentials
    /// rather than reuse a token obtained earlier.
    use_cache: bool,
}

impl Target {
    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path)
            .map_err(|_| RegistryError::InvalidRegistry(self.registry.clone()))
    }

    fn cache_key(&self) -> (String, String) {
        (self.host.clone(), self.scope.clone())
    }

    fn name(&self) -> String {
        if self.repository.is_empty() {
            self.registry.clone()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// The error for a registry that still says 401 after we authenticated.
    fn denied(&self, detail: Option<&str>) -> RegistryError {
        let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
        RegistryError::Unauthorized(match &self.creds {
            None => format!(
                "access to {} denied{detail}: log in with `skiff login {}`",
                self.name(),
                self.registry
            ),
            Some(c) => format!(
                "{} refused the credentials of user {:?} for {}{detail}: check them with `skiff login {}`",
                self.registry,
                c.username,
                self.name(),
                self.registry
            ),
        })
    }
}

/// A blob to transfer.
struct Blob {
    digest: Digest,
    size: u64,
    label: &'static str,
}

impl RegistryClient {
    pub fn new(opts: RegistryOptions) -> Result<Self, RegistryError> {
        let http = Client::builder()
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // An idle read timeout, not a total one: layers may take minutes.
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| RegistryError::Client(error_chain(&e)))?;
        Ok(RegistryClient {
            http,
            opts,
            auth_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Pulls `r` into `store` and tags it there. An image index picks the
    /// configured platform. Blobs the store already has are not fetched.
    pub async fn pull(
        &self,
        store: &Store,
        r: &ImageRef,
        progress: &dyn Progress,
    ) -> Result<Image, RegistryError> {
        let t = self.target(r, "pull")?;
        // Blobs committed before `add_image` references them look like
        // garbage to the store's gc: hold it off for the whole pull.
        let lease = on_store(store, |s| s.lease()).await?;
        let (bytes, media_type, digest) = self
            .fetch_manifest(&t, r, &r.manifest_reference(), r.digest.as_ref())
            .await?;
        let (bytes, digest) = match media_type.as_str() {
            MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => {
                let (child, size) = self.select_platform(r, &bytes)?;
                let (bytes, media_type, digest) = self
                    .fetch_manifest(&t, r, &child.to_string(), Some(&child))
                    .await?;
                if bytes.len() as u64 != size {
                    return Err(RegistryError::size(
                        format!("manifest {child} of {r}"),
                        size,
                        bytes.len() as u64,
                    ));
                }
                if !matches!(
                    media_type.as_str(),
                    MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST
                ) {
                    return Err(RegistryError::UnsupportedMediaType {
                        what: format!("manifest {child} of {r}"),
                        media_type,
                    });
                }
                (bytes, digest)
            }
            _ => (bytes, digest),
        };
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::malformed(format!("manifest of {r}"), e))?;
        let config = manifest.config();
        let config_type = config.media_type().to_string();
        if config_type != MEDIA_OCI_CONFIG && config_type != MEDIA_DOCKER_CONFIG {
            // Helm charts, signatures and other OCI artifacts are not runnable.
            return Err(RegistryError::UnsupportedMediaType {
                what: format!("the config of {r} (not a container image)"),
                media_type: config_type,
            });
        }
        stream::iter(blobs_of(&manifest, r)?)
            .map(|b| self.fetch_blob(&t, store, b, progress))
            .buffer_unordered(CONCURRENT_BLOBS)
            .try_collect::<Vec<()>>()
            .await?;
        // A reference pinned to an index digest is recorded under the
        // platform manifest's digest: the store keys images by manifest.
        let name = match &r.digest {
            Some(d) if *d != digest => ImageRef {
                digest: Some(digest.clone()),
                ..r.clone()
            },
            _ => r.clone(),
        };
        // The manifest goes in last, and the tag with it: a pull that failed
        // leaves at most unreferenced blobs, never a half image.
        let image = on_store(store, move |s| {
            s.write_blob(&bytes)?;
            s.add_image(&name, &digest)
        })
        .await?;
        drop(lease);
        Ok(image)
    }

    /// Pushes `src` (manifest, config and layers, all from `store`) as
    /// `dst`; returns the manifest digest. The manifest is sent byte for
    /// byte as stored, so its digest is preserved.
    pub async fn push(
        &self,
        store: &Store,
        src: &Image,
        dst: &ImageRef,
        progress: &dyn Progress,
    ) -> Result<Digest, RegistryError> {
        let t = self.target(dst, "pull,push")?;
        if let Some(d) = dst.digest.as_ref().filter(|d| **d != src.manifest_digest) {
            return Err(RegistryError::DigestMismatch {
                what: format!("image to push as {dst}"),
                expected: d.to_string(),
                actual: src.manifest_digest.to_string(),
            });
        }
        stream::iter(blobs_of(&src.manifest, dst)?)
            .map(|b| self.push_blob(&t, store, b, progress))
            .buffer_unordered(CONCURRENT_BLOBS)
            .try_collect::<Vec<()>>()
            .await?;

        let bytes = store.read_blob(&src.manifest_digest)?;
        let media_type = src
            .manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string());
        let reference = dst.tag.clone().unwrap_or_else(|| dst.manifest_reference());
        let url = t.url(&format!("v2/{}/manifests/{reference}", t.repository))?;
        let resp = self
            .send(&t, |c| {
                Ok(c.put(url.clone())
                    .header(CONTENT_TYPE, media_type.as_str())
                    .body(bytes.clone()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(&t, resp, format!("pushing the manifest of {dst}")).await);
        }
        if let Some(d) = content_digest(resp.headers()) {
            if d != src.manifest_digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest pushed as {dst} (according to the registry)"),
                    expected: src.manifest_digest.to_string(),
                    actual: d.to_string(),
                });
            }
        }
        Ok(src.manifest_digest.clone())
    }

    /// Checks that `registry` accepts `creds` (for `skiff login`): `GET /v2/`
    /// through whatever challenge the registry issues.
    pub async fn check_login(
        &self,
        registry: &str,
        creds: &Credentials,
    ) -> Result<(), RegistryError> {
        let registry = registry_host(registry);
        let host = match registry.as_str() {
            "docker.io" => "registry-1.docker.io".to_string(),
            _ => registry.clone(),
        };
        let base = base_url(&host, &self.opts.insecure)
            .ok_or_else(|| RegistryError::InvalidRegistry(registry.clone()))?;
        let t = Target {
            registry,
            host,
            base,
            repository: String::new(),
            scope: String::new(),
            creds: Some(creds.clone()),
            use_cache: false,
        };
        let url = t.url("v2/")?;
        let resp = self.send(&t, |c| Ok(c.get(url.clone()))).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error(&t, resp, "checking the login".into()).await)
        }
    }

    fn target(&self, r: &ImageRef, actions: &str) -> Result<Target, RegistryError> {
        let host = r.api_host().to_string();
        let base = base_url(&host, &self.opts.insecure)
            .ok_or_else(|| RegistryError::InvalidRegistry(r.registry.clone()))?;
        let creds = self.opts.credentials.load(&r.registry)?;
        Ok(Target {
            registry: r.registry.clone(),
            host,
            base,
            repository: r.repository.clone(),
            scope: format!("repository:{}:{actions}", r.repository),
            creds,
            use_cache: true,
        })
    }

    /// Sends the request `build` makes, authenticating on a 401 and sending
    /// it again. `build` is called once per attempt since streamed bodies
    /// cannot be replayed. Any status but 401 is the caller's to judge.
    async fn send<F>(&self, t: &Target, build: F) -> Result<Response, RegistryError>
    where
        F: Fn(&Client) -> Result<RequestBuilder, RegistryError>,
    {
        let cached = self.cached_auth(t);
        let resp = self
            .execute(t, build(&self.http)?, cached.as_deref())
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        // No auth yet, or the cached token expired or lacks this scope.
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        drop(resp);
        let auth = self.authenticate(t, &challenges).await?;
        let resp = self
            .execute(t, build(&self.http)?, Some(&auth.header))
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let body = read_limited(t, resp, MAX_ERROR_BYTES, "an error response")
                .await
                .unwrap_or_default();
            return Err(t.denied(registry_message(&body).as_deref()));
        }
        if t.use_cache {
            lock(&self.auth_cache).insert(t.cache_key(), auth);
        }
        Ok(resp)
    }

    async fn execute(
        &self,
        t: &Target,
        req: RequestBuilder,
        auth: Option<&str>,
    ) -> Result<Response, RegistryError> {
        let req = match auth {
            Some(a) => req.header(AUTHORIZATION, a),
            None => req,
        };
        req.send().await.map_err(|e| transport_error(&t.host, &e))
    }

    fn cached_auth(&self, t: &Target) -> Option<String> {
        if !t.use_cache {
            return None;
        }
        let mut cache = lock(&self.auth_cache);
        let key = t.cache_key();
        match cache.get(&key) {
            Some(a) if a.expires.is_none_or(|e| e > Instant::now()) => Some(a.header.clone()),
            Some(_) => {
                cache.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Answers a 401's challenges: a Bearer token from the realm if offered
    /// (what most registries use), else Basic if we have credentials.
    async fn authenticate(
        &self,
        t: &Target,
        challenges: &[Challenge],
    ) -> Result<CachedAuth, RegistryError> {
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.fetch_token(t, c).await;
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            if let Some(creds) = &t.creds {
                let raw = format!("{}:{}", creds.username, creds.password);
                return Ok(CachedAuth {
                    header: format!("Basic {}", BASE64.encode(raw)),
                    expires: None,
                });
            }
            return Err(t.denied(None));
        }
        Err(t.denied(Some(
            "the registry offered no usable WWW-Authenticate challenge",
        )))
    }

    /// Docker's token protocol: GET the realm with `service` and `scope`,
    /// sending Basic credentials when we have them (anonymous tokens cover
    /// public images), and read `token` or `access_token`.
    async fn fetch_token(&self, t: &Target, c: &Challenge) -> Result<CachedAuth, RegistryError> {
        let what = format!("authentication challenge from {}", t.host);
        let realm = c
            .param("realm")
            .ok_or_else(|| RegistryError::malformed(&what, "Bearer without a realm"))?;
        let mut url = Url::parse(realm)
            .map_err(|e| RegistryError::malformed(&what, format!("realm {realm:?}: {e}")))?;
        let realm_host = url.host_str().unwrap_or_default().to_string();
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = c.param("service") {
                q.append_pair("service", service);
            }
            if !t.scope.is_empty() {
                q.append_pair("scope", &t.scope);
            }
        }
        let mut req = self.http.get(url);
        if let Some(creds) = &t.creds {
            req = req.basic_auth(&creds.username, Some(&creds.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&realm_host, &e))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let body = read_limited(t, resp, MAX_ERROR_BYTES, "an error response")
                    .await
                    .unwrap_or_default();
                return Err(t.denied(registry_message(&body).as_deref()));
            }
            _ => return Err(status_error(t, resp, format!("getting a token from {realm}")).await),
        }
        let body = read_limited(t, resp, MAX_TOKEN_BYTES, "token response").await?;
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let malformed =
            |why: String| RegistryError::malformed(format!("token response from {realm}"), why);
        let tr: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
        let token = tr
            .token
            .filter(|s| !s.is_empty())
            .or(tr.access_token.filter(|s| !s.is_empty()))
            .ok_or_else(|| malformed("neither \"token\" nor \"access_token\" is set".into()))?;
        // The spec's default lifetime is 60 s; renew a little early so a
        // token does not expire in flight.
        let lifetime = Duration::from_secs(tr.expires_in.unwrap_or(60).max(60));
        Ok(CachedAuth {
            header: format!("Bearer {token}"),
            expires: Some(Instant::now() + lifetime - Duration::from_secs(10)),
        })
    }

    /// GETs a manifest and checks it: size cap, digest (against `expected`
    /// and the registry's own `Docker-Content-Digest`), known media type.
    async fn fetch_manifest(
        &self,
        t: &Target,
        r: &ImageRef,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let url = t.url(&format!("v2/{}/manifests/{reference}", t.repository))?;
        let resp = self
            .send(t, |c| {
                Ok(c.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                reference: r.to_string(),
                registry: r.registry.clone(),
            });
        }
        if !resp.status().is_success() {
            return Err(status_error(t, resp, format!("fetching the manifest of {r}")).await);
        }
        let claimed = content_digest(resp.headers());
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        let what = if reference == r.manifest_reference() {
            format!("manifest of {r}")
        } else {
            format!("manifest {reference} of {r}")
        };
        let bytes = read_limited(t, resp, MAX_MANIFEST_BYTES, &what).await?;
        let digest = Digest::of(&bytes);
        for want in expected.into_iter().chain(claimed.as_ref()) {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected: want.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let media_type = match content_type {
            Some(ct) if is_manifest_type(&ct) => ct,
            // Some registries serve `application/json`; the document says
            // what it is (`mediaType` is optional in OCI manifests).
            ct => sniff_media_type(&bytes).ok_or_else(|| RegistryError::UnsupportedMediaType {
                what: what.clone(),
                media_type: ct.unwrap_or_default(),
            })?,
        };
        Ok((bytes, media_type, digest))
    }

    /// The manifest in an index for our platform: exact os/arch, preferring
    /// an entry without a variant (or `v8` on arm64), as containerd does.
    fn select_platform(&self, r: &ImageRef, bytes: &[u8]) -> Result<(Digest, u64), RegistryError> {
        #[derive(Deserialize)]
        struct Index {
            manifests: Vec<Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            digest: String,
            size: u64,
            platform: Option<Platform>,
        }
        #[derive(Deserialize)]
        struct Platform {
            os: String,
            architecture: String,
            variant: Option<String>,
        }
        let what = format!("image index of {r}");
        let index: Index =
            serde_json::from_slice(bytes).map_err(|e| RegistryError::malformed(&what, e))?;
        let (os, arch) = &self.opts.platform;
        let rank = |p: &Platform| match p.variant.as_deref() {
            None | Some("") => 0,
            Some("v8") if arch == "arm64" => 1,
            Some(_) => 2,
        };
        let best = index
            .manifests
            .iter()
            .filter_map(|e| e.platform.as_ref().map(|p| (e, p)))
            .filter(|(_, p)| &p.os == os && &p.architecture == arch)
            .min_by_key(|(_, p)| rank(p));
        match best {
            Some((e, _)) => {
                let d =
                    Digest::parse(&e.digest).map_err(|err| RegistryError::malformed(&what, err))?;
                Ok((d, e.size))
            }
            None => {
                let available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|e| e.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect();
                Err(RegistryError::NoMatchingPlatform {
                    reference: r.to_string(),
                    platform: format!("{os}/{arch}"),
                    available: if available.is_empty() {
                        "nothing".into()
                    } else {
                        available.join(", ")
                    },
                })
            }
        }
    }

    async fn fetch_blob(
        &self,
        t: &Target,
        store: &Store,
        b: Blob,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let track = Track::begin(progress, &b);
        if store.has_blob(&b.digest) {
            track.end("exists");
            return Ok(());
        }
        let mut result = self.fetch_blob_once(t, store, &b, &track).await;
        if let Err(e) = &result {
            if e.is_transient() {
                tracing::warn!(digest = %b.digest, error = %e, "blob download failed, retrying once");
                result = self.fetch_blob_once(t, store, &b, &track).await;
            }
        }
        track.end(if result.is_ok() { "done" } else { "failed" });
        result
    }

    /// Streams one blob into the store. A dedicated blocking task does the
    /// file writes (and the final fsync and rename), so disk and network
    /// overlap and the async runtime never blocks on I/O. The ingest is only
    /// committed after every byte arrived and the size matched; anything
    /// else drops it, which discards the partial file.
    async fn fetch_blob_once(
        &self,
        t: &Target,
        store: &Store,
        b: &Blob,
        track: &Track<'_>,
    ) -> Result<(), RegistryError> {
        let url = t.url(&format!("v2/{}/blobs/{}", t.repository, b.digest))?;
        let mut resp = self.send(t, |c| Ok(c.get(url.clone()))).await?;
        let what = format!("{} {}", b.label, b.digest);
        if !resp.status().is_success() {
            return Err(status_error(t, resp, format!("fetching {what}")).await);
        }
        if let Some(len) = resp.content_length().filter(|l| *l != b.size) {
            return Err(RegistryError::size(what, b.size, len));
        }
        let ingest = store.ingest(&b.digest)?;
        // `None` means "complete, commit"; a closed channel means "abort".
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let writer = spawn_writer(ingest, rx, b.digest.clone(), what.clone());
        let mut received = 0u64;
        let downloaded = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    if received > b.size {
                        break Err(RegistryError::size(what.clone(), b.size, received));
                    }
                    track.advance(chunk.len() as u64);
                    if tx.send(Some(chunk)).await.is_err() {
                        break Ok(()); // the writer failed; its error follows
                    }
                }
                Ok(None) if received != b.size => {
                    break Err(RegistryError::size(what.clone(), b.size, received))
                }
                Ok(None) => {
                    // If the writer already failed, its error follows.
                    let _ = tx.send(None).await;
                    break Ok(());
                }
                Err(e) => break Err(transport_error(&t.host, &e)),
            }
        };
        drop(tx);
        let written = writer
            .await
            .map_err(|e| RegistryError::io(format!("writing {what}"), io::Error::other(e)));
        downloaded?;
        match written?? {
            true => Ok(()),
            // Cannot happen: the writer only stops early on an error.
            false => Err(RegistryError::io(
                format!("writing {what}"),
                io::Error::other("the download was abandoned"),
            )),
        }
    }

    /// HEAD, then (if missing) POST for an upload session and one
    /// monolithic PUT streamed from the store's file.
    async fn push_blob(
        &self,
        t: &Target,
        store: &Store,
        b: Blob,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let track = Track::begin(progress, &b);
        let result = self.push_blob_inner(t, store, &b, &track).await;
        track.end(match &result {
            Ok(true) => "exists",
            Ok(false) => "done",
            Err(_) => "failed",
        });
        result.map(|_| ())
    }

    /// Ok(true) if the registry already had the blob.
    async fn push_blob_inner(
        &self,
        t: &Target,
        store: &Store,
        b: &Blob,
        track: &Track<'_>,
    ) -> Result<bool, RegistryError> {
        let what = format!("{} {}", b.label, b.digest);
        let blob_url = t.url(&format!("v2/{}/blobs/{}", t.repository, b.digest))?;
        let resp = self.send(t, |c| Ok(c.head(blob_url.clone()))).await?;
        match resp.status() {
            s if s.is_success() => return Ok(true),
            StatusCode::NOT_FOUND => {}
            _ => return Err(status_error(t, resp, format!("checking {what}")).await),
        }

        let uploads = t.url(&format!("v2/{}/blobs/uploads/", t.repository))?;
        let resp = self
            .send(t, |c| Ok(c.post(uploads.clone()).header(CONTENT_LENGTH, 0)))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(t, resp, format!("starting the upload of {what}")).await);
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                RegistryError::malformed(format!("upload session for {what}"), "no Location header")
            })?;
        // Relative locations resolve against the URL that answered; the
        // query string may carry the registry's state and must be kept.
        let mut put_url = resp.url().join(location).map_err(|e| {
            RegistryError::malformed(
                format!("upload location for {what}"),
                format!("{location:?}: {e}"),
            )
        })?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", &b.digest.to_string());
        drop(resp);

        let path = store.blob_path(&b.digest);
        let sent = Arc::new(AtomicU64::new(0));
        let put = self.send(t, |c| {
            let file = std::fs::File::open(&path).map_err(|source| {
                RegistryError::io(format!("reading {what} from {}", path.display()), source)
            })?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len != b.size {
                return Err(RegistryError::size(format!("stored {what}"), b.size, len));
            }
            sent.store(0, Ordering::Relaxed);
            let body = file_stream(tokio::fs::File::from_std(file), sent.clone());
            Ok(c.put(put_url.clone())
                .header(CONTENT_LENGTH, b.size)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(reqwest::Body::wrap_stream(body)))
        });
        // `progress` is borrowed, so it cannot ride along in the 'static
        // body stream; report the stream's byte count from here instead.
        tokio::pin!(put);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut reported = 0;
        let resp = loop {
            tokio::select! {
                r = &mut put => break r?,
                _ = tick.tick() => {
                    let now = sent.load(Ordering::Relaxed);
                    track.advance(now.saturating_sub(reported));
                    reported = reported.max(now);
                }
            }
        };
        track.advance(sent.load(Ordering::Relaxed).saturating_sub(reported));
        if !resp.status().is_success() {
            return Err(status_error(t, resp, format!("uploading {what}")).await);
        }
        Ok(false)
    }
}

/// begin/advance/end for one blob; `end("failed")` if dropped unfinished
/// (another blob's error cancelled this transfer).
struct Track<'a> {
    progress: &'a dyn Progress,
    id: String,
    ended: AtomicBool,
}

impl<'a> Track<'a> {
    fn begin(progress: &'a dyn Progress, b: &Blob) -> Self {
        let id = b.digest.short().to_string();
        progress.begin(&id, b.label, Some(b.size));
        Track {
            progress,
            id,
            ended: AtomicBool::new(false),
        }
    }
    fn advance(&self, bytes: u64) {
        if bytes > 0 {
            self.progress.advance(&self.id, bytes);
        }
    }
    fn end(&self, outcome: &str) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            self.progress.end(&self.id, outcome);
        }
    }
}

impl Drop for Track<'_> {
    fn drop(&mut self) {
        self.end("cancelled");
    }
}

/// Runs store work that may block (fsync, flock) off the async runtime.
async fn on_store<T, F>(store: &Store, f: F) -> Result<T, RegistryError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| RegistryError::io("store task", io::Error::other(e)))?
        .map_err(Into::into)
}

/// The blocking half of a blob download: writes chunks into the ingest and
/// commits on `None` (answering `true`). A channel closed without `None`
/// means the download was abandoned: the ingest is dropped, which discards
/// it (answering `false`).
fn spawn_writer<C: AsRef<[u8]> + Send + 'static>(
    mut ingest: crate::store::Ingest,
    mut rx: tokio::sync::mpsc::Receiver<Option<C>>,
    expected: Digest,
    what: String,
) -> tokio::task::JoinHandle<Result<bool, RegistryError>> {
    tokio::task::spawn_blocking(move || {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Some(chunk) => {
                    ingest
                        .write_all(chunk.as_ref())
                        .map_err(|source| RegistryError::io(format!("writing {what}"), source))?;
                }
                None => {
                    return match ingest.commit() {
                        Ok(_) => Ok(true),
                        Err(StoreError::DigestMismatch { actual, .. }) => {
                            Err(RegistryError::DigestMismatch {
                                what,
                                expected: expected.to_string(),
                                actual: actual.to_string(),
                            })
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            }
        }
        Ok(false)
    })
}

/// The config and layers of `m`, each once (a layer may repeat).
fn blobs_of(m: &ImageManifest, r: &ImageRef) -> Result<Vec<Blob>, RegistryError> {
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    let all =
        std::iter::once((m.config(), "config")).chain(m.layers().iter().map(|l| (l, "layer")));
    for (d, label) in all {
        let digest = Digest::parse(d.digest().as_ref())
            .map_err(|e| RegistryError::malformed(format!("manifest of {r}"), e))?;
        if seen.insert(digest.clone()) {
            blobs.push(Blob {
                digest,
                size: d.size(),
                label,
            });
        }
    }
    Ok(blobs)
}

/// A file as a body stream that counts what it yields.
fn file_stream(
    file: tokio::fs::File,
    sent: Arc<AtomicU64>,
) -> impl futures_util::Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    stream::try_unfold((file, sent), |(mut file, sent)| async move {
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Some((buf, (file, sent))))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the cache cannot leave it inconsistent (it
    // only inserts and removes whole entries), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_manifest_type(t: &str) -> bool {
    matches!(
        t,
        MEDIA_OCI_MANIFEST | MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST | MEDIA_DOCKER_LIST
    )
}

/// The media type a manifest document declares, or implies by its shape.
/// Docker schema 1 (and anything else) is refused by returning `None`.
fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if v.get("schemaVersion").and_then(|s| s.as_u64()) != Some(2) {
        return None;
    }
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) if is_manifest_type(m) => Some(m.to_string()),
        Some(_) => None,
        None if v.get("manifests").is_some() => Some(MEDIA_OCI_INDEX.into()),
        None if v.get("config").is_some() => Some(MEDIA_OCI_MANIFEST.into()),
        None => None,
    }
}

fn content_digest(h: &HeaderMap) -> Option<Digest> {
    let v = h.get("docker-content-digest")?.to_str().ok()?;
    // Only sha256 is comparable; other algorithms are not ours to check.
    Digest::parse(v.trim()).ok()
}

/// Reads a response body of at most `limit` bytes.
async fn read_limited(
    t: &Target,
    mut resp: Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        what: what.to_string(),
        limit,
    };
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(&t.host, &e))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Turns a non-success response into an error carrying the registry's own
/// explanation (`{"errors": [{"code": …, "message": …}]}`) when it has one.
async fn status_error(t: &Target, resp: Response, what: String) -> RegistryError {
    let status = resp.status();
    let body = read_limited(t, resp, MAX_ERROR_BYTES, "an error response")
        .await
        .unwrap_or_default();
    let message = registry_message(&body);
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return t.denied(message.as_deref());
    }
    RegistryError::Status {
        host: t.host.clone(),
        what,
        status: status.as_u16(),
        message: message.unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("no reason given")
                .into()
        }),
    }
}

fn registry_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.get(0)?;
    let text = e
        .get("message")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .or_else(|| e.get("code").and_then(|c| c.as_str()))?;
    // One line, bounded: it ends up in a CLI error message.
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| line.is_char_boundary(*i))
            .unwrap_or(0);
        line.truncate(cut);
        line.push('…');
    }
    Some(line)
}

fn transport_error(host: &str, e: &reqwest::Error) -> RegistryError {
    let cause = if e.is_timeout() {
        "timed out".to_string()
    } else {
        error_chain(e)
    };
    if e.is_connect() {
        RegistryError::Unreachable {
            host: host.to_string(),
            cause,
        }
    } else {
        RegistryError::Transport {
            host: host.to_string(),
            cause,
        }
    }
}

/// The innermost cause, which is the informative one ("connection refused"
/// rather than "error sending request for url …").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    if let Some(io) = inner.downcast_ref::<io::Error>() {
        let named = match io.kind() {
            io::ErrorKind::ConnectionRefused => Some("connection refused"),
            io::ErrorKind::ConnectionReset => Some("connection reset by peer"),
            io::ErrorKind::ConnectionAborted => Some("connection aborted"),
            io::ErrorKind::TimedOut => Some("timed out"),
            io::ErrorKind::HostUnreachable => Some("host unreachable"),
            io::ErrorKind::NetworkUnreachable => Some("network unreachable"),
            _ => None,
        };
        if let Some(n) = named {
            return n.to_string();
        }
    }
    inner.to_string()
}

/// `https://index.docker.io/v1/` → `docker.io`; `localhost:5000` as is.
fn registry_host(registry: &str) -> String {
    let r = registry.trim();
    let r = r
        .strip_prefix("https://")
        .or_else(|| r.strip_prefix("http://"))
        .unwrap_or(r);
    let host = r.split('/').next().unwrap_or(r).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// `scheme://host[:port]/` for a registry host.
fn base_url(host_port: &str, insecure: &[String]) -> Option<Url> {
    let scheme = if plain_http(host_port, insecure) {
        "http"
    } else {
        "https"
    };
    let (host, port) = split_host_port(host_port);
    let host = match host.parse::<Ipv6Addr>() {
        Ok(_) => format!("[{host}]"),
        Err(_) => host.to_string(),
    };
    let authority = match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    let url = Url::parse(&format!("{scheme}://{authority}/")).ok()?;
    // Reject anything that smuggled a path, user info or query into the name.
    (url.path() == "/" && url.username().is_empty() && url.query().is_none()).then_some(url)
}

/// Docker's rule: plain HTTP for loopback registries (`localhost`,
/// 127.0.0.0/8, `::1`, any port) and for those configured as insecure
/// (`host:port` exactly, or `host` for every port); HTTPS otherwise.
fn plain_http(host_port: &str, insecure: &[String]) -> bool {
    let (host, _) = split_host_port(host_port);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback
        || insecure.iter().any(|entry| {
            let entry = entry.trim();
            let entry = entry
                .strip_prefix("http://")
                .or_else(|| entry.strip_prefix("https://"))
                .unwrap_or(entry)
                .trim_end_matches('/');
            entry.eq_ignore_ascii_case(host_port) || entry.eq_ignore_ascii_case(host)
        })
}

/// Splits `host:port`, `[v6]:port`, `[v6]` and bare `v6` addresses.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

/// One `WWW-Authenticate` challenge: lowercased scheme, parameters with
/// lowercased names and unquoted values.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235): one or more challenges,
/// each `scheme` followed by comma-separated `name=value` or
/// `name="quoted, \"escaped\" value"` parameters. A token followed by
/// `=` is a parameter; any other token starts the next challenge, which is
/// how `Basic realm="a", Bearer realm="b"` splits. Garbage is skipped.
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_sep = |b: u8| b == b',' || b.is_ascii_whitespace();
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    while i < s.len() {
        while i < s.len() && is_sep(s[i]) {
            i += 1;
        }
        let start = i;
        while i < s.len() && !is_sep(s[i]) && s[i] != b'=' {
            i += 1;
        }
        if start == i {
            // A stray '=' (e.g. token68 padding): skip it.
            i += 1;
            continue;
        }
        let token = header[start..i].to_ascii_lowercase();
        let mut j = i;
        skip_ws(&mut j);
        if j < s.len() && s[j] == b'=' {
            i = j + 1;
            skip_ws(&mut i);
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = String::new();
                let mut chars = header[i..].char_indices();
                let mut end = header.len() - i;
                while let Some((k, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                v.push(n);
                            }
                        }
                        '"' => {
                            end = k + 1;
                            break;
                        }
                        c => v.push(c),
                    }
                }
                i += end;
                v
            } else {
                let vs = i;
                while i < s.len() && !is_sep(s[i]) {
                    i += 1;
                }
                header[vs..i].to_string()
            };
            if let Some(c) = out.last_mut() {
                c.params.push((token, value));
            }
        } else {
            out.push(Challenge {
                scheme: token,
                params: Vec::new(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers spawn these on multi-threaded runtimes: they must stay `Send`.
    #[allow(dead_code)]
    fn futures_are_send(c: &RegistryClient, s: &Store, r: &ImageRef, i: &Image, p: &dyn Progress) {
        fn send<T: Send>(_: T) {}
        send(c.pull(s, r, p));
        send(c.push(s, i, r, p));
        send(c.check_login(
            "x",
            &Credentials {
                username: String::new(),
                password: String::new(),
            },
        ));
    }

    #[test]
    fn parses_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/busybox:pull"));

        // Quoted commas, escapes, odd spacing, two challenges, unquoted values.
        let c = parse_challenges(
            r#"Basic realm="a, \"b\"" , BEARER  realm = "https://x/t?a=1,2", service=svc,scope="repository:x:pull,push""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"a, "b""#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://x/t?a=1,2"));
        assert_eq!(c[1].param("service"), Some("svc"));
        assert_eq!(c[1].param("scope"), Some("repository:x:pull,push"));

        assert_eq!(parse_challenges("Basic")[0].params, vec![]);
        assert!(parse_challenges("").is_empty());
        // Unterminated quotes and token68 must not panic.
        let c = parse_challenges(r#"Bearer realm="unterminated"#);
        assert_eq!(c[0].param("realm"), Some("unterminated"));
        let c = parse_challenges("Negotiate abc==, Basic realm=r");
        assert_eq!(c.last().and_then(|c| c.param("realm")), Some("r"));
        parse_challenges("=,=\"\\");
    }

    #[test]
    fn chooses_scheme_like_docker() {
        let none: Vec<String> = vec![];
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(plain_http(host, &none), "{host}");
        }
        for host in [
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "registry:5000",
        ] {
            assert!(!plain_http(host, &none), "{host}");
        }
        let insecure = vec!["registry:5000".to_string(), "http://lab.local".to_string()];
        assert!(plain_http("registry:5000", &insecure));
        assert!(!plain_http("registry:5001", &insecure));
        assert!(plain_http("lab.local:8443", &insecure));
        assert_eq!(
            base_url("127.0.0.1:5000", &none).unwrap().as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            base_url("[::1]:5000", &none).unwrap().as_str(),
            "http://[::1]:5000/"
        );
        assert_eq!(
            base_url("registry-1.docker.io", &none).unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
        assert!(base_url("evil.com/path", &none).is_none());
        assert!(base_url("user@evil.com", &none).is_none());
    }

    #[test]
    fn names_registries() {
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host("localhost:5000"), "localhost:5000");
        assert_eq!(registry_host("http://Lab.local:5000/v2/"), "lab.local:5000");
    }

    #[test]
    fn extracts_registry_messages() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest\nunknown","detail":{}}]}"#;
        assert_eq!(registry_message(body).as_deref(), Some("manifest unknown"));
        assert_eq!(
            registry_message(br#"{"errors":[{"code":"DENIED"}]}"#).as_deref(),
            Some("DENIED")
        );
        assert_eq!(registry_message(b"<html>"), None);
    }

    #[test]
    fn sniffs_manifest_types() {
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(MEDIA_OCI_INDEX)
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"config":{}}"#).as_deref(),
            Some(MEDIA_OCI_MANIFEST)
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":1,"fsLayers":[]}"#),
            None
        );
    }
}
