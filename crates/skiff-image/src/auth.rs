//! Registry credentials, kept in Docker's `config.json` format
//! (`{"auths": {"HOST": {"auth": base64("user:pass")}}}`) so that files can
//! move between Skiff and Docker.
//!
//! Skiff writes only its own file (`$SKIFF_ROOT/auth.json`) and reads
//! Docker's (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`) as a
//! fallback, so an existing `docker login` just works. Docker's credential
//! helpers (`credsStore`, `credHelpers`) are ignored: running arbitrary
//! `docker-credential-*` programs is out of scope, and `identitytoken`
//! entries (OAuth refresh tokens) are skipped for the same reason.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{Map, Value};

/// The key Docker files Docker Hub credentials under.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    // Passwords end up in logs through `{:?}` far too easily.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read credentials file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("credentials file {} is malformed: {why}", path.display())]
    Malformed { path: PathBuf, why: String },
    #[error("cannot write credentials file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Where credentials are looked up and saved.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    /// Skiff's own file, the only one ever written.
    path: PathBuf,
    /// Docker's file, read when Skiff's has no entry.
    fallback: Option<PathBuf>,
}

impl CredentialStore {
    pub fn new(path: impl Into<PathBuf>, fallback: Option<PathBuf>) -> Self {
        CredentialStore {
            path: path.into(),
            fallback,
        }
    }

    /// `ROOT/auth.json`, falling back to Docker's config file.
    pub fn for_root(root: &Path) -> Self {
        Self::new(root.join("auth.json"), Self::docker_config_path())
    }

