//! The CPU pressure parser (`/proc/pressure/cpu`, read by the `auto` scheduling
//! policy of the node's fast thread and the cloud's runtime threads) never panics
//! and only returns a percentage.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(p) = cyphonic_sched::parse_cpu_pressure(text) {
            assert!((0.0..=100.0).contains(&p.avg10));
        }
    }
});
