#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gf_fuzz_targets::log_line::run(data));
