//! HTTP to a Lambda-mode service (`NAME.localhost`, `/NAME/`), as a
//! function URL or an API Gateway HTTP API works: the request becomes a
//! payload format 2.0 event, and the function's result becomes the
//! response: `{statusCode, headers, cookies, body, isBase64Encoded}`, or
//! any other JSON value as a 200 `application/json` body. A function
//! error, a timeout or a result that is not JSON is a 502, as with AWS.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::invoke::{decode_base64_bytes, encode_base64, run, Meta};
use super::stream::{read_prelude, ChunkBody, Streamed, HTTP_INTEGRATION};
use super::{percent_decode, Reply, MAX_PAYLOAD};
use crate::serve::instances::{Revision, Unavailable};
use crate::serve::{full, json_error, set_header, Body, Daemon};

/// The request as an event, run on `rev`, the result as a response.
pub async fn handle(
    daemon: &Arc<Daemon>,
    rev: &Arc<Revision>,
    peer: SocketAddr,
    path_and_query: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let id = super::request_id();
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_PAYLOAD).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than Lambda's limit of {MAX_PAYLOAD} bytes"),
            )
        }
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let event = event(&parts, path_and_query, peer, &id, &body);
    let meta = Meta {
        function_arn: daemon.hub.function_arn(rev.name.service().as_str()),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
    };
    let done = run(
        daemon,
        rev,
        id,
        Bytes::from(event.to_string()),
        &meta,
        false,
        true,
    )
    .await;
    let result = match done.reply {
        Ok(Reply::Response(b)) => b,
        Ok(Reply::Stream(s)) => return streamed(s).await,
        Ok(Reply::Error { body, .. }) => {
            tracing::debug!(revision = %rev.name, "function error: {}", String::from_utf8_lossy(&body));
            return internal_error();
        }
        Err(Unavailable::QueueFull(_)) | Err(Unavailable::Timeout(_)) => {
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "Rate Exceeded.")
        }
        Err(Unavailable::Retired) | Err(Unavailable::StartFailed(_)) => return internal_error(),
    };
    let mut resp = response(&result).unwrap_or_else(internal_error);
    set_header(
        resp.headers_mut(),
        "x-skiff-revision",
        &rev.name.to_string(),
    );
    set_header(resp.headers_mut(), "x-amzn-requestid", &done.id);
    resp
}

/// A streamed result: with the HTTP integration prelude, its status,
/// headers and cookies, then the body as it comes; otherwise 200 and the
/// bytes as they come.
async fn streamed(mut s: Streamed) -> Response<Body> {
    let (prelude, first) = if s.content_type.as_deref() == Some(HTTP_INTEGRATION) {
        match read_prelude(&mut s).await {
            Ok((p, first)) => (Some(p), first),
            Err(f) => {
                tracing::debug!("function stream: {}: {}", f.kind, f.message);
                return internal_error();
            }
        }
    } else {
        (None, Bytes::new())
    };
    let content_type = s.content_type.clone();
    let mut r = Response::new(ChunkBody::new(first, s).boxed());
    match prelude {
        Some(p) => {
            if let Some(code) = p["statusCode"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                *r.status_mut() = code;
            }
            if let Some(p) = p.as_object() {
                add_headers_and_cookies(p, r.headers_mut());
            }
        }
        None => {
            if let Some(Ok(v)) = content_type.as_deref().map(HeaderValue::from_str) {
                r.headers_mut().insert(CONTENT_TYPE, v);
            }
        }
    }
    r
}

fn internal_error() -> Response<Body> {
    let mut r = Response::new(full(r#"{"message":"Internal Server Error"}"#));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Payload format 2.0 (the function URL and HTTP API event).
fn event(
    parts: &hyper::http::request::Parts,
    path_and_query: &str,
    peer: SocketAddr,
    id: &str,
    body: &[u8],
) -> Value {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    // Repeated headers are joined with commas; cookies go apart.
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let Ok(v) = value.to_str() else { continue };
        if name == hyper::header::COOKIE {
            cookies.extend(v.split(';').map(|c| Value::from(c.trim())));
            continue;
        }
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push(',');
                prev.push_str(v);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::from(v));
            }
        }
    }
    let mut params = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k, true), percent_decode(v, true));
        match params.get_mut(&k) {
            Some(Value::String(prev)) => {
                prev.push(',');
                prev.push_str(&v);
            }
            _ => {
                params.insert(k, Value::from(v));
            }
        }
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let textual = std::str::from_utf8(body).is_ok() && is_text(content_type);
    let now = skiff_state::now_ms();
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let mut ev = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": host.split('.').next().unwrap_or(host),
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(host),
            "http": {
                "method": parts.method.as_str(),
                "path": path,
                "protocol": format!("{:?}", parts.version),
                "sourceIp": peer.ip().to_string(),
                "userAgent": parts.headers.get(hyper::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or(""),
            },
            "requestId": id,
            "routeKey": "$default",
            "stage": "$default",
            "time": clf_time(now),
            "timeEpoch": now,
        },
        "isBase64Encoded": !textual && !body.is_empty(),
    });
    if !cookies.is_empty() {
        ev["cookies"] = Value::from(cookies);
    }
    if !params.is_empty() {
        ev["queryStringParameters"] = Value::Object(params);
    }
    if !body.is_empty() {
        ev["body"] = if textual {
            Value::from(String::from_utf8_lossy(body))
        } else {
            Value::from(encode_base64(body))
        };
    }
    ev
}

