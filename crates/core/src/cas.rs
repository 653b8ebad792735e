//! The LLM cache's keys: normalization, the exact content-addressed key, the scope of
//! near-duplicate matching, 64-bit SimHash, and the guards that refuse a near-duplicate whose
//! numbers or negations differ.
//!
//! - Normalization: Unicode NFKC, runs of whitespace collapsed to one space, trimmed. Case and
//!   punctuation are kept, so the exact key distinguishes them.
//! - Exact key: SHA-256 of the canonical JSON of `{"v":1,"tenant","model","messages","params"}`
//!   with every message's text normalized; `params` is every request field except `model`,
//!   `messages`, `stream`, `stream_options` and `user`, so anything that may change the output
//!   (temperature, top_p, max_tokens, stop, seed, tools, response_format, and fields this
//!   version does not know) separates keys.
//! - Scope: SHA-256 of `{"v":1,"tenant","model","params"}`; near-duplicates only match within
//!   one scope (same tenant, model and parameters).
//! - SimHash: features are the lowercase alphanumeric words of the normalized conversation
//!   (`role: content` per message) and each pair of adjacent words; each feature's hash is the
//!   first 8 bytes (big-endian) of SHA-256 of its UTF-8 text; bit i of the result is set when
//!   the features with bit i set are at least half.
//! - Guards: a near-duplicate is served only when the conversations say the same thing in
//!   other form: the same numbers, the same negations, and the same sequence of content words
//!   (every word but a short list of articles and courtesies). SimHash finds the candidates
//!   quickly; the guard decides. This keeps near hits to variants of case, punctuation,
//!   spacing and filler words, and refuses "the churn report" for "the pricing report" even
//!   when their SimHashes are equal. The guard is compared through a fingerprint, never
//!   stored as text.

use crate::canonical;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// NFKC, whitespace collapsed, trimmed.
pub fn normalize(text: &str) -> String {
    // ASCII text is its own NFKC form: skip the decomposition (most prompts).
    let nfkc: std::borrow::Cow<'_, str> =
        if text.is_ascii() { std::borrow::Cow::Borrowed(text) } else { std::borrow::Cow::Owned(text.nfkc().collect()) };
    let mut out = String::with_capacity(nfkc.len());
    for word in nfkc.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Request fields that never change the answer.
const NOT_PARAMS: &[&str] = &["model", "messages", "stream", "stream_options", "user"];

/// A message's text: a string content, or the text parts of an array content.
pub fn message_text(m: &Value) -> String {
    match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

/// A request reduced to what identifies its answer. The near-duplicate features are
/// computed on demand: an exact hit never needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Keys {
    pub exact: [u8; 32],
    pub scope: u64,
    /// The normalized conversation, `role: content` per line.
    pub text: String,
}

impl Keys {
    pub fn simhash(&self) -> u64 {
        simhash(&self.text)
    }
    /// Fingerprint of the numbers and negations.
    pub fn guard(&self) -> u64 {
        guard_fingerprint(&self.text)
    }
    /// SHA-256 of the normalized conversation (for diagnostics: repeated prompts).
    pub fn prompt_hash(&self) -> [u8; 32] {
        Sha256::digest(self.text.as_bytes()).into()
    }
}

/// The parts of a chat request that matter for caching, normalized.
///
/// The canonical documents are written straight from the request, without building
/// normalized copies of it: the exact document is `{"messages":[…],` followed by the scope
/// document without its `{`, so both hash the same tail.
pub fn keys(tenant: &str, request: &Map<String, Value>) -> Keys {
    let model = request.get("model").unwrap_or(&Value::Null);
    let params = request.iter().filter(|(k, _)| !NOT_PARAMS.contains(&k.as_str())).collect();

    // "model":…,"params":{…},"tenant":…,"v":1}
    let mut tail = String::with_capacity(128);
    tail.push_str("\"model\":");
    canonical::write(model, &mut tail);
    tail.push_str(",\"params\":");
    canonical::write_fields(params, &mut tail, |_, _, _| false);
    tail.push_str(",\"tenant\":");
    canonical::write_str(tenant, &mut tail);
    tail.push_str(",\"v\":1}");

    let mut messages = String::with_capacity(512);
    let mut text = String::new();
    messages.push_str("{\"messages\":[");
    for (i, m) in request.get("messages").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if i > 0 {
            messages.push(',');
            text.push('\n');
        }
        let line = write_message(m, &mut messages);
        text.push_str(m.get("role").and_then(Value::as_str).unwrap_or(""));
        text.push_str(": ");
        text.push_str(&line);
    }
    messages.push_str("],");

    let exact: [u8; 32] = Sha256::new().chain_update(&messages).chain_update(&tail).finalize().into();
    let scope_full: [u8; 32] = Sha256::new().chain_update("{").chain_update(&tail).finalize().into();
    Keys { exact, scope: u64::from_be_bytes(first8(&scope_full)), text }
}

