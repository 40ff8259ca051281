//! The candidate map and every other ssconf file, as pushed by a peer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ssconf::CandidateMap::parse(text, std::path::Path::new("map"));
        let files: Vec<(String, String)> = ssconf::SsconfKey::ALL
            .iter()
            .map(|k| (k.file_name(), text.to_owned()))
            .collect();
        let _ = ssconf::Ssconf::parse_files(&files, std::path::Path::new("ssconf"));
        let _ = text.parse::<ssconf::CertDigest>();
    }
});
