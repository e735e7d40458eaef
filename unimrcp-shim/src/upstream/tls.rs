//! The HTTPS front of the mock: accepts TLS connections (rustls, with a
//! certificate from a CA made at start), and relays each one, decrypted,
//! over its own connection to the mock's HTTP server. One client
//! connection is one server connection, so connection ids, reuse and
//! idle closes read the same as over HTTP; the front notes for each of its
//! server connections whether the handshake resumed a TLS session
//! ([`super::MockUpstream::tls_resumed`]).

use super::server::connect_delay;
use super::Shared;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{HandshakeKind, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Relay connections are registered in `Shared::live` under ids from here
/// up, apart from the server's own (which count from 1).
const LIVE_ID_BASE: u64 = 1 << 62;
static NEXT_LIVE_ID: AtomicU64 = AtomicU64::new(LIVE_ID_BASE);

pub(crate) struct TlsFront {
    pub addr: SocketAddr,
    pub ca_pem: String,
    acceptor: JoinHandle<()>,
}

/// A CA and a server certificate for `127.0.0.1` and `localhost` signed by
/// it: (CA PEM, server certificate chain, server key).
fn make_certificates() -> Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "unimrcp-shim test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((ca.pem(), vec![leaf.der().clone()], key))
}

/// A CA certificate (PEM) that signed nothing the mock serves: a client
/// that trusts only it must refuse the mock's certificate.
pub fn unrelated_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "unrelated test CA");
    params.self_signed(&key).expect("self-signed CA").pem()
}

impl TlsFront {
    pub fn start(shared: Arc<Shared>, backend: SocketAddr) -> io::Result<TlsFront> {
        let (ca_pem, chain, key) = make_certificates().map_err(io::Error::other)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The defaults keep a server-side session cache and send TLS 1.3
        // tickets, so a client that kept a session can resume it.
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(io::Error::other)?;
        let config = Arc::new(config);
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let acceptor = thread::Builder::new()
            .name("mock-upstream-tls-accept".into())
            .spawn(move || accept_loop(&shared, &listener, &config, backend))?;
        Ok(TlsFront { addr, ca_pem, acceptor })
    }

    /// After the stop flag is set: the acceptor notices within 50 ms.
    pub fn join_acceptor(self) {
        let _ = self.acceptor.join();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, config: &Arc<ServerConfig>, backend: SocketAddr) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => spawn_relay(shared, stream, Arc::clone(config), backend),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd on the listener we own.
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn spawn_relay(shared: &Arc<Shared>, stream: TcpStream, config: Arc<ServerConfig>, backend: SocketAddr) {
    let id = NEXT_LIVE_ID.fetch_add(1, Ordering::SeqCst);
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    shared.live.lock().insert(id, clone);
    let thread_shared = Arc::clone(shared);
    let spawned = thread::Builder::new().name("mock-upstream-tls".into()).spawn(move || {
        relay(&thread_shared, stream, config, backend);
        thread_shared.live.lock().remove(&id);
    });
    match spawned {
        Ok(handle) => shared.threads.lock().push(handle),
        Err(_) => {
            shared.live.lock().remove(&id);
        }
    }
}

fn relay(shared: &Shared, mut client: TcpStream, config: Arc<ServerConfig>, backend: SocketAddr) {
    let _ = client.set_nodelay(true);
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = client.set_write_timeout(Some(Duration::from_secs(60)));
    connect_delay(shared);
    let Ok(mut tls) = ServerConnection::new(config) else {
        return;
    };
    while tls.is_handshaking() {
        if shared.stopping() || tls.complete_io(&mut client).is_err() {
            return;
        }
    }
    let resumed = tls.handshake_kind() == Some(HandshakeKind::Resumed);
    let Ok(mut server) = TcpStream::connect(backend) else {
        return;
    };
    let _ = server.set_nodelay(true);
    let id = NEXT_LIVE_ID.fetch_add(1, Ordering::SeqCst);
    if let Ok(clone) = server.try_clone() {
        shared.live.lock().insert(id, clone);
    }
    // Noted before any byte is relayed, so before the request is recorded.
    if let Ok(local) = server.local_addr() {
        shared.tls_resumed.lock().insert(local.port(), resumed);
    }
    {
        let mut counts = shared.tls_counts.lock();
        if resumed {
            counts.1 += 1;
        } else {
            counts.0 += 1;
        }
    }
    pump(shared, &mut client, &mut tls, &mut server);
    let _ = server.shutdown(Shutdown::Both);
    shared.live.lock().remove(&id);
}

/// Moves bytes both ways until either side closes or the mock stops.
fn pump(shared: &Shared, client: &mut TcpStream, tls: &mut ServerConnection, server: &mut TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Plaintext rustls already holds (the handshake may have read the
        // first request along with its last flight) goes first.
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => return, // close_notify
                Ok(n) => {
                    if server.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        while tls.wants_write() {
            if tls.write_tls(client).is_err() {
                return;
            }
        }
        if shared.stopping() {
            return;
        }
        let mut fds = [
            libc::pollfd { fd: client.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: server.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds on sockets this thread owns.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            match tls.read_tls(client) {
                Ok(0) | Err(_) => return, // the client left
                Ok(_) => {}
            }
            if tls.process_new_packets().is_err() {
                let _ = tls.write_tls(client);
                return;
            }
            continue; // its plaintext is relayed at the top
        }
        if fds[1].revents != 0 {
            match server.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // The server closed (idle close, Connection: close).
                    tls.send_close_notify();
                    while tls.wants_write() {
                        if tls.write_tls(client).is_err() {
                            break;
                        }
                    }
                    return;
                }
                Ok(n) => {
                    if tls.writer().write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }
}
