//! The Lambda Invoke API, as the `aws` CLI and the SDKs call it:
//! `POST /2015-03-31/functions/{name}/invocations[?Qualifier=Q]` with
//! `X-Amz-Invocation-Type` `RequestResponse` (200 and the function's
//! result), `Event` (202: queued, retried twice with backoff, then logged
//! as failed) or `DryRun` (204); `X-Amz-Log-Type: Tail` returns the
//! invocation's log tail, base64, in `X-Amz-Log-Result`. Errors carry
//! `x-amzn-ErrorType` and a `{"Type", "message"}` body, as AWS's do, so
//! botocore names them (`ResourceNotFoundException`, ...).
//!
//! The qualifier: none or `$LATEST` means the service's traffic split; a
//! number is that revision; anything else a traffic tag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use skiff_core::Mode;
use tokio::sync::{mpsc, oneshot};

use super::{percent_decode, stream, Invocation, Reply, MAX_EVENT_PAYLOAD, MAX_PAYLOAD};
use crate::context::Context;
use crate::serve::instances::{Revision, Unavailable};
use crate::serve::{empty, full, header_str, read_body, set_header, Body, Daemon, ReadError};

/// Where a retried Event invocation waits before its second and third
/// attempts (Lambda waits a minute, then two; a local platform need not
/// keep users that long).
const EVENT_BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];
/// The log tail's size, as Lambda's.
const TAIL: usize = 4096;

/// Is this path the Invoke API's?
pub fn is_invoke_path(path: &str) -> bool {
    path.starts_with("/2015-03-31/functions/") || path.starts_with("/2021-11-15/functions/")
}

/// The gateway's entry: `/2015-03-31/functions/{name}/invocations`.
pub async fn api(
    daemon: &Arc<Daemon>,
    req: Request<Body>,
) -> (Option<Arc<Revision>>, Response<Body>) {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (name, streaming) = match segs.as_slice() {
        ["2015-03-31", "functions", name, "invocations"] => (*name, false),
        ["2021-11-15", "functions", name, "response-streaming-invocations"] => (*name, true),
        _ => {
            return (
                None,
                aws_error(
                    StatusCode::NOT_FOUND,
                    "UnknownOperationException",
                    &format!("no such Lambda API call: {} {path}", req.method()),
                ),
            )
        }
    };
    if req.method() != Method::POST {
        return (
            None,
            aws_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UnknownOperationException",
                "invocations take POST",
            ),
        );
    }
    let name = percent_decode(name, false);
    let qualifier = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("Qualifier="))
            .map(|q| percent_decode(q, false))
    });
    invoke(daemon, &name, qualifier, req, streaming).await
}

