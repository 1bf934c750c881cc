//! The image config a build produces, changed instruction by instruction as
//! Docker (BuildKit) changes it.
//!
//! The config is kept as JSON rather than `oci_spec`'s typed struct: base
//! images carry Docker fields the OCI struct drops (`Healthcheck`,
//! `OnBuild`, `Shell`), and a built image must keep them.

use serde_json::{json, Map, Value};

use crate::ast::{CommandLine, Healthcheck, KeyValue};

/// PATH that BuildKit gives a stage whose base sets none (e.g. `scratch`).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image configuration document (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig(Map<String, Value>);

impl ImageConfig {
    /// The config of `FROM scratch` on this host's platform.
    pub fn scratch(os: &str, architecture: &str) -> ImageConfig {
        let mut c = ImageConfig(Map::new());
        c.0.insert("architecture".into(), json!(architecture));
        c.0.insert("os".into(), json!(os));
        c.0.insert("config".into(), json!({}));
        c.0.insert("rootfs".into(), json!({"type": "layers", "diff_ids": []}));
        c.0.insert("history".into(), json!([]));
        c.ensure_path();
        c
    }

    /// A base image's config, as stored. Fields a build sets afresh
    /// (`created`, `container_config`) are dropped.
    pub fn from_base(bytes: &[u8]) -> Result<ImageConfig, serde_json::Error> {
        let mut map: Map<String, Value> = serde_json::from_slice(bytes)?;
        for stale in ["created", "container", "container_config", "docker_version"] {
            map.remove(stale);
        }
        let mut c = ImageConfig(map);
        c.ensure_path();
        Ok(c)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A Map of Values always serialises.
        serde_json::to_vec(&self.0).unwrap_or_default()
    }

