//! Image references, normalised the way Docker does it:
//! `busybox` → `docker.io/library/busybox:latest`,
//! `localhost:5000/app@sha256:…` keeps its registry and digest.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry Docker assumes when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag Docker assumes when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io`, `localhost:5000`, `ghcr.io`.
    pub registry: String,
    /// `library/busybox`, `team/app`.
    pub repository: String,
    /// Set unless the reference is by digest only.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("invalid image reference {0:?}: it is empty")]
    Empty(String),
    #[error("invalid image reference {input:?}: {why}")]
    Invalid { input: String, why: &'static str },
    #[error("invalid image reference {input:?}: {source}")]
    Digest {
        input: String,
        source: crate::digest::DigestError,
    },
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<Self, RefError> {
        let bad = |why| RefError::Invalid {
            input: input.to_string(),
            why,
        };
        if input.is_empty() {
            return Err(RefError::Empty(input.to_string()));
        }
        if input.len() > 4096 {
            return Err(bad("longer than 4096 characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|source| RefError::Digest {
                    input: input.to_string(),
                    source,
                })?),
            ),
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/'
        // (a ':' before it belongs to a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(bad(
                    "a tag is 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                ));
            }
        }
        // The first component is a registry if it looks like a host:
        // it has a '.' or a ':' or is exactly "localhost".
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_registry(&registry) {
            return Err(bad(
                "the registry must be a host name with an optional port",
            ));
        }
        if !valid_repository(&repository) {
            return Err(bad(
                "repository components are lowercase [a-z0-9] separated by '.', '_', '__' or '-', joined by '/'",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `repository` as Docker shows it: `busybox` rather than `library/busybox`
    /// on Docker Hub, `localhost:5000/app` elsewhere.
    pub fn short_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// The same reference with the digest dropped (what a tag points at).
    pub fn without_digest(&self) -> ImageRef {
        ImageRef {
            digest: None,
            tag: Some(self.tag.clone().unwrap_or_else(|| DEFAULT_TAG.into())),
            ..self.clone()
        }
    }

    /// The registry host to talk to: Docker Hub's API lives elsewhere.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// What to put in the `/v2/<name>/manifests/<reference>` URL.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = RefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return false;
        }
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

fn valid_repository(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'.'
                        || b == b'_'
                        || b == b'-'
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(norm("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(norm("localhost/app:v1"), "localhost/app:v1");
        assert_eq!(norm("ghcr.io/a/b/c:x"), "ghcr.io/a/b/c:x");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&format!("127.0.0.1:5000/app@{d}")),
            format!("127.0.0.1:5000/app@{d}")
        );
        assert_eq!(
            norm(&format!("app:v2@{d}")),
            format!("docker.io/library/app:v2@{d}")
        );
    }

    #[test]
    fn short_names() {
        assert_eq!(ImageRef::parse("busybox").unwrap().short_name(), "busybox");
        assert_eq!(
            ImageRef::parse("localhost:5000/x").unwrap().short_name(),
            "localhost:5000/x"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "app:",
            "app:-x",
            "app@sha256:zz",
            "app@md5:abc",
            "host:99999/app",
            "-app",
            "a/b/",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
