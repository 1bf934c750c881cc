//! The Lambda Runtime API (`/2018-06-01`) that runtime clients in the
//! containers call: `GET /runtime/invocation/next` (a long poll),
//! `POST /runtime/invocation/{id}/response` and `/error`, and
//! `POST /runtime/init/error`. Status codes as Lambda's: 202 accepted,
//! 400 an id that is not outstanding, 403 a request from no known
//! instance, 413 a response over 6 MB (the caller then gets
//! `Function.ResponseSizeTooLarge`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use super::stream::{Failure, Streamed, MAX_STREAM};
use super::{Hub, Refused, Reply, Slot, MAX_PAYLOAD};
use crate::serve::{full, set_header, Body};

/// Serves the Runtime API until the listener fails for good.
pub async fn serve(listener: tokio::net::TcpListener, hub: Arc<Hub>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("runtime API accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let hub = hub.clone();
                async move { Ok::<_, Infallible>(handle(&hub, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "runtime API connection: {e}");
            }
        });
    }
}

async fn handle(hub: &Hub, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let IpAddr::V4(ip) = peer.ip() else {
        return error(StatusCode::FORBIDDEN, "Forbidden", "not an instance");
    };
    let Some(slot) = hub.find(ip).await else {
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "no Skiff instance has this address",
        );
    };
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/2018-06-01/runtime/") else {
        return error(StatusCode::NOT_FOUND, "NotFound", "unknown path");
    };
    let segs: Vec<&str> = rest.split('/').collect();
    match (req.method().clone(), segs.as_slice()) {
        (Method::GET, ["invocation", "next"]) => next(&slot).await,
        (Method::POST, ["invocation", id, "response"]) if is_streaming(&req) => {
            let id = id.to_string();
            stream_response(&slot, &id, req).await
        }
        (Method::POST, ["invocation", id, "response"]) => {
            let id = id.to_string();
            let body = match read(req).await {
                Ok(b) => b,
                Err(resp) => {
                    // Too large: the caller hears it, the runtime is told.
                    let _ = slot.answer(&id, too_large_for_caller());
                    return *resp;
                }
            };
            accepted(slot.answer(&id, Reply::Response(body)), &slot, &id)
        }
        (Method::POST, ["invocation", id, "error"]) => {
            let id = id.to_string();
            let kind = error_type(&req);
            let body = match read(req).await {
                Ok(b) => b,
                Err(resp) => return *resp,
            };
            let body = error_payload(&kind, body);
            accepted(slot.answer(&id, Reply::Error { kind, body }), &slot, &id)
        }
        (Method::POST, ["init", "error"]) => {
            let kind = error_type(&req);
            let body = read(req).await.unwrap_or_default();
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let msg = v["errorMessage"].as_str()?.to_string();
                    let ty = v["errorType"].as_str().unwrap_or(&kind).to_string();
                    Some(format!("{ty}: {msg}"))
                })
                .unwrap_or_else(|| format!("{kind}: {}", String::from_utf8_lossy(&body)));
            tracing::warn!(instance = %slot.instance, "init error: {why}");
            slot.init_failed(why);
            status_ok()
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no such Runtime API call: {} {path}", req.method()),
        ),
    }
}

fn is_streaming(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("lambda-runtime-function-response-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"))
}

/// A streamed result: the caller gets the chunks as they arrive (the
/// runtime waits while the caller is slow); an error in the trailers, or
/// more than 20 MB, ends the stream with an error.
async fn stream_response(slot: &Slot, id: &str, req: Request<Incoming>) -> Response<Body> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let streamed = Streamed {
        content_type,
        chunks: rx,
    };
    if let Err(r) = slot.answer(id, Reply::Stream(streamed)) {
        return accepted(Err(r), slot, id);
    }
    let mut body = req.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        let failure = match frame {
            Err(e) => Some(Failure {
                kind: "Runtime.StreamError".into(),
                message: format!("the response stream broke off: {e}"),
            }),
            Ok(f) => match f.into_data() {
                Ok(data) => {
                    total += data.len();
                    if total > MAX_STREAM {
                        let f = Failure {
                            kind: "Function.ResponseSizeTooLarge".into(),
                            message: format!("Response payload size exceeded maximum allowed payload size ({MAX_STREAM} bytes)."),
                        };
                        let _ = tx.send(Err(f)).await;
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "RequestEntityTooLarge",
                            &format!("Exceeded maximum allowed payload size ({MAX_STREAM} bytes)."),
                        );
                    }
                    // A caller that left is no reason to stop reading.
                    let _ = tx.send(Ok(data)).await;
                    None
                }
                Err(f) => f.into_trailers().ok().and_then(|t| {
                    let kind = t.get("lambda-runtime-function-error-type")?.to_str().ok()?;
                    let message = t
                        .get("lambda-runtime-function-error-body")
                        .and_then(|v| v.to_str().ok())
                        .and_then(super::invoke::decode_base64)
                        .unwrap_or_default();
                    Some(Failure {
                        kind: kind.to_string(),
                        message,
                    })
                }),
            },
        };
        if let Some(f) = failure {
            let _ = tx.send(Err(f)).await;
            break;
        }
    }
    status_ok()
}

