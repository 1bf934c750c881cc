//! Published ports (`-p 127.0.0.1:8080:80`): a userland TCP forwarder from
//! the host address to the container's address on the skiff0 bridge, as
//! docker-proxy does. No NAT rules, so nothing is left in the host's
//! firewall if skiff dies; the listener goes when its process does.

use std::io;
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, Result};
use skiff_core::PortMapping;

/// Binds every published port before anything is started, so a port in use
/// is one clear error and nothing else happens.
pub fn bind(ports: &[PortMapping]) -> Result<Vec<(TcpListener, PortMapping)>> {
    ports
        .iter()
        .map(|p| {
            let addr = SocketAddrV4::new(p.host_ip, p.host_port);
            let l =
                TcpListener::bind(addr).with_context(|| format!("cannot publish port {addr}"))?;
            Ok((l, *p))
        })
        .collect()
}

/// Serves each listener on its own thread for as long as the process lives.
pub fn serve(listeners: Vec<(TcpListener, PortMapping)>, target_ip: std::net::Ipv4Addr) {
    for (listener, port) in listeners {
        let target = SocketAddr::V4(SocketAddrV4::new(target_ip, port.container_port));
        std::thread::spawn(move || accept_loop(listener, target));
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr) {
    for conn in listener.incoming() {
        match conn {
            Ok(client) => {
                std::thread::spawn(move || {
                    if let Err(e) = forward(client, target) {
                        tracing::debug!(%target, "forwarding ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(%target, "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn forward(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    let upstream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || copy_half(c2, u2));
    copy_half(upstream, client);
    let _ = up.join();
    Ok(())
}

/// Copies one direction, then half-closes, so request/response protocols
/// that rely on EOF (HTTP/1.0, `nc`) keep working.
fn copy_half(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
