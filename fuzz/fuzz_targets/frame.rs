//! The request envelope a daemon decodes from any authorized peer, and the
//! framing around it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = noded::wire::decode_request(data);
    let _ = noded::wire::decode_response(data);
    let runtime = tokio::runtime::Builder::new_current_thread().build();
    if let Ok(rt) = runtime {
        let mut reader = data;
        let _ = rt.block_on(noded::wire::read_frame(&mut reader, 64 * 1024));
    }
});
