//! Ledger lines as read from segment files, snapshots and the shared ledger: checking and
//! parsing never panic, and a line that parses is one that checks, with the same facts.
#![no_main]

use daena_core::ledger::entry::{check_line_bytes, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    let checked = check_line_bytes(data, &mut scratch);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(entry) = parse_line(text)
    {
        let facts = checked.expect("a line that parses also checks");
        assert_eq!((entry.seq, entry.hash, entry.prev), (facts.seq, facts.hash, facts.prev));
    }
});
