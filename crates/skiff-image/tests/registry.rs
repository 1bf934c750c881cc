//! The registry client against a real registry (Debian's `docker-registry`,
//! i.e. distribution v2), plain and with htpasswd auth, and against tiny
//! in-test HTTP servers for what that registry cannot be made to do: issue
//! Bearer tokens, redirect blobs elsewhere, serve corrupt content.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use skiff_core::{Digest, ImageRef};
use skiff_image::auth::{CredentialStore, Credentials};
use skiff_image::progress::{NoProgress, Progress};
use skiff_image::registry::{RegistryClient, RegistryError, RegistryOptions};
use skiff_image::store::{Image, Store};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

// ---------------------------------------------------------------- fixtures

/// A `docker-registry` process on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing; the registry tests need it: install it: apt-get install docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut auth = String::new();
        if let Some((user, pass)) = htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap_or_else(|e| {
                    panic!("htpasswd: {e}; install it: apt-get install apache2-utils")
                });
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                file.display()
            );
        }
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_BIN}: {e}"));
        let mut reg = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reg.answers() {
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!("docker-registry exited ({status}): {}", reg.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer: {}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `GET /v2/` answers 200 or 401: the API is up.
    fn answers(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut head = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut head).is_ok()
            && (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 401"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn reference(&self, rest: &str) -> ImageRef {
        ImageRef::parse(&format!("{}/{rest}", self.host())).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

/// A client for linux/`arch`, with credentials for `registry` if given.
fn make_client(
    arch: &str,
    creds: Option<(&str, &str, &str)>,
) -> (tempfile::TempDir, RegistryClient) {
    let dir = tempfile::tempdir().unwrap();
    let credentials = CredentialStore::new(dir.path().join("auth.json"), None);
    if let Some((registry, username, password)) = creds {
        credentials
            .save(
                registry,
                &Credentials {
                    username: username.into(),
                    password: password.into(),
                },
            )
            .unwrap();
    }
    let client = RegistryClient::new(RegistryOptions {
        insecure: Vec::new(),
        credentials,
        platform: ("linux".into(), arch.into()),
    })
    .unwrap();
    (dir, client)
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A two-layer image (one gzip, one zstd layer) built in `store` and tagged `name`.
fn make_image(store: &Store, name: &ImageRef, arch: &str) -> Image {
    let hello = format!("hello from {arch}\n");
    let t1 = tar_of(&[("hello.txt", hello.as_bytes())]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t1).unwrap();
    let gz = gz.finish().unwrap();
    let t2 = tar_of(&[("etc/zstd.txt", b"a zstd layer\n")]);
    let zs = zstd::encode_all(&t2[..], 3).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [Digest::of(&t1), Digest::of(&t2)] },
    }))
    .unwrap();
    let desc = |media: &str, bytes: &[u8]| serde_json::json!({ "mediaType": media, "digest": Digest::of(bytes), "size": bytes.len() });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [
            desc("application/vnd.oci.image.layer.v1.tar+gzip", &gz),
            desc("application/vnd.oci.image.layer.v1.tar+zstd", &zs),
        ],
    }))
    .unwrap();
    for blob in [&gz, &zs, &config] {
        store.write_blob(blob).unwrap();
    }
    let digest = store.write_blob(&manifest).unwrap();
    store.add_image(name, &digest).unwrap()
}

/// Records how each transfer ended and how many bytes moved.
#[derive(Default)]
struct Recorder {
    ends: Mutex<Vec<String>>,
    bytes: AtomicUsize,
}

impl Progress for Recorder {
    fn begin(&self, _id: &str, _label: &str, _total: Option<u64>) {}
    fn advance(&self, _id: &str, bytes: u64) {
        self.bytes.fetch_add(bytes as usize, Ordering::Relaxed);
    }
    fn end(&self, _id: &str, outcome: &str) {
        self.ends.lock().unwrap().push(outcome.to_string());
    }
}

impl Recorder {
    fn outcomes(&self) -> Vec<String> {
        let mut v = self.ends.lock().unwrap().clone();
        v.sort();
        v
    }
}

fn blob_sizes(img: &Image) -> u64 {
    img.manifest.config().size() + img.manifest.layers().iter().map(|l| l.size()).sum::<u64>()
}

fn assert_same_image(a: &Image, b: &Image) {
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(a.id, b.id);
    let layers = |i: &Image| {
        i.layers
            .iter()
            .map(|l| (l.digest.clone(), l.diff_id.clone(), l.size))
            .collect::<Vec<_>>()
    };
    assert_eq!(layers(a), layers(b));
}

// ------------------------------------------------------- a real registry

