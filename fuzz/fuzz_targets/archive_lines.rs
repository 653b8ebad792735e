//! Archive files given to `daena archive verify` and `import` (decompressed: the JSON lines):
//! reading any bytes never panics, and whatever reads whole has a trailer that matches the
//! records it counted.
#![no_main]

use daena_core::archive::read_lines;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut seen = 0u64;
    if let Ok(contents) = read_lines(data, |_| {
        seen += 1;
        Ok::<(), ()>(())
    }) {
        assert_eq!(contents.records, seen);
    }
});
