//! Cache quality on a generated workload with known duplicates and known near-misses:
//! how many true duplicates hit (recall) and how many near-misses wrongly hit (false
//! positives), through the real lookup path (exact key, SimHash index, guards).
//!
//! Run: `cargo bench -p daena-app --bench cas_quality`

use daena_app::auth::Access;
use daena_app::cas::chat::{self, ChatOptions};
use daena_app::config::{Config, LoadedConfig, Secret, Secrets};
use daena_app::{Daena, OpenOptions};
use serde_json::{Value, json};

const TOPICS: &[&str] =
    &["revenue", "churn", "hiring", "security incident", "supplier", "pricing", "support backlog", "cloud spend"];
const DEPTS: &[&str] = &["engineering", "product", "sales", "marketing", "finance", "hr", "legal", "customer"];

fn base(i: usize) -> (String, [usize; 3]) {
    let t = i % TOPICS.len();
    let d = (i / TOPICS.len()) % DEPTS.len();
    let n = 3 + i % 5;
    (
        format!(
            "Summarize the {} report for the {} department in {} bullet points, highlight the main risks and keep it under 200 words.",
            TOPICS[t], DEPTS[d], n
        ),
        [t, d, n],
    )
}

fn request(content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are an assistant of the fleet. Answer precisely."},
        {"role": "user", "content": content}]})
}

fn answer(i: usize) -> Value {
    json!({"id": format!("a{i}"), "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer {i}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 150}})
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = LoadedConfig {
        config: Config { data_dir: dir.path().join("data"), ..Config::default() },
        secrets: Secrets { ops_key: Some(Secret::new("k")), ..Secrets::default() },
        files: Vec::new(),
        config_dir: dir.path().join("config"),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let d = Daena::open(loaded, OpenOptions::offline("bench")).expect("open");
        let who = d.keys.authenticate(Some("k"), None, Access::Data).expect("auth");
        let n = 320; // every (topic, department) pair, five bullet counts spread over them
        for i in 0..n {
            chat::store(&d, &who, request(&base(i).0), answer(i), ChatOptions::default()).await.expect("store");
        }
        let served = |v: &Value| v["choices"][0]["message"]["content"].as_str().map(str::to_owned);
        let mut dup = (0usize, 0usize, 0usize); // lookups, hits, wrong answers among hits
        let mut near_miss = (0usize, 0usize); // lookups, (wrong) hits
        let mut by_kind: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
        for i in 0..n {
            let (text, [t, d_, k]) = base(i);
            let duplicates = [
                ("whitespace", format!("  {}  ", text.replace(' ', "   "))),
                ("case", text.to_uppercase()),
                ("punctuation", text.replace(',', "").replace('.', "!")),
                ("courtesy", format!("Please {}", text.replacen("Summarize", "summarize", 1))),
            ];
            for (kind, v) in duplicates {
                let r = chat::lookup(&d, &who, request(&v), ChatOptions::default()).expect("lookup");
                dup.0 += 1;
                let e = by_kind.entry(kind).or_default();
                e.0 += 1;
                if r.hit {
                    dup.1 += 1;
                    e.1 += 1;
                    if r.response.as_ref().and_then(served) != Some(format!("answer {i}")) {
                        if std::env::var("DEBUG_CAS").is_ok() {
                            eprintln!(
                                "{kind} of {i} served {:?} ({}, {:?})",
                                r.response.as_ref().and_then(served),
                                r.status,
                                r.distance
                            );
                        }
                        dup.2 += 1;
                    }
                }
            }
            let misses = [
                ("other number", text.replace(&format!(" {k} bullet"), &format!(" {} bullet", k + 7))),
                ("negation", text.replace("highlight the main risks", "do not highlight the main risks")),
                ("other topic", text.replace(TOPICS[t], TOPICS[(t + 1) % TOPICS.len()])),
                ("other department", text.replace(DEPTS[d_], DEPTS[(d_ + 3) % DEPTS.len()])),
                ("other instruction", text.replace("keep it under 200 words", "write it as a memo")),
                ("one other word", text.replace("main risks", "main opportunities")),
            ];
            for (kind, v) in misses {
                let r = chat::lookup(&d, &who, request(&v), ChatOptions::default()).expect("lookup");
                // A near-miss is a different question; any hit on another entry is wrong, and
                // a variant that happens to equal another stored prompt is excluded.
                let other_exact = (0..n).any(|j| base(j).0 == v);
                if other_exact {
                    continue;
                }
                near_miss.0 += 1;
                let e = by_kind.entry(kind).or_default();
                e.0 += 1;
                if r.hit {
                    near_miss.1 += 1;
                    e.1 += 1;
                }
            }
        }
        let rep = daena_app::cas::report::cas(&d);
        println!("workload: {n} stored prompts; {} duplicate lookups, {} near-miss lookups", dup.0, near_miss.0);
        println!(
            "true duplicates served: {}/{} ({:.1}%), wrong answers among them: {}",
            dup.1,
            dup.0,
            100.0 * dup.1 as f64 / dup.0 as f64,
            dup.2
        );
        println!(
            "near-misses wrongly served (false positives): {}/{} ({:.2}%)",
            near_miss.1,
            near_miss.0,
            100.0 * near_miss.1 as f64 / near_miss.0 as f64
        );
        println!(
            "hit rate over all lookups: {:.1}%, guard refusals: {}",
            rep.rates.hit_rate * 100.0,
            rep.guard_refusals
        );
        for (kind, (l, h)) in by_kind {
            println!("  {kind:<18} {h:>4}/{l:<4} hit");
        }
        d.shutdown().await.expect("shutdown");
    });
}
