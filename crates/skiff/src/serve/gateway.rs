//! The gateway: `Host: NAME.localhost[:port]` or `/NAME/...` (prefix
//! stripped) → a revision of the service, by weighted choice over its
//! traffic split (`TAG-NAME.localhost`: the revision tagged `TAG`) → a lease on one of its instances
//! (waiting while one starts: the activator) → the request proxied over a
//! pooled keep-alive connection, bodies streamed both ways.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, UPGRADE,
};
use hyper::{Request, Response, StatusCode, Uri, Version};

use hyper_util::rt::TokioIo;

use super::instances::{Lease, Revision, Unavailable};
use super::lambda;
use super::upstream::SendError;
use super::{json_error, set_header, Body, BoxError, Daemon, Peer};
use hyper::client::conn::http1::SendRequest;
use skiff_core::Mode;

/// Request bodies larger than this get 413 (Cloud Run's HTTP/1 limit).
pub const MAX_BODY: u64 = 32 << 20;
/// A request body that stops arriving for this long is cut off (408).
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// The request id header: a client's own is kept, otherwise one is made;
/// the instance sees it and the response carries it.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_SKIFF_REVISION: HeaderName = HeaderName::from_static("x-skiff-revision");
const X_SKIFF_COLD_START: HeaderName = HeaderName::from_static("x-skiff-cold-start");

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
        // (Lower-cased only when it is not already: most requests.)
        let name: std::borrow::Cow<str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            name.to_ascii_lowercase().into()
        } else {
            name.into()
        };
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

/// What became of a request, for the metrics: answered by an instance
/// (its body records the request when it ends), or by the gateway, for a
/// revision or for no service at all.
enum Outcome {
    Proxied(Response<Body>),
    Gateway(Option<Arc<Revision>>, Response<Body>),
}

/// Answers one request to the gateway: the Lambda API's, or a service's.
pub async fn handle(daemon: Arc<Daemon>, peer: Peer, req: Request<Incoming>) -> Response<Body> {
    let began = Instant::now();
    let path = req.uri().path();
    let outcome = if lambda::manage::is_manage_path(path) || lambda::invoke::is_invoke_path(path) {
        match lambda_api(&daemon, req).await {
            Ok(resp) => Outcome::Proxied(resp),
            Err(resp) => Outcome::Gateway(None, resp),
        }
    } else {
        proxy(&daemon, &peer, req, began).await
    };
    match outcome {
        Outcome::Proxied(resp) => resp,
        Outcome::Gateway(Some(rev), resp) => {
            rev.metrics.request(resp.status().as_u16(), began.elapsed());
            resp
        }
        Outcome::Gateway(None, resp) => {
            daemon.unrouted(resp.status().as_u16());
            resp
        }
    }
}

