//! Services, revisions and traffic: what `skiff deploy` and `skiff traffic`
//! describe, validated here once so the CLI, the control API and the state
//! store reject the same inputs with the same words.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A rejected name, spec field or traffic split. `field` is what a user
/// would look for in their command line or manifest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {why}")]
pub struct SpecError {
    pub field: &'static str,
    pub why: String,
}

fn spec_err(field: &'static str, why: impl Into<String>) -> SpecError {
    SpecError {
        field,
        why: why.into(),
    }
}

const LABEL_MAX: usize = 63;

/// DNS-1123 label rules shared by service names and traffic tags.
/// `letter_first`: service names must start with a letter, because they
/// also become env values and revision-name prefixes that must not look
/// like numbers (as in Knative and Cloud Run).
fn check_label(field: &'static str, s: &str, letter_first: bool) -> Result<(), SpecError> {
    let b = s.as_bytes();
    let charset = b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let first_ok = b
        .first()
        .is_some_and(|&c| c.is_ascii_lowercase() || (!letter_first && c.is_ascii_digit()));
    let last_ok = b.last().is_some_and(|c| c.is_ascii_alphanumeric());
    if !b.is_empty() && b.len() <= LABEL_MAX && charset && first_ok && last_ok {
        return Ok(());
    }
    let start = if letter_first {
        "a letter"
    } else {
        "a letter or digit"
    };
    Err(spec_err(
        field,
        format!(
            "{s:?} is not a DNS-1123 label: 1-63 characters of lowercase letters, digits \
             and '-', starting with {start} and ending with a letter or digit"
        ),
    ))
}

/// A service's name: a DNS-1123 label, since it becomes a host name
/// (`NAME.localhost`) and a path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn new(s: &str) -> Result<ServiceName, SpecError> {
        check_label("service name", s, true)?;
        Ok(ServiceName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of this service's revision number `n` (`NAME-00001`).
    pub fn revision(&self, n: u32) -> RevisionName {
        RevisionName {
            service: self.clone(),
            number: n,
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ServiceName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        ServiceName::new(s)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        check_label("service name", &s, true)?;
        Ok(ServiceName(s))
    }
}

impl From<ServiceName> for String {
    fn from(n: ServiceName) -> String {
        n.0
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// `NAME-00001`: a service name and a revision number, at least five
/// digits so names sort by number for the first 99999 deploys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RevisionName {
    service: ServiceName,
    number: u32,
}

impl RevisionName {
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
    pub fn number(&self) -> u32 {
        self.number
    }
}

impl fmt::Display for RevisionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:05}", self.service, self.number)
    }
}

impl FromStr for RevisionName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || {
            spec_err(
                "revision",
                format!("{s:?} is not a revision name: expected SERVICE-NNNNN, e.g. web-00001"),
            )
        };
        let (service, digits) = s.rsplit_once('-').ok_or_else(bad)?;
        // Exactly the form Display writes, so a name has one spelling.
        if digits.len() < 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let number: u32 = digits.parse().map_err(|_| bad())?;
        if number == 0 || (digits.len() > 5 && digits.starts_with('0')) {
            return Err(bad());
        }
        let service = ServiceName::new(service).map_err(|_| bad())?;
        Ok(RevisionName { service, number })
    }
}

impl TryFrom<String> for RevisionName {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<RevisionName> for String {
    fn from(n: RevisionName) -> String {
        n.to_string()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The container listens on `$PORT` (Cloud Run / Knative).
    #[default]
    Http,
    /// The container speaks the AWS Lambda Runtime API.
    Lambda,
}

impl FromStr for Mode {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "http" => Ok(Mode::Http),
            "lambda" => Ok(Mode::Lambda),
            _ => Err(spec_err("mode", format!("{s:?}: expected http or lambda"))),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Http => "http",
            Mode::Lambda => "lambda",
        })
    }
}

/// Where a revision is in its life: `pending` until an instance first
/// passes readiness, `failed` (with a reason) if it never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevisionStatus {
    Pending,
    Ready,
    Failed,
}

impl RevisionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RevisionStatus::Pending => "pending",
            RevisionStatus::Ready => "ready",
            RevisionStatus::Failed => "failed",
        }
    }
}

impl FromStr for RevisionStatus {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "pending" => Ok(RevisionStatus::Pending),
            "ready" => Ok(RevisionStatus::Ready),
            "failed" => Ok(RevisionStatus::Failed),
            _ => Err(spec_err(
                "status",
                format!("{s:?}: expected pending, ready or failed"),
            )),
        }
    }
}

