#![no_main]
// See ecad_native::fuzzing::schedule for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ecad_native::fuzzing::schedule(data));
