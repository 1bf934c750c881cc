//! The gateway's connections to an instance: HTTP/1.1 with keep-alive,
//! idle ones kept on the instance itself. A general-purpose client
//! (hyper-util's pools connections by host under one lock, races new
//! connections against idle ones and wraps each exchange in futures of its
//! own) did more per request than proxying to a known address needs; this
//! is a stack of idle connections, taken and given back without a lookup,
//! closed when the instance goes.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::Body;

/// A connect that takes longer than this fails (the instance is gone, or
/// its network namespace is).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per instance; more are closed when given back.
const MAX_IDLE: usize = 256;
/// An idle connection unused for this long is closed (as hyper-util's pool
/// did): a server that holds a thread or a process per connection gets
/// them back after a burst.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Upstream {
    addr: SocketAddr,
    /// Idle connections and since when, oldest first.
    idle: Mutex<Vec<(SendRequest<Body>, Instant)>>,
}

/// Why an exchange with an instance failed.
pub enum SendError {
    /// No connection could be made (nothing listens there any more); the
    /// request, not sent, is handed back for another instance.
    Connect(std::io::Error, Box<Request<Body>>),
    /// The connection failed while the request or its response was on it.
    Exchange(hyper::Error),
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (origin-form URI, with a Host header) on an idle
    /// connection, or on a new one. A pooled connection that the instance
    /// closed while it was idle is found out before anything is written on
    /// it (hyper hands the request back), and the next one is tried.
    /// Returns the connection with the response: give it back with
    /// [`Self::put`] once the response body has been read to its end.
    pub async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, SendRequest<Body>), SendError> {
        loop {
            let (mut conn, pooled) = match self.take_idle().await {
                Some(c) => (c, true),
                None => match self.connect().await {
                    Ok(c) => (c, false),
                    Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                },
            };
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if pooled => req = unsent,
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// Keeps a connection whose exchange is complete for the next request.
    pub fn put(&self, conn: SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes the connections idle for longer than [`IDLE_TIMEOUT`] (the
    /// daemon's tick calls it).
    pub fn close_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = idle.partition_point(|(_, since)| since.elapsed() > IDLE_TIMEOUT);
        idle.drain(..fresh);
    }

    /// The most recently used idle connection that still works (it may
    /// take a moment to be ready again after its last response).
    async fn take_idle(&self) -> Option<SendRequest<Body>> {
        loop {
            let (mut conn, _) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if conn.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    /// Keeps `stream`, connected to the instance and not used yet (the
    /// readiness probe's), for the first request: the request that waited
    /// for this instance then needs no connect of its own, and a server
    /// that forks per connection forks once, not twice.
    /// A connection that cannot be taken over is dropped: the first
    /// request then connects as any other does.
    pub async fn adopt(&self, stream: std::net::TcpStream) {
        let adopted = async {
            stream.set_nonblocking(true)?;
            self.handshake(tokio::net::TcpStream::from_std(stream)?)
                .await
        };
        match adopted.await {
            Ok(conn) => self.put(conn),
            Err(e) => tracing::debug!(addr = %self.addr, "keeping the probe's connection: {e}"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Body>> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
        self.handshake(stream).await
    }

    async fn handshake(&self, stream: tokio::net::TcpStream) -> std::io::Result<SendRequest<Body>> {
        stream.set_nodelay(true)?;
        // (Flat writes, as the gateway's server side does.)
        let (conn, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let addr = self.addr;
        tokio::spawn(async move {
            // Upgrades (websockets) take the connection over when asked.
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(%addr, "instance connection: {e}");
            }
        });
        Ok(conn)
    }
}
