#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gf_fuzz_targets::callout::run(data));
