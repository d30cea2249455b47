//! libFuzzer entry for the `virtio_net` target (see skiff_fuzz::virtio_net); built by
//! scripts/fuzz.sh with the `libfuzzer` feature.
#![no_main]

libfuzzer_sys::fuzz_target!(init: skiff_fuzz::init(), |data: &[u8]| {
    skiff_fuzz::virtio_net(data);
});
