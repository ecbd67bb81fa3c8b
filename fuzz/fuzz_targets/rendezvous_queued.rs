#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pilot::fuzzing::rendezvous_queued(data));
