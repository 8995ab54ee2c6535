//! CSRs from the network: parsing and checking never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = zmesh_ca::Csr::parse(data) {
        let _ = csr.requested_id().to_string();
    }
});
