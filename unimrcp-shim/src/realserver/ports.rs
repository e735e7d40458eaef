//! Free loopback ports for the server and the client.

use std::net::{TcpListener, UdpSocket};

/// Sockets held while choosing ports so that no two choices collide; drop
/// it just before the programs start.
#[derive(Default)]
pub struct PortPicker {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl PortPicker {
    pub fn tcp(&mut self) -> u16 {
        let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind a TCP port on 127.0.0.1");
        let port = l.local_addr().expect("local addr").port();
        self.tcp.push(l);
        port
    }

    /// A port free for both TCP and UDP (SIP listens on both).
    pub fn tcp_and_udp(&mut self) -> u16 {
        for _ in 0..100 {
            let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind a TCP port on 127.0.0.1");
            let port = l.local_addr().expect("local addr").port();
            if let Ok(u) = UdpSocket::bind(("127.0.0.1", port)) {
                self.tcp.push(l);
                self.udp.push(u);
                return port;
            }
        }
        panic!("no port free for both TCP and UDP on 127.0.0.1");
    }

    pub fn udp(&mut self) -> u16 {
        let u = UdpSocket::bind(("127.0.0.1", 0)).expect("bind a UDP port on 127.0.0.1");
        let port = u.local_addr().expect("local addr").port();
        self.udp.push(u);
        port
    }

    /// `len` consecutive free UDP ports starting at an even one (RTP and
    /// RTCP pairs): the range `(first, first + len)`.
    pub fn udp_range(&mut self, len: u16) -> (u16, u16) {
        for _ in 0..100 {
            let probe = UdpSocket::bind(("127.0.0.1", 0)).expect("bind a UDP port on 127.0.0.1");
            let base = probe.local_addr().expect("local addr").port() & !1;
            drop(probe);
            if base < 1024 || u32::from(base) + u32::from(len) > 65_535 {
                continue;
            }
            let held: Vec<UdpSocket> =
                (base..base + len).map_while(|p| UdpSocket::bind(("127.0.0.1", p)).ok()).collect();
            if held.len() == usize::from(len) {
                self.udp.extend(held);
                return (base, base + len);
            }
        }
        panic!("no range of {len} free UDP ports on 127.0.0.1");
    }
}

/// The ports of one server and one client.
#[derive(Debug)]
pub struct Ports {
    pub sip: u16,
    pub rtsp: u16,
    pub mrcp: u16,
    pub rtp: (u16, u16),
    pub client_sip: u16,
    pub client_rtp: (u16, u16),
}