/// Writes the canonical text of a message with its text normalized (a non-object message
/// counts as `{}`), and returns its normalized text for the conversation.
fn write_message(m: &Value, out: &mut String) -> String {
    let Some(obj) = m.as_object() else {
        out.push_str("{}");
        return String::new();
    };
    let mut line = None;
    canonical::write_fields(obj.iter().collect(), out, |k, v, out| {
        if k != "content" {
            return false;
        }
        match v {
            Value::String(s) => {
                let n = normalize(s);
                canonical::write_str(&n, out);
                line = Some(n);
            }
            Value::Array(parts) => {
                let mut texts = Vec::new();
                out.push('[');
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    match (p.get("type").and_then(Value::as_str), p.get("text"), p.as_object()) {
                        (Some("text"), Some(Value::String(t)), Some(part)) => {
                            let n = normalize(t);
                            canonical::write_fields(part.iter().collect(), out, |k, _, out| {
                                (k == "text").then(|| canonical::write_str(&n, out)).is_some()
                            });
                            texts.push(n);
                        }
                        _ => {
                            canonical::write(p, out);
                            if let Some(t) = p.get("text").and_then(Value::as_str) {
                                texts.push(t.to_owned());
                            }
                        }
                    }
                }
                out.push(']');
                line = Some(normalize(&texts.join("\n")));
            }
            other => canonical::write(other, out),
        }
        true
    });
    line.unwrap_or_default()
}

fn first8(h: &[u8]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    b
}

/// Lowercase alphanumeric words.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn feature_hash(f: &str) -> u64 {
    u64::from_be_bytes(first8(&Sha256::digest(f.as_bytes())))
}

/// 64-bit SimHash over words and adjacent word pairs.
pub fn simhash(text: &str) -> u64 {
    let w = words(text);
    let mut votes = [0i32; 64];
    let mut add = |h: u64| {
        for (i, v) in votes.iter_mut().enumerate() {
            *v += if h >> i & 1 == 1 { 1 } else { -1 };
        }
    };
    for word in &w {
        add(feature_hash(word));
    }
    for pair in w.windows(2) {
        add(feature_hash(&format!("{} {}", pair[0], pair[1])));
    }
    votes.iter().enumerate().fold(0u64, |acc, (i, v)| if *v >= 0 { acc | 1 << i } else { acc })
}

pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// floor((1 − t) · 64): the largest distance similarity `t` accepts.
pub fn max_distance(threshold: f64) -> u32 {
    ((1.0 - threshold) * 64.0 + 1e-9).floor().clamp(0.0, 64.0) as u32
}

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nobody",
    "nothing",
    "neither",
    "nor",
    "nowhere",
    "without",
    "cannot",
    "cant",
    "dont",
    "doesnt",
    "didnt",
    "isnt",
    "arent",
    "wasnt",
    "werent",
    "wont",
    "wouldnt",
    "shouldnt",
    "couldnt",
    "mustnt",
    "hasnt",
    "havent",
    "hadnt",
    "except",
    "exclude",
    "excluding",
    "unless",
];

