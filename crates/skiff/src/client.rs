//! The CLI side of the control API: `deploy`, `services`, `describe`,
//! `delete`, `traffic`, `revisions`, each one request over `$SKIFF_ROOT/skiff.sock`,
//! or with `--host tcp://HOST:PORT` (SKIFF_HOST) over TCP, SKIFF_TOKEN the bearer token.

use std::io::Write as _;

use anyhow::{bail, Context as _, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use skiff_core::{Mode, RevisionName, ServiceName, ServiceSpec, TrafficTarget};

use crate::cli::DeployArgs;
use crate::context::Context;

/// Where the daemon answers.
enum Endpoint {
    Unix(std::path::PathBuf),
    Tcp { addr: String, token: String },
}

fn endpoint(ctx: &Context) -> Result<Endpoint> {
    let Some(host) = &ctx.host else {
        return Ok(Endpoint::Unix(crate::serve::socket_path(ctx)));
    };
    let Some(addr) = host
        .strip_prefix("tcp://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| !a.is_empty())
    else {
        bail!("--host {host:?}: expected tcp://HOST:PORT");
    };
    let token = std::env::var("SKIFF_TOKEN").unwrap_or_default();
    let token = token.trim();
    if token.is_empty() {
        bail!(
            "{host} needs the daemon's control token: set SKIFF_TOKEN \
             (read it from $SKIFF_ROOT/control.token on the daemon's machine)"
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("SKIFF_TOKEN must be printable ASCII without spaces");
    }
    Ok(Endpoint::Tcp {
        addr: addr.to_string(),
        token: token.to_string(),
    })
}

/// One request to the daemon; the JSON it answered, or its error as ours.
fn call(ctx: &Context, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
    let (status, _, bytes) = exchange(ctx, method, path, &[], body)?;
    answer(status, &bytes)
}

/// The daemon's JSON answer, or its `{"error"}` as the error.
fn answer(status: hyper::StatusCode, bytes: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(bytes)
        .with_context(|| format!("the skiff daemon answered {status} without JSON"))?;
    if !status.is_success() {
        let why = value["error"].as_str().unwrap_or("no reason given");
        bail!("{why}");
    }
    Ok(value)
}

/// One request to the daemon; its status, headers and whole body.
fn exchange(
    ctx: &Context,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<(hyper::StatusCode, hyper::HeaderMap, Bytes)> {
    let endpoint = endpoint(ctx)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = Full::new(Bytes::from(body.unwrap_or_default()));
        let resp = match &endpoint {
            Endpoint::Unix(sock) => {
                let at = sock.display().to_string();
                let stream = reached(tokio::net::UnixStream::connect(sock).await, &at, "")?;
                send(stream, req.header(hyper::header::HOST, "skiff").body(body)?).await?
            }
            Endpoint::Tcp { addr, token } => {
                let at = format!("tcp://{addr}");
                let stream = tokio::net::TcpStream::connect(addr.as_str()).await;
                let stream = reached(stream, &at, " --control ADDR")?;
                let req = req
                    .header(hyper::header::HOST, addr.as_str())
                    .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
                send(stream, req.body(body)?).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .context("the skiff daemon's answer broke off")?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    })
}

/// `skiff invoke NAME [--payload JSON|@FILE] [--async] [--qualifier Q]`:
/// the result on stdout, the log tail on stderr; exit 1 on a function error.
pub fn invoke(
    ctx: &Context,
    name: &str,
    payload: Option<&str>,
    asynchronous: bool,
    qualifier: Option<&str>,
) -> Result<u8> {
    let payload = match payload {
        Some(p) => match p.strip_prefix('@') {
            Some(file) => {
                std::fs::read(file).with_context(|| format!("--payload: cannot read {file}"))?
            }
            None => p.as_bytes().to_vec(),
        },
        None => b"{}".to_vec(),
    };
    if serde_json::from_slice::<Value>(&payload).is_err() {
        bail!("--payload: not valid JSON");
    }
    let mut path = format!("{}/invoke", service_path(name)?);
    if let Some(q) = qualifier {
        path.push_str(&format!("?Qualifier={}", path_seg(q)?));
    }
    let kind = if asynchronous {
        "Event"
    } else {
        "RequestResponse"
    };
    let (status, headers, body) = exchange(
        ctx,
        Method::POST,
        &path,
        &[("x-amz-invocation-type", kind), ("x-amz-log-type", "Tail")],
        Some(payload),
    )?;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if !status.is_success() {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let why = v["message"]
            .as_str()
            .or(v["error"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        match header("x-amzn-errortype") {
            Some(kind) => bail!("{kind}: {why}"),
            None => bail!("{why}"),
        }
    }
    if asynchronous {
        println!(
            "Queued: request {}",
            header("x-amzn-requestid").unwrap_or("?")
        );
        return Ok(0);
    }
    use base64::Engine as _;
    let log = header("x-amz-log-result")
        .and_then(|l| base64::engine::general_purpose::STANDARD.decode(l).ok());
    if let Some(log) = log {
        std::io::stderr().write_all(&log)?;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    if !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(u8::from(header("x-amz-function-error").is_some()))
}

fn reached<S>(connected: std::io::Result<S>, at: &str, flags: &str) -> Result<S> {
    match connected {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!("skiff daemon not running on {at}: start it with `skiff serve{flags}`")
        }
        Err(e) => Err(e).with_context(|| format!("cannot reach the skiff daemon on {at}")),
    }
}

async fn send<S>(stream: S, req: Request<Full<Bytes>>) -> Result<Response<hyper::body::Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("the skiff daemon did not answer")?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .context("the skiff daemon did not answer")
}

pub fn deploy(ctx: &Context, args: DeployArgs) -> Result<()> {
    // Everything checked here first, so bad input never pulls an image.
    let name = ServiceName::new(&args.name)?;
    let env = parse_env(&args.env)?;
    let latest = if args.reset {
        None
    } else {
        current(ctx, &name)?
            .map(|c| latest_revision(&c))
            .transpose()?
            .flatten()
    };
    let from = latest
        .as_ref()
        .map(|(rev, status, _)| format!("{rev}'s ({status})"));
    let base = latest.as_ref().map(|(rev, _, _)| rev.clone());
    let (mut spec, kept) = settle(latest.map(|(_, _, spec)| spec), &args, env)?;
    let kept = from.filter(|_| kept);
    // A bad value may be one the flags did not give: say where it came from.
    let validate = |spec: &ServiceSpec| match (spec.validate(), &kept) {
        (Err(e), Some(kept)) => Err(anyhow::anyhow!(
            "{e} (the settings not given are {kept}; --reset starts from the defaults)"
        )),
        (r, _) => r.map_err(Into::into),
    };
    if let Some(dir) = &args.source {
        if ctx.host.is_some() {
            bail!("--source builds into this machine's store; it cannot deploy to a remote daemon (SKIFF_HOST)");
        }
        // Checked before the build, so a bad flag costs no build.
        spec.image = "localhost/source/placeholder:latest".into();
        validate(&spec)?;
        spec.image = crate::build::build_source(ctx, name.as_str(), dir)?;
    }
    validate(&spec)?;
    // The daemon must find the image when the first request comes. Over
    // TCP the local store is not the daemon's: it pulls when it starts one.
    if ctx.host.is_none() && args.source.is_none() {
        crate::images::resolve_or_pull(ctx, &spec.image)?;
    }
    // The revision merged from goes along: a deploy in between is refused
    // (409), not silently undone.
    let mut query = Vec::new();
    if args.no_traffic {
        query.push("traffic=none".to_string());
    }
    if let (Some(base), true) = (&base, kept.is_some()) {
        query.push(format!("base={base}"));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let answer = call(
        ctx,
        Method::POST,
        &format!("/v1/services/{name}/revisions{query}"),
        Some(serde_json::to_vec(&spec)?),
    )
    .map_err(|e| match &kept {
        // A revision that cannot start may owe it to a kept setting.
        Some(kept) => anyhow::anyhow!("{e:#} (the settings not given were {kept})"),
        None => e,
    })?;
    let rev = answer["revision"].as_str().unwrap_or("?");
    if answer["traffic"] == "none" {
        println!("Service {name}: revision {rev} created; traffic unchanged");
    } else {
        println!("Service {name} deployed: revision {rev} takes all traffic");
    }
    if let Some(kept) = kept {
        println!("  settings not given are {kept}");
    }
    if let Some(urls) = answer["urls"].as_array() {
        for u in urls.iter().filter_map(|u| u.as_str()) {
            println!("  {u}");
        }
    }
    Ok(())
}

/// `--env K=V` flags, checked.
fn parse_env(flags: &[String]) -> Result<Vec<(String, String)>> {
    flags
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--env {e:?}: expected K=V"),
        })
        .collect()
}

/// The spec a deploy sends: the flags over `base`, the service's latest
/// revision (as `gcloud run deploy` keeps what its flags do not say), or
/// over the defaults for a new service, `--reset`, or a change of
/// `--mode` (an HTTP server and a Lambda function share few settings:
/// a Lambda revision's concurrency of 1, say, would throttle a server).
/// `--env` adds or replaces variables, `--remove-env` drops them.
/// Also says whether `base` was kept.
fn settle(
    base: Option<ServiceSpec>,
    args: &DeployArgs,
    env: Vec<(String, String)>,
) -> Result<(ServiceSpec, bool)> {
    let mode: Option<Mode> = args.mode.as_deref().map(str::parse).transpose()?;
    let (mut spec, kept) = match base {
        Some(b) if !args.reset && mode.is_none_or(|m| m == b.mode) => (b, true),
        _ => (ServiceSpec::default(), false),
    };
    spec.image = args.image.clone().unwrap_or_default();
    if let Some(m) = mode {
        spec.mode = m;
    }
    spec.env.retain(|(k, _)| !args.remove_env.contains(k));
    for (k, v) in env {
        spec.env.retain(|(name, _)| *name != k);
        spec.env.push((k, v));
    }
    if let Some(p) = args.port {
        spec.port = p;
    }
    if args.memory.is_some() {
        spec.memory = args.memory;
    }
    if args.cpus.is_some() {
        spec.cpus_milli = args.cpus;
    }
    if let Some(c) = args.concurrency {
        spec.concurrency = c;
    }
    if let Some(m) = args.min {
        spec.min = m;
    }
    if let Some(m) = args.max {
        spec.max = m;
    }
    if let Some(t) = args.timeout {
        spec.timeout = t;
    }
    if let Some(t) = args.idle_timeout {
        spec.idle_timeout = t;
    }
    if let Some(p) = &args.readiness_path {
        // An empty path goes back to the TCP probe.
        spec.readiness_path = (!p.is_empty()).then(|| p.clone());
    }
    if let Some(r) = args.event_retries {
        spec.event_retries = r;
    }
    if args.on_failure.is_some() {
        spec.on_failure = args.on_failure.clone();
    }
    if !args.command.is_empty() {
        spec.command = Some(args.command.clone());
    }
    Ok((spec, kept))
}

/// The service as `describe --json` shows it, or `None` if there is none.
fn current(ctx: &Context, name: &ServiceName) -> Result<Option<Value>> {
    let (status, _, bytes) = exchange(ctx, Method::GET, &service_path(name.as_str())?, &[], None)?;
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    answer(status, &bytes).map(Some)
}

/// The service's newest revision: its name, status and spec. A spec this
/// CLI cannot read (a daemon of another version) is an error, not a
/// silent fall back to the defaults.
fn latest_revision(service: &Value) -> Result<Option<(RevisionName, String, ServiceSpec)>> {
    let mut newest: Option<(RevisionName, &Value)> = None;
    for r in service["revisions"].as_array().into_iter().flatten() {
        let name: RevisionName = r["name"].as_str().unwrap_or_default().parse()?;
        if newest
            .as_ref()
            .is_none_or(|(n, _)| name.number() > n.number())
        {
            newest = Some((name, r));
        }
    }
    let Some((name, r)) = newest else {
        return Ok(None);
    };
    let spec = serde_json::from_value(r["spec"].clone()).with_context(|| {
        format!("cannot read the settings of {name} to keep them (deploy --reset starts afresh)")
    })?;
    let status = r["status"].as_str().unwrap_or("unknown").to_string();
    Ok(Some((name, status, spec)))
}

pub fn services(ctx: &Context, json: bool) -> Result<()> {
    let answer = call(ctx, Method::GET, "/v1/services", None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!("{:<24}{:<28}{:<11}URL", "NAME", "REVISION", "INSTANCES");
    for s in answer.as_array().into_iter().flatten() {
        println!(
            "{:<24}{:<28}{:<11}{}",
            s["name"].as_str().unwrap_or(""),
            s["revision"].as_str().unwrap_or("-"),
            s["instances"].as_u64().unwrap_or(0),
            s["urls"][0].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub fn describe(ctx: &Context, name: &str, json: bool) -> Result<()> {
    let answer = call(ctx, Method::GET, &service_path(name)?, None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!("Service:   {}", answer["name"].as_str().unwrap_or(name));
    for u in answer["urls"].as_array().into_iter().flatten() {
        println!("URL:       {}", u.as_str().unwrap_or(""));
    }
    println!("Traffic:");
    for t in answer["traffic"].as_array().into_iter().flatten() {
        print_target(t);
    }
    println!("Revisions:");
    for r in answer["revisions"].as_array().into_iter().flatten() {
        println!(
            "  {:<28}{:<10}{}",
            r["name"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["spec"]["image"].as_str().unwrap_or("")
        );
        if let Some(why) = r["status_reason"].as_str() {
            println!("    reason: {why}");
        }
    }
    println!("Instances:");
    for i in answer["instances"].as_array().into_iter().flatten() {
        println!(
            "  {:<34}{:<22}{:<10}in flight {}",
            i["name"].as_str().unwrap_or(""),
            i["address"].as_str().unwrap_or(""),
            i["state"].as_str().unwrap_or(""),
            i["in_flight"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}

/// `REV=PCT[,REV=PCT...]` plus `TAG=REV` tags (a tagged revision not in
/// the split joins it with 0%), sent as one whole split.
pub fn traffic(
    ctx: &Context,
    name: &str,
    split: &str,
    tags: &[String],
    clear_tags: bool,
) -> Result<()> {
    let mut targets: Vec<TrafficTarget> = Vec::new();
    for entry in split.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((rev, pct)) = entry.split_once('=') else {
            bail!("traffic {entry:?}: expected REVISION=PERCENT");
        };
        let percent: u8 = pct
            .trim()
            .trim_end_matches('%')
            .parse()
            .ok()
            .filter(|p| *p <= 100)
            .with_context(|| format!("traffic {entry:?}: percent must be 0 to 100"))?;
        targets.push(TrafficTarget {
            revision: rev.trim().parse::<RevisionName>()?,
            percent,
            tag: None,
        });
    }
    let mut tagged: Vec<(String, RevisionName)> = Vec::new();
    for t in tags {
        let Some((tag, rev)) = t.split_once('=') else {
            bail!("--tag {t:?}: expected TAG=REVISION");
        };
        tagged.push((tag.to_string(), rev.parse()?));
    }
    // Without --tag the tags stay where they are (as Cloud Run's
    // update-traffic keeps them); --tag gives them all, --clear-tags none.
    if tags.is_empty() && !clear_tags {
        let name = ServiceName::new(name)?;
        let service = current(ctx, &name)?.with_context(|| format!("no service named {name}"))?;
        for t in service["traffic"].as_array().into_iter().flatten() {
            if let (Some(tag), Some(rev)) = (t["tag"].as_str(), t["revision"].as_str()) {
                tagged.push((tag.to_string(), rev.parse()?));
            }
        }
    }
    for (tag, rev) in tagged {
        match targets.iter_mut().find(|x| x.revision == rev) {
            Some(x) => {
                if let Some(had) = x.tag.replace(tag.clone()) {
                    bail!("--tag {tag}={rev}: {rev} has the tag {had} already; a revision has one tag");
                }
            }
            None => targets.push(TrafficTarget {
                revision: rev,
                percent: 0,
                tag: Some(tag),
            }),
        }
    }
    let answer = call(
        ctx,
        Method::PUT,
        &format!("{}/traffic", service_path(name)?),
        Some(serde_json::to_vec(&targets)?),
    )?;
    for t in answer["traffic"].as_array().into_iter().flatten() {
        print_target(t);
    }
    Ok(())
}

fn print_target(t: &Value) {
    let tag = t["tag"]
        .as_str()
        .map(|t| format!("  tag {t}"))
        .unwrap_or_default();
    println!(
        "  {:>3}%  {}{tag}",
        t["percent"].as_u64().unwrap_or(0),
        t["revision"].as_str().unwrap_or("")
    );
}

pub fn revisions(ctx: &Context, name: &str, json: bool) -> Result<()> {
    let answer = call(ctx, Method::GET, &service_path(name)?, None)?;
    let traffic = answer["traffic"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Value> = answer["revisions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let t = traffic.iter().find(|t| t["revision"] == r["name"]);
            serde_json::json!({
                "name": r["name"],
                "status": r["status"],
                "reason": r["status_reason"],
                "percent": t.map_or(0, |t| t["percent"].as_u64().unwrap_or(0)),
                "tag": t.map(|t| t["tag"].clone()),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<28}{:<10}{:<9}{:<12}REASON",
        "REVISION", "STATUS", "TRAFFIC", "TAG"
    );
    for r in &rows {
        println!(
            "{:<28}{:<10}{:<9}{:<12}{}",
            r["name"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            format!("{}%", r["percent"]),
            r["tag"].as_str().unwrap_or("-"),
            r["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub fn delete(ctx: &Context, name: &str) -> Result<()> {
    call(ctx, Method::DELETE, &service_path(name)?, None)?;
    println!("{name}");
    Ok(())
}

/// A name as one path segment: a valid service name is one already.
fn path_seg(name: &str) -> Result<String> {
    Ok(ServiceName::new(name)?.to_string())
}

/// `/v1/services/NAME`, the resource describe, revisions and delete act on.
fn service_path(name: &str) -> Result<String> {
    Ok(format!("/v1/services/{}", path_seg(name)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Deploy {
        #[command(flatten)]
        args: DeployArgs,
    }

    fn settled(base: Option<&ServiceSpec>, flags: &[&str]) -> ServiceSpec {
        let argv = ["deploy", "svc", "--image", "img"].iter().chain(flags);
        let args = Deploy::try_parse_from(argv).unwrap().args;
        let env = parse_env(&args.env).unwrap();
        let (spec, kept) = settle(base.cloned(), &args, env).unwrap();
        assert_eq!(kept, base.is_some() && spec.port == 9000, "{spec:?}");
        spec
    }

    fn base() -> ServiceSpec {
        ServiceSpec {
            image: "old".into(),
            port: 9000,
            env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
            memory: Some(256 << 20),
            concurrency: 5,
            readiness_path: Some("/ready".into()),
            command: Some(vec!["serve".into()]),
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn a_deploy_keeps_what_its_flags_do_not_say() {
        let s = settled(
            Some(&base()),
            &["--env", "B=3", "--env", "C=4", "--max", "7"],
        );
        assert_eq!(s.image, "img");
        assert_eq!(
            (s.port, s.memory, s.concurrency, s.max),
            (9000, Some(256 << 20), 5, 7)
        );
        let env: Vec<_> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(env, ["A=1", "B=3", "C=4"]);
        assert_eq!(s.command, Some(vec!["serve".to_string()]));
        assert_eq!(s.readiness_path.as_deref(), Some("/ready"));
        // Removed, cleared, or all from the defaults.
        let s = settled(
            Some(&base()),
            &["--remove-env", "A", "--readiness-path", ""],
        );
        assert_eq!(s.env, [("B".to_string(), "2".to_string())]);
        assert_eq!(s.readiness_path, None);
        let fresh = ServiceSpec {
            image: "img".into(),
            ..ServiceSpec::default()
        };
        assert_eq!(settled(Some(&base()), &["--reset"]), settled(None, &[]));
        assert_eq!(settled(None, &[]), fresh);
    }

    #[test]
    fn a_change_of_mode_starts_from_the_defaults() {
        let lambda = ServiceSpec {
            mode: Mode::Lambda,
            concurrency: 1,
            ..base()
        };
        let s = settled(Some(&lambda), &["--mode", "http"]);
        assert_eq!((s.mode, s.concurrency, s.port), (Mode::Http, 0, 8080));
        // The same mode, said again, keeps the rest.
        let s = settled(Some(&lambda), &["--mode", "lambda"]);
        assert_eq!((s.concurrency, s.port), (1, 9000));
    }

    #[test]
    fn env_flags_must_be_k_eq_v() {
        assert!(parse_env(&["A=1".into(), "B=".into()]).is_ok());
        for bad in ["A", "=1"] {
            let e = parse_env(&[bad.to_string()]).unwrap_err().to_string();
            assert!(e.contains("expected K=V"), "{e}");
        }
    }
}
