//! An impostor on a node's address: a real TLS server (rustls) presenting
//! ANOTHER node's valid server certificate and key (both signed by the
//! cluster CA). Every client of the cluster must refuse it in the
//! handshake, so it receives not one application byte: not the promotion
//! that carries the CA key, not a push, not verify's or ping's request, not
//! a renewal, not a joiner's token.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use noded::state::token::JoinToken;

use crate::support::*;

/// A TLS server on `address` with a node's server certificate and key (and
/// the cluster CA after them, as a real daemon sends). It counts the
/// handshakes it is offered and the application bytes it reads after one
/// completes.
struct Impostor {
    handshakes: Arc<AtomicUsize>,
    app_bytes: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Impostor {
    fn start(address: &str, node: &Node) -> Impostor {
        let pem = std::fs::read_to_string(node.state.server_pem()).unwrap();
        let key = std::fs::read_to_string(node.state.server_key()).unwrap();
        Self::with_pair(address, node, &pem, &key)
    }

    fn with_pair(address: &str, node: &Node, cert_pem: &str, key_pem: &str) -> Impostor {
        use rustls::pki_types::pem::PemObject;
        let mut certs = vec![noded::pki::load_certs_from_pem(cert_pem).unwrap()];
        certs.extend(node.ca_certs());
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(noded::pki::provider::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(address).unwrap();
        listener.set_nonblocking(true).unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let app_bytes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, b, s) = (handshakes.clone(), app_bytes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while !s.load(Ordering::Relaxed) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                    let Ok(Ok((stream, _))) = accepted else {
                        continue;
                    };
                    h.fetch_add(1, Ordering::Relaxed);
                    let (acceptor, b) = (acceptor.clone(), b.clone());
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let Ok(Ok(mut tls)) =
                            tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream))
                                .await
                        else {
                            return;
                        };
                        let mut buf = [0u8; 4096];
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while Instant::now() < deadline {
                            match tokio::time::timeout(
                                Duration::from_millis(200),
                                tls.read(&mut buf),
                            )
                            .await
                            {
                                Ok(Ok(0)) | Ok(Err(_)) => break,
                                Ok(Ok(n)) => {
                                    b.fetch_add(n, Ordering::Relaxed);
                                }
                                Err(_) => {}
                            }
                        }
                    });
                }
            });
        });
        Impostor {
            handshakes,
            app_bytes,
            stop,
            thread: Some(thread),
        }
    }

    /// Handshakes offered and application bytes received so far.
    fn seen(&self) -> (usize, usize) {
        // Let the last connection's reader finish its read.
        std::thread::sleep(Duration::from_millis(300));
        (
            self.handshakes.load(Ordering::Relaxed),
            self.app_bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(node: &Node, args: &[&str]) -> (Option<i32>, String) {
    let out = nodectl(node.dir(), args);
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// Asserts the impostor was offered at least one more handshake than
/// `before` and has still received no application byte.
fn refused_in_the_handshake(impostor: &Impostor, before: usize, what: &str) -> usize {
    let (handshakes, bytes) = impostor.seen();
    assert!(
        handshakes > before,
        "{what}: the impostor was never contacted"
    );
    assert_eq!(bytes, 0, "{what}: the impostor received application bytes");
    handshakes
}

#[test]
fn an_impostor_with_another_nodes_certificate_gets_no_byte() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &[]);
    let (r, _dr) = join_and_start(&m, "r", &[]);
    let (x, dx) = join_and_start(&m, "x", &[]);
    // x is down; r answers on x's address with r's own certificate.
    drop(dx);
    let impostor = Impostor::start(&x.address, &r);
    let mut seen = 0;

    // The promotion, which would carry the CA key and the config.
    let (code, out) = run(&m, &["modify", "x", "--master-candidate=yes"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("not valid for name \"x\""), "{out}");
    seen = refused_in_the_handshake(&impostor, seen, "promote");
    assert!(!x.state.ca_key().exists() && !r.state.ca_key().exists());

    // A push after another change: the map goes to every online node.
    let (code, out) = run(&m, &["modify", "r", "--master-candidate=yes"]);
    assert_eq!(code, Some(3), "{out}");
    seen = refused_in_the_handshake(&impostor, seen, "push");
    let (code, out) = run(&m, &["modify", "r", "--master-candidate=no"]);
    assert_eq!(code, Some(3), "{out}");

    // verify, ping (from the master and from a candidate), a renewal.
    let (code, out) = run(&m, &["verify"]);
    assert_eq!(code, Some(1), "{out}");
    seen = refused_in_the_handshake(&impostor, seen, "verify");
    let (code, out) = run(&m, &["ping", "x"]);
    assert_eq!(code, Some(1), "{out}");
    seen = refused_in_the_handshake(&impostor, seen, "ping");
    let (code, out) = run(
        &m,
        &["renew-crypto", "--new-node-certificates", "--node", "x"],
    );
    assert_eq!(code, Some(3), "{out}");
    seen = refused_in_the_handshake(&impostor, seen, "renew");
    let _ = seen;
    drop(impostor);

    // A joiner whose token's address leads to a node that is not the
    // master: r, with its own valid certificate of the pinned CA.
    let token = JoinToken::parse(&create_token(&m, &[])).unwrap();
    let fake_master = format!("127.0.0.1:{}", free_port());
    let impostor = Impostor::start(&fake_master, &r);
    let redirected = JoinToken {
        addrs: vec![fake_master],
        ..token
    }
    .encode()
    .unwrap();
    let j = Node::fresh("j");
    let (code, out) = run(
        &j,
        &[
            "join",
            &redirected,
            "--node-name",
            "j",
            "--address",
            &j.address,
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not the master that made the token"), "{out}");
    refused_in_the_handshake(&impostor, 0, "join");
    assert!(!j.state.is_initialised());
}

#[test]
fn a_nodes_renewed_away_certificate_is_refused() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &[]);
    let (x, dx) = join_and_start(&m, "x", &[]);
    let old_pem = std::fs::read_to_string(x.state.server_pem()).unwrap();
    let old_key = std::fs::read_to_string(x.state.server_key()).unwrap();
    let (code, out) = run(&m, &["renew-crypto", "--new-cluster-certificate"]);
    assert_eq!(code, Some(0), "{out}");
    // Whoever kept x's old pair answers on x's address: the name is right,
    // the chain is right, but the cluster no longer records that digest.
    drop(dx);
    let impostor = Impostor::with_pair(&x.address, &x, &old_pem, &old_key);
    let (code, out) = run(&m, &["ping", "x"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("not the one the cluster recorded for x"),
        "{out}"
    );
    refused_in_the_handshake(&impostor, 0, "ping");
    let (code, out) = run(&m, &["modify", "x", "--master-candidate=yes"]);
    assert_ne!(code, Some(0), "{out}");
    refused_in_the_handshake(&impostor, 1, "promote");
    assert!(!x.state.ca_key().exists());
}
