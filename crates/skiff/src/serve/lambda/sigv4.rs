//! AWS Signature Version 4, checked on the Lambda API when the daemon has
//! credentials (`skiff serve --aws-credentials FILE`): the request's
//! signature is computed again from its method, path, query, signed
//! headers and body with the secret of its access key, and compared in
//! constant time. Without credentials, signed and unsigned requests alike
//! are accepted (as a local emulator does).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use hyper::HeaderMap;
use sha2::{Digest, Sha256};

/// How far a request's `X-Amz-Date` may be from now (AWS's window).
const SKEW_SECS: i64 = 15 * 60;

/// Access key id → secret.
#[derive(Default)]
pub struct Credentials(HashMap<String, String>);

/// Key ids only: secrets never reach a log.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Why a request was refused: the AWS error type and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: &'static str,
    pub message: String,
}

fn refuse(kind: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
    }
}

impl Credentials {
    /// An AWS shared-credentials file: `[profile]` sections with
    /// `aws_access_key_id` and `aws_secret_access_key`; every profile's key
    /// is accepted.
    pub fn load(path: &Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut keys = HashMap::new();
        let (mut id, mut secret) = (None::<String>, None::<String>);
        let mut flush = |id: &mut Option<String>, secret: &mut Option<String>| {
            if let (Some(i), Some(s)) = (id.take(), secret.take()) {
                keys.insert(i, s);
            }
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                flush(&mut id, &mut secret);
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!(
                    "{}:{}: expected KEY = VALUE or [profile]",
                    path.display(),
                    n + 1
                );
            };
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                _ => {}
            }
        }
        flush(&mut id, &mut secret);
        if keys.is_empty() {
            bail!(
                "{}: no profile with aws_access_key_id and aws_secret_access_key",
                path.display()
            );
        }
        Ok(Credentials(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks one request; `now` is unix seconds.
    pub fn verify(
        &self,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), Refusal> {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                refuse(
                    "MissingAuthenticationTokenException",
                    "Missing Authentication Token: sign the request (SigV4) with the credentials Skiff was given",
                )
            })?;
        let fields = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
            refuse(
                "IncompleteSignatureException",
                "only AWS4-HMAC-SHA256 signatures are accepted",
            )
        })?;
        let mut credential = None;
        let mut signed = None;
        let mut signature = None;
        for f in fields.split(',') {
            match f.trim().split_once('=') {
                Some(("Credential", v)) => credential = Some(v),
                Some(("SignedHeaders", v)) => signed = Some(v),
                Some(("Signature", v)) => signature = Some(v),
                _ => {}
            }
        }
        let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature)
        else {
            return Err(refuse(
                "IncompleteSignatureException",
                "the Authorization header needs Credential, SignedHeaders and Signature",
            ));
        };
        // AKID/DATE/REGION/SERVICE/aws4_request
        let parts: Vec<&str> = credential.split('/').collect();
        let [key_id, date, region, service, "aws4_request"] = parts.as_slice() else {
            return Err(refuse(
                "IncompleteSignatureException",
                format!("malformed credential scope {credential:?}"),
            ));
        };
        let secret = self.0.get(*key_id).ok_or_else(|| {
            refuse(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        })?;
        let amz_date = crate::serve::header_str(headers, "x-amz-date").ok_or_else(|| {
            refuse(
                "IncompleteSignatureException",
                "the request has no X-Amz-Date",
            )
        })?;
        let when = parse_amz_date(amz_date).ok_or_else(|| {
            refuse(
                "IncompleteSignatureException",
                format!("X-Amz-Date {amz_date:?}: expected YYYYMMDDTHHMMSSZ"),
            )
        })?;
        if !amz_date.starts_with(date) || (now - when).abs() > SKEW_SECS {
            return Err(refuse(
                "InvalidSignatureException",
                "Signature expired: X-Amz-Date is more than 15 minutes from the server's time (or does not match the credential scope)",
            ));
        }
        let names: Vec<&str> = signed.split(';').collect();
        if !names.contains(&"host") {
            return Err(refuse(
                "IncompleteSignatureException",
                "the host header must be signed",
            ));
        }
        let mut canonical_headers = String::new();
        for n in &names {
            let values: Vec<String> = headers
                .get_all(*n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            canonical_headers.push_str(&format!("{n}:{}\n", values.join(",")));
        }
        let payload_hash = hex::encode(Sha256::digest(body));
        let canonical = format!(
            "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload_hash}",
            uri_encode(raw_path, false),
            canonical_query(raw_query),
        );
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = signing_key(secret, date, region, service);
        let expected = hex::encode(hmac(&key, to_sign.as_bytes()));
        if !crate::serve::auth::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            return Err(refuse(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
            ));
        }
        Ok(())
    }
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, the
/// rest `%XX` (so an already-encoded path is encoded again, as botocore
/// signs it); `/` kept in paths.
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query's pairs decoded, encoded again canonically, sorted.
fn canonical_query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&super::percent_decode(k, false), true),
                uri_encode(&super::percent_decode(v, false), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `20150830T123600Z` → unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// (year, month, day) → days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// The worked example in AWS's SigV4 documentation (IAM ListUsers).
    #[test]
    fn aws_documentation_example() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        h.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h.insert("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"));
        let creds = Credentials(HashMap::from([(
            "AKIDEXAMPLE".to_string(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
        )]));
        let now = parse_amz_date("20150830T123600Z").unwrap();
        let q = "Action=ListUsers&Version=2010-05-08";
        assert_eq!(creds.verify("GET", "/", q, &h, b"", now), Ok(()));
        // Anything changed: refused.
        let e = creds.verify("POST", "/", q, &h, b"", now).unwrap_err();
        assert_eq!(e.kind, "InvalidSignatureException");
        let e = creds
            .verify(
                "GET",
                "/",
                "Action=DeleteUsers&Version=2010-05-08",
                &h,
                b"",
                now,
            )
            .unwrap_err();
        assert_eq!(e.kind, "InvalidSignatureException");
        let e = creds
            .verify("GET", "/", q, &h, b"", now + 3600)
            .unwrap_err();
        assert!(e.message.contains("expired"), "{e:?}");
        let mut other = h.clone();
        other.insert("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=NOBODY/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00"));
        let e = creds.verify("GET", "/", q, &other, b"", now).unwrap_err();
        assert_eq!(e.kind, "UnrecognizedClientException");
        other.remove("authorization");
        let e = creds.verify("GET", "/", q, &other, b"", now).unwrap_err();
        assert_eq!(e.kind, "MissingAuthenticationTokenException");
    }

    #[test]
    fn encoding_and_dates() {
        assert_eq!(
            uri_encode("/2015-03-31/functions/f%3A1/x", false),
            "/2015-03-31/functions/f%253A1/x"
        );
        assert_eq!(
            canonical_query("b=2&a=%24LATEST&a=1"),
            "a=%24LATEST&a=1&b=2"
        );
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30"), None);
    }

    #[test]
    fn credentials_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("credentials");
        std::fs::write(
            &p,
            "[default]\naws_access_key_id = AK1\naws_secret_access_key = s1\n\n[other]\naws_access_key_id=AK2\naws_secret_access_key=s2\nregion=x\n",
        )
        .unwrap();
        let c = Credentials::load(&p).unwrap();
        assert_eq!(c.0.get("AK1").map(String::as_str), Some("s1"));
        assert_eq!(c.0.get("AK2").map(String::as_str), Some("s2"));
        std::fs::write(&p, "[default]\nregion = x\n").unwrap();
        assert!(Credentials::load(&p).is_err());
        std::fs::write(&p, "garbage line\n").unwrap();
        let e = Credentials::load(&p).unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
    }
}
