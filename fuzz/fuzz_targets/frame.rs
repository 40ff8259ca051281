//! The request envelope a daemon decodes from any authorized peer, and the
//! framing around it.
#![no_main]
use tokio_util::codec::Decoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = noded::wire::decode_request(data);
    let _ = noded::wire::decode_response(data);
    let mut codec = noded::wire::FrameCodec::new(64 * 1024);
    let mut src = bytes::BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode(&mut src) {}
    let _ = codec.decode_eof(&mut src);
});