    /// The `config` object (the runtime part), created when missing.
    fn cfg(&mut self) -> &mut Map<String, Value> {
        let slot = self
            .0
            .entry("config")
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        match slot {
            Value::Object(m) => m,
            _ => unreachable!("just made an object"),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get("config").and_then(|c| c.get(key))
    }

    /// The runtime part as `oci_spec` reads it, for the runtime's spec builder.
    pub fn runtime_config(&self) -> oci_spec::image::Config {
        self.0
            .get("config")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// `ENV` as (key, value), in order.
    pub fn env(&self) -> Vec<(String, String)> {
        let list = self.get("Env").and_then(Value::as_array);
        list.into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.to_string(), String::new()),
            })
            .collect()
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        let env = self
            .cfg()
            .entry("Env")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !env.is_array() {
            *env = Value::Array(Vec::new());
        }
        if let Value::Array(list) = env {
            let prefix = format!("{key}=");
            match list
                .iter_mut()
                .find(|e| e.as_str().is_some_and(|s| s.starts_with(&prefix)))
            {
                Some(existing) => *existing = Value::String(entry),
                None => list.push(Value::String(entry)),
            }
        }
    }

    fn ensure_path(&mut self) {
        if !self.env().iter().any(|(k, _)| k == "PATH") {
            self.set_env("PATH", DEFAULT_PATH);
        }
    }

    /// `WORKDIR`, `/` when unset.
    pub fn workdir(&self) -> String {
        match self.get("WorkingDir").and_then(Value::as_str) {
            Some(w) if !w.is_empty() => w.to_string(),
            _ => "/".to_string(),
        }
    }

    /// `USER`, if set.
    pub fn user(&self) -> Option<String> {
        self.get("User")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
    }

    /// The `SHELL` for shell forms; `/bin/sh -c` by default.
    pub fn shell(&self) -> Vec<String> {
        let shell: Vec<String> = self
            .get("Shell")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if shell.is_empty() {
            vec!["/bin/sh".into(), "-c".into()]
        } else {
            shell
        }
    }

    /// `ONBUILD` triggers inherited from the base image.
    pub fn onbuild(&self) -> Vec<String> {
        let list = self.get("OnBuild").and_then(Value::as_array);
        list.into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// Drops the base image's `ONBUILD` triggers: a child build consumes
    /// them, they are not inherited further (Docker's rule).
    pub fn clear_onbuild(&mut self) {
        self.cfg().remove("OnBuild");
    }

    /// The layer diff_ids, bottom first.
    pub fn diff_ids(&self) -> Vec<String> {
        self.0
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// Records one step in `history` and, for a filesystem change, its
    /// layer in `rootfs.diff_ids`; `created` becomes the image's time.
    pub fn record(&mut self, created_by: &str, created: &str, diff_id: Option<&str>) {
        if let Some(d) = diff_id {
            let rootfs = self
                .0
                .entry("rootfs")
                .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
            if let Some(list) = rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
                list.push(json!(d));
            } else {
                *rootfs = json!({"type": "layers", "diff_ids": [d]});
            }
        }
        let mut entry = Map::new();
        entry.insert("created".into(), json!(created));
        entry.insert("created_by".into(), json!(created_by));
        entry.insert("comment".into(), json!("buildkit.dockerfile.v0"));
        if diff_id.is_none() {
            entry.insert("empty_layer".into(), json!(true));
        }
        let history = self.0.entry("history").or_insert_with(|| json!([]));
        if let Some(list) = history.as_array_mut() {
            list.push(Value::Object(entry));
        } else {
            *history = json!([entry]);
        }
        self.0.insert("created".into(), json!(created));
    }

    pub fn set_author(&mut self, author: &str) {
        self.0.insert("author".into(), json!(author));
    }

    pub fn apply_env(&mut self, pairs: &[KeyValue]) {
        for kv in pairs {
            self.set_env(&kv.key, kv.value.as_deref().unwrap_or(""));
        }
    }

    pub fn apply_labels(&mut self, pairs: &[KeyValue]) {
        let labels = object_at(self.cfg(), "Labels");
        for kv in pairs {
            labels.insert(kv.key.clone(), json!(kv.value.as_deref().unwrap_or("")));
        }
    }

    /// `EXPOSE 80 443/tcp 53/udp 8000-8002`.
    pub fn apply_expose(&mut self, ports: &[String]) -> Result<(), String> {
        let mut keys = Vec::new();
        for p in ports {
            let (range, proto) = match p.split_once('/') {
                Some((r, proto)) => (r, proto.to_ascii_lowercase()),
                None => (p.as_str(), "tcp".to_string()),
            };
            if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
                return Err(format!("invalid protocol in port {p:?}"));
            }
            let port = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("invalid port {p:?}: expected 1-65535"))
            };
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => (port(range)?, port(range)?),
            };
            if hi < lo {
                return Err(format!("invalid port range {p:?}"));
            }
            keys.extend((lo..=hi).map(|n| format!("{n}/{proto}")));
        }
        let exposed = object_at(self.cfg(), "ExposedPorts");
        for k in keys {
            exposed.insert(k, json!({}));
        }
        Ok(())
    }

    pub fn apply_volumes(&mut self, paths: &[String]) {
        let volumes = object_at(self.cfg(), "Volumes");
        for p in paths {
            volumes.insert(p.clone(), json!({}));
        }
    }

    pub fn set_user(&mut self, user: &str) {
        self.cfg().insert("User".into(), json!(user));
    }

    /// `WORKDIR` relative to the current one; returns the absolute result.
    pub fn apply_workdir(&mut self, dir: &str) -> String {
        let joined = if dir.starts_with('/') {
            dir.to_string()
        } else {
            format!("{}/{dir}", self.workdir().trim_end_matches('/'))
        };
        let clean = clean_abs(&joined);
        self.cfg().insert("WorkingDir".into(), json!(clean));
        clean
    }

    pub fn set_stop_signal(&mut self, signal: &str) {
        self.cfg().insert("StopSignal".into(), json!(signal));
    }

    pub fn set_shell(&mut self, shell: &[String]) {
        self.cfg().insert("Shell".into(), json!(shell));
    }

    /// `CMD`: a shell form runs under the current SHELL.
    pub fn set_cmd(&mut self, cmd: &CommandLine) {
        let argv = self.argv(cmd);
        self.cfg().insert("Cmd".into(), json!(argv));
    }

    /// `ENTRYPOINT`; resets a `CMD` inherited from the base image (Docker's
    /// rule: it belonged to the old entrypoint), but not one set earlier in
    /// this stage.
    pub fn set_entrypoint(&mut self, ep: &CommandLine, cmd_set_in_stage: bool) {
        let argv = self.argv(ep);
        let cfg = self.cfg();
        cfg.insert("Entrypoint".into(), json!(argv));
        if !cmd_set_in_stage {
            cfg.insert("Cmd".into(), Value::Null);
        }
    }

    pub fn set_healthcheck(&mut self, hc: &Healthcheck) {
        let value = match hc {
            Healthcheck::None => json!({"Test": ["NONE"]}),
            Healthcheck::Cmd { options, command } => {
                let test: Vec<String> = match command {
                    CommandLine::Exec(argv) => std::iter::once("CMD".to_string())
                        .chain(argv.iter().cloned())
                        .collect(),
                    CommandLine::Shell(text) => vec!["CMD-SHELL".into(), text.clone()],
                };
                let mut m = Map::new();
                m.insert("Test".into(), json!(test));
                // Docker stores durations in nanoseconds.
                let ns = |ms: u64| json!(ms.saturating_mul(1_000_000));
                if let Some(v) = options.interval_ms {
                    m.insert("Interval".into(), ns(v));
                }
                if let Some(v) = options.timeout_ms {
                    m.insert("Timeout".into(), ns(v));
                }
                if let Some(v) = options.start_period_ms {
                    m.insert("StartPeriod".into(), ns(v));
                }
                if let Some(v) = options.start_interval_ms {
                    m.insert("StartInterval".into(), ns(v));
                }
                if let Some(v) = options.retries {
                    m.insert("Retries".into(), json!(v));
                }
                Value::Object(m)
            }
        };
        self.cfg().insert("Healthcheck".into(), value);
    }

    pub fn add_onbuild(&mut self, trigger: &str) {
        let cfg = self.cfg();
        let list = cfg.entry("OnBuild").or_insert_with(|| json!([]));
        if let Some(l) = list.as_array_mut() {
            l.push(json!(trigger));
        } else {
            *list = json!([trigger]);
        }
    }

    /// The argv of an exec or shell form under the current SHELL.
    pub fn argv(&self, cmd: &CommandLine) -> Vec<String> {
        match cmd {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(text) => {
                let mut argv = self.shell();
                argv.push(text.clone());
                argv
            }
        }
    }
}

