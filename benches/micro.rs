//! Micro-benchmarks (divan) of the pieces on noded's hot paths: the
//! candidate-map lookup a handshake makes, the parse + swap a map reload
//! makes, frame encoding and decoding, and certificate digests.
//!
//! ```text
//! cargo bench --bench micro
//! ```
//!
//! `scripts/bench` runs this target and copies its table into BENCHMARKS.md.

use std::hint::black_box;
use std::path::Path;
use std::sync::OnceLock;

use divan::Bencher;
use noded::daemon::reload::CandidateMapHandle;
use noded::pki::{CertificateAuthority, CertificateSigner, NodeKey};
use noded::wire::{self, Procedure, Reply, Request, Response, PROTOCOL_VERSION};
use ssconf::{CandidateMap, CertDigest, DigestAlgorithm};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MAP_SIZES: [usize; 3] = [10, 1_000, 100_000];

/// A real client certificate (ECDSA P-256, signed by a fresh CA), as DER;
/// made once in `main`.
static CLIENT_CERT: OnceLock<Vec<u8>> = OnceLock::new();

fn main() -> BoxResult<()> {
    let ca = CertificateAuthority::generate("bench", 30)?;
    let key = NodeKey::generate()?;
    let pem = ca.sign_client_csr(&key.csr("bench-node")?, "bench-node", 30)?;
    let der = noded::pki::load_certs_from_pem(&pem)?.as_ref().to_vec();
    CLIENT_CERT
        .set(der)
        .map_err(|_| "client certificate already made")?;
    divan::main();
    Ok(())
}

fn client_cert_der() -> &'static [u8] {
    CLIENT_CERT.get().map_or(&[], Vec::as_slice)
}

/// A map of `size` entries, one of which is `der`'s SHA-256 digest.
fn map_with(size: usize, der: &[u8]) -> CandidateMap {
    let mut entries: Vec<(String, CertDigest)> = (1..size)
        .map(|i| {
            (
                format!("{i:08x}-0000-4000-8000-{i:012x}"),
                DigestAlgorithm::Sha256.digest(&(i as u64).to_le_bytes()),
            )
        })
        .collect();
    entries.push(("bench".to_owned(), DigestAlgorithm::Sha256.digest(der)));
    CandidateMap::from_entries(entries)
}

/// What a handshake's authorization does: SHA-256 of the client
/// certificate, then one hash lookup.
#[divan::bench(args = MAP_SIZES)]
fn map_lookup_der(bencher: Bencher, size: usize) {
    let der = client_cert_der();
    let map = map_with(size, der);
    bencher.bench_local(|| map.lookup_der(black_box(der)).is_some());
}

/// The hash lookup alone, digest already computed (what an open connection
/// checks before each request).
#[divan::bench(args = MAP_SIZES)]
fn map_contains_digest(bencher: Bencher, size: usize) {
    let der = client_cert_der();
    let map = map_with(size, der);
    let digest = DigestAlgorithm::Sha256.digest(der);
    bencher.bench_local(|| map.contains(black_box(&digest)));
}

/// A reload: parse the map file's text, compare with the current map (as
/// `reload_map` does) and publish it through the handle (ArcSwap store and
/// a wake-up of every subscriber).
#[divan::bench(args = MAP_SIZES, sample_count = 20)]
fn map_parse_and_swap(bencher: Bencher, size: usize) {
    let der = client_cert_der();
    let text = map_with(size, der).render();
    let handle = CandidateMapHandle::new(CandidateMap::empty());
    let _subscriber = handle.subscribe();
    bencher.bench_local(|| -> BoxResult<()> {
        let map = CandidateMap::parse(black_box(&text), Path::new("bench"))?;
        if **handle.load() != map {
            handle.publish(map);
        } else {
            handle.publish(CandidateMap::empty());
        }
        Ok(())
    });
}

fn ping_request() -> Request {
    Request {
        version: PROTOCOL_VERSION,
        id: 42,
        procedure: Procedure::Ping,
    }
}

fn echo_request(len: usize) -> Request {
    Request {
        version: PROTOCOL_VERSION,
        id: 42,
        procedure: Procedure::Echo {
            payload: vec![0xa5; len],
        },
    }
}

/// Request frames: a Ping and Echo uploads of 1 KiB and 64 KiB.
#[divan::bench(args = [0, 1024, 65536])]
fn frame_encode_request(bencher: Bencher, payload: usize) {
    let request = if payload == 0 {
        ping_request()
    } else {
        echo_request(payload)
    };
    bencher.bench_local(|| send(black_box(&request)));
}

/// What a connection does to send `value`: postcard, then the codec puts
/// the length and the payload into its write buffer (cleared, as after a
/// flush).
fn send<T: serde::Serialize>(value: &T) -> bool {
    use tokio_util::codec::Encoder;
    thread_local! {
        static BUFFER: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::with_capacity(8 * 1024));
    }
    let Ok(payload) = wire::encode_payload(value) else {
        return false;
    };
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        wire::FrameCodec::new(wire::DEFAULT_MAX_FRAME)
            .encode(payload, buffer)
            .is_ok()
    })
}

#[divan::bench(args = [0, 1024, 65536])]
fn frame_decode_request(bencher: Bencher, payload: usize) {
    let request = if payload == 0 {
        ping_request()
    } else {
        echo_request(payload)
    };
    let Ok(bytes) = wire::encode(&request) else {
        return;
    };
    let body = bytes.get(4..).unwrap_or_default();
    bencher.bench_local(|| wire::decode_request(black_box(body)).is_ok());
}

fn pong() -> Response {
    Response {
        version: PROTOCOL_VERSION,
        id: 42,
        result: Ok(Reply::Pong {
            node: "node-0042".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
    }
}

#[divan::bench]
fn frame_encode_pong(bencher: Bencher) {
    let response = pong();
    bencher.bench_local(|| send(black_box(&response)));
}

#[divan::bench]
fn frame_decode_pong(bencher: Bencher) {
    let Ok(bytes) = wire::encode(&pong()) else {
        return;
    };
    let body = bytes.get(4..).unwrap_or_default();
    bencher.bench_local(|| wire::decode_response(black_box(body)).is_ok());
}

/// Certificate digests of a real client certificate's DER (about 440
/// bytes): SHA-1 (Ganeti's maps) and SHA-256 (ours).
#[divan::bench(args = [DigestAlgorithm::Sha1, DigestAlgorithm::Sha256])]
fn cert_digest(bencher: Bencher, algorithm: DigestAlgorithm) {
    let der = client_cert_der();
    bencher.bench_local(|| algorithm.digest(black_box(der)));
}

/// The framing alone: 64 Pong replies back to back in memory, read one by
/// one as a connection reads them (the payloads are not decoded).
#[divan::bench]
fn frame_read_64_pongs(bencher: Bencher) {
    let Ok(one) = wire::encode(&pong()) else {
        return;
    };
    let bytes = one.repeat(64);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    bencher.bench_local(|| runtime.block_on(read_all(black_box(&bytes))));
}

async fn read_all(bytes: &[u8]) -> usize {
    use futures_util::StreamExt;
    let codec = wire::FrameCodec::new(wire::DEFAULT_MAX_FRAME);
    let mut framed = tokio_util::codec::FramedRead::new(bytes, codec);
    let mut frames = 0;
    while let Some(Ok(_)) = framed.next().await {
        frames += 1;
    }
    frames
}
