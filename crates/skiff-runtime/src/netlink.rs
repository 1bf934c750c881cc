//! The few rtnetlink requests container networking needs, over a plain
//! NETLINK_ROUTE socket: no async runtime, no `ip` processes, a few
//! microseconds per request. A socket acts in the network namespace of
//! the thread that opened it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/veth.h
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = libc::IFF_UP as u32;
const AF_INET: u8 = libc::AF_INET as u8;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// One rtnetlink request under construction: header, family header,
/// attributes (nested ones via [`Msg::nest`]).
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq, set in finish
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        Msg { buf }
    }

    /// struct ifinfomsg { family, pad, type, index, flags, change }.
    fn ifinfo(mut self, index: i32, flags: u32, change: u32) -> Self {
        put_ifinfo(&mut self.buf, index, flags, change);
        self
    }

    /// struct ifaddrmsg { family, prefixlen, flags, scope, index }.
    fn ifaddr(mut self, prefix: u8, index: u32) -> Self {
        self.buf.extend_from_slice(&[AF_INET, prefix, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self
    }

    /// struct rtmsg for an IPv4 unicast route in the main table.
    fn rtmsg(mut self, dst_len: u8) -> Self {
        self.buf.extend_from_slice(&[
            AF_INET,
            dst_len,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            0,
            RTN_UNICAST,
        ]);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self
    }

    fn attr(mut self, ty: u16, data: &[u8]) -> Self {
        put_attr(&mut self.buf, ty, data);
        self
    }

    fn attr_str(self, ty: u16, s: &str) -> Self {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data)
    }

    /// A nested attribute whose payload `f` writes.
    fn nest(mut self, ty: u16, f: impl FnOnce(&mut Vec<u8>)) -> Self {
        put_nest(&mut self.buf, ty, f);
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn pad(buf: &mut Vec<u8>) {
    while buf.len() & 3 != 0 {
        buf.push(0);
    }
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
}

fn put_nest(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    pad(buf);
}

fn put_ifinfo(buf: &mut Vec<u8>, index: i32, flags: u32, change: u32) {
    buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    buf.extend_from_slice(&index.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&change.to_ne_bytes());
}

fn str_attr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// What [`Netlink::link`] reports of a link.
pub(crate) struct Link {
    pub index: u32,
    /// Its hardware address, if it has an Ethernet one.
    pub mac: Option<[u8; 6]>,
}

pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// A NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Connected to the kernel (port 0), so plain send/recv work and
        // only the kernel's replies arrive.
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: kernel is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends `msg` and returns the kernel's first reply that is not an
    /// acknowledgement (for GET requests), or nothing after the ack.
    fn request(&mut self, msg: Msg) -> io::Result<Option<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = msg.finish(seq);
        // SAFETY: req is a valid buffer of req.len() bytes; the kernel is
        // the destination (default address of an unconnected netlink socket).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: buf is writable for buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut off = 0;
            let n = n as usize;
            while off + NLMSG_HDRLEN <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq =
                    u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                if len < NLMSG_HDRLEN || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink reply",
                    ));
                }
                if mseq == seq {
                    if ty == NLMSG_ERROR {
                        let code = i32::from_ne_bytes(
                            buf[off + 16..off + 20].try_into().unwrap_or_default(),
                        );
                        return if code == 0 {
                            Ok(None)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    return Ok(Some(buf[off..off + len].to_vec()));
                }
                off += (len + 3) & !3;
            }
        }
    }

    fn ack(&mut self, msg: Msg) -> io::Result<()> {
        self.request(msg).map(drop)
    }

    /// Index of the link called `name`, `None` if there is none.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    /// The link called `name`, `None` if there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let msg = Msg::new(RTM_GETLINK, 0)
            .ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, name);
        match self.request(msg) {
            Ok(Some(reply)) if reply.len() >= NLMSG_HDRLEN + IFINFOMSG_LEN => {
                let i = NLMSG_HDRLEN + 4;
                let index = i32::from_ne_bytes(reply[i..i + 4].try_into().unwrap_or_default());
                let mut mac = None;
                let mut off = NLMSG_HDRLEN + IFINFOMSG_LEN;
                while off + 4 <= reply.len() {
                    let len = u16::from_ne_bytes([reply[off], reply[off + 1]]) as usize;
                    let ty = u16::from_ne_bytes([reply[off + 2], reply[off + 3]]) & !NLA_F_NESTED;
                    if len < 4 || off + len > reply.len() {
                        break;
                    }
                    if ty == IFLA_ADDRESS && len == 4 + 6 {
                        mac = reply[off + 4..off + 10].try_into().ok();
                    }
                    off += (len + 3) & !3;
                }
                Ok(Some(Link {
                    index: index as u32,
                    mac,
                }))
            }
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short RTM_GETLINK reply",
            )),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the hardware address of link `index`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let msg = Msg::new(RTM_NEWLINK, NLM_F_ACK)
            .ifinfo(index as i32, 0, 0)
            .attr(IFLA_ADDRESS, &mac);
        self.ack(msg)
    }

    /// Creates bridge `name`, up, with hardware address `mac`; EEXIST if
    /// it exists.
    pub fn create_bridge(&mut self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let msg = Msg::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .ifinfo(0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, name)
            .attr(IFLA_ADDRESS, &mac)
            .nest(IFLA_LINKINFO, |b| {
                put_attr(b, IFLA_INFO_KIND, &str_attr("bridge"))
            });
        self.ack(msg)
    }

    /// Creates the veth pair `host` (up, enslaved to `master`) and `peer`,
    /// born inside the namespace `peer_netns`, down: the kernel configures
    /// the peer before pairing it, so asking for it up fails with ENOTCONN.
    pub fn create_veth(
        &mut self,
        host: &str,
        master: u32,
        peer: &str,
        peer_netns: RawFd,
    ) -> io::Result<()> {
        // One queue each way on both ends, which is what the kernel
        // leaves a veth with anyway: asked for at creation, the queues are
        // not cut down to one after the device is registered, which waits
        // for an RCU grace period per end (synchronize_net). Those waits
        // were 0.1-0.5 ms each here, with the other vCPU busy.
        let one = 1u32.to_ne_bytes();
        let msg = Msg::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .ifinfo(0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, host)
            .attr(IFLA_MASTER, &master.to_ne_bytes())
            .attr(IFLA_NUM_TX_QUEUES, &one)
            .attr(IFLA_NUM_RX_QUEUES, &one)
            .nest(IFLA_LINKINFO, |b| {
                put_attr(b, IFLA_INFO_KIND, &str_attr("veth"));
                put_nest(b, IFLA_INFO_DATA, |b| {
                    put_nest(b, VETH_INFO_PEER, |b| {
                        put_ifinfo(b, 0, 0, 0);
                        put_attr(b, IFLA_IFNAME, &str_attr(peer));
                        put_attr(b, IFLA_NET_NS_FD, &peer_netns.to_ne_bytes());
                        put_attr(b, IFLA_NUM_TX_QUEUES, &one);
                        put_attr(b, IFLA_NUM_RX_QUEUES, &one);
                    })
                })
            });
        self.ack(msg)
    }

    /// Deletes link `name` (both ends for a veth); ENODEV if absent.
    pub fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let msg = Msg::new(RTM_DELLINK, NLM_F_ACK)
            .ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, name);
        self.ack(msg)
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let msg = Msg::new(RTM_NEWLINK, NLM_F_ACK).ifinfo(index as i32, IFF_UP, IFF_UP);
        self.ack(msg)
    }

    /// Adds `ip/prefix` to link `index`; EEXIST if present.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let msg = Msg::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .ifaddr(prefix, index)
            .attr(IFA_LOCAL, &ip.octets())
            .attr(IFA_ADDRESS, &ip.octets());
        self.ack(msg)
    }

    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let msg = Msg::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .rtmsg(0)
            .attr(RTA_GATEWAY, &gateway.octets());
        self.ack(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_aligned_and_sized() {
        let m = Msg::new(RTM_NEWLINK, NLM_F_ACK)
            .ifinfo(0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, "abc")
            .nest(IFLA_LINKINFO, |b| {
                put_attr(b, IFLA_INFO_KIND, &str_attr("veth"))
            })
            .finish(7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        // header 16 + ifinfomsg 16 + "abc\0" attr 8 + nest(4 + "veth\0" attr 12) 16
        assert_eq!(m.len(), 16 + 16 + 8 + 16);
        assert_eq!(u16::from_ne_bytes([m[40], m[41]]), 16);
        assert_eq!(
            u16::from_ne_bytes([m[42], m[43]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
    }
}
