//! The gateway: `Host: NAME.localhost[:port]` or `/NAME/...` (prefix
//! stripped) → a revision of the service, by weighted choice over its
//! traffic split (`TAG-NAME.localhost`: the revision tagged `TAG`) → a lease on one of its instances
//! (waiting while one starts: the activator) → the request proxied over a
//! pooled keep-alive connection, bodies streamed both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Request, Response, StatusCode, Uri, Version};

use super::instances::{Lease, Unavailable};
use super::{json_error, Body, Daemon};

type Fut = Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>;

pub fn handle(daemon: Arc<Daemon>, peer: SocketAddr, req: Request<Incoming>) -> Fut {
    Box::pin(proxy(daemon, peer, req))
}

/// Where a request goes: the service, and for path routing the prefix
/// taken off and the path left.
#[derive(Debug, PartialEq, Eq)]
struct Route {
    service: String,
    /// `Some((prefix, rest))` when routed by path.
    stripped: Option<(String, String)>,
}

fn route(host: Option<&str>, path: &str) -> Option<Route> {
    if let Some(host) = host {
        // `NAME.localhost` with an optional port.
        let name = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let name = name.to_ascii_lowercase();
        if let Some(service) = name.strip_suffix(".localhost") {
            if !service.is_empty() && !service.contains('.') {
                return Some(Route {
                    service: service.to_string(),
                    stripped: None,
                });
            }
        }
    }
    let rest = path.strip_prefix('/')?;
    let (service, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if service.is_empty() {
        return None;
    }
    Some(Route {
        service: service.to_string(),
        stripped: Some((format!("/{service}"), tail.to_string())),
    })
}

async fn proxy(daemon: Arc<Daemon>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some(route) = route(host.as_deref(), req.uri().path()) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no service named in the request: use Host: NAME.localhost or the path /NAME/",
        );
    };
    let lease = loop {
        let rev = daemon.pick(&route.service).or_else(|| {
            route
                .stripped
                .is_none()
                .then(|| daemon.pick_tagged(&route.service))
                .flatten()
        });
        let Some(rev) = rev else {
            return json_error(
                StatusCode::NOT_FOUND,
                format!("no service named {:?}", route.service),
            );
        };
        match rev.acquire().await {
            Ok(lease) => break lease,
            // Out of the split while we waited: choose again.
            Err(Unavailable::Retired) => tokio::task::yield_now().await,
            Err(Unavailable::StartFailed(why)) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("service {}: no instance could start: {why}", route.service),
                )
            }
            Err(Unavailable::Timeout(t)) => {
                return json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "service {}: no instance was ready within the timeout ({}s)",
                        route.service,
                        t.as_secs_f64()
                    ),
                )
            }
        }
    };
    if lease.cold.is_some() {
        daemon.cold_starts.fetch_add(1, Ordering::Relaxed);
    }

    let (mut parts, body) = req.into_parts();
    let path_and_query = match &route.stripped {
        Some((_, rest)) => match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.clone(),
        },
        None => parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string()),
    };
    let uri = match format!("http://{}{}", lease.instance.addr, path_and_query).parse::<Uri>() {
        Ok(u) => u,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("bad request path: {e}")),
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    let peer_ip = peer.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {peer_ip}"),
        None => peer_ip,
    };
    set(h, "x-forwarded-for", &xff);
    set(h, "x-forwarded-proto", "http");
    if let Some(host) = &host {
        set(h, "x-forwarded-host", host);
    }
    if let Some((prefix, _)) = &route.stripped {
        set(h, "x-forwarded-prefix", prefix);
    }
    let upstream = Request::from_parts(parts, body.boxed());

    match daemon.client.request(upstream).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            set(
                &mut parts.headers,
                "x-skiff-revision",
                &lease.rev_name().to_string(),
            );
            if let Some(cold) = lease.cold {
                set(
                    &mut parts.headers,
                    "x-skiff-cold-start",
                    &cold.as_millis().to_string(),
                );
            }
            let body = Leased {
                inner: body.boxed(),
                _lease: lease,
            };
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => json_error(
            StatusCode::BAD_GATEWAY,
            format!(
                "service {}: instance {} failed: {e}",
                route.service, lease.instance.name
            ),
        ),
    }
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        h.remove(n);
    }
}

/// A response body that holds the instance's lease until it is done.
struct Leased {
    inner: Body,
    _lease: Lease,
}

impl hyper::body::Body for Leased {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route(Some("hello.localhost:8080"), "/a").unwrap();
        assert_eq!(r.service, "hello");
        assert_eq!(r.stripped, None);
        let r = route(Some("Hello.LOCALHOST"), "/").unwrap();
        assert_eq!(r.service, "hello");
        let r = route(Some("127.0.0.1:8080"), "/hello/x/y").unwrap();
        assert_eq!(r.service, "hello");
        assert_eq!(r.stripped, Some(("/hello".into(), "/x/y".into())));
        let r = route(None, "/hello").unwrap();
        assert_eq!(r.stripped, Some(("/hello".into(), "/".into())));
        assert_eq!(route(Some("localhost"), "/"), None);
        assert_eq!(route(Some(".localhost"), "/"), None);
        let r = route(Some("a.b.localhost"), "/svc/").unwrap();
        assert_eq!(r.service, "svc");
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
