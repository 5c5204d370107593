//! `cargo fuzz run --sanitizer none cluster_state`: see herald_testkit::fuzz::cluster_state for what is fuzzed and checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = herald_testkit::fuzz::cluster_state(data) {
        panic!("{violation}");
    }
});