/// One invocation, from the gateway or `skiff invoke` (the control API);
/// `streaming`: InvokeWithResponseStream (the result as event-stream
/// messages, as the function makes it).
pub async fn invoke(
    daemon: &Arc<Daemon>,
    name: &str,
    qualifier: Option<String>,
    req: Request<Body>,
    streaming: bool,
) -> (Option<Arc<Revision>>, Response<Body>) {
    // `name`, `name:qualifier` or a full ARN.
    let (name, qualifier) = match split_function_name(name) {
        Some((n, q)) => (n, q.or(qualifier)),
        None => {
            return (
                None,
                aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    &format!("{name:?} is not a function name or ARN"),
                ),
            )
        }
    };
    let arn = daemon.hub.function_arn(&name);
    let not_found = |q: Option<&str>| {
        let full = match q {
            Some(q) => format!("{arn}:{q}"),
            None => arn.clone(),
        };
        aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {full}"),
        )
    };
    let Some((rev, version)) = daemon.function_revision(&name, qualifier.as_deref()) else {
        return (None, not_found(qualifier.as_deref()));
    };
    if rev.spec.mode != Mode::Lambda {
        return (
            None,
            aws_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                &format!("Function not found: {arn} ({name} is an HTTP service: call it at http://{name}.localhost/)"),
            ),
        );
    }
    let kind = header_str(req.headers(), "x-amz-invocation-type").unwrap_or("RequestResponse");
    let limit = match kind {
        "RequestResponse" | "DryRun" => MAX_PAYLOAD,
        "Event" => MAX_EVENT_PAYLOAD,
        other => {
            return (
                Some(rev),
                aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    &format!(
                    "X-Amz-Invocation-Type {other:?}: expected RequestResponse, Event or DryRun"
                ),
                ),
            )
        }
    };
    let kind = kind.to_string();
    let tail = header_str(req.headers(), "x-amz-log-type") == Some("Tail");
    let meta = Meta {
        function_arn: match &qualifier {
            Some(q) => format!("{arn}:{q}"),
            None => arn.clone(),
        },
        trace_id: header_str(req.headers(), "x-amzn-trace-id").map(str::to_string),
        client_context: header_str(req.headers(), "x-amz-client-context").and_then(decode_base64),
        cognito_identity: None,
    };
    let payload = match read_body(req.into_body(), limit).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => {
            return (
                Some(rev),
                aws_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    &format!(
                        "Request must be smaller than {limit} bytes for the {kind} invocation type"
                    ),
                ),
            )
        }
        Err(ReadError::Broken(e)) => {
            return (
                Some(rev),
                aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    &format!("cannot read the payload: {e}"),
                ),
            )
        }
    };
    let payload = if payload.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    if !is_json(&payload).await {
        return (
            Some(rev),
            aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "Could not parse request body into json: the payload is not valid JSON",
            ),
        );
    }
    match kind.as_str() {
        "DryRun" => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            (Some(rev), r)
        }
        "Event" => {
            let id = super::request_id();
            let (d, r) = (daemon.clone(), rev.clone());
            let event_id = id.clone();
            tokio::spawn(async move { run_event(d, r, payload, meta, event_id).await });
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::ACCEPTED;
            set_header(resp.headers_mut(), "x-amzn-requestid", &id);
            (Some(rev), resp)
        }
        _ => {
            let id = super::request_id();
            let done = run(daemon, &rev, id, payload, &meta, tail, streaming).await;
            if streaming && done.reply.is_ok() {
                return (Some(rev), done.into_event_stream(&version));
            }
            (Some(rev), done.into_response(&version, tail))
        }
    }
}

/// What an invocation carries besides its payload.
#[derive(Clone)]
pub struct Meta {
    pub function_arn: String,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
}

/// An invocation's end.
pub struct Done {
    pub id: String,
    pub reply: Result<Reply, Unavailable>,
    /// The instance's log lines written during it, with Lambda's
    /// START/END/REPORT lines.
    pub log: Option<String>,
}

impl Done {
    /// InvokeWithResponseStream's answer: 200, then event-stream messages.
    fn into_event_stream(self, version: &str) -> Response<Body> {
        let Ok(reply) = self.reply else {
            return self.into_response(version, false);
        };
        let mut r = Response::new(stream::event_stream(reply, self.log).boxed());
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        set_header(h, "x-amzn-requestid", &self.id);
        set_header(h, "x-amz-executed-version", version);
        r
    }

    fn into_response(self, version: &str, tail: bool) -> Response<Body> {
        let (function_error, body) = match self.reply {
            Ok(Reply::Response(b)) => (None, b),
            Ok(Reply::Error { kind, body }) => (Some(kind), body),
            // (Buffered before it gets here.)
            Ok(Reply::Stream(_)) => (None, Bytes::new()),
            Err(Unavailable::QueueFull(_)) => {
                return aws_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequestsException",
                    "Rate Exceeded.",
                )
            }
            Err(Unavailable::Timeout(t)) => {
                return aws_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequestsException",
                    &format!(
                        "Rate Exceeded: no instance was free within {:.2} seconds",
                        t.as_secs_f64()
                    ),
                )
            }
            Err(Unavailable::Retired) => {
                return aws_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceException",
                    "the function's revision was replaced while the invocation waited",
                )
            }
            Err(Unavailable::StartFailed(why)) => (
                Some("Unhandled".to_string()),
                Bytes::from(
                    json!({ "errorMessage": why, "errorType": "Runtime.InitError" }).to_string(),
                ),
            ),
        };
        let mut r = Response::new(full(body));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        set_header(h, "x-amzn-requestid", &self.id);
        set_header(h, "x-amz-executed-version", version);
        if function_error.is_some() {
            // Lambda says `Unhandled` for whatever the runtime reported
            // (`Handled` was only ever the old Node.js callback's).
            set_header(h, "x-amz-function-error", "Unhandled");
        }
        if tail {
            let log = self.log.unwrap_or_default();
            let log = log.as_bytes();
            set_header(
                h,
                "x-amz-log-result",
                &encode_base64(&log[log.len().saturating_sub(TAIL)..]),
            );
        }
        r
    }
}