    /// Docker's client config file: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`.
    pub fn docker_config_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
        Some(PathBuf::from(home).join(".docker").join("config.json"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Credentials for `registry` (`docker.io`, `localhost:5000`): Skiff's
    /// file first, then Docker's. A missing file is no error; an unreadable
    /// or malformed one is, since silently pulling anonymously would only
    /// surface later as a confusing "unauthorized".
    pub fn load(&self, registry: &str) -> Result<Option<Credentials>, AuthError> {
        let want = normalise_key(registry);
        for path in std::iter::once(&self.path).chain(self.fallback.as_ref()) {
            let Some(auths) = read_auths(path)? else {
                continue;
            };
            for (key, entry) in &auths {
                if normalise_key(key) == want {
                    if let Some(c) = decode_entry(path, key, entry)? {
                        return Ok(Some(c));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Records credentials for `registry` in Skiff's file (mode 0600,
    /// replaced atomically so a crash never leaves half a file).
    pub fn save(&self, registry: &str, creds: &Credentials) -> Result<(), AuthError> {
        let mut doc = read_doc(&self.path)?.unwrap_or_default();
        let want = normalise_key(registry);
        let auths = auths_mut(&self.path, &mut doc)?;
        // Drop aliases (`docker.io` vs Docker's URL key) so no stale entry shadows this one.
        auths.retain(|k, _| normalise_key(k) != want);
        let key = if want == "docker.io" {
            DOCKER_HUB_KEY.to_string()
        } else {
            want
        };
        let token = BASE64.encode(format!("{}:{}", creds.username, creds.password));
        auths.insert(key, serde_json::json!({ "auth": token }));
        write_atomic(&self.path, &doc)
    }

    /// Forgets `registry` in Skiff's file (Docker's is never written).
    /// Returns whether there was anything to forget.
    pub fn remove(&self, registry: &str) -> Result<bool, AuthError> {
        let Some(mut doc) = read_doc(&self.path)? else {
            return Ok(false);
        };
        let want = normalise_key(registry);
        let auths = auths_mut(&self.path, &mut doc)?;
        let before = auths.len();
        auths.retain(|k, _| normalise_key(k) != want);
        if auths.len() == before {
            return Ok(false);
        }
        write_atomic(&self.path, &doc)?;
        Ok(true)
    }
}

/// Reduces the spellings Docker uses for a registry key to a host:
/// `https://index.docker.io/v1/` → `docker.io`, `http://h:5000/v2/` → `h:5000`.
fn normalise_key(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

fn read_doc(path: &Path) -> Result<Option<Map<String, Value>>, AuthError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if text.trim().is_empty() {
        return Ok(Some(Map::new()));
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(malformed(path, "the top level is not a JSON object")),
        Err(e) => Err(malformed(path, &e.to_string())),
    }
}

fn read_auths(path: &Path) -> Result<Option<Map<String, Value>>, AuthError> {
    let Some(mut doc) = read_doc(path)? else {
        return Ok(None);
    };
    match doc.remove("auths") {
        None | Some(Value::Null) => Ok(Some(Map::new())),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(malformed(path, "\"auths\" is not an object")),
    }
}

fn auths_mut<'a>(
    path: &Path,
    doc: &'a mut Map<String, Value>,
) -> Result<&'a mut Map<String, Value>, AuthError> {
    let auths = doc
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if auths.is_null() {
        *auths = Value::Object(Map::new());
    }
    auths
        .as_object_mut()
        .ok_or_else(|| malformed(path, "\"auths\" is not an object"))
}

/// One `auths` entry: `auth` (base64 `user:pass`) or, as older Docker
/// versions wrote, separate `username`/`password`. Entries with neither
/// (e.g. only an `identitytoken`, or empty because a credential helper
/// holds the secret) yield `None`.
fn decode_entry(path: &Path, key: &str, entry: &Value) -> Result<Option<Credentials>, AuthError> {
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(auth) = field("auth") {
        let bytes = BASE64
            .decode(auth.trim())
            .map_err(|e| malformed(path, &format!("auths.{key:?}.auth is not base64: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| malformed(path, &format!("auths.{key:?}.auth is not UTF-8")))?;
        let (user, pass) = text.split_once(':').ok_or_else(|| {
            malformed(
                path,
                &format!("auths.{key:?}.auth is not of the form user:password"),
            )
        })?;
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        }));
    }
    Ok(match (field("username"), field("password")) {
        (Some(u), Some(p)) => Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }),
        _ => None,
    })
}

fn malformed(path: &Path, why: &str) -> AuthError {
    AuthError::Malformed {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Writes `doc` to a 0600 temporary file beside `path`, syncs it and renames
/// it over `path`: readers see the old file or the new one, never a mix, and
/// the secret is never readable by others, not even briefly.
fn write_atomic(path: &Path, doc: &Map<String, Value>) -> Result<(), AuthError> {
    let err = |source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("auth.json");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(doc).map_err(|e| err(io::Error::other(e)))?;
    bytes.push(b'\n');
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path().join("auth.json"), None);
        assert_eq!(store.load("localhost:5000").unwrap(), None);
        store
            .save("localhost:5000", &creds("u", "p:with:colons"))
            .unwrap();
        store.save("docker.io", &creds("hub", "secret")).unwrap();
        assert_eq!(
            store.load("localhost:5000").unwrap(),
            Some(creds("u", "p:with:colons"))
        );
        assert_eq!(
            store.load("docker.io").unwrap(),
            Some(creds("hub", "secret"))
        );
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Docker Hub is filed under Docker's own key, so `docker` can read the file too.
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.contains(DOCKER_HUB_KEY), "{text}");
        assert!(store.remove("localhost:5000").unwrap());
        assert!(!store.remove("localhost:5000").unwrap());
        assert_eq!(store.load("localhost:5000").unwrap(), None);
        assert!(!dir.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")));
    }

    #[test]
    fn falls_back_to_docker_config_and_knows_hub_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        let hub = BASE64.encode("dockeruser:dockerpass");
        fs::write(
            &docker,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{hub}"}},
                   "ghcr.io": {{}}, "quay.io": {{"username": "q", "password": "w"}}}},
                   "credsStore": "desktop"}}"#
            ),
        )
        .unwrap();
        let store = CredentialStore::new(dir.path().join("auth.json"), Some(docker));
        assert_eq!(
            store.load("docker.io").unwrap(),
            Some(creds("dockeruser", "dockerpass"))
        );
        // An entry whose secret lives in a helper is treated as absent.
        assert_eq!(store.load("ghcr.io").unwrap(), None);
        assert_eq!(store.load("quay.io").unwrap(), Some(creds("q", "w")));
        // Skiff's own file wins.
        store.save("docker.io", &creds("mine", "x")).unwrap();
        assert_eq!(store.load("docker.io").unwrap(), Some(creds("mine", "x")));
    }

    #[test]
    fn malformed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let store = CredentialStore::new(&path, None);
        for bad in [
            "{not json",
            "[]",
            r#"{"auths": 3}"#,
            r#"{"auths": {"h": {"auth": "!!!"}}}"#,
        ] {
            fs::write(&path, bad).unwrap();
            let e = store.load("h").unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
    }

    #[test]
    fn keys_normalise() {
        assert_eq!(normalise_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalise_key("docker.io"), "docker.io");
        assert_eq!(normalise_key("http://Localhost:5000/v2/"), "localhost:5000");
    }
}
