#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pilot::fuzzing::port_mapping(data));