async fn proxy(
    daemon: &Arc<Daemon>,
    peer: &Peer,
    mut req: Request<Incoming>,
    began: Instant,
) -> Outcome {
    // The client's Host (an HTTP/2 client sends it as the URI's
    // authority), kept as it came: it is also forwarded.
    let host = match req.headers().get(HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let Some(route) = route(
        host.as_ref().and_then(|h| h.to_str().ok()),
        req.uri().path(),
    ) else {
        return Outcome::Gateway(
            None,
            json_error(
                StatusCode::NOT_FOUND,
                "no service named in the request: use Host: NAME.localhost or the path /NAME/",
            ),
        );
    };
    let pick = || {
        daemon.pick(&route.service).or_else(|| {
            route
                .stripped
                .is_none()
                .then(|| daemon.pick_tagged(&route.service))
                .flatten()
        })
    };
    let Some(mut rev) = pick() else {
        return Outcome::Gateway(
            None,
            json_error(
                StatusCode::NOT_FOUND,
                format!("no service named {:?}", route.service),
            ),
        );
    };
    // Refused before any instance is woken for it.
    if let Some(len) = content_length(req.headers()) {
        if len > MAX_BODY {
            return Outcome::Gateway(Some(rev), too_large(&route.service));
        }
    }
    let upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    let path_and_query = |uri: &Uri| match &route.stripped {
        Some((_, rest)) => match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.clone(),
        },
        None => uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string()),
    };
    if rev.spec.mode == Mode::Lambda {
        // Not proxied: the request becomes an event for the function
        // (which counts itself on the revision).
        let path_and_query = path_and_query(&parts.uri);
        let req = Request::from_parts(parts, body);
        return Outcome::Proxied(
            lambda::url::handle(daemon, &rev, peer.addr, &path_and_query, req).await,
        );
    }
    let keep_upgrade = upgrade
        .is_some()
        .then(|| parts.headers.get(UPGRADE).cloned());
    strip_hop_by_hop(&mut parts.headers);
    if let Some(Some(proto)) = keep_upgrade {
        parts.headers.insert(UPGRADE, proto);
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let h = &mut parts.headers;
    let request_id = match h.get(REQUEST_ID).filter(|v| valid_request_id(v)) {
        Some(id) => id.clone(),
        None => daemon.request_id(),
    };
    h.insert(REQUEST_ID, request_id.clone());
    match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            let xff = format!("{prev}, {}", peer.addr.ip());
            set_header(h, X_FORWARDED_FOR, &xff);
        }
        None => {
            h.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
        }
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = &host {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    if let Some((prefix, _)) = &route.stripped {
        set_header(h, X_FORWARDED_PREFIX, prefix);
    }
    // The instance sees the client's Host (an HTTP/2 client sends it as
    // the URI's authority; one without any gets the instance's address).
    if !h.contains_key(HOST) {
        if let Some(host) = host {
            h.insert(HOST, host);
        }
    }
    // The request goes out in origin form (`/path?query`).
    let uri = match &route.stripped {
        None if parts.uri.scheme().is_none() && parts.uri.authority().is_none() => parts.uri,
        _ => match Uri::try_from(path_and_query(&parts.uri)) {
            Ok(u) => u,
            Err(e) => {
                return Outcome::Gateway(
                    Some(rev),
                    json_error(StatusCode::BAD_REQUEST, format!("bad request path: {e}")),
                )
            }
        },
    };
    // (No body: nothing to cap or time, and an empty one to send.)
    let body = if body.is_end_stream() {
        super::empty()
    } else {
        Capped::new(body).boxed()
    };
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.version_mut() = Version::HTTP_11;
    *upstream.headers_mut() = parts.headers;
    let mut tries = 0;
    let (resp, lease, conn) = loop {
        tries += 1;
        let lease = loop {
            match rev.acquire().await {
                Ok(lease) => break lease,
                // Out of the split while we waited: choose again.
                Err(Unavailable::Retired) => {
                    tokio::task::yield_now().await;
                    match pick() {
                        Some(r) => rev = r,
                        None => {
                            return Outcome::Gateway(
                                None,
                                json_error(
                                    StatusCode::NOT_FOUND,
                                    format!("no service named {:?}", route.service),
                                ),
                            )
                        }
                    }
                }
                Err(e) => return Outcome::Gateway(Some(rev), unavailable(&route.service, e)),
            }
        };
        if let Some(cold) = lease.cold {
            rev.metrics.cold_start.observe(cold);
        }
        match lease.instance.upstream.send(upstream).await {
            Ok((resp, conn)) => break (resp, lease, conn),
            // It died, and its monitor has not said so yet: nothing was
            // sent, so another instance can have the request.
            Err(SendError::Connect(e, unsent)) => {
                rev.evict(&lease.instance);
                if tries >= 3 {
                    return Outcome::Gateway(
                        Some(rev),
                        json_error(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "service {}: instance {} refused the connection: {e}",
                                route.service, lease.instance.name
                            ),
                        ),
                    );
                }
                tracing::debug!(instance = %lease.instance.name, "connect failed: {e}; trying another instance");
                upstream = *unsent;
            }
            Err(SendError::Exchange(e)) => {
                let resp = if caused_by_cap(&e) {
                    too_large(&route.service)
                } else if caused_by::<BodyStalled>(&e) {
                    json_error(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("service {}: {BodyStalled}", route.service),
                    )
                } else if let Some(bad) = find_cause::<ClientBody>(&e) {
                    json_error(
                        StatusCode::BAD_REQUEST,
                        format!("service {}: {}", route.service, error_chain(bad)),
                    )
                } else {
                    // Not the client's doing: the connection broke
                    // mid-request. If the instance no longer accepts
                    // connections, it died; send nothing more there.
                    rev.check(&lease.instance);
                    json_error(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "service {}: instance {} failed: {}",
                            route.service,
                            lease.instance.name,
                            error_chain(&e)
                        ),
                    )
                };
                return Outcome::Gateway(Some(rev), resp);
            }
        }
    };

    let mut resp = resp;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_side = switching.then(|| hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    let upgraded_to = parts.headers.get(UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    h.insert(X_SKIFF_REVISION, lease.rev().header.clone());
    h.insert(REQUEST_ID, request_id);
    if let Some(cold) = lease.cold {
        h.insert(
            X_SKIFF_COLD_START,
            HeaderValue::from(cold.as_millis() as u64),
        );
    }
    let code = parts.status.as_u16();
    if let Some(upstream_side) = upstream_side {
        let (Some(client_side), Some(proto)) = (upgrade, upgraded_to) else {
            return Outcome::Gateway(
                Some(rev),
                json_error(
                    StatusCode::BAD_GATEWAY,
                    "the instance switched protocols without being asked to",
                ),
            );
        };
        h.insert(UPGRADE, proto);
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        drop(body);
        // The connection counts as a request in flight until either side closes.
        tokio::spawn(async move {
            let tunnel = async {
                let (a, b) = tokio::try_join!(client_side, upstream_side)?;
                let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                tokio::io::copy_bidirectional(&mut a, &mut b).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            if let Err(e) = tunnel.await {
                tracing::debug!("upgraded connection: {e}");
            }
            lease.rev().metrics.request(code, began.elapsed());
            drop(lease);
        });
        return Outcome::Proxied(Response::from_parts(parts, super::empty()));
    }
    let body = Leased {
        inner: body,
        lease: Some(lease),
        conn: Some(conn),
        ended: false,
        code,
        began,
    };
    Outcome::Proxied(Response::from_parts(parts, body.boxed()))
}

/// The Lambda API (management and Invoke), after its signature check when
/// the daemon has AWS credentials. `Err`: answered without a function.
async fn lambda_api(
    daemon: &Arc<Daemon>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let req = if daemon.aws_credentials.is_empty() {
        req.map(super::incoming)
    } else {
        // The signature covers the body: read it first (within Lambda's limit).
        let (parts, body) = req.into_parts();
        let body = match super::read_body(super::incoming(body), lambda::MAX_PAYLOAD).await {
            Ok(b) => b,
            Err(_) => {
                return Err(lambda::invoke::aws_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    &format!("Request must be smaller than {} bytes", lambda::MAX_PAYLOAD),
                ))
            }
        };
        let now = skiff_state::now_ms() / 1000;
        let checked = daemon.aws_credentials.verify(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            &parts.headers,
            &body,
            now,
        );
        if let Err(r) = checked {
            return Err(lambda::invoke::aws_error(
                StatusCode::FORBIDDEN,
                r.kind,
                &r.message,
            ));
        }
        Request::from_parts(parts, super::full(body))
    };
    if lambda::manage::is_manage_path(req.uri().path()) {
        return Ok(lambda::manage::handle(daemon, req).await);
    }
    // The invocation counts itself on its revision.
    match lambda::invoke::api(daemon, req).await {
        (Some(_), resp) => Ok(resp),
        (None, resp) => Err(resp),
    }
}

fn unavailable(service: &str, e: Unavailable) -> Response<Body> {
    match e {
        Unavailable::Retired => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service {service}: the revision was retired"),
        ),
        Unavailable::StartFailed(why) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service {service}: no instance could start: {why}"),
        ),
        Unavailable::QueueFull(n) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "service {service}: overloaded: {n} requests already wait for an instance (the queue is full)"
            ),
        ),
        Unavailable::Timeout(t) => json_error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "service {service}: no instance was free within the timeout ({}s)",
                t.as_secs_f64()
            ),
        ),
    }
}