async fn next(slot: &Slot) -> Response<Body> {
    let Some(inv) = slot.next().await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ContainerError",
            "the instance is being stopped",
        );
    };
    let mut r = Response::new(full(inv.payload));
    let h = r.headers_mut();
    let mut set = |k: &'static str, v: &str| set_header(h, k, v);
    set("lambda-runtime-aws-request-id", &inv.id);
    set("lambda-runtime-deadline-ms", &inv.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", &inv.function_arn);
    set("lambda-runtime-trace-id", &inv.trace_id);
    if let Some(c) = &inv.client_context {
        set("lambda-runtime-client-context", c);
    }
    if let Some(c) = &inv.cognito_identity {
        set("lambda-runtime-cognito-identity", c);
    }
    set("content-type", "application/json");
    slot.hand_out(inv.id, inv.reply);
    r
}

fn accepted(result: Result<(), Refused>, slot: &Slot, id: &str) -> Response<Body> {
    match result {
        Ok(()) => status_ok(),
        Err(Refused::UnknownId) => {
            tracing::debug!(instance = %slot.instance, id, "post for an id not outstanding");
            error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestID",
                &format!("no invocation {id} is waiting for a result from this instance"),
            )
        }
    }
}

fn error_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("Unhandled")
        .to_string()
}

/// The error body as the caller gets it: the runtime's JSON as it is, or
/// made into Lambda's shape.
fn error_payload(kind: &str, body: Bytes) -> Bytes {
    if serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object()) {
        return body;
    }
    let msg = String::from_utf8_lossy(&body);
    Bytes::from(json!({ "errorMessage": msg, "errorType": kind }).to_string())
}

fn too_large_for_caller() -> Reply {
    Reply::Error {
        kind: "Unhandled".into(),
        body: Bytes::from(
            json!({
                "errorMessage": format!("Response payload size exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."),
                "errorType": "Function.ResponseSizeTooLarge",
            })
            .to_string(),
        ),
    }
}

/// The body, at most 6 MB; more gets 413.
async fn read(req: Request<Incoming>) -> Result<Bytes, Box<Response<Body>>> {
    match Limited::new(req.into_body(), MAX_PAYLOAD).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let mut r = error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."),
            );
            // The rest of the body is not read: the connection closes, or a
            // client still writing it (busybox wget does, before it reads
            // any answer) would wait on full buffers for ever.
            r.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            Err(Box::new(r))
        }
        Err(e) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!("cannot read the body: {e}"),
        ))),
    }
}

fn status_ok() -> Response<Body> {
    let mut r = json_response(StatusCode::ACCEPTED, json!({ "status": "OK" }));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

fn error(status: StatusCode, kind: &str, msg: &str) -> Response<Body> {
    json_response(status, json!({ "errorMessage": msg, "errorType": kind }))
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_payloads_keep_json_and_wrap_the_rest() {
        let kept = error_payload(
            "Unhandled",
            Bytes::from_static(br#"{"errorMessage":"boom","errorType":"ValueError"}"#),
        );
        assert_eq!(
            &kept[..],
            br#"{"errorMessage":"boom","errorType":"ValueError"}"#
        );
        let wrapped = error_payload("Runtime.Custom", Bytes::from_static(b"not json"));
        let v: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
        assert_eq!(v["errorMessage"], "not json");
        assert_eq!(v["errorType"], "Runtime.Custom");
    }
}