#[tokio::test]
async fn push_to_a_real_registry_then_pull_into_a_fresh_store() {
    let reg = Registry::start(None);
    let name = reg.reference("test/app:v1");
    let (_a_dir, a) = new_store();
    let img = make_image(&a, &name, "amd64");
    let (_c, client) = make_client("amd64", None);

    let rec = Recorder::default();
    let pushed = client.push(&a, &img, &name, &rec).await.unwrap();
    assert_eq!(pushed, img.manifest_digest);
    assert_eq!(rec.outcomes(), ["done", "done", "done"]);
    assert_eq!(rec.bytes.load(Ordering::Relaxed) as u64, blob_sizes(&img));
    // A second push finds every blob already there.
    let rec = Recorder::default();
    client.push(&a, &img, &name, &rec).await.unwrap();
    assert_eq!(rec.outcomes(), ["exists", "exists", "exists"]);

    let (_b_dir, b) = new_store();
    let rec = Recorder::default();
    let pulled = client.pull(&b, &name, &rec).await.unwrap();
    assert_same_image(&img, &pulled);
    assert_eq!(rec.outcomes(), ["done", "done", "done"]);
    assert_eq!(rec.bytes.load(Ordering::Relaxed) as u64, blob_sizes(&img));
    for l in &img.layers {
        assert_eq!(
            b.read_blob(&l.digest).unwrap(),
            a.read_blob(&l.digest).unwrap()
        );
    }
    assert_eq!(
        b.resolve(&name).unwrap().manifest_digest,
        img.manifest_digest
    );
    // Pulling again fetches nothing.
    let rec = Recorder::default();
    client.pull(&b, &name, &rec).await.unwrap();
    assert_eq!(rec.outcomes(), ["exists", "exists", "exists"]);

    // By digest, into yet another store.
    let by_digest = reg.reference(&format!("test/app@{}", img.manifest_digest));
    let (_c_dir, c) = new_store();
    let pulled = client.pull(&c, &by_digest, &NoProgress).await.unwrap();
    assert_same_image(&img, &pulled);
}

#[tokio::test]
async fn unknown_images_and_dead_registries_are_named() {
    let reg = Registry::start(None);
    let (_c, client) = make_client("amd64", None);
    let (_d, store) = new_store();

    let missing = reg.reference("test/nothing:v9");
    let err = client
        .pull(&store, &missing, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not found") && msg.contains(&missing.to_string()),
        "{msg}"
    );

    let port = free_port(); // nothing listens there
    let dead = ImageRef::parse(&format!("127.0.0.1:{port}/test/app:v1")).unwrap();
    let err = client.pull(&store, &dead, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("connection refused"),
        "{msg}"
    );
}

#[tokio::test]
async fn htpasswd_registry_wants_the_right_credentials() {
    let reg = Registry::start(Some(("user", "pass")));
    let host = reg.host();
    let name = reg.reference("private/app:v1");
    let (_a_dir, a) = new_store();
    let img = make_image(&a, &name, "amd64");

    let (_c1, anonymous) = make_client("amd64", None);
    let err = anonymous
        .push(&a, &img, &name, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!("skiff login {host}")),
        "{err}"
    );

    let (_c2, good) = make_client("amd64", Some((&host, "user", "pass")));
    good.push(&a, &img, &name, &NoProgress).await.unwrap();
    let (_b_dir, b) = new_store();
    assert_same_image(&img, &good.pull(&b, &name, &NoProgress).await.unwrap());

    let err = anonymous.pull(&b, &name, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!("skiff login {host}")),
        "{err}"
    );

    let (_c3, bad) = make_client("amd64", Some((&host, "user", "wrong")));
    let err = bad.pull(&b, &name, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("refused"), "{err}");

    let creds = |p: &str| Credentials {
        username: "user".into(),
        password: p.into(),
    };
    anonymous.check_login(&host, &creds("pass")).await.unwrap();
    let err = anonymous
        .check_login(&host, &creds("nope"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn an_index_resolves_to_the_configured_platform() {
    let reg = Registry::start(None);
    let (_a_dir, a) = new_store();
    let amd = make_image(&a, &reg.reference("test/multi:amd64"), "amd64");
    let arm = make_image(&a, &reg.reference("test/multi:arm64"), "arm64");
    let (_c, amd_client) = make_client("amd64", None);
    for (img, tag) in [(&amd, "amd64"), (&arm, "arm64")] {
        let r = reg.reference(&format!("test/multi:{tag}"));
        amd_client.push(&a, img, &r, &NoProgress).await.unwrap();
    }
    let entry = |img: &Image, platform: serde_json::Value| {
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": img.manifest_digest,
            "size": a.read_blob(&img.manifest_digest).unwrap().len(),
            "platform": platform,
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            entry(&arm, serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
            entry(&amd, serde_json::json!({"os": "linux", "architecture": "amd64"})),
            // What buildx adds for attestations: never a candidate.
            entry(&amd, serde_json::json!({"os": "unknown", "architecture": "unknown"})),
        ],
    }))
    .unwrap();
    let resp = reqwest::Client::new()
        .put(format!(
            "http://{}/v2/test/multi/manifests/latest",
            reg.host()
        ))
        .header("Content-Type", OCI_INDEX)
        .body(index)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);

    let multi = reg.reference("test/multi:latest");
    let (_b_dir, b) = new_store();
    let pulled = amd_client.pull(&b, &multi, &NoProgress).await.unwrap();
    assert_same_image(&amd, &pulled);
    assert_eq!(pulled.config.architecture().to_string(), "amd64");

    let (_c2, arm_client) = make_client("arm64", None);
    let (_d_dir, d) = new_store();
    assert_same_image(
        &arm,
        &arm_client.pull(&d, &multi, &NoProgress).await.unwrap(),
    );

    let (_c3, s390x) = make_client("s390x", None);
    let err = s390x.pull(&d, &multi, &NoProgress).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::NoMatchingPlatform { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("linux/amd64") && !msg.contains("unknown"),
        "{msg}"
    );
}

