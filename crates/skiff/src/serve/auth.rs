//! The bearer token of the TCP control listener (`skiff serve --control`).
//! The unix socket needs none: it is root's alone (0600).
//!
//! The token is `SKIFF_TOKEN` if set, else `$SKIFF_ROOT/control.token`,
//! made on first need (32 random bytes, hex) and kept across restarts so
//! clients keep working.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use hyper::{Request, Response, StatusCode};

use super::{json_error, Body};

/// Shorter tokens are guessable.
const MIN_LEN: usize = 16;

pub fn token_path(root: &Path) -> PathBuf {
    root.join("control.token")
}

/// The token and, for the startup line, where it came from.
pub fn load(root: &Path) -> Result<(String, String)> {
    let env = match std::env::var("SKIFF_TOKEN") {
        Ok(t) => Some(t),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => bail!("SKIFF_TOKEN is not valid UTF-8"),
    };
    load_from(root, env)
}

fn load_from(root: &Path, env: Option<String>) -> Result<(String, String)> {
    if let Some(t) = env {
        usable(&t).context("SKIFF_TOKEN")?;
        return Ok((t, "from SKIFF_TOKEN".to_string()));
    }
    let path = token_path(root);
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let t = t.trim().to_string();
            usable(&t)
                .with_context(|| format!("{}: remove it to have a new one made", path.display()))?;
            return Ok((t, format!("in {}", path.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Temp file + rename: a crash never leaves a half-written token that
    // the next start would take as the real one.
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut tmp = tempfile::Builder::new()
            .prefix(".control.token.")
            .tempfile_in(root)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tmp.write_all(format!("{token}\n").as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    Ok((token, format!("in {}", path.display())))
}

/// Long enough, and sendable as is in a header.
fn usable(token: &str) -> Result<()> {
    if token.len() < MIN_LEN {
        bail!("the control token must be at least {MIN_LEN} characters");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the control token must be printable ASCII without spaces");
    }
    Ok(())
}

/// The 401 to answer unless the request bears `Authorization: Bearer
/// <token>`. Called before the request is routed, so a refused one reads
/// no body and changes nothing.
pub fn refused<B>(req: &Request<B>, token: &str) -> Option<Response<Body>> {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let why = match given {
        None => "missing bearer token: send Authorization: Bearer <token>",
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => return None,
        Some(_) => "wrong bearer token",
    };
    let mut r = json_error(StatusCode::UNAUTHORIZED, why);
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    Some(r)
}

/// Equal, in time that does not depend on where they differ (the length
/// may show; it is not the secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_equality() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!constant_time_eq(b"x123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn token_file_made_private_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (t1, from) = load_from(dir.path(), None).unwrap();
        assert_eq!(t1.len(), 64);
        assert!(t1.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = token_path(dir.path());
        assert!(from.contains(path.to_str().unwrap()), "{from}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (t2, _) = load_from(dir.path(), None).unwrap();
        assert_eq!(t1, t2, "the second load reuses the file");
        // Only the token file: no temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        std::fs::write(&path, "short\n").unwrap();
        let e = format!("{:#}", load_from(dir.path(), None).unwrap_err());
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn token_from_env() {
        let dir = tempfile::tempdir().unwrap();
        let (t, from) = load_from(dir.path(), Some("a-long-enough-token".into())).unwrap();
        assert_eq!(t, "a-long-enough-token");
        assert_eq!(from, "from SKIFF_TOKEN");
        assert!(
            !token_path(dir.path()).exists(),
            "no file when the env says"
        );
        let e = format!(
            "{:#}",
            load_from(dir.path(), Some("short".into())).unwrap_err()
        );
        assert!(
            e.contains("SKIFF_TOKEN") && e.contains("at least 16"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load_from(dir.path(), Some("has a space inside it".into())).unwrap_err()
        );
        assert!(e.contains("without spaces"), "{e}");
    }

    #[test]
    fn bearer_check() {
        let token = "0123456789abcdef0123";
        let req = |auth: Option<&str>| {
            let mut b = Request::builder().uri("/v1/services");
            if let Some(a) = auth {
                b = b.header(hyper::header::AUTHORIZATION, a);
            }
            b.body(()).unwrap()
        };
        assert!(refused(&req(Some(&format!("Bearer {token}"))), token).is_none());
        assert!(refused(&req(Some(&format!("bearer {token}"))), token).is_none());
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer wrong-token-but-long"),
            Some("Basic MDEyMzQ1Njc4OWFiY2RlZjAxMjM="),
            Some(token),
        ] {
            let r = refused(&req(bad), token).expect("refused");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
            assert_eq!(r.headers()[hyper::header::WWW_AUTHENTICATE], "Bearer");
        }
    }
}