/// Runs one invocation on an instance of `rev`: a lease (concurrency 1),
/// the payload handed to its runtime client, its result awaited at most
/// the function's timeout (then the instance is killed, as Lambda does).
pub async fn run(
    daemon: &Arc<Daemon>,
    rev: &Arc<Revision>,
    id: String,
    payload: Bytes,
    meta: &Meta,
    want_log: bool,
    want_stream: bool,
) -> Done {
    let began = Instant::now();
    let lease = match rev.acquire().await {
        Ok(l) => l,
        Err(e) => {
            return Done {
                id,
                reply: Err(e),
                log: None,
            }
        }
    };
    if let Some(cold) = lease.cold {
        rev.metrics.cold_start.observe(cold);
    }
    let Some(slot) = lease.instance.lambda.clone() else {
        return Done {
            id,
            reply: Err(Unavailable::StartFailed(
                "the instance does not speak the Runtime API".into(),
            )),
            log: None,
        };
    };
    // Only a caller that wants the log tail pays for finding it.
    let log_start = want_log.then(|| {
        let path = Context::new(daemon.root.to_path_buf())
            .service_logs_dir(rev.name.service())
            .join(format!("{}.log", lease.instance.name));
        let from = std::fs::metadata(&path).map_or(0, |m| m.len());
        (path, from)
    });
    let timeout = rev.spec.timeout;
    let deadline_ms = skiff_state::now_ms().max(0) as u64 + timeout.as_millis() as u64;
    let (tx, rx) = oneshot::channel();
    let inv = Invocation {
        id: id.clone(),
        payload,
        deadline_ms,
        function_arn: meta.function_arn.clone(),
        trace_id: meta.trace_id.clone().unwrap_or_else(super::trace_id),
        client_context: meta.client_context.clone(),
        cognito_identity: meta.cognito_identity.clone(),
        reply: tx,
    };
    let sent = Instant::now();
    // The instance is busy until its runtime answers or is killed, even
    // if the caller goes away: the lease lives in a task of its own.
    let (reply_tx, reply_rx) = oneshot::channel();
    {
        let (rev, id) = (rev.clone(), id.clone());
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::spawn(async move {
            let timed_out = |rev: &Arc<Revision>| {
                tracing::warn!(instance = %lease.instance.name, %id, "invocation timed out: killing the instance");
                rev.kill(&lease.instance);
                Reply::Error {
                    kind: "Unhandled".into(),
                    body: Bytes::from(
                        json!({
                            "errorType": "Sandbox.Timedout",
                            "errorMessage": format!(
                                "RequestId: {id} Error: Task timed out after {:.2} seconds",
                                timeout.as_secs_f64()
                            ),
                        })
                        .to_string(),
                    ),
                }
            };
            if !slot.send(inv) {
                let _ = reply_tx.send(exited(&id));
                return;
            }
            let reply = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(reply)) => reply,
                // The instance went away with the invocation.
                Ok(Err(_)) => exited(&id),
                Err(_) => timed_out(&rev),
            };
            let Reply::Stream(mut from) = reply else {
                drop(lease);
                let _ = reply_tx.send(reply);
                return;
            };
            // Streaming: the instance stays busy until its stream ends
            // (within the timeout), whether or not the caller still reads.
            let (tx, chunks) = mpsc::channel(16);
            let _ = reply_tx.send(Reply::Stream(stream::Streamed {
                content_type: from.content_type.take(),
                chunks,
            }));
            loop {
                match tokio::time::timeout_at(deadline, from.chunks.recv()).await {
                    Ok(Some(chunk)) => {
                        let _ = tx.send(chunk).await;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        if let Reply::Error { body, .. } = timed_out(&rev) {
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let f = stream::Failure {
                                kind: "Sandbox.Timedout".into(),
                                message: v["errorMessage"].as_str().unwrap_or_default().to_string(),
                            };
                            let _ = tx.send(Err(f)).await;
                        }
                        break;
                    }
                }
            }
            drop(lease);
        });
    }
    let mut reply = reply_rx.await.unwrap_or_else(|_| exited(&id));
    if !want_stream {
        if let Reply::Stream(s) = reply {
            reply = stream::buffer(s).await;
        }
    }
    let took = sent.elapsed();
    rev.metrics.request(
        if matches!(reply, Reply::Response(_) | Reply::Stream(_)) {
            200
        } else {
            500
        },
        began.elapsed(),
    );
    let log = if let Some((log_path, log_from)) = log_start {
        // The monitor writes what the runtime printed a moment after it
        // printed it: give it that moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut text = format!("START RequestId: {id} Version: $LATEST\n");
        let tail = tokio::task::spawn_blocking(move || read_log_since(&log_path, log_from));
        text.push_str(&tail.await.unwrap_or_default());
        let ms = took.as_secs_f64() * 1000.0;
        text.push_str(&format!(
            "END RequestId: {id}\nREPORT RequestId: {id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\t\n",
            ms.ceil() as u64,
            rev.spec.memory.unwrap_or(super::DEFAULT_MEMORY) >> 20,
        ));
        Some(text)
    } else {
        None
    };
    Done {
        id,
        reply: Ok(reply),
        log,
    }
}

