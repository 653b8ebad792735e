//! Cache quality on a labelled workload (`support/cas_workload.rs`): per family, how many
//! benign variants are served the right answer (recall) and how many different questions are
//! served anything (false positives), through the real lookup path.
//!
//! Run: `cargo bench -p daena-app --bench cas_quality` (`-- --bases N` for another size;
//! `DEBUG_CAS=1` prints examples of misses and false hits).

#[path = "support/cas_workload.rs"]
mod cas_workload;

use daena_app::auth::Access;
use daena_app::config::LoadedConfig;
use daena_app::{Daena, OpenOptions};

fn main() {
    let mut args = std::env::args().skip_while(|a| a != "--bases");
    let n: usize = args.nth(1).and_then(|v| v.parse().ok()).unwrap_or(960);
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = LoadedConfig::in_dir(dir.path(), Some("k"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let d = Daena::open(loaded, OpenOptions::offline("bench")).expect("open");
        let who = d.governance().api_keys().authenticate(Some("k"), None, Access::Data).expect("auth");
        let started = std::time::Instant::now();
        let tallies = cas_workload::run(&d, &who, n).await;
        let (mut benign, mut different, mut strict) = ((0, 0, 0), (0, 0), (0, 0));
        println!("{n} stored prompts, threshold {}", d.config().memory.simhash_threshold);
        println!("| family | kind | lookups | served | rate |");
        println!("|---|---|---:|---:|---:|");
        for (name, t) in &tallies {
            let kind = match (t.benign, t.strict) {
                (true, _) => "benign (recall)",
                (false, true) => "different, strict (FP)",
                (false, false) => "different (FP)",
            };
            println!("| {name} | {kind} | {} | {} | {:.2}% |", t.lookups, t.hits, 100.0 * t.rate());
            if t.benign {
                benign = (benign.0 + t.lookups, benign.1 + t.hits, benign.2 + t.wrong);
            } else {
                different = (different.0 + t.lookups, different.1 + t.hits);
                if t.strict {
                    strict = (strict.0 + t.lookups, strict.1 + t.hits);
                }
            }
            if std::env::var("DEBUG_CAS").is_ok() {
                t.examples.iter().for_each(|e| eprintln!("  {name}: {e}"));
            }
        }
        let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
        println!(
            "recall on benign variants: {}/{} ({:.2}%), wrong answers among them: {}",
            benign.1,
            benign.0,
            pct(benign.1, benign.0),
            benign.2
        );
        println!("false positives overall: {}/{} ({:.2}%)", different.1, different.0, pct(different.1, different.0));
        println!("false positives on numbers, signs, symbols, negations, units, dates: {}/{}", strict.1, strict.0);
        let rep = daena_app::cas::report::cas(&d);
        println!(
            "hit rate over all lookups: {:.1}%, guard refusals: {}, {:.1} s",
            rep.rates.hit_rate * 100.0,
            rep.guard_refusals,
            started.elapsed().as_secs_f64()
        );
        d.shutdown().await.expect("shutdown");
    });
}
