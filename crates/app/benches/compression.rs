//! Compression on a generated agent-memory corpus (chat turns, ops logs, research notes):
//! stored bytes against plaintext at the L2 level (3) and the L3 level (19), and what a zstd
//! dictionary trained per class would add for small records.
//!
//! Run: `cargo bench -p daena-app --bench compression`

use std::time::Instant;

const WORDS: &[&str] = &[
    "customer",
    "invoice",
    "payment",
    "terms",
    "delivery",
    "contract",
    "renewal",
    "ticket",
    "escalation",
    "follow-up",
    "agent",
    "meeting",
    "quarter",
    "revenue",
    "forecast",
    "pipeline",
    "deploy",
    "latency",
    "error",
    "retry",
    "service",
    "database",
    "cache",
    "summary",
    "analysis",
    "hypothesis",
    "evidence",
    "market",
    "competitor",
    "pricing",
    "discount",
    "the",
    "a",
    "of",
    "to",
    "and",
    "with",
    "for",
    "on",
    "after",
    "before",
    "because",
    "was",
    "is",
    "will",
    "should",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &'a [&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    fn sentence(&mut self, n: usize) -> String {
        (0..n).map(|_| self.pick(WORDS)).collect::<Vec<_>>().join(" ")
    }
}

fn corpus(class: &str, n: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let v = match class {
                "chat" => {
                    let n = 12 + (rng.next() % 30) as usize;
                    let text = rng.sentence(n);
                    let agent = format!("customer_{}", rng.pick(&["advisor_a", "synth", "executor"]));
                    serde_json::json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "text": text, "agent": agent, "turn": i % 40})
                }
                "ops_log" => {
                    let (level, service, msg, latency) =
                        (rng.pick(&["INFO", "WARN", "ERROR"]), rng.pick(&["billing", "search", "gateway"]), rng.sentence(8), rng.next() % 900);
                    serde_json::json!({"level": level, "service": service, "msg": msg, "latency_ms": latency, "ts": 1_764_300_000 + i as u64 * 7})
                }
                _ => {
                    let title = rng.sentence(5);
                    let body = (0..4).map(|_| rng.sentence(40)).collect::<Vec<_>>().join(". ");
                    let source = format!("https://example.org/{}", rng.next() % 1000);
                    let confidence = (rng.next() % 100) as f64 / 100.0;
                    serde_json::json!({"title": title, "body": body, "sources": [source], "confidence": confidence})
                }
            };
            v.to_string().into_bytes()
        })
        .collect()
}

fn main() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    println!(
        "{:<14} {:>8} {:>10} {:>9} {:>9} {:>12} {:>12}",
        "class", "records", "avg bytes", "ratio L3", "ratio L19", "ratio L3+dict", "dict size"
    );
    for class in ["chat", "ops_log", "research_note"] {
        let train = corpus(class, 2000, &mut rng);
        let test = corpus(class, 2000, &mut rng);
        let raw: usize = test.iter().map(Vec::len).sum();
        // The envelope adds 36 bytes (header, nonce, tag) per record.
        let stored = |level: i32| -> usize {
            test.iter().map(|r| zstd::bulk::compress(r, level).expect("zstd").len().min(r.len()) + 36).sum()
        };
        let dict = zstd::dict::from_samples(&train, 16 * 1024).expect("train");
        let mut c = zstd::bulk::Compressor::with_dictionary(3, &dict).expect("dict compressor");
        let with_dict: usize = test.iter().map(|r| c.compress(r).expect("zstd").len().min(r.len()) + 36).sum();
        println!(
            "{class:<14} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>12.2} {:>12}",
            test.len(),
            raw as f64 / test.len() as f64,
            raw as f64 / stored(3) as f64,
            raw as f64 / stored(19) as f64,
            raw as f64 / with_dict as f64,
            dict.len()
        );
    }
    let t = Instant::now();
    let big = corpus("research_note", 5000, &mut rng).concat();
    let z = zstd::bulk::compress(&big, 3).expect("zstd");
    println!(
        "bulk: {} MB of notes at level 3 → ratio {:.2} in {:.0} ms",
        big.len() / 1_000_000,
        big.len() as f64 / z.len() as f64,
        t.elapsed().as_secs_f64() * 1e3
    );
}
