//! `cargo fuzz run --sanitizer none planner`: see herald_fuzz::planner for what is fuzzed and checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = herald_fuzz::planner(data) {
        panic!("{violation}");
    }
});