fn exited(id: &str) -> Reply {
    Reply::Error {
        kind: "Unhandled".into(),
        body: Bytes::from(
            json!({
                "errorType": "Runtime.ExitError",
                "errorMessage": format!("RequestId: {id} Error: Runtime exited without providing a reason"),
            })
            .to_string(),
        ),
    }
}

/// An Event invocation: tried, then tried again (twice by default) with
/// backoff if the function failed; after the last failure, logged and
/// sent to the revision's on-failure destination.
async fn run_event(
    daemon: Arc<Daemon>,
    rev: Arc<Revision>,
    payload: Bytes,
    meta: Meta,
    id: String,
) {
    let tries = usize::from(rev.spec.event_retries) + 1;
    for attempt in 1..=tries {
        // Retries keep the event's request id, as Lambda's do.
        let done = run(
            &daemon,
            &rev,
            id.clone(),
            payload.clone(),
            &meta,
            false,
            false,
        )
        .await;
        let (why, response) = match done.reply {
            Ok(Reply::Response(_)) | Ok(Reply::Stream(_)) => return,
            Ok(Reply::Error { body, .. }) => (String::from_utf8_lossy(&body).into_owned(), body),
            Err(e) => {
                let why = match e {
                    Unavailable::Retired => "the revision was retired".into(),
                    Unavailable::StartFailed(w) => w,
                    Unavailable::QueueFull(_) => "throttled".into(),
                    Unavailable::Timeout(_) => "no instance was free in time".into(),
                };
                let body = json!({ "errorMessage": why, "errorType": "Skiff.Unavailable" });
                (why, Bytes::from(body.to_string()))
            }
        };
        if attempt < tries {
            tracing::warn!(function = %rev.name.service(), event = %id, attempt, "asynchronous invocation failed, retrying: {why}");
            tokio::time::sleep(EVENT_BACKOFF[(attempt - 1).min(EVENT_BACKOFF.len() - 1)]).await;
            continue;
        }
        tracing::error!(function = %rev.name.service(), revision = %rev.name, event = %id, "asynchronous invocation failed after {tries} attempt(s): {why}");
        if let Some(dest) = &rev.spec.on_failure {
            let record = json!({
                "version": "1.0",
                "timestamp": super::manage::iso8601(skiff_state::now_ms()),
                "requestContext": {
                    "requestId": id,
                    "functionArn": format!("{}:$LATEST", meta.function_arn),
                    "condition": "RetriesExhausted",
                    "approximateInvokeCount": tries,
                },
                "requestPayload": serde_json::from_slice::<serde_json::Value>(&payload).unwrap_or_default(),
                "responseContext": {
                    "statusCode": 200,
                    "executedVersion": "$LATEST",
                    "functionError": "Unhandled",
                },
                "responsePayload": serde_json::from_slice::<serde_json::Value>(&response).unwrap_or_default(),
            });
            if let Err(e) = deliver(&daemon, dest, record).await {
                tracing::error!(function = %rev.name.service(), event = %id, destination = %dest, "on-failure destination: {e}");
            }
        }
        return;
    }
}

