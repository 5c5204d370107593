//! `cargo fuzz run --sanitizer none selector`: see herald_testkit::fuzz::selector for what is fuzzed and checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = herald_testkit::fuzz::selector(data) {
        panic!("{violation}");
    }
});
