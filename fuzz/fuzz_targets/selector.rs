//! `cargo fuzz run --sanitizer none selector`: see herald_fuzz::selector for what is fuzzed and checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = herald_fuzz::selector(data) {
        panic!("{violation}");
    }
});
