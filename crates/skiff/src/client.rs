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
use skiff_core::{RevisionName, ServiceName, ServiceSpec, TrafficTarget};

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
    let value: Value = serde_json::from_slice(&bytes)
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
    // A service deployed again starts from its latest revision, as `gcloud
    // run deploy` does: what the flags do not say is kept (the image is
    // always given; `--env` adds or replaces variables).
    let mut spec = current(ctx, &name)?
        .and_then(|c| latest_spec(&c))
        .unwrap_or_default();
    spec.image = args.image.clone().unwrap_or_default();
    if let Some(p) = args.port {
        spec.port = p;
    }
    for e in &args.env {
        let Some((k, v)) = e.split_once('=') else {
            bail!("--env {e:?}: expected K=V");
        };
        spec.env.retain(|(name, _)| name != k);
        spec.env.push((k.to_string(), v.to_string()));
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
    if args.readiness_path.is_some() {
        spec.readiness_path = args.readiness_path.clone();
    }
    if let Some(m) = &args.mode {
        spec.mode = m.parse()?;
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
    if let Some(dir) = &args.source {
        if ctx.host.is_some() {
            bail!("--source builds into this machine's store; it cannot deploy to a remote daemon (SKIFF_HOST)");
        }
        // Checked before the build, so a bad flag costs no build.
        spec.image = "localhost/source/placeholder:latest".into();
        spec.validate()?;
        spec.image = crate::build::build_source(ctx, name.as_str(), dir)?;
    }
    spec.validate()?;
    // The daemon must find the image when the first request comes. Over
    // TCP the local store is not the daemon's: it pulls when it starts one.
    if ctx.host.is_none() && args.source.is_none() {
        crate::images::resolve_or_pull(ctx, &spec.image)?;
    }
    let query = if args.no_traffic { "?traffic=none" } else { "" };
    let answer = call(
        ctx,
        Method::POST,
        &format!("/v1/services/{name}/revisions{query}"),
        Some(serde_json::to_vec(&spec)?),
    )?;
    let rev = answer["revision"].as_str().unwrap_or("?");
    if answer["traffic"] == "none" {
        println!("Service {name}: revision {rev} created; traffic unchanged");
    } else {
        println!("Service {name} deployed: revision {rev} takes all traffic");
    }
    if let Some(urls) = answer["urls"].as_array() {
        for u in urls.iter().filter_map(|u| u.as_str()) {
            println!("  {u}");
        }
    }
    Ok(())
}

/// The service as `describe --json` shows it, or `None` if there is none.
fn current(ctx: &Context, name: &ServiceName) -> Result<Option<Value>> {
    let (status, _, bytes) = exchange(ctx, Method::GET, &service_path(name.as_str())?, &[], None)?;
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("the skiff daemon answered {status} without JSON"))?;
    if !status.is_success() {
        bail!("{}", value["error"].as_str().unwrap_or("no reason given"));
    }
    Ok(Some(value))
}

/// The spec of the service's newest revision (names number them in order).
fn latest_spec(service: &Value) -> Option<ServiceSpec> {
    let newest = service["revisions"]
        .as_array()?
        .iter()
        .max_by_key(|r| r["name"].as_str().unwrap_or_default().to_string())?;
    serde_json::from_value(newest["spec"].clone()).ok()
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
