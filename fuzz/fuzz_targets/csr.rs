//! A joining node's CSR (PEM) as the master signs it, and PEM certificates
//! as a joiner reads them from the master's reply.
#![no_main]
use std::sync::OnceLock;

use noded::pki::CertificateSigner;

static CA: OnceLock<Option<noded::pki::CertificateAuthority>> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(ca) =
            CA.get_or_init(|| noded::pki::CertificateAuthority::generate("fuzz", 30).ok())
        {
            let _ = ca.sign_client_csr(text, 1);
        }
        let _ = noded::pki::load_certs_from_pem(text);
        let _ = noded::pki::CertInfo::from_der(data);
    }
});