// ------------------------------------------------ a hand-written registry

enum Route {
    Content(&'static str, Vec<u8>),
    Redirect(String),
}

/// What the fake registry serves and how it guards it.
#[derive(Default)]
struct FakeConfig {
    routes: HashMap<String, Route>,
    /// Serve only with `Authorization: Bearer TOKEN`, issued by `/token`
    /// to requests with this Basic `user:pass` (or to anyone if `None`).
    bearer: Option<(String, Option<String>)>,
}

/// A request's path and Authorization header.
type Seen = (String, Option<String>);

struct Fake {
    port: u16,
    token_requests: Arc<AtomicUsize>,
    /// The Authorization header of every request (`None` if absent), by path.
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn reference(&self, rest: &str) -> ImageRef {
        ImageRef::parse(&format!("127.0.0.1:{}/{rest}", self.port)).unwrap()
    }
}

/// A minimal HTTP/1.1 server: one request per connection, GET and HEAD.
async fn start_fake(cfg: FakeConfig) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = Fake {
        port,
        token_requests: Arc::default(),
        seen: Arc::default(),
    };
    let (cfg, tokens, seen) = (
        Arc::new(cfg),
        fake.token_requests.clone(),
        fake.seen.clone(),
    );
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (cfg, tokens, seen) = (cfg.clone(), tokens.clone(), seen.clone());
            tokio::spawn(async move {
                let _ = serve_one(sock, port, &cfg, &tokens, &seen).await;
            });
        }
    });
    fake
}

async fn serve_one(
    mut sock: tokio::net::TcpStream,
    port: u16,
    cfg: &FakeConfig,
    tokens: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await?;
        if n == 0 || buf.len() > 65536 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or("").split(' ');
    let method = request.next().unwrap_or("").to_string();
    let target = request.next().unwrap_or("").to_string();
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    seen.lock().unwrap().push((path.to_string(), auth.clone()));

    let json = "application/json";
    let (status, ctype, body, extra): (&str, &str, Vec<u8>, String) = match &cfg.bearer {
        Some((token, basic)) if path == "/token" => {
            tokens.fetch_add(1, Ordering::Relaxed);
            let q = parse_query(query);
            assert_eq!(
                q.get("service").map(String::as_str),
                Some("fake registry, v2")
            );
            if basic.is_some() && auth.as_ref() != basic.as_ref() {
                let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
                ("401 Unauthorized", json, body.to_vec(), String::new())
            } else {
                let body = serde_json::json!({"access_token": token, "expires_in": 300});
                ("200 OK", json, body.to_string().into_bytes(), String::new())
            }
        }
        Some((token, _)) if auth.as_deref() != Some(&format!("Bearer {token}")) => {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",\
                 service=\"fake registry, v2\",scope=\"repository:test/app:pull\"\r\n"
            );
            ("401 Unauthorized", json, b"{}".to_vec(), challenge)
        }
        _ => match cfg.routes.get(path) {
            Some(Route::Content(ctype, bytes)) => ("200 OK", *ctype, bytes.clone(), String::new()),
            Some(Route::Redirect(to)) => (
                "307 Temporary Redirect",
                json,
                Vec::new(),
                format!("Location: {to}\r\n"),
            ),
            None => {
                let body =
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                ("404 Not Found", json, body.to_vec(), String::new())
            }
        },
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(&body);
    }
    sock.write_all(&out).await?;
    sock.shutdown().await
}

