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
//! - Near-duplicates ([`content`]): a request's conversation reduced to what it says (content
//!   tokens: words, numbers, meaningful symbols, without courtesies and fillers); SimHash over
//!   those tokens finds candidates through the multi-index ([`index`]), and a guard
//!   fingerprint of the tokens, numbers and negations decides. This keeps near hits to
//!   variants of case, punctuation, spacing, courtesies and filler words, and refuses "the
//!   churn report" for "the pricing report" or "-5" for "5". The guard is compared through a
//!   fingerprint, never stored as text.

pub mod content;
pub mod index;

pub use content::{guard_features, guard_fingerprint, hamming, max_distance, simhash, words};
pub use index::NearIndex;

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

    }
}