fn object_at<'a>(cfg: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = cfg.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Lexically cleans an absolute path: no `.`, `..` resolved, no double or
/// trailing slashes.
pub fn clean_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(v.into()),
        }
    }

    #[test]
    fn scratch_gets_a_path_and_env_replaces_in_place() {
        let mut c = ImageConfig::scratch("linux", "amd64");
        assert_eq!(c.env(), vec![("PATH".into(), DEFAULT_PATH.into())]);
        c.apply_env(&[kv("A", "1"), kv("PATH", "/venv/bin")]);
        c.apply_env(&[kv("A", "2")]);
        assert_eq!(
            c.env(),
            vec![
                ("PATH".into(), "/venv/bin".into()),
                ("A".into(), "2".into())
            ]
        );
    }

    #[test]
    fn entrypoint_resets_an_inherited_cmd_only() {
        let base = br#"{"architecture":"amd64","os":"linux","created":"x","config":{"Cmd":["python3"],"Env":["PATH=/bin"],"Healthcheck":{"Test":["NONE"]}}}"#;
        let mut c = ImageConfig::from_base(base).unwrap();
        c.set_entrypoint(&CommandLine::Exec(vec!["/app".into()]), false);
        assert_eq!(c.get("Cmd"), Some(&Value::Null));
        assert_eq!(c.get("Healthcheck"), Some(&json!({"Test": ["NONE"]})));
        c.set_cmd(&CommandLine::Shell("serve --port 80".into()));
        c.set_entrypoint(&CommandLine::Exec(vec!["/app2".into()]), true);
        assert_eq!(
            c.get("Cmd"),
            Some(&json!(["/bin/sh", "-c", "serve --port 80"]))
        );
        assert!(!c.0.contains_key("created"));
    }

    #[test]
    fn workdir_expose_and_history() {
        let mut c = ImageConfig::scratch("linux", "amd64");
        assert_eq!(c.apply_workdir("/app"), "/app");
        assert_eq!(c.apply_workdir("src/../lib/"), "/app/lib");
        c.apply_expose(&["80".into(), "53/udp".into(), "8000-8001".into()])
            .unwrap();
        assert_eq!(
            c.get("ExposedPorts"),
            Some(&json!({"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}))
        );
        assert!(c.apply_expose(&["http".into()]).is_err());
        assert!(c.apply_expose(&["80/icmp".into()]).is_err());
        c.record("COPY . /app", "2026-01-01T00:00:00Z", Some("sha256:ab"));
        c.record("CMD [\"x\"]", "2026-01-01T00:00:01Z", None);
        assert_eq!(c.diff_ids(), vec!["sha256:ab".to_string()]);
        assert_eq!(c.0["created"], json!("2026-01-01T00:00:01Z"));
        assert_eq!(c.0["history"][1]["empty_layer"], json!(true));
    }
}
