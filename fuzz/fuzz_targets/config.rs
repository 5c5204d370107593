//! `cargo fuzz run --sanitizer none config`: see herald_testkit::fuzz::config for what is fuzzed and checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = herald_testkit::fuzz::config(data) {
        panic!("{violation}");
    }
});