/// Numbers (as written, digits and decimal points) and negations of a text.
pub fn guard_features(text: &str) -> (Vec<String>, Vec<String>) {
    let mut numbers: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || (c == '.' && !cur.is_empty()) {
            cur.push(c);
        } else if !cur.is_empty() {
            numbers.push(cur.trim_end_matches('.').to_owned());
            cur.clear();
        }
    }
    numbers.sort();
    // Apostrophes are dropped so contractions ("don't", "can’t") become single words.
    let lowered = text.to_lowercase().replace(['\'', '’'], "");
    let mut negations: Vec<String> = words(&lowered).into_iter().filter(|w| NEGATIONS.contains(&w.as_str())).collect();
    negations.sort();
    negations.dedup();
    (numbers, negations)
}

/// Words that may differ between near-duplicates: articles and courtesies only.
const FILLER: &[&str] = &["a", "an", "the", "please", "kindly", "hi", "hello", "hey", "thanks", "thank", "you"];

/// The content words of a text in order: lowercase words without apostrophes, fillers removed.
pub fn content_words(text: &str) -> Vec<String> {
    words(&text.replace(['\'', '’'], "")).into_iter().filter(|w| !FILLER.contains(&w.as_str())).collect()
}

/// A fingerprint of [`guard_features`] and [`content_words`]: equal features give equal
/// fingerprints.
pub fn guard_fingerprint(text: &str) -> u64 {
    let (numbers, negations) = guard_features(text);
    let doc = serde_json::json!({"numbers": numbers, "negations": negations, "words": content_words(text)});
    u64::from_be_bytes(first8(&Sha256::digest(canonical::to_string(&doc).as_bytes())))
}

/// Multi-index hashing over four 16-bit blocks: a pair within distance d has at least one
/// block within distance floor(d/4), so probing each block's table with every value within
/// that radius finds every candidate without scanning. Buckets hold the full hashes, so a
/// candidate is checked without another lookup, and a candidate is counted only from the
/// first block that can reach it (no de-duplication set).
#[derive(Debug, Default)]
pub struct NearIndex {
    /// (scope, block value) → (slot, hash), per block.
    tables: [BlockTable; 4],
    slots: Vec<Option<(u64, u64)>>,
    free: Vec<u32>,
    live: usize,
}

/// (scope, block value) → (slot, hash) of the entries with that block.
type BlockTable = std::collections::HashMap<(u64, u16), Vec<(u32, u64)>, BuildMix>;

/// A fast hasher for the index's (scope, block) keys: the scope is already a SHA-256 prefix,
/// so mixing it with the block value is enough.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuildMix;

#[derive(Debug, Default)]
pub struct Mix(u64);

impl std::hash::BuildHasher for BuildMix {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(0)
    }
}

