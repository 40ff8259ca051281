//! CSR signings per second with each CA key store: `ca.key` (file) and a
//! PKCS#11 token. Run by `scripts/bench-hsm`, which makes a SoftHSM2 token
//! and passes its URI; prints `key=value` lines.
//!
//!   signing ITERATIONS [PKCS11_URI]
//!
//! The token needs `SOFTHSM2_CONF` (or the module's own configuration) in
//! the environment. Each signing is what a join or a renewal does per node:
//! parse and check the CSR, build the certificate, sign it.

use std::time::Instant;

use noded::pki::keystore::{FileKeyStore, KeyStore, Pkcs11KeyStore};
use noded::pki::{CertificateSigner, NodeKey};
use noded::state::StateDir;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Signs `csrs` with `store`'s new CA; returns signings per second.
fn rate(store: &dyn KeyStore, csrs: &[String]) -> BoxResult<f64> {
    let ca = store.create_ca("bench", 30)?;
    // One signing outside the clock: opens the session, warms caches.
    ca.sign_client_csr(csrs.first().ok_or("no CSR")?, "bench-node", 1)?;
    let start = Instant::now();
    for csr in csrs {
        ca.sign_client_csr(csr, "bench-node", 1)?;
    }
    Ok(csrs.len() as f64 / start.elapsed().as_secs_f64())
}

fn main() -> BoxResult<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let iterations: usize = args.next().as_deref().unwrap_or("500").parse()?;
    let uri = args.next();
    let csrs = (0..iterations)
        .map(|i| NodeKey::generate()?.client_csr(&format!("node{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = std::env::temp_dir().join(format!("noded-bench-signing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = rate(&FileKeyStore::new(&StateDir::new(dir.clone())), &csrs);
    std::fs::remove_dir_all(&dir)?;
    println!("signings={iterations}");
    println!("file_signings_per_s={:.0}", file?);
    if let Some(uri) = uri {
        let store = Pkcs11KeyStore::new(noded::pki::hsm::Pkcs11Uri::parse(&uri)?);
        println!("token_signings_per_s={:.0}", rate(&store, &csrs)?);
    }
    Ok(())
}