/// What a deploy asks for; a revision freezes one. Missing fields take
/// their defaults when deserialised, so API clients send only what they set.
/// Durations travel as whole milliseconds (`timeout_ms`), never as floats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSpec {
    pub image: String,
    pub port: u16,
    pub env: Vec<(String, String)>,
    /// Replaces the image's CMD.
    pub command: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT (an empty list clears it).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's working directory (absolute).
    pub workdir: Option<String>,
    /// Bytes.
    pub memory: Option<u64>,
    /// Thousandths of a CPU (`--cpus 0.5` is 500).
    pub cpus_milli: Option<u64>,
    /// Hard cap of in-flight requests per instance; 0 = unlimited.
    pub concurrency: u32,
    pub min: u32,
    /// 0 = unlimited.
    pub max: u32,
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Duration,
    pub mode: Mode,
    /// HTTP readiness probe path; `None` probes by TCP connect.
    pub readiness_path: Option<String>,
    /// Lambda mode: how often a failed Event invocation is tried again (0-2).
    pub event_retries: u8,
    /// Lambda mode: where an Event invocation goes once its last try
    /// failed: `http://...` (the destination record is POSTed there) or a
    /// function (name or ARN) invoked with it.
    pub on_failure: Option<String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            image: String::new(),
            port: 8080,
            env: Vec::new(),
            command: None,
            entrypoint: None,
            workdir: None,
            memory: None,
            cpus_milli: None,
            concurrency: 0,
            min: 0,
            max: 0,
            timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            mode: Mode::Http,
            readiness_path: None,
            event_retries: 2,
            on_failure: None,
        }
    }
}

/// Bounds beyond which a value is a typo, not a wish.
pub const MAX_CONCURRENCY: u32 = 1000;
pub const MAX_INSTANCES: u32 = 1000;
pub const MIN_MEMORY: u64 = 4 << 20;
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Variables Skiff sets itself (the Cloud Run contract); a user value
/// would silently lose or break the contract.
pub const RESERVED_ENV: &[&str] = &["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"];

impl ServiceSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(spec_err(
                "image",
                format!(
                    "{:?}: expected an image reference such as busybox:latest",
                    self.image
                ),
            ));
        }
        if self.port == 0 {
            return Err(spec_err("port", "must be 1-65535"));
        }
        for (k, v) in &self.env {
            let key_ok = !k.is_empty()
                && !k.as_bytes()[0].is_ascii_digit()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !key_ok {
                return Err(spec_err(
                    "env",
                    format!("{k:?}: names are letters, digits and '_', not starting with a digit"),
                ));
            }
            if RESERVED_ENV.contains(&k.as_str()) {
                return Err(spec_err("env", format!("{k} is set by Skiff itself")));
            }
            if v.contains('\0') {
                return Err(spec_err("env", format!("{k}: value contains a NUL byte")));
            }
        }
        if let Some(cmd) = &self.command {
            if cmd.is_empty() {
                return Err(spec_err("command", "empty; omit it to use the image's own"));
            }
            if cmd.iter().any(|a| a.contains('\0')) {
                return Err(spec_err("command", "an argument contains a NUL byte"));
            }
        }
        if self
            .entrypoint
            .as_ref()
            .is_some_and(|e| e.iter().any(|a| a.is_empty() || a.contains('\0')))
        {
            return Err(spec_err(
                "entrypoint",
                "an argument is empty or contains a NUL byte",
            ));
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') || w.contains('\0') {
                return Err(spec_err(
                    "workdir",
                    format!("{w:?}: expected an absolute path such as /var/task"),
                ));
            }
        }
        if let Some(m) = self.memory {
            if m < MIN_MEMORY {
                return Err(spec_err(
                    "memory",
                    format!("{m} bytes is below the 4 MiB minimum"),
                ));
            }
            if m > i64::MAX as u64 {
                return Err(spec_err("memory", format!("{m} bytes is too large")));
            }
        }
        if let Some(c) = self.cpus_milli {
            if c == 0 || c > 1024 * 1000 {
                return Err(spec_err(
                    "cpus",
                    format!("{c} thousandths: must be between 0.001 and 1024 CPUs"),
                ));
            }
        }
        if self.concurrency > MAX_CONCURRENCY {
            return Err(spec_err(
                "concurrency",
                format!(
                    "{} is above {MAX_CONCURRENCY}; use 0 for unlimited",
                    self.concurrency
                ),
            ));
        }
        if self.max > MAX_INSTANCES {
            return Err(spec_err(
                "max",
                format!(
                    "{} instances is above {MAX_INSTANCES}; use 0 for unlimited",
                    self.max
                ),
            ));
        }
        if self.min > MAX_INSTANCES {
            return Err(spec_err(
                "min",
                format!("{} instances is above {MAX_INSTANCES}", self.min),
            ));
        }
        if self.max > 0 && self.min > self.max {
            return Err(spec_err(
                "min",
                format!("{} is above max {}", self.min, self.max),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(spec_err(
                "timeout",
                format!("{:?}: must be more than 0 and at most 1h", self.timeout),
            ));
        }
        if self.idle_timeout.is_zero() || self.idle_timeout > MAX_IDLE_TIMEOUT {
            return Err(spec_err(
                "idle_timeout",
                format!(
                    "{:?}: must be more than 0 and at most 24h",
                    self.idle_timeout
                ),
            ));
        }
        if let Some(p) = &self.readiness_path {
            let ok =
                p.starts_with('/') && p.len() <= 1024 && p.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(spec_err(
                    "readiness_path",
                    format!("{p:?}: expected an absolute path such as /healthz, without spaces"),
                ));
            }
        }
        if self.event_retries > 2 {
            return Err(spec_err(
                "event_retries",
                format!("{}: expected 0, 1 or 2", self.event_retries),
            ));
        }
        if let Some(d) = &self.on_failure {
            let function = d.rsplit(":function:").next().unwrap_or(d);
            let ok = d.starts_with("http://") && !d.contains(char::is_whitespace)
                || check_label("on_failure", function, true).is_ok();
            if !ok {
                return Err(spec_err(
                    "on_failure",
                    format!("{d:?}: expected http://HOST[:PORT]/PATH, a function name or a function ARN"),
                ));
            }
        }
        Ok(())
    }
}