fn too_large(service: &str) -> Response<Body> {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "service {service}: the request body is larger than the gateway's limit of {} MiB",
            MAX_BODY >> 20
        ),
    )
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `Connection: upgrade` with an `Upgrade` protocol (a websocket, say).
fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE)
        && h.get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A client's request id is kept if it is short printable ASCII.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn caused_by_cap(e: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<BodyTooLarge>(e)
}

fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    find_cause::<E>(e).is_some()
}

fn find_cause<'a, E: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(found) = s.downcast_ref::<E>() {
            return Some(found);
        }
        src = s.source();
    }
    None
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes the [`HOP_BY_HOP`] headers and those `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages have none: one pass over their few names costs less
    // than a hashed lookup for each of the nine.
    if !h.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed.iter().chain(&HOP_BY_HOP) {
        h.remove(n);
    }
}

/// A response body that holds the instance's lease until it is done, and
/// then counts the request (its status and how long the whole exchange
/// took, the body's end included, or the client's going away). The
/// connection it came on goes back to the instance once the body has been
/// read whole; one left half-read is closed.
struct Leased {
    inner: Incoming,
    lease: Option<Lease>,
    conn: Option<SendRequest<Body>>,
    /// The body's end has been read.
    ended: bool,
    code: u16,
    began: Instant,
}

impl Drop for Leased {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            if self.ended || self.inner.is_end_stream() {
                if let Some(conn) = self.conn.take() {
                    lease.instance.upstream.put(conn);
                }
            }
            lease.rev().metrics.request(self.code, self.began.elapsed());
        }
    }
}

impl hyper::body::Body for Leased {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => self.ended = true,
            // The client gets a cut-off response (or, before its head was
            // written, none at all): worth a line in the log.
            Poll::Ready(Some(Err(e))) => {
                if let Some(lease) = &self.lease {
                    tracing::warn!(instance = %lease.instance.name, "response body from the instance failed: {e}");
                }
            }
            _ => {}
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body, failing once more than the limit has come (a
/// chunked body has no length to check up front), or when the client
/// sends nothing for `BODY_IDLE` (a slow client must not hold an
/// instance's slot for ever).
struct Capped<B> {
    inner: B,
    left: u64,
    /// Armed when the body first keeps the proxy waiting (most bodies
    /// arrive with their head and never need a timer).
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Capped<B> {
    fn new(inner: B) -> Capped<B> {
        Capped {
            inner,
            left: MAX_BODY,
            idle: None,
        }
    }
}

#[derive(Debug)]
struct BodyStalled;

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client sent no request body for {BODY_IDLE:?}")
    }
}

impl std::error::Error for BodyStalled {}

/// The client's request body broke (bad chunking, a connection cut
/// mid-body): its fault, not the instance's.
#[derive(Debug)]
struct ClientBody(BoxError);

impl std::fmt::Display for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bad request body")
    }
}

impl std::error::Error for ClientBody {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[derive(Debug)]
struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body over {} MiB", MAX_BODY >> 20)
    }
}

impl std::error::Error for BodyTooLarge {}

impl<B> hyper::body::Body for Capped<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(Some(Err(ClientBody(e.into()).into())))
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                let idle = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_IDLE)));
                return match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled.into()))),
                    Poll::Pending => Poll::Pending,
                };
            }
        };
        if let Some(idle) = self.idle.as_mut() {
            idle.as_mut().reset(tokio::time::Instant::now() + BODY_IDLE);
        }
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            if n > self.left {
                return Poll::Ready(Some(Err(BodyTooLarge.into())));
            }
            self.left -= n;
        }
        Poll::Ready(Some(Ok(frame)))
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
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            hyper::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

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

    #[tokio::test]
    async fn capped_bodies_fail_past_the_limit() {
        use http_body_util::{BodyExt, StreamBody};
        let chunks = |n: usize| {
            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..n)
                .map(|_| Ok(Frame::data(Bytes::from(vec![0u8; 1000]))))
                .collect();
            StreamBody::new(futures_util::stream::iter(frames))
        };
        let under = Capped {
            left: 3000,
            ..Capped::new(chunks(3))
        };
        assert_eq!(under.collect().await.unwrap().to_bytes().len(), 3000);
        let over = Capped {
            left: 3000,
            ..Capped::new(chunks(4))
        };
        let e = over.collect().await.unwrap_err();
        assert!(caused_by_cap(&*e), "{e}");
        // A body that stops coming is cut off after BODY_IDLE.
        tokio::time::pause();
        let (_tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let stalled = Capped::new(StreamBody::new(frames));
        let e = stalled.collect().await.unwrap_err();
        assert!(caused_by::<BodyStalled>(&*e), "{e}");
    }

    #[test]
    fn upgrades_and_request_ids() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h), "Upgrade without Connection: upgrade");
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(is_upgrade(&h));
        assert!(valid_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        let long = "x".repeat(129);
        assert!(!valid_request_id(&HeaderValue::from_str(&long).unwrap()));
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