impl std::hash::Hasher for Mix {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u16(&mut self, v: u16) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

fn block(h: u64, i: usize) -> u16 {
    (h >> (16 * i)) as u16
}

/// Every 16-bit value within distance `r` of `v`.
fn ball(v: u16, r: u32) -> Vec<u16> {
    match r {
        0 => vec![v],
        1 => std::iter::once(v).chain((0..16).map(|i| v ^ (1 << i))).collect(),
        2 => {
            let mut out: Vec<u16> = std::iter::once(v).chain((0..16).map(|i| v ^ (1 << i))).collect();
            for i in 0..16 {
                for j in i + 1..16 {
                    out.push(v ^ (1 << i) ^ (1 << j));
                }
            }
            out
        }
        // Wider radii only arise for thresholds below 0.81; enumerate them exhaustively.
        _ => (0..=u16::MAX).filter(|x| (x ^ v).count_ones() <= r).collect(),
    }
}

impl NearIndex {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds a SimHash in `scope`; returns its slot (for removal).
    pub fn insert(&mut self, scope: u64, hash: u64) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some((scope, hash));
                s
            }
            None => {
                self.slots.push(Some((scope, hash)));
                (self.slots.len() - 1) as u32
            }
        };
        for (i, t) in self.tables.iter_mut().enumerate() {
            t.entry((scope, block(hash, i))).or_default().push((slot, hash));
        }
        self.live += 1;
        slot
    }

    pub fn remove(&mut self, slot: u32) {
        let Some(Some((scope, hash))) = self.slots.get(slot as usize).copied() else { return };
        for (i, t) in self.tables.iter_mut().enumerate() {
            if let Some(v) = t.get_mut(&(scope, block(hash, i))) {
                v.retain(|(s, _)| *s != slot);
                if v.is_empty() {
                    t.remove(&(scope, block(hash, i)));
                }
            }
        }
        self.slots[slot as usize] = None;
        self.free.push(slot);
        self.live -= 1;
    }

    /// Slots in `scope` within distance `max` of `hash`, nearest first, as (slot, distance).
    pub fn search(&self, scope: u64, hash: u64, max: u32) -> Vec<(u32, u32)> {
        let r = max / 4;
        let mut out = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            for v in ball(block(hash, i), r) {
                let Some(bucket) = t.get(&(scope, v)) else { continue };
                for (slot, h) in bucket {
                    let d = hamming(*h, hash);
                    // Counted from the first block whose probe reaches it.
                    if d <= max && (0..i).all(|j| (block(*h, j) ^ block(hash, j)).count_ones() > r) {
                        out.push((*slot, d));
                    }
                }
            }
        }
        out.sort_by_key(|(s, d)| (*d, *s));
        out
    }

    /// The same search by scanning every slot: the baseline for benchmarks and tests.
    pub fn scan(&self, scope: u64, hash: u64, max: u32) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(s, e)| match e {
                Some((sc, h)) if *sc == scope && hamming(*h, hash) <= max => Some((s as u32, hamming(*h, hash))),
                _ => None,
            })
            .collect();
        out.sort_by_key(|(s, d)| (*d, *s));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    /// The straightforward form of [`keys`] over normalized copies of the request: the
    /// reference the streamed one must equal.
    fn keys_reference(tenant: &str, request: &Map<String, Value>) -> Keys {
        let model = request.get("model").cloned().unwrap_or(Value::Null);
        let messages: Vec<Value> = request
            .get("messages")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let mut n = m.as_object().cloned().unwrap_or_default();
                        match n.get("content") {
                            Some(Value::String(s)) => {
                                n.insert("content".into(), Value::String(normalize(s)));
                            }
                            Some(Value::Array(parts)) => {
                                let parts = parts
                                    .iter()
                                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                                        (Some("text"), Some(Value::String(t))) => {
                                            let mut q = p.as_object().cloned().unwrap_or_default();
                                            q.insert("text".into(), Value::String(normalize(t)));
                                            Value::Object(q)
                                        }
                                        _ => p.clone(),
                                    })
                                    .collect();
                                n.insert("content".into(), Value::Array(parts));
                            }
                            _ => {}
                        }
                        Value::Object(n)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let params: Map<String, Value> = request
            .iter()
            .filter(|(k, _)| !NOT_PARAMS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let exact_doc =
            serde_json::json!({"v": 1, "tenant": tenant, "model": model, "messages": messages, "params": params});
        let scope_doc = serde_json::json!({"v": 1, "tenant": tenant, "model": model, "params": params});
        let exact: [u8; 32] = Sha256::digest(canonical::to_string(&exact_doc).as_bytes()).into();
        let scope_full: [u8; 32] = Sha256::digest(canonical::to_string(&scope_doc).as_bytes()).into();
        let text: String = messages
            .iter()
            .map(|m| {
                format!("{}: {}", m.get("role").and_then(Value::as_str).unwrap_or(""), normalize(&message_text(m)))
            })
            .collect::<Vec<_>>()
            .join("\n");
        Keys { exact, scope: u64::from_be_bytes(first8(&scope_full)), text }
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize("  What\u{00A0}is\tthe   ｃａｐｉｔａｌ?\n"), "What is the capital?");
        // The ASCII fast path gives what full NFKC gives.
        for t in ["", " a ", "Tabs\tand\nnewlines\r\n", "x\u{0b}y\u{0c}z", "punct: 1,2;3!", "\u{1}ctl\u{7f}"] {
            let full: String = t.nfkc().collect();
            assert_eq!(normalize(t), full.split_whitespace().collect::<Vec<_>>().join(" "), "{t:?}");
        }
    }

    /// The key format is persisted (cache rows and the ledger name entries by it): a change
    /// would make every cached answer unreachable after an upgrade. The expected values are
    /// SHA-256 of the canonical documents written out by hand (cross-checked in Python).
    #[test]
    fn exact_key_and_scope_vectors() {
        let k = keys(
            "acme",
            &req(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": " What  is 2+2? "}],
                "temperature": 0.2, "stream": true, "user": "u1"})),
        );
        // {"messages":[{"content":"What is 2+2?","role":"user"}],"model":"gpt-4o","params":{"temperature":0.2},"tenant":"acme","v":1}
        assert_eq!(hex::encode(k.exact), "5a05b56dad655d18eae3b940dc4e31ec4fdaa280bfcde1f079d4dd5406d55a54");
        // {"model":"gpt-4o","params":{"temperature":0.2},"tenant":"acme","v":1}, first 8 bytes
        assert_eq!(format!("{:016x}", k.scope), "1d9bec1133115ba5");
    }

    #[test]
    fn exact_keys_separate_what_matters() {
        let base =
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0.2});
        let k = keys("acme", &req(base.clone()));
        let same = keys(
            "acme",
            &req(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": " What  is 2+2? "}],
            "temperature": 0.2, "stream": true, "user": "u1"})),
        );
        assert_eq!(k.exact, same.exact, "whitespace, stream and user do not matter");
        for other in [
            keys("globex", &req(base.clone())),
            keys("acme", &req(json!({"model": "gpt-4o-mini", "messages": base["messages"], "temperature": 0.2}))),
            keys("acme", &req(json!({"model": "gpt-4o", "messages": base["messages"], "temperature": 0.3}))),
            keys("acme", &req(json!({"model": "gpt-4o", "messages": base["messages"], "temperature": 0.2, "seed": 1}))),
            keys(
                "acme",
                &req(
                    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "what is 2+2?"}], "temperature": 0.2}),
                ),
            ),
        ] {
            assert_ne!(k.exact, other.exact);
        }
        let case = keys(
            "acme",
            &req(
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "WHAT is 2+2"}], "temperature": 0.2}),
            ),
        );
        assert_eq!(k.scope, case.scope, "same tenant, model and params share a scope");
        assert_eq!(k.simhash(), case.simhash(), "case and punctuation do not change the SimHash");
        assert_ne!(
            k.scope,
            keys("acme", &req(json!({"model": "gpt-4o", "messages": base["messages"], "temperature": 0.9}))).scope
        );
    }

    #[test]
    fn simhash_vectors() {
        // Pinned values (docs/FORMATS.md).
        assert_eq!(format!("{:016x}", simhash("user: What is the capital of France?")), "bc79b1728676522d");
        assert_eq!(format!("{:016x}", simhash("hello")), "2cf24dba5fb0a30e");
        assert_eq!(format!("{:016x}", simhash("")), "ffffffffffffffff");
        assert_eq!(simhash("user: What is the capital of France?"), simhash("user: what is the capital of france"));
        let a =
            simhash("user: Summarize the quarterly revenue report for the board in five bullet points, keep it short.");
        let b =
            simhash("user: Summarize the quarterly revenue report for the board in five bullet points; keep it brief.");
        let c = simhash("user: Write a poem about the sea.");
        assert!(hamming(a, b) <= 12, "{}", hamming(a, b));
        assert!(hamming(a, c) > 16, "{}", hamming(a, c));
        assert_eq!(max_distance(0.88), 7);
        assert_eq!(max_distance(1.0), 0);
    }

    #[test]
    fn guards() {
        let g = |t: &str| guard_fingerprint(t);
        assert_eq!(g("Ship 3 boxes to Paris"), g("ship 3 boxes to paris!"));
        assert_ne!(g("Ship 3 boxes to Paris"), g("Ship 4 boxes to Paris"));
        assert_ne!(g("Is the invoice paid?"), g("Is the invoice not paid?"));
        assert_ne!(g("Can we do this?"), g("Can't we do this?"));
        assert_eq!(guard_features("price 3.50, qty 2.").0, vec!["2", "3.50"]);
        assert_ne!(g("Summarize the churn report"), g("Summarize the pricing report"));
        assert_ne!(g("dog bites man"), g("man bites dog"));
        assert_eq!(g("Please summarize the churn report."), g("summarize churn report"));
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("What is 2+2?"),
                Just(" "),
                Just("\t\n"),
                Just("\u{00A0}"),
                Just("ｃａｐｉｔａｌ"),
                Just("e\u{301}"),
                Just("\"quoted\" \\ back"),
                Just("\u{1}\u{1f}"),
                Just("Don't"),
                Just("3.50"),
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat())
    }

    fn message_strategy() -> impl Strategy<Value = Value> {
        let part = (prop_oneof![Just("text"), Just("image_url"), Just("other")], text_strategy(), any::<bool>())
            .prop_map(
                |(kind, text, with_text)| {
                    if with_text { json!({"type": kind, "text": text}) } else { json!({"type": kind, "url": text}) }
                },
            );
        let content = prop_oneof![
            text_strategy().prop_map(Value::String),
            proptest::collection::vec(part, 0..4).prop_map(Value::Array),
            Just(Value::Null),
            Just(json!(7)),
        ];
        prop_oneof![
            8 => (prop_oneof![Just("user"), Just("system"), Just("assistant")], content, proptest::option::of(text_strategy()))
                .prop_map(|(role, content, name)| {
                    let mut m = json!({"role": role, "content": content});
                    if let Some(n) = name {
                        m["name"] = Value::String(n);
                    }
                    m
                }),
            1 => Just(json!(3)),
            1 => Just(json!({"role": "tool"})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The streamed keys equal the keys of the normalized documents built in full.
        #[test]
        fn keys_equal_the_reference(
            messages in proptest::collection::vec(message_strategy(), 0..5),
            temperature in proptest::option::of(0.0f64..2.0),
            seed in proptest::option::of(any::<i64>()),
            stop in proptest::option::of(proptest::collection::vec(text_strategy(), 0..3)),
            tenant in prop_oneof![Just("acme"), Just("t\"x")],
            model in prop_oneof![Just(json!("gpt-4o")), Just(Value::Null), Just(json!(5))],
            extra in any::<bool>(),
        ) {
            let mut r = json!({"messages": messages, "stream": true, "user": "u"});
            if !model.is_null() {
                r["model"] = model;
            }
            if let Some(t) = temperature { r["temperature"] = json!(t); }
            if let Some(s) = seed { r["seed"] = json!(s); }
            if let Some(s) = stop { r["stop"] = json!(s); }
            if extra { r["response_format"] = json!({"type": "json_object", "schema": {"b": 1, "a": [2.5, null]}}); }
            let r = req(r);
            prop_assert_eq!(keys(tenant, &r), keys_reference(tenant, &r));
        }

        /// The multi-index finds exactly what a linear scan finds.
        #[test]
        fn index_equals_scan(hashes in proptest::collection::vec(any::<u64>(), 1..400), flips in proptest::collection::vec(0u32..64, 0..12), max in 0u32..12) {
            let mut idx = NearIndex::default();
            for (i, h) in hashes.iter().enumerate() {
                idx.insert((i % 3) as u64, *h);
            }
            let mut q = hashes[0];
            for f in &flips {
                q ^= 1 << f;
            }
            for scope in 0..3 {
                prop_assert_eq!(idx.search(scope, q, max), idx.scan(scope, q, max));
            }
            idx.remove(0);
            prop_assert_eq!(idx.search(0, q, max), idx.scan(0, q, max));
        }
    }
}