/// One slice of a service's traffic. A tag makes `TAG-NAME.localhost`
/// reach this revision whatever its percent (0 included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficTarget {
    pub revision: RevisionName,
    pub percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A split is valid when it names only `known` revisions, each once,
/// percents sum to 100, and tags are DNS labels, unique, that still make a
/// valid host label once prefixed to the service name.
pub fn validate_traffic(
    targets: &[TrafficTarget],
    known: &[RevisionName],
) -> Result<(), SpecError> {
    let mut sum: u32 = 0;
    for (i, t) in targets.iter().enumerate() {
        if !known.contains(&t.revision) {
            return Err(spec_err(
                "traffic",
                format!("unknown revision {}", t.revision),
            ));
        }
        if targets[..i].iter().any(|o| o.revision == t.revision) {
            return Err(spec_err(
                "traffic",
                format!("revision {} is listed twice", t.revision),
            ));
        }
        if let Some(tag) = &t.tag {
            check_label("traffic tag", tag, false)?;
            if tag.len() + 1 + t.revision.service().as_str().len() > LABEL_MAX {
                return Err(spec_err(
                    "traffic tag",
                    format!(
                        "{tag:?}: {tag}-{} would be longer than 63 characters",
                        t.revision.service()
                    ),
                ));
            }
            if targets[..i].iter().any(|o| o.tag.as_ref() == Some(tag)) {
                return Err(spec_err("traffic tag", format!("{tag:?} is used twice")));
            }
        }
        sum += u32::from(t.percent);
    }
    if sum != 100 {
        return Err(spec_err(
            "traffic",
            format!("percents sum to {sum}, they must sum to 100"),
        ));
    }
    Ok(())
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServiceName {
        ServiceName::new(s).unwrap()
    }

    #[test]
    fn service_names() {
        for ok in ["a", "web", "my-app-2", &"a".repeat(63)] {
            assert!(ServiceName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "1web",
            "-web",
            "web-",
            "we_b",
            "we.b",
            &"a".repeat(64),
        ] {
            let e = ServiceName::new(bad).unwrap_err();
            assert_eq!(e.field, "service name");
            assert!(e.to_string().contains("DNS-1123"), "{e}");
        }
    }

    #[test]
    fn revision_names() {
        let r = name("web").revision(1);
        assert_eq!(r.to_string(), "web-00001");
        assert_eq!(name("web").revision(123456).to_string(), "web-123456");
        assert_eq!(
            "my-app-00042".parse::<RevisionName>().unwrap(),
            name("my-app").revision(42)
        );
        assert_eq!(
            "web-123456".parse::<RevisionName>().unwrap().number(),
            123456
        );
        for bad in [
            "web",
            "web-1",
            "web-00000",
            "web-000001",
            "Web-00001",
            "-00001",
            "web-0000x",
        ] {
            assert!(bad.parse::<RevisionName>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"web-00001\"");
        assert_eq!(serde_json::from_str::<RevisionName>(&json).unwrap(), r);
        assert!(serde_json::from_str::<ServiceName>("\"Bad\"").is_err());
    }

    #[test]
    fn spec_defaults_and_serde() {
        let spec: ServiceSpec = serde_json::from_str(r#"{"image":"busybox"}"#).unwrap();
        assert_eq!(spec.port, 8080);
        assert_eq!(spec.timeout, Duration::from_secs(300));
        assert_eq!(spec.idle_timeout, Duration::from_secs(30));
        assert_eq!(spec.mode, Mode::Http);
        spec.validate().unwrap();

        let full = ServiceSpec {
            image: "busybox:latest".into(),
            env: vec![("A".into(), "b=c".into())],
            command: Some(vec!["httpd".into(), "-f".into()]),
            memory: Some(64 << 20),
            cpus_milli: Some(500),
            concurrency: 10,
            min: 1,
            max: 5,
            timeout: Duration::from_millis(1500),
            mode: Mode::Lambda,
            readiness_path: Some("/healthz".into()),
            ..ServiceSpec::default()
        };
        full.validate().unwrap();
        let json = serde_json::to_string(&full).unwrap();
        assert!(
            json.contains("\"timeout_ms\":1500") && json.contains("\"mode\":\"lambda\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ServiceSpec>(&json).unwrap(), full);
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"image":"x","prot":1}"#).is_err());
    }

    #[test]
    fn absurd_specs_name_their_field() {
        let base = ServiceSpec {
            image: "busybox".into(),
            ..ServiceSpec::default()
        };
        let cases: Vec<(&str, ServiceSpec)> = vec![
            (
                "image",
                ServiceSpec {
                    image: "".into(),
                    ..base.clone()
                },
            ),
            (
                "port",
                ServiceSpec {
                    port: 0,
                    ..base.clone()
                },
            ),
            (
                "env",
                ServiceSpec {
                    env: vec![("PORT".into(), "1".into())],
                    ..base.clone()
                },
            ),
            (
                "env",
                ServiceSpec {
                    env: vec![("A=B".into(), "1".into())],
                    ..base.clone()
                },
            ),
            (
                "command",
                ServiceSpec {
                    command: Some(vec![]),
                    ..base.clone()
                },
            ),
            (
                "memory",
                ServiceSpec {
                    memory: Some(1 << 20),
                    ..base.clone()
                },
            ),
            (
                "cpus",
                ServiceSpec {
                    cpus_milli: Some(0),
                    ..base.clone()
                },
            ),
            (
                "concurrency",
                ServiceSpec {
                    concurrency: 1001,
                    ..base.clone()
                },
            ),
            (
                "max",
                ServiceSpec {
                    max: 100_000,
                    ..base.clone()
                },
            ),
            (
                "min",
                ServiceSpec {
                    min: 3,
                    max: 2,
                    ..base.clone()
                },
            ),
            (
                "timeout",
                ServiceSpec {
                    timeout: Duration::ZERO,
                    ..base.clone()
                },
            ),
            (
                "timeout",
                ServiceSpec {
                    timeout: Duration::from_secs(3601),
                    ..base.clone()
                },
            ),
            (
                "idle_timeout",
                ServiceSpec {
                    idle_timeout: Duration::ZERO,
                    ..base.clone()
                },
            ),
            (
                "readiness_path",
                ServiceSpec {
                    readiness_path: Some("healthz".into()),
                    ..base.clone()
                },
            ),
        ];
        for (field, spec) in cases {
            let e = spec.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
        // min above max is fine when max is unlimited.
        ServiceSpec {
            min: 3,
            max: 0,
            ..base
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn traffic_splits() {
        let web = name("web");
        let known = [web.revision(1), web.revision(2)];
        let t = |n, percent, tag: Option<&str>| TrafficTarget {
            revision: web.revision(n),
            percent,
            tag: tag.map(String::from),
        };
        validate_traffic(&[t(1, 90, None), t(2, 10, Some("canary"))], &known).unwrap();
        validate_traffic(&[t(2, 100, None), t(1, 0, Some("old"))], &known).unwrap();

        let err =
            |targets: &[TrafficTarget]| validate_traffic(targets, &known).unwrap_err().to_string();
        assert!(err(&[t(1, 90, None)]).contains("sum to 90"));
        assert!(err(&[t(1, 60, None), t(2, 60, None)]).contains("sum to 120"));
        assert!(err(&[]).contains("sum to 0"));
        assert!(err(&[t(3, 100, None)]).contains("unknown revision web-00003"));
        assert!(err(&[t(1, 50, None), t(1, 50, None)]).contains("twice"));
        assert!(err(&[t(1, 50, Some("a")), t(2, 50, Some("a"))]).contains("twice"));
        assert!(err(&[t(1, 100, Some("Canary"))]).contains("DNS-1123"));
        assert!(err(&[t(1, 100, Some(&"a".repeat(60)))]).contains("longer than 63"));
        let other = TrafficTarget {
            revision: name("api").revision(1),
            percent: 100,
            tag: None,
        };
        assert!(err(&[other]).contains("unknown revision api-00001"));
    }
}
