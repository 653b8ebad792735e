//! OpenAI chat request bodies as the cache reads them: keys, prompt normalization, content
//! tokens, SimHash and the guard fingerprint never panic, and are deterministic.
#![no_main]

use daena_core::cas::{self, content};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(serde_json::Value::Object(body)) = serde_json::from_slice::<serde_json::Value>(data) {
        let a = cas::keys("acme", &body);
        let b = cas::keys("acme", &body);
        assert_eq!(a, b, "keys are deterministic");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let n = cas::normalize(text);
        assert_eq!(content::simhash(&n), content::simhash(&n));
        let _ = content::content_tokens(text);
        let _ = content::guard_fingerprint(text);
    }
});
