//! `cargo fuzz run --sanitizer none planner`: see herald_testkit::fuzz::planner for what is fuzzed and checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = herald_testkit::fuzz::planner(data) {
        panic!("{violation}");
    }
});