/// The function's result as an HTTP response; `None` if it is not JSON.
fn response(result: &[u8]) -> Option<Response<Body>> {
    let v: Value = serde_json::from_slice(result).ok()?;
    let shaped = v.as_object().filter(|o| o.contains_key("statusCode"));
    let Some(o) = shaped else {
        // Any other JSON: the body itself, 200.
        let mut r = Response::new(full(v.to_string()));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Some(r);
    };
    let status = o
        .get("statusCode")?
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())?;
    let body = match o.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if o.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            Bytes::from(decode_base64_bytes(s)?)
        }
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    add_headers_and_cookies(o, h);
    if !h.contains_key(CONTENT_TYPE) {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Some(r)
}

/// A function's `headers` (values as text, numbers written out) and
/// `cookies` (each a Set-Cookie), from a result or a stream's prelude;
/// what is not a valid header is left out.
fn add_headers_and_cookies(o: &Map<String, Value>, h: &mut hyper::HeaderMap) {
    if let Some(Value::Object(headers)) = o.get("headers") {
        for (k, v) in headers {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::from_str(&text),
            ) {
                h.append(n, v);
            }
        }
    }
    if let Some(Value::Array(cookies)) = o.get("cookies") {
        for c in cookies.iter().filter_map(Value::as_str) {
            if let Ok(v) = HeaderValue::from_str(c) {
                h.append(SET_COOKIE, v);
            }
        }
    }
}

fn is_text(content_type: &str) -> bool {
    let ct = content_type.to_ascii_lowercase();
    ct.is_empty()
        || ct.starts_with("text/")
        || [
            "json",
            "xml",
            "javascript",
            "x-www-form-urlencoded",
            "yaml",
            "csv",
        ]
        .iter()
        .any(|t| ct.contains(t))
}

/// `12/Mar/2020:19:03:58 +0000`, as the event's `time`.
fn clf_time(ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ms.div_euclid(1000);
    let (y, m, d) = super::civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_become_v2_events() {
        let req = Request::builder()
            .method("POST")
            .uri("/ignored")
            .header("host", "hello.localhost:8080")
            .header("content-type", "application/json")
            .header("cookie", "a=1; b=2")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let ev = event(&parts, "/p/q?x=1&x=2&y=a%20b", peer, "rid", br#"{"k":1}"#);
        assert_eq!(ev["version"], "2.0");
        assert_eq!(ev["rawPath"], "/p/q");
        assert_eq!(ev["rawQueryString"], "x=1&x=2&y=a%20b");
        assert_eq!(ev["queryStringParameters"]["x"], "1,2");
        assert_eq!(ev["queryStringParameters"]["y"], "a b");
        assert_eq!(ev["headers"]["x-multi"], "1,2");
        assert_eq!(ev["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(ev["requestContext"]["http"]["method"], "POST");
        assert_eq!(ev["requestContext"]["http"]["sourceIp"], "127.0.0.1");
        assert_eq!(ev["requestContext"]["domainPrefix"], "hello");
        assert_eq!(ev["body"], r#"{"k":1}"#);
        assert_eq!(ev["isBase64Encoded"], false);
        // Binary bodies go base64.
        let req = Request::builder()
            .header("content-type", "application/octet-stream")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let ev = event(&parts, "/", peer, "rid", &[0, 255, 1]);
        assert_eq!(ev["isBase64Encoded"], true);
        assert_eq!(ev["body"], "AP8B");
        assert_eq!(clf_time(1_583_348_638_390), "04/Mar/2020:19:03:58 +0000");
    }

    #[test]
    fn results_become_responses() {
        let r = response(
            br#"{"statusCode":201,"headers":{"x-a":"1"},"cookies":["s=1","t=2"],"body":"made"}"#,
        )
        .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers().get_all(SET_COOKIE).iter().count(), 2);
        let r = response(br#"{"statusCode":200,"body":"AP8B","isBase64Encoded":true}"#).unwrap();
        assert_eq!(r.status(), 200);
        // Plain JSON: 200 with it as the body.
        let r = response(br#"{"message":"hi"}"#).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert!(response(b"not json").is_none());
        assert!(response(br#"{"statusCode":"abc"}"#).is_none());
    }
}
