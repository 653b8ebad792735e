//! Floats as the original Python Daena read and wrote them: vectors made by CPython
//! (`fixtures/py_floats.py`), checked through the same JSON parser and `repr` that legacy
//! ledger verification uses.

use daena_core::ledger::legacy;
use serde_json::Value;

const VECTORS: &str = include_str!("fixtures/py_floats.tsv");
const LEDGER: &str = include_str!("fixtures/legacy_floats.jsonl");

#[test]
fn every_python_vector_parses_and_prints_as_python_does() {
    let mut wrong = Vec::new();
    let mut families = std::collections::BTreeMap::<&str, usize>::new();
    for line in VECTORS.lines().filter(|l| !l.starts_with('#')) {
        let mut cols = line.split('\t');
        let (Some(family), Some(text), Some(expected)) = (cols.next(), cols.next(), cols.next()) else {
            panic!("malformed vector line: {line}");
        };
        *families.entry(family).or_default() += 1;
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let printed = legacy::py_canonical(&value);
        if printed != expected {
            wrong.push(format!("{family}: {text} printed {printed}, Python {expected}"));
        }
    }
    assert!(families.len() >= 8 && families.values().all(|&n| n > 0), "{families:?}");
    assert!(wrong.is_empty(), "{} of the vectors differ, first: {:#?}", wrong.len(), &wrong[..wrong.len().min(10)]);
}

#[test]
fn a_legacy_ledger_with_long_floats_verifies() {
    let report = legacy::verify(LEDGER);
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!((report.entries, report.chained), (40, 39));
    // One unit in the last place of one float breaks that line's txid and the next link.
    let tampered = LEDGER.replacen("\"ts\": 29.224513102744986", "\"ts\": 29.224513102744983", 1);
    assert_ne!(tampered, LEDGER);
    let report = legacy::verify(&tampered);
    let lines: Vec<usize> = report.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![1, 2], "{:#?}", report.problems);
}
