//! Per-request hashing kernels: the LLM cache's exact key and scope for a chat request, and
//! sealing a ledger entry (canonical JSON + SHA-256), as a `memory.put` writes it.
//!
//! Run: `cargo bench -p daena-core --bench keys`

use criterion::{Criterion, criterion_group, criterion_main};
use daena_core::cas;
use daena_core::ledger::entry::{self, NewEntry};
use daena_core::time::Micros;
use serde_json::{Value, json};
use std::hint::black_box;

fn chat_request() -> serde_json::Map<String, Value> {
    let request = json!({
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are the finance department's assistant. Answer briefly and cite the report."},
            {"role": "user", "content": "Summarize the Q3 revenue report for the board in five bullet points and keep it short."},
            {"role": "assistant", "content": "Revenue grew 12% quarter on quarter, led by the enterprise tier."},
            {"role": "user", "content": "Now add a line on churn for the same quarter, with the number."},
        ],
    });
    request.as_object().cloned().unwrap_or_default()
}

fn put_entry() -> NewEntry {
    NewEntry::new("acme", "key:finance_synth", "memory.put", "chat/w3-1042")
        .attrs(json!({
            "class": "chat", "key": "w3-1042", "version": 1, "tier": "L2", "created_at": 1_764_000_000_000_000i64,
            "updated_at": 1_764_000_000_000_000i64,
            "content_sha256": "9f2b5c0e7d1a4b3c8e6f0a2d4c6b8e0f1a3c5e7092b4d6f8a0c2e4f6a8b0d2e4",
            "raw_len": 214, "level": 3, "payload_bytes": 214, "writer": "finance_synth",
            "divergence": null, "intended_revision": false,
        }))
        .body(vec![0x5a; 260])
}

fn kernels(c: &mut Criterion) {
    let request = chat_request();
    c.bench_function("cas::keys, 4-message chat request", |b| b.iter(|| cas::keys(black_box("acme"), &request)));
    let e = put_entry();
    let prev = [7u8; 32];
    c.bench_function("ledger entry seal, memory.put with a 260-byte body", |b| {
        b.iter(|| entry::seal(black_box(&e), 1_042, Micros(1_764_000_000_000_000), &prev))
    });
}

criterion_group!(benches, kernels);
criterion_main!(benches);