/// Sends a destination record: POSTed to an `http://` URL, or an Event
/// invocation of a function (tried once: a failing destination must not
/// loop).
async fn deliver(
    daemon: &Arc<Daemon>,
    dest: &str,
    record: serde_json::Value,
) -> Result<(), String> {
    let body = Bytes::from(record.to_string());
    if dest.starts_with("http://") {
        let req = Request::builder()
            .method(Method::POST)
            .uri(dest)
            .header(CONTENT_TYPE, "application/json")
            .body(full(body))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), daemon.client.request(req))
            .await
            .map_err(|_| "no answer within 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        return match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(format!("{dest} answered {s}")),
        };
    }
    let (name, _) =
        split_function_name(dest).ok_or_else(|| format!("{dest:?} is not a function"))?;
    let (rev, _) = daemon
        .function_revision(&name, None)
        .ok_or_else(|| format!("no function {name}"))?;
    let meta = Meta {
        function_arn: daemon.hub.function_arn(&name),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
    };
    match run(daemon, &rev, super::request_id(), body, &meta, false, false)
        .await
        .reply
    {
        Ok(Reply::Response(_)) | Ok(Reply::Stream(_)) => Ok(()),
        Ok(Reply::Error { body, .. }) => Err(String::from_utf8_lossy(&body).into_owned()),
        Err(_) => Err(format!("function {name} could not run")),
    }
}

/// Whether a payload is JSON. Up to 6 MB of it takes milliseconds to
/// check, which must not hold up the async threads (and every request on
/// them): a large one is checked on a blocking thread.
async fn is_json(payload: &Bytes) -> bool {
    let check = |p: &[u8]| serde_json::from_slice::<serde::de::IgnoredAny>(p).is_ok();
    if payload.len() < 64 << 10 {
        return check(payload);
    }
    let p = payload.clone();
    tokio::task::spawn_blocking(move || check(&p))
        .await
        .unwrap_or(false)
}

/// The `log` fields of the instance's log records written since `from`.
fn read_log_since(path: &std::path::Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = String::new();
    let Ok(mut f) = std::fs::File::open(path) else {
        return out;
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return out;
    }
    let mut raw = String::new();
    // At most the last few tails' worth: the header keeps 4 KB.
    let _ = f.take(1 << 20).read_to_string(&mut raw);
    for line in raw.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            out.push_str(v["log"].as_str().unwrap_or_default());
        }
    }
    out
}

/// `NAME`, `NAME:QUALIFIER` or `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`.
fn split_function_name(s: &str) -> Option<(String, Option<String>)> {
    let rest = match s.strip_prefix("arn:") {
        Some(arn) => {
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            match parts.as_slice() {
                [_, "lambda", _, _, "function", rest] => *rest,
                _ => return None,
            }
        }
        None => s,
    };
    let (name, q) = match rest.split_once(':') {
        Some((n, q)) => (n, Some(q.to_string())),
        None => (rest, None),
    };
    (!name.is_empty()).then(|| (name.to_string(), q))
}

/// An error as AWS's REST-JSON services send it.
pub fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = json!({ "Type": "User", "message": message, "__type": kind });
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    set_header(h, "x-amzn-errortype", kind);
    r
}

pub fn encode_base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn decode_base64_bytes(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A base64 header carrying text (the client context); `None` if it is not.
pub fn decode_base64(s: &str) -> Option<String> {
    String::from_utf8(decode_base64_bytes(s)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_and_arns() {
        assert_eq!(split_function_name("hello"), Some(("hello".into(), None)));
        assert_eq!(
            split_function_name("hello:3"),
            Some(("hello".into(), Some("3".into())))
        );
        assert_eq!(
            split_function_name("arn:aws:lambda:us-east-1:000000000000:function:hello:prod"),
            Some(("hello".into(), Some("prod".into())))
        );
        assert_eq!(split_function_name("arn:aws:s3:::bucket"), None);
    }

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "{\"custom\":{}}",
        ] {
            assert_eq!(decode_base64(&encode_base64(s.as_bytes())).unwrap(), s);
        }
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
    }
}
