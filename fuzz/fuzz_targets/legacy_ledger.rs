//! Legacy (prototype) ledger files given to `daena ledger import-legacy`: verification of any
//! text never panics, and CPython float repr round-trips every finite float.
#![no_main]

use daena_core::ledger::legacy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let f = f64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        if f.is_finite() {
            let repr = legacy::py_float_repr(f);
            assert_eq!(repr.parse::<f64>().ok(), Some(f), "{repr}");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = legacy::verify(text);
    }
});
