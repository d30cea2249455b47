//! libFuzzer entry for the `mmio` target (see skiff_fuzz::mmio); built by
//! scripts/fuzz.sh with the `libfuzzer` feature.
#![no_main]

libfuzzer_sys::fuzz_target!(init: skiff_fuzz::init(), |data: &[u8]| {
    skiff_fuzz::mmio(data);
});
