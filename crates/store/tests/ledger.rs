//! The ledger files: durability, reopening, repair, segments, checkpoints and proofs.

use daena_core::ledger::entry::NewEntry;
use daena_core::ledger::verify::ChainVerifier;
use daena_core::merkle::{self, MemoryTree, SubtreeHashes};
use daena_core::time::Micros;
use daena_store::ledger::{self, LedgerRead, read_checkpoints, stream_dir};
use ed25519_dalek::SigningKey;
use serde_json::json;
use std::path::Path;

fn entries(from: u64, n: u64) -> Vec<NewEntry> {
    (from..from + n)
        .map(|i| {
            NewEntry::new("acme", "key:ops", "test.append", format!("r/{i}"))
                .attrs(json!({"i": i}))
                .body(vec![i as u8; 40])
        })
        .collect()
}

fn verify_dir(dir: &Path) -> daena_core::ledger::verify::Summary {
    let mut v = ChainVerifier::new(read_checkpoints(dir).expect("checkpoints"), None);
    stream_dir(dir, |l| v.push(l)).expect("stream");
    v.finish()
}

#[test]
fn append_reopen_and_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ledger");
    let key = SigningKey::from_bytes(&[1u8; 32]);
    {
        let (mut w, r, report) = ledger::open(&dir, 1 << 20).expect("open");
        assert_eq!(report.entries, 0);
        let receipts = w.append(&entries(1, 3), Micros(10)).expect("append");
        assert_eq!(receipts.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        w.append(&entries(4, 2), Micros(5)).expect("append");
        assert_eq!(r.head().size, 5);
        assert_eq!(r.head().ts, Micros(10), "time never goes backwards in the ledger");
        w.checkpoint(&key, Micros(11)).expect("checkpoint");
    }
    let (mut w, r, report) = ledger::open(&dir, 1 << 20).expect("reopen");
    assert_eq!(report.entries, 5);
    assert_eq!(report.verified_tail, 5);
    assert_eq!(report.checkpoint.as_ref().map(|c| c.size), Some(5));
    let receipts = w.append(&entries(6, 1), Micros(20)).expect("append");
    assert_eq!(receipts[0].seq, 6);
    let (got, next) = r.entries(2, 3, 1000, &|_| true).expect("entries");
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(next, Some(5));
    assert_eq!(got[0].reference, "r/2");
    let s = verify_dir(&dir);
    assert!(s.ok(), "{s:?}");
    assert_eq!(s.entries, 6);
    assert_eq!(s.root, hex::encode(r.root(6).expect("root").expect("some")));
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ledger");
    {
        let (mut w, _, _) = ledger::open(&dir, 1 << 20).expect("open");
        w.append(&entries(1, 4), Micros(1)).expect("append");
    }
    let seg = dir.join(ledger::segment_name(1));
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes.extend_from_slice(br#"{"seq":5,"ts":2,"tenant":"acme","act"#);
    std::fs::write(&seg, &bytes).expect("tear");
    let (mut w, r, report) = ledger::open(&dir, 1 << 20).expect("reopen repairs");
    assert_eq!(report.entries, 4);
    assert!(report.repaired_bytes > 0);
    w.append(&entries(5, 1), Micros(3)).expect("append after repair");
    assert_eq!(r.head().size, 5);
    assert!(verify_dir(&dir).ok());
}

#[test]
fn corruption_in_the_tail_segment_refuses_to_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ledger");
    {
        let (mut w, _, _) = ledger::open(&dir, 1 << 20).expect("open");
        w.append(&entries(1, 4), Micros(1)).expect("append");
    }
    let seg = dir.join(ledger::segment_name(1));
    let text = std::fs::read_to_string(&seg).expect("read").replace("r/2", "r/X");
    std::fs::write(&seg, text).expect("tamper");
    let err = ledger::open(&dir, 1 << 20).expect_err("tampered ledger must not open");
    assert!(err.to_string().contains("ledger entry 2"), "{err}");
}

#[test]
fn truncation_below_a_checkpoint_refuses_to_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ledger");
    {
        let (mut w, _, _) = ledger::open(&dir, 1 << 20).expect("open");
        w.append(&entries(1, 4), Micros(1)).expect("append");
        w.checkpoint(&SigningKey::from_bytes(&[2u8; 32]), Micros(2)).expect("checkpoint");
    }
    let seg = dir.join(ledger::segment_name(1));
    let text = std::fs::read_to_string(&seg).expect("read");
    let kept: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&seg, kept).expect("truncate");
    std::fs::remove_file(dir.join("hashes.bin")).expect("rm");
    let err = ledger::open(&dir, 1 << 20).expect_err("truncated ledger must not open");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn segments_roll_and_hashes_rebuild() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ledger");
    let mut mem = MemoryTree::new();
    {
        let (mut w, _, _) = ledger::open(&dir, 4096).expect("open");
        for i in 0..60 {
            for r in w.append(&entries(i * 10 + 1, 10), Micros(i as i64)).expect("append") {
                mem.push_entry(&r.hash);
            }
        }
    }
    let segs = ledger::list_segments(&dir).expect("segments");
    assert!(segs.len() > 10, "{} segments", segs.len());
    std::fs::remove_file(dir.join("hashes.bin")).expect("rm hashes");
    let (_, r, report) = ledger::open(&dir, 4096).expect("reopen");
    assert_eq!(report.rebuilt_hashes, 600);
    assert_eq!(r.root(600).expect("root"), Some(mem.root(600)));
    for (seq, size) in [(1u64, 600u64), (300, 600), (600, 600), (257, 513)] {
        let proof = r.inclusion_proof(seq, size).expect("io").expect("proof");
        assert_eq!(proof, mem.inclusion_proof(seq - 1, size).expect("mem proof"));
        let leaf = merkle::leaf_hash(&r.entry_hash(seq).expect("io").expect("hash"));
        assert!(merkle::verify_inclusion(&leaf, seq - 1, size, &proof, &mem.root(size)));
    }
    let cp = r.consistency_proof(100, 600).expect("io").expect("proof");
    assert!(merkle::verify_consistency(100, 600, &cp, &mem.root(100), &mem.root(600)));
    let (got, _) = r.entries(595, 10, 100, &|_| true).expect("entries across segments");
    assert_eq!(got.len(), 6);
    assert!(verify_dir(&dir).ok());
}