fn parse_query(q: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Routes serving `img` (built in `store`) as `test/app:v1`.
fn routes_for(store: &Store, img: &Image) -> HashMap<String, Route> {
    let mut routes = HashMap::new();
    routes.insert(
        "/v2/test/app/manifests/v1".to_string(),
        Route::Content(OCI_MANIFEST, store.read_blob(&img.manifest_digest).unwrap()),
    );
    let config = Digest::parse(img.manifest.config().digest().as_ref()).unwrap();
    for d in std::iter::once(config).chain(img.layers.iter().map(|l| l.digest.clone())) {
        routes.insert(
            format!("/v2/test/app/blobs/{d}"),
            Route::Content("application/octet-stream", store.read_blob(&d).unwrap()),
        );
    }
    routes
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_and_not_leaked_on_redirects() {
    let (_s_dir, s) = new_store();
    let name = ImageRef::parse("127.0.0.1:1/test/app:v1").unwrap();
    let img = make_image(&s, &name, "amd64");

    // The last layer lives on "storage" (another port): the registry
    // redirects there, and the token must not follow.
    let storage_layer = img.layers[1].digest.clone();
    let mut storage_routes = HashMap::new();
    storage_routes.insert(
        format!("/storage/{storage_layer}"),
        Route::Content(
            "application/octet-stream",
            s.read_blob(&storage_layer).unwrap(),
        ),
    );
    let storage = start_fake(FakeConfig {
        routes: storage_routes,
        bearer: None,
    })
    .await;

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pass")
    );
    let mut routes = routes_for(&s, &img);
    routes.insert(
        format!("/v2/test/app/blobs/{storage_layer}"),
        Route::Redirect(format!(
            "http://localhost:{}/storage/{storage_layer}",
            storage.port
        )),
    );
    routes.insert(
        "/v2/".into(),
        Route::Content("application/json", b"{}".to_vec()),
    );
    let fake = start_fake(FakeConfig {
        routes,
        bearer: Some(("T0KEN".into(), Some(basic))),
    })
    .await;
    let host = format!("127.0.0.1:{}", fake.port);
    let r = fake.reference("test/app:v1");

    let (_c, client) = make_client("amd64", Some((&host, "user", "pass")));
    let (_b_dir, b) = new_store();
    let pulled = client.pull(&b, &r, &NoProgress).await.unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    // One token for the manifest and all three blobs.
    assert_eq!(fake.token_requests.load(Ordering::Relaxed), 1);
    let storage_seen = storage.seen.lock().unwrap().clone();
    assert_eq!(storage_seen.len(), 1);
    assert_eq!(
        storage_seen[0].1, None,
        "Authorization leaked to another host"
    );

    // `skiff login` goes through the same challenge, without a scope.
    let creds = |p: &str| Credentials {
        username: "user".into(),
        password: p.into(),
    };
    client.check_login(&host, &creds("pass")).await.unwrap();
    let err = client.check_login(&host, &creds("bad")).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("refused"), "{err}");

    // Without credentials, the token server says no.
    let (_c2, anonymous) = make_client("amd64", None);
    let (_e_dir, e) = new_store();
    let err = anonymous.pull(&e, &r, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!("skiff login {host}")),
        "{err}"
    );
}

#[tokio::test]
async fn corrupt_content_is_refused_and_nothing_is_tagged() {
    let (_s_dir, s) = new_store();
    let img = make_image(
        &s,
        &ImageRef::parse("127.0.0.1:1/test/app:v1").unwrap(),
        "amd64",
    );
    let bad_layer = img.layers[0].digest.clone();
    let mut routes = routes_for(&s, &img);
    // Same length, different bytes: only the digest can tell.
    let mut tampered = s.read_blob(&bad_layer).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    routes.insert(
        format!("/v2/test/app/blobs/{bad_layer}"),
        Route::Content("application/octet-stream", tampered),
    );
    // A manifest served under a digest it does not have.
    let wrong = Digest::of(b"something else");
    routes.insert(
        format!("/v2/test/app/manifests/{wrong}"),
        Route::Content(OCI_MANIFEST, s.read_blob(&img.manifest_digest).unwrap()),
    );
    let fake = start_fake(FakeConfig {
        routes,
        bearer: None,
    })
    .await;
    let (_c, client) = make_client("amd64", None);
    let (_b_dir, b) = new_store();

    let r = fake.reference("test/app:v1");
    let err = client.pull(&b, &r, &NoProgress).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&bad_layer.to_string()), "{err}");
    assert!(b.resolve(&r).is_err(), "a failed pull must not tag");
    assert!(
        !b.has_blob(&bad_layer),
        "corrupt content must not be stored"
    );

    let pinned = fake.reference(&format!("test/app@{wrong}"));
    let err = client.pull(&b, &pinned, &NoProgress).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(b.resolve(&pinned).is_err());
}
