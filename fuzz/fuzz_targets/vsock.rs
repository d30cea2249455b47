//! libFuzzer entry for the `vsock` target (see skiff_fuzz::vsock); built by
//! scripts/fuzz.sh with the `libfuzzer` feature.
#![no_main]

libfuzzer_sys::fuzz_target!(init: skiff_fuzz::init(), |data: &[u8]| {
    skiff_fuzz::vsock(data);
});
