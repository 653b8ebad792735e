//! The legacy verifier against a ledger written by CPython (fixtures/make_legacy_ledger.py).

use daena_core::ledger::legacy;

const LEDGER: &str = include_str!("fixtures/legacy_ledger.jsonl");

#[test]
fn verifies_a_python_written_ledger() {
    let report = legacy::verify(LEDGER);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.entries, 6);
    assert_eq!(report.first_txid.as_deref(), Some("32e54df2df6fb511684504801528501bd26da426805910aad22226011350c623"));
    assert_eq!(report.last_txid.as_deref(), Some("99b465ed469c84b3af8673071d58f27e1898e832054705eb7c8ffabf2a3ba5c3"));
    assert_eq!(report.merkle_root.as_deref(), Some("967c68238f434cf63d5142d1abe13678236a896f2b1f8eb442d3918fc139edb9"));
    assert_eq!(report.chained, 4);
}

#[test]
fn detects_edits_and_broken_links() {
    let edited = LEDGER.replacen("\"records_rotated\": 12", "\"records_rotated\": 13", 1);
    let report = legacy::verify(&edited);
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].line, 6);

    let mut lines: Vec<&str> = LEDGER.lines().collect();
    lines.remove(3);
    let report = legacy::verify(&lines.join("\n"));
    assert!(report.problems.iter().any(|p| p.line == 4 && p.reason.contains("prev_hash")), "{:?}", report.problems);

    let report = legacy::verify(&format!("{LEDGER}not json\n"));
    assert_eq!(report.problems.last().map(|p| p.line), Some(7));
}
