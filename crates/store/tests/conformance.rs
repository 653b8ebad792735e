//! The state store conformance suite: the same scenarios against every backend, through the
//! [`StateStore`] seam and the [`Kv`] handle only. A backend passes by giving [`Backend`] a
//! way to make a fresh, empty store in a directory and to open it again there.
//!
//! Single-writer scenarios come first; the concurrent ones (writers racing, readers during
//! writes) apart, so a backend can be worked on without hiding what it lacks.
//!
//! The ledger scenarios (at the end) run through [`LedgerAppend`] and [`LedgerRead`] only:
//! gap-free sequence numbers, chaining, entries read back, inclusion and consistency proofs
//! against the roots, signed checkpoints, and a reopen that continues the chain. The segment
//! files' own cases (torn lines, rebuilt hashes) stay in `tests/ledger.rs`.

use daena_store::kv::{DocTable, Kv, SETTINGS, StateBatch};
use daena_store::records::{self, RecordRow, RowBody, Tier};
use std::path::Path;

/// How a backend makes (and remakes) its store in a directory.
struct Backend {
    name: &'static str,
    open: fn(&Path) -> Kv,
}

fn open_embedded(dir: &Path) -> Kv {
    Kv::open(&dir.join("state.redb"), 1 << 20).expect("open embedded")
}

/// The PostgreSQL state of `dir`: a throwaway database made on its first open and named in
/// `dir/postgres.url`, so a reopen finds it. The database outlives the test; the next run's
/// `TestDatabase::create` drops it once this process is gone.
fn open_postgres(dir: &Path) -> Kv {
    let named = dir.join("postgres.url");
    let url = match std::fs::read_to_string(&named) {
        Ok(url) => url,
        Err(_) => {
            let db = TestDatabase::create();
            std::fs::write(&named, &db.url).expect("name the database");
            let url = db.url.clone();
            std::mem::forget(db);
            url
        }
    };
    Kv::open_postgres(&url).expect("open postgres")
}

fn backends() -> Vec<Backend> {
    vec![Backend { name: "embedded", open: open_embedded }, Backend { name: "postgres", open: open_postgres }]
}

/// Runs `case` on a fresh store of every backend.
fn each(case: impl Fn(&Backend, &Path, Kv)) {
    for b in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = (b.open)(dir.path());
        case(&b, dir.path(), kv);
    }
}

const T: DocTable = DocTable("conformance_docs");

fn row(version: u64, tier: Tier) -> RecordRow {
    RecordRow {
        format: records::ROW_FORMAT,
        tier,
        seq: version,
        version,
        created_at: 1,
        updated_at: version as i64,
        content_sha256: [version as u8; 32],
        raw_len: 3,
        level: 3,
        trust: None,
        body: RowBody::Inline(vec![version as u8; 3]),
    }
}

fn put(kv: &Kv, rows: &[(&[u8], Option<RecordRow>)], applied: u64, durable: bool) {
    let encoded: Vec<(&[u8], Option<Vec<u8>>)> =
        rows.iter().map(|(k, r)| (*k, r.as_ref().map(|r| r.encode().expect("encode")))).collect();
    let batch = StateBatch { records: encoded, applied, durable, ..StateBatch::default() };
    kv.write(&batch).expect("write");
}

fn keys(kv: &Kv, prefix: &[u8], after: Option<&[u8]>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    kv.scan_records(prefix, after, |k, _| {
        out.push(k.to_vec());
        Ok(true)
    })
    .expect("scan");
    out
}

#[test]
fn documents_round_trip() {
    each(|b, _, kv| {
        assert_eq!(kv.get_doc::<String>(T, "a").expect("get"), None, "{}", b.name);
        kv.put_doc(T, "b", &"two".to_owned()).expect("put");
        kv.put_docs(T, &[("a".to_owned(), "one".to_owned()), ("c".to_owned(), "three".to_owned())]).expect("puts");
        let all: Vec<(String, String)> = kv.scan_docs(T).expect("scan");
        assert_eq!(all.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b", "c"], "{}: key order", b.name);
        kv.put_doc(T, "b", &"deux".to_owned()).expect("overwrite");
        assert_eq!(kv.get_doc::<String>(T, "b").expect("get").as_deref(), Some("deux"));
        assert!(kv.delete_doc(T, "a").expect("delete"));
        assert!(!kv.delete_doc(T, "a").expect("delete again"), "{}", b.name);
        assert!(kv.get_doc::<u32>(T, "b").is_err(), "{}: a document of another type is an error", b.name);
        assert!(kv.scan_docs::<String>(DocTable("never_written")).expect("scan").is_empty());
        kv.probe().expect("probe");
        assert_eq!(kv.get_doc::<u32>(SETTINGS, "schema_version").expect("schema"), Some(1));
    });
}

#[test]
fn records_versions_scans_and_removal() {
    each(|b, _, kv| {
        assert_eq!(kv.applied_seq().expect("applied"), 0);
        let (a1, a2, b1) = (
            records::address_key("acme", "chat", "k1"),
            records::address_key("acme", "chat", "k2"),
            records::address_key("acme", "legal", "k1"),
        );
        let g1 = records::address_key("globex", "chat", "k1");
        put(
            &kv,
            &[
                (&a1, Some(row(1, Tier::L2))),
                (&a2, Some(row(1, Tier::L2))),
                (&b1, Some(row(1, Tier::L2Q))),
                (&g1, Some(row(1, Tier::L2))),
            ],
            4,
            true,
        );
        put(&kv, &[(&a1, Some(row(2, Tier::L2)))], 5, false);
        assert_eq!(kv.record(&a1).expect("get").map(|r| r.version), Some(2), "{}: the newer version", b.name);
        assert_eq!(kv.applied_seq().expect("applied"), 5);
        let acme = records::tenant_prefix("acme");
        assert_eq!(keys(&kv, &acme, None), [a1.clone(), a2.clone(), b1.clone()], "{}: by tenant, in order", b.name);
        let mut chat = acme.clone();
        chat.extend_from_slice(b"chat\0");
        assert_eq!(keys(&kv, &chat, None), [a1.clone(), a2.clone()], "{}: by tenant and class", b.name);
        assert_eq!(keys(&kv, &acme, Some(&a1)), [a2.clone(), b1.clone()], "{}: after a cursor", b.name);
        let mut first = Vec::new();
        kv.scan_records(&acme, None, |k, _| {
            first.push(k.to_vec());
            Ok(false)
        })
        .expect("scan");
        assert_eq!(first, std::slice::from_ref(&a1), "{}: a scan stops when asked", b.name);

        // Statistics only for records that exist after the batch, and removed with them.
        let stats = StateBatch {
            access: vec![(a1.as_slice(), (10, 3)), (b"acme\0chat\0gone".as_slice(), (10, 1))],
            applied: 6,
            ..StateBatch::default()
        };
        kv.write(&stats).expect("write");
        assert_eq!(kv.access(&a1).expect("access"), Some((10, 3)));
        assert_eq!(kv.access(b"acme\0chat\0gone").expect("access"), None, "{}", b.name);
        put(&kv, &[(&a1, None)], 7, true);
        assert_eq!(kv.record(&a1).expect("get"), None);
        assert_eq!(kv.access(&a1).expect("access"), None, "{}: a removed record's statistics go too", b.name);
        assert_eq!(keys(&kv, &[], None), [a2, b1, g1]);
    });
}

/// More rows than a backend may read at once (PostgreSQL pages by 1000): every record and
/// cache row is seen exactly once, in order, also when a scan starts after a key.
#[test]
fn scans_longer_than_a_page_see_each_row_once() {
    each(|b, dir, kv| {
        let addrs: Vec<Vec<u8>> =
            (0..2500).map(|i| records::address_key("acme", "chat", &format!("k{i:05}"))).collect();
        let encoded = row(1, Tier::L2).encode().expect("encode");
        let cache: Vec<Vec<u8>> = (0..2500u32).map(|i| format!("acme\0c{i:05}").into_bytes()).collect();
        let batch = StateBatch {
            records: addrs.iter().map(|a| (a.as_slice(), Some(encoded.clone()))).collect(),
            cache: cache.iter().map(|k| (k.as_slice(), Some(vec![1]))).collect(),
            applied: 1,
            durable: true,
            ..StateBatch::default()
        };
        kv.write(&batch).expect("write");
        let all = keys(&kv, &records::tenant_prefix("acme"), None);
        assert_eq!(all.len(), addrs.len(), "{}: every record once", b.name);
        assert!(all == addrs, "{}: in order", b.name);
        let later = keys(&kv, &[], Some(&addrs[999]));
        assert!(later == addrs[1000..], "{}: after a key, {} records", b.name, later.len());
        let mut seen = Vec::new();
        kv.scan_cache(|k, _| {
            seen.push(k.to_vec());
            Ok(())
        })
        .expect("scan");
        assert_eq!(seen.len(), cache.len(), "{}: every cache row once", b.name);
        assert!(seen == cache, "{}: cache rows in order", b.name);
        // A view's copy holds them all too (PostgreSQL copies it a page at a time).
        let copy_dir = dir.join("copy");
        std::fs::create_dir_all(&copy_dir).expect("dir");
        let (_, copied) = kv.view().expect("view").copy_to(&copy_dir.join("state.redb")).expect("copy");
        assert_eq!(copied, 2500, "{}: records copied", b.name);
        let copy = open_embedded(&copy_dir);
        assert!(keys(&copy, &[], None) == addrs, "{}: the copy's records, once each, in order", b.name);
        let mut copied_cache = 0;
        copy.scan_cache(|_, _| {
            copied_cache += 1;
            Ok(())
        })
        .expect("scan");
        assert_eq!(copied_cache, 2500, "{}: the copy's cache rows", b.name);
    });
}

#[test]
fn cache_rows_dictionaries_and_documents_in_batches() {
    each(|b, _, kv| {
        let docs = [(T, "counters", b"[1,2]".to_vec())];
        let batch = StateBatch {
            cache: vec![(b"acme\0k1".as_slice(), Some(vec![1])), (b"acme\0k2".as_slice(), Some(vec![2]))],
            docs: &docs,
            applied: 2,
            durable: true,
            ..StateBatch::default()
        };
        kv.write(&batch).expect("write");
        assert_eq!(kv.cache_row(b"acme\0k1").expect("row"), Some(vec![1]));
        assert_eq!(kv.get_doc::<Vec<u32>>(T, "counters").expect("doc"), Some(vec![1, 2]), "{}", b.name);
        let remove = StateBatch { cache: vec![(b"acme\0k1".as_slice(), None)], applied: 3, ..StateBatch::default() };
        kv.write(&remove).expect("write");
        let mut rows = Vec::new();
        kv.scan_cache(|k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .expect("scan");
        assert_eq!(rows, [(b"acme\0k2".to_vec(), vec![2])], "{}", b.name);
        kv.put_dict(b"acme\0chat\0\0\0\0\x07", b"sealed").expect("dict");
        let mut dicts = Vec::new();
        kv.scan_dicts(|k, v| {
            dicts.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .expect("scan");
        assert_eq!(dicts.len(), 1, "{}", b.name);
    });
}

#[test]
fn reopen_after_a_crash_keeps_what_a_durable_batch_made_durable() {
    for b in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = records::address_key("acme", "chat", "a");
        let c = records::address_key("acme", "chat", "c");
        {
            let kv = (b.open)(dir.path());
            put(&kv, &[(&a, Some(row(1, Tier::L2)))], 1, false);
            put(&kv, &[(&c, Some(row(1, Tier::L3)))], 2, true);
            kv.put_doc(T, "d", &7u32).expect("doc");
            // Dropped without any shutdown: what was made durable must be there.
        }
        let kv = (b.open)(dir.path());
        assert_eq!(kv.applied_seq().expect("applied"), 2, "{}", b.name);
        assert!(kv.record(&a).expect("get").is_some(), "{}: a later durable batch makes earlier ones durable", b.name);
        assert_eq!(kv.record(&c).expect("get").map(|r| r.tier), Some(Tier::L3));
        assert_eq!(kv.get_doc::<u32>(T, "d").expect("doc"), Some(7));
    }
}

#[test]
fn a_view_is_consistent_and_its_copy_opens_with_the_same_state() {
    each(|b, dir, kv| {
        let a = records::address_key("acme", "chat", "a");
        put(&kv, &[(&a, Some(row(1, Tier::L2)))], 1, true);
        kv.put_doc(T, "d", &1u32).expect("doc");
        let view = kv.view().expect("view");
        // Writes after the view are not in it.
        let z = records::address_key("acme", "chat", "z");
        put(&kv, &[(&a, Some(row(2, Tier::L2))), (&z, Some(row(1, Tier::L2)))], 2, true);
        kv.put_doc(T, "d", &2u32).expect("doc");
        assert_eq!(view.record_keys().expect("keys"), std::slice::from_ref(&a), "{}", b.name);
        let copy_dir = dir.join("copy");
        std::fs::create_dir_all(&copy_dir).expect("dir");
        let (tables, records) = view.copy_to(&copy_dir.join("state.redb")).expect("copy");
        drop(view);
        assert_eq!(records, 1, "{}", b.name);
        assert!(tables.iter().any(|t| t == "conformance_docs"), "{tables:?}");
        // A copy is an embedded store file whatever the backend: the format snapshots carry.
        let copy = open_embedded(&copy_dir);
        assert_eq!(copy.record(&a).expect("get").map(|r| r.version), Some(1), "{}: as it was at the view", b.name);
        assert_eq!(copy.record(&z).expect("get"), None);
        assert_eq!(copy.get_doc::<u32>(T, "d").expect("doc"), Some(1));
        assert_eq!(copy.applied_seq().expect("applied"), 1);
        assert_eq!(kv.get_doc::<u32>(T, "d").expect("doc"), Some(2), "{}: the original goes on", b.name);
    });
}

// Concurrent scenarios.

#[test]
fn concurrent_writers_and_readers_lose_nothing() {
    each(|b, _, kv| {
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        let key = records::address_key("acme", "chat", &format!("w{w}-{i}"));
                        let encoded = row(1, Tier::L2).encode().expect("encode");
                        let batch = StateBatch {
                            records: vec![(key.as_slice(), Some(encoded))],
                            applied: u64::from(w) * 100 + u64::from(i),
                            durable: i % 10 == 0,
                            ..StateBatch::default()
                        };
                        kv.write(&batch).expect("write");
                        kv.put_doc(T, &format!("w{w}-{i}"), &u32::from(i)).expect("doc");
                    }
                })
            })
            .collect();
        let reader = {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..50 {
                    let n = keys(&kv, &records::tenant_prefix("acme"), None).len();
                    assert!(n >= last, "a reader never sees records disappear");
                    last = n;
                }
            })
        };
        for w in writers {
            w.join().expect("writer");
        }
        reader.join().expect("reader");
        assert_eq!(keys(&kv, &[], None).len(), 200, "{}", b.name);
        assert_eq!(kv.scan_docs::<u32>(T).expect("docs").len(), 200, "{}", b.name);
    });
}

#[test]
fn a_held_writer_makes_writes_wait() {
    each(|b, _, kv| {
        let hold = kv.hold_writer().expect("hold");
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let kv = kv.clone();
            std::thread::spawn(move || {
                kv.put_doc(T, "late", &1u32).expect("doc");
                let _ = tx.send(());
            })
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "{}: the write waited", b.name);
        drop(hold);
        rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the write went through once released");
        writer.join().expect("writer");
    });
}

// ---- The ledger -------------------------------------------------------------------------

use daena_core::ledger::entry::NewEntry;
use daena_core::merkle;
use daena_core::time::Micros;
use daena_store::ledger::{LedgerAppend, LedgerRead};
use daena_store::pg::{PgDocs, PgLedger, TestDatabase};
use daena_store::state::StateRows;
use std::sync::Arc;

type LedgerPair = (Box<dyn LedgerAppend>, Arc<dyn LedgerRead>);

/// How a ledger backend makes (and remakes) its ledger in a directory.
struct LedgerBackend {
    name: &'static str,
    open: Box<dyn Fn(&Path) -> LedgerPair>,
    /// The backend's own database, dropped with it.
    _db: Option<TestDatabase>,
}

fn open_local(dir: &Path) -> (daena_store::ledger::LedgerWriter, daena_store::ledger::LedgerReader) {
    let (w, r, _) = daena_store::ledger::open(&dir.join("ledger"), 1 << 12).expect("open the local ledger");
    (w, r)
}

/// A replica's ledger on PostgreSQL: the shared chain at `url` over a local copy in `dir`.
fn open_shared(url: &str, dir: &Path) -> (PgLedger, Arc<dyn LedgerRead>) {
    daena_store::pg::migrate(url).expect("migrate");
    let (w, r) = open_local(dir);
    (PgLedger::open(url, w).expect("open the shared ledger"), Arc::new(r))
}

fn ledger_backends() -> Vec<LedgerBackend> {
    let db = TestDatabase::create();
    let url = db.url.clone();
    vec![
        LedgerBackend {
            name: "embedded",
            open: Box::new(|dir| {
                let (w, r) = open_local(dir);
                (Box::new(w), Arc::new(r))
            }),
            _db: None,
        },
        LedgerBackend {
            name: "postgres",
            open: Box::new(move |dir| {
                let (w, r) = open_shared(&url, dir);
                (Box::new(w), r)
            }),
            _db: Some(db),
        },
    ]
}

fn batch(from: u64, n: u64) -> Vec<NewEntry> {
    (from..from + n)
        .map(|i| {
            NewEntry::new("acme", "tester", "memory.put", format!("chat/{i}"))
                .attrs(serde_json::json!({"i": i}))
                .body(vec![i as u8; 64])
        })
        .collect()
}

/// Appends `entries` as the commit thread does: on a shared chain it takes the chain and
/// writes the state the batch leaves (none here) with it, which PostgreSQL requires of every
/// batch.
fn append(w: &mut dyn LedgerAppend, entries: &[NewEntry], now: Micros) -> Vec<daena_store::ledger::Receipt> {
    if w.shared() {
        w.begin().expect("begin");
        let from = w.size();
        w.stage_state(&StateRows::default(), from, from + entries.len() as u64).expect("stage");
    }
    w.append(entries, now).expect("append")
}

#[test]
fn ledger_appends_in_order_reads_back_and_proves() {
    for b in ledger_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, r) = (b.open)(dir.path());
        assert_eq!((w.size(), r.head().size), (0, 0), "{}: a new ledger is empty", b.name);
        let mut seqs = Vec::new();
        for (i, n) in [(1u64, 3u64), (4, 1), (5, 40)] {
            let receipts = append(&mut *w, &batch(i, n), Micros(100 + i as i64));
            seqs.extend(receipts.iter().map(|r| r.seq));
        }
        assert_eq!(seqs, (1..=44).collect::<Vec<_>>(), "{}: gap-free sequence numbers", b.name);
        assert_eq!((w.size(), r.head().size), (44, 44), "{}", b.name);
        let (got, next) = r.entries(1, 100, 1000, &|_| true).expect("entries");
        assert_eq!(next, None, "{}", b.name);
        assert_eq!(got.len(), 44, "{}", b.name);
        for (k, e) in got.iter().enumerate() {
            assert_eq!(e.seq, k as u64 + 1, "{}", b.name);
            assert_eq!(e.reference, format!("chat/{}", k + 1), "{}", b.name);
            assert_eq!(e.body, vec![(k + 1) as u8; 64], "{}", b.name);
            let prev = if k == 0 { daena_core::ledger::entry::GENESIS_PREV } else { got[k - 1].hash };
            assert_eq!(e.prev, prev, "{}: entry {} chains to the one before", b.name, e.seq);
            assert_eq!(r.entry_hash(e.seq).expect("hash"), Some(e.hash), "{}", b.name);
        }
        assert_eq!(r.head().hash, got[43].hash, "{}", b.name);
        let (some, next) = r.entries(10, 5, 1000, &|e| e.seq % 2 == 0).expect("filtered");
        assert_eq!(some.iter().map(|e| e.seq).collect::<Vec<_>>(), [10, 12, 14, 16, 18], "{}", b.name);
        assert_eq!(next, Some(19), "{}", b.name);
        for size in [1u64, 2, 7, 44] {
            let root = r.root(size).expect("root").expect("a root within the head");
            for seq in [1, size / 2 + 1, size] {
                let proof = r.inclusion_proof(seq, size).expect("io").expect("proof");
                let leaf = merkle::leaf_hash(&got[seq as usize - 1].hash);
                assert!(merkle::verify_inclusion(&leaf, seq - 1, size, &proof, &root), "{}: {seq} in {size}", b.name);
            }
        }
        let (old, new) = (r.root(7).expect("root").expect("7"), r.root(44).expect("root").expect("44"));
        let proof = r.consistency_proof(7, 44).expect("io").expect("proof");
        assert!(merkle::verify_consistency(7, 44, &proof, &old, &new), "{}", b.name);
        assert_eq!(r.root(45).expect("root"), None, "{}: no root past the head", b.name);
        assert_eq!(r.entry_hash(45).expect("hash"), None, "{}", b.name);
        let summary = r.verify_all(None).expect("verify");
        assert_eq!((summary.entries, summary.failure), (44, None), "{}", b.name);
    }
}

#[test]
fn ledger_checkpoints_are_signed_and_a_reopened_ledger_continues_the_chain() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let pinned = hex::encode(key.verifying_key().to_bytes());
    for b in ledger_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let head = {
            let (mut w, r) = (b.open)(dir.path());
            w.publish_public_key(&key.verifying_key()).expect("publish");
            append(&mut *w, &batch(1, 5), Micros(10));
            let cp = w.checkpoint(&key, Micros(11)).expect("checkpoint");
            assert_eq!(cp.size, 5, "{}", b.name);
            cp.verify(Some(&pinned)).expect("the checkpoint verifies under the key");
            assert_eq!(r.checkpoint().map(|c| c.size), Some(5), "{}", b.name);
            // Time never goes backwards in the ledger, whatever the clock says.
            append(&mut *w, &batch(6, 1), Micros(3));
            assert_eq!(r.head().ts, Micros(10), "{}", b.name);
            r.head()
        };
        let (mut w, r) = (b.open)(dir.path());
        assert_eq!(r.head(), head, "{}: reopening keeps the head", b.name);
        assert_eq!(r.checkpoint().map(|c| c.size), Some(5), "{}: and the checkpoint", b.name);
        let receipts = append(&mut *w, &batch(7, 2), Micros(20));
        assert_eq!(receipts.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8], "{}", b.name);
        let (e, _) = r.entries(7, 1, 1, &|_| true).expect("entries");
        assert_eq!(e[0].prev, head.hash, "{}: the chain continues across the reopen", b.name);
        let summary = r.verify_all(Some(&pinned)).expect("verify");
        assert_eq!((summary.entries, summary.failure.is_none()), (8, true), "{}: {:?}", b.name, summary.failure);
        assert_eq!(summary.checkpoints_verified.len(), 1, "{}", b.name);
        let other = hex::encode(ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]).verifying_key().to_bytes());
        let summary = r.verify_all(Some(&other)).expect("verify");
        assert!(summary.failure.is_some(), "{}: a checkpoint under another key is refused", b.name);
    }
}

#[test]
fn replicas_extend_one_shared_chain_without_gap_or_fork() {
    let db = TestDatabase::create();
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let replicas: Vec<_> = dirs.iter().map(|d| open_shared(&db.url, d.path())).collect();
    let done: Vec<(PgLedger, usize)> = std::thread::scope(|s| {
        let running: Vec<_> = replicas
            .into_iter()
            .enumerate()
            .map(|(n, (mut w, _))| {
                s.spawn(move || {
                    let mut seen_foreign = 0;
                    for i in 0..20u64 {
                        // What the commit thread does: take the chain (copying what the other
                        // replica appended), then append after that head.
                        seen_foreign += w.begin().expect("begin").len();
                        let entries = batch(1000 * n as u64 + i * 5, 5);
                        let from = w.size();
                        w.stage_state(&StateRows::default(), from, from + 5).expect("stage");
                        let receipts = w.append(&entries, Micros(1 + i as i64)).expect("append");
                        assert_eq!(receipts.len(), 5);
                        assert_eq!(receipts[0].seq + 4, receipts[4].seq, "a batch is contiguous");
                    }
                    (w, seen_foreign)
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().expect("replica")).collect()
    });
    for (n, (mut w, seen)) in done.into_iter().enumerate() {
        let seen = seen + w.catch_up().expect("catch up").len();
        assert_eq!(seen, 100, "replica {n} copied every entry of the other");
        assert_eq!(w.size(), 200, "replica {n}");
    }
    let heads: Vec<_> = dirs
        .iter()
        .map(|d| {
            let (_, r) = open_shared(&db.url, d.path());
            let summary = r.verify_all(None).expect("verify");
            assert_eq!((summary.entries, summary.failure), (200, None), "each copy verifies");
            r.head()
        })
        .collect();
    assert_eq!(heads[0], heads[1], "both replicas hold the same chain");
    // A local ledger from elsewhere is refused rather than forked.
    let stray = tempfile::tempdir().expect("tempdir");
    let (mut w, _) = open_local(stray.path());
    w.append(&batch(1, 1), Micros(1)).expect("append");
    drop(w);
    let (w, _) = open_local(stray.path());
    let err = PgLedger::open(&db.url, w).expect_err("a foreign local ledger");
    assert!(err.to_string().contains("another deployment"), "{err}");
}

#[test]
fn replicas_report_the_same_newest_checkpoint() {
    let db = TestDatabase::create();
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let (mut a, ra) = open_shared(&db.url, dirs[0].path());
    let (mut b, rb) = open_shared(&db.url, dirs[1].path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let vk = key.verifying_key();

    a.begin().expect("begin");
    append(&mut a, &batch(1, 5), Micros(1));
    let first = a.checkpoint(&key, Micros(2)).expect("sign");
    assert_eq!(b.catch_up().expect("catch up").len(), 5);
    b.adopt_checkpoints(&vk).expect("adopt");
    assert_eq!(rb.checkpoint(), Some(first), "b adopts what a signed, rather than signing its own");

    b.begin().expect("begin");
    append(&mut b, &batch(6, 3), Micros(3));
    let second = b.checkpoint(&key, Micros(4)).expect("sign");
    assert_eq!(second.size, 8);
    assert_eq!(a.catch_up().expect("catch up").len(), 3);
    // Signing on a replica the shared checkpoint already covers hands that one back.
    assert_eq!(a.checkpoint(&key, Micros(5)).expect("sign"), second);
    assert_eq!(ra.checkpoint(), rb.checkpoint(), "both report one newest checkpoint");

    // A shared checkpoint that does not match a replica's copy, or is under another key, is
    // refused with what is wrong, never adopted.
    a.begin().expect("begin");
    append(&mut a, &batch(9, 2), Micros(6));
    b.catch_up().expect("catch up");
    let share = |cp: &daena_core::ledger::Checkpoint| {
        let mut c = postgres::Client::connect(&db.url, postgres::NoTls).expect("connect");
        c.execute("delete from daena_checkpoints where size = $1", &[&(cp.size as i64)]).expect("delete");
        let line = serde_json::to_string(cp).expect("json");
        c.execute("insert into daena_checkpoints (size, line) values ($1, $2)", &[&(cp.size as i64), &line])
            .expect("insert");
    };
    share(&daena_core::ledger::Checkpoint::sign(&key, 10, &[9u8; 32], Micros(7)));
    let err = b.adopt_checkpoints(&vk).expect_err("a wrong root");
    assert!(err.to_string().contains("root"), "{err}");
    let other = ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]);
    let root = rb.root(10).expect("root").expect("covered");
    share(&daena_core::ledger::Checkpoint::sign(&other, 10, &root, Micros(8)));
    let err = b.adopt_checkpoints(&vk).expect_err("another key");
    assert!(err.to_string().contains("different key"), "{err}");
    assert_eq!(rb.checkpoint().map(|c| c.size), Some(8), "nothing adopted");
    share(&daena_core::ledger::Checkpoint::sign(&key, 10, &root, Micros(9)));
    b.adopt_checkpoints(&vk).expect("adopt");
    assert_eq!(rb.checkpoint().map(|c| c.size), Some(10));

    drop((a, b));
    for dir in &dirs {
        let (_, r) = open_shared(&db.url, dir.path());
        let summary = r.verify_all(Some(&hex::encode(vk.to_bytes()))).expect("verify");
        assert_eq!((summary.entries, summary.failure), (10, None), "each copy verifies with what it adopted");
    }
}

#[test]
fn documents_swap_only_from_what_was_read_even_across_processes() {
    let db = TestDatabase::create();
    daena_store::pg::migrate(&db.url).expect("migrate");
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = Kv::open(&dir.path().join("state.redb"), 1 << 20).expect("open");
    let shared = embedded.with_docs(Arc::new(PgDocs::open(&db.url).expect("docs")));
    for (name, kv) in [("embedded", &embedded), ("postgres", &shared)] {
        assert!(kv.swap_doc(T, "k", None, &"one".to_owned()).expect("create"), "{name}");
        assert!(!kv.swap_doc(T, "k", None, &"two".to_owned()).expect("create again"), "{name}: exists");
        let bytes = kv.get_doc_bytes(T, "k").expect("get").expect("stored");
        assert!(!kv.swap_doc(T, "k", Some(b"\"zzz\""), &"two".to_owned()).expect("stale"), "{name}");
        assert!(kv.swap_doc(T, "k", Some(&bytes), &"two".to_owned()).expect("swap"), "{name}");
        assert_eq!(kv.get_doc::<String>(T, "k").expect("get").as_deref(), Some("two"), "{name}");
        assert!(kv.delete_doc(T, "k").expect("delete"), "{name}");
    }
    // Two handles (two replicas) racing to create one document: exactly one wins.
    let other = embedded.with_docs(Arc::new(PgDocs::open(&db.url).expect("docs")));
    for round in 0..20 {
        let key = format!("race{round}");
        let wins: usize = std::thread::scope(|s| {
            let a = s.spawn(|| shared.swap_doc(T, &key, None, &"a".to_owned()).expect("a"));
            let b = s.spawn(|| other.swap_doc(T, &key, None, &"b".to_owned()).expect("b"));
            [a.join().expect("a"), b.join().expect("b")].iter().filter(|w| **w).count()
        });
        assert_eq!(wins, 1, "round {round}");
    }
    // Documents live in PostgreSQL, not in the local store.
    assert_eq!(embedded.get_doc::<String>(T, "race0").expect("get"), None);
}

/// The state a shared chain keeps lands with its batch or not at all, moves only from where
/// it is, and can be rebuilt in one transaction.
#[test]
fn the_state_kept_with_the_chain_lands_with_its_batch_or_not_at_all() {
    use daena_store::pg::PgState;
    use daena_store::state::{DocStore, StateRows, StateStore};
    const OTHER: DocTable = DocTable("conformance_other");
    let db = TestDatabase::create();
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let (mut a, _) = open_shared(&db.url, dirs[0].path());
    let (mut b, _) = open_shared(&db.url, dirs[1].path());
    let kept = PgState::open(&db.url).expect("the kept state");
    let rec = |v: u64| Some(row(v, Tier::L2).encode().expect("encode"));
    let records = |kept: &PgState| -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        kept.scan_records(b"", None, &mut |k, r| {
            out.push((k.to_vec(), r.version));
            Ok(true)
        })
        .expect("scan");
        out
    };
    let cache_keys = |kept: &PgState| {
        let mut out = Vec::new();
        kept.scan_cache(&mut |k, _| {
            out.push(k.to_vec());
            Ok(())
        })
        .expect("scan");
        out
    };

    assert!(a.kept_state().is_err(), "the position is read only with the chain taken");
    // PostgreSQL itself refuses a batch appended without the state it leaves (what a replica
    // of an older version would do).
    a.begin().expect("begin");
    let err = a.append(&batch(1, 1), Micros(1)).expect_err("no state staged");
    assert!(err.to_string().contains("without the state it leaves"), "{err}");
    a.begin().expect("begin");
    assert_eq!(a.kept_state().expect("kept"), 0, "a new deployment's kept state is at 0");
    let rows = StateRows {
        // y is written and removed in the same batch: the last change wins.
        records: vec![(b"x".to_vec(), rec(1)), (b"y".to_vec(), rec(1)), (b"y".to_vec(), None)],
        cache: vec![(b"c1".to_vec(), Some(b"answer".to_vec())), (b"c2".to_vec(), Some(b"gone".to_vec()))],
        dicts: vec![(b"d".to_vec(), b"dict".to_vec())],
        docs: vec![
            (T, "a".into(), Some(b"1".to_vec())),
            (T, "b".into(), Some(b"2".to_vec())),
            (OTHER, "c".into(), Some(b"3".to_vec())),
        ],
    };
    a.stage_state(&rows, 0, 2).expect("stage");
    a.append(&batch(1, 2), Micros(1)).expect("append");
    assert_eq!(records(&kept), vec![(b"x".to_vec(), 1)]);
    assert_eq!(kept.get_doc(T, "b").expect("doc").as_deref(), Some(b"2".as_slice()));
    assert_eq!(cache_keys(&kept), vec![b"c1".to_vec(), b"c2".to_vec()]);
    assert_eq!(kept.applied_seq().expect("applied"), 2);

    // B has not applied A's batch: moving the kept state from 0 is refused, and nothing of it lands.
    assert_eq!(b.begin().expect("begin").len(), 2, "B copies A's batch");
    let stale = StateRows { records: vec![(b"z".to_vec(), rec(9))], ..StateRows::default() };
    let err = b.stage_state(&stale, 0, 3).expect_err("the kept state is at 2");
    assert!(matches!(err, daena_store::StoreError::Corrupt { .. }), "{err}");
    b.release();
    assert_eq!(records(&kept), vec![(b"x".to_vec(), 1)], "the refused rows were rolled back");
    assert_eq!(kept.applied_seq().expect("applied"), 2);

    // Rows staged for a batch that is then given up are rolled back with it.
    b.begin().expect("begin");
    b.stage_state(&StateRows { records: vec![(b"x".to_vec(), None)], ..StateRows::default() }, 2, 3).expect("stage");
    b.release();
    assert_eq!(records(&kept), vec![(b"x".to_vec(), 1)], "a released batch leaves the kept state alone");

    // B's batch: a new version of x, one cache entry evicted.
    b.begin().expect("begin");
    let next = StateRows {
        records: vec![(b"x".to_vec(), rec(2)), (b"w".to_vec(), rec(1))],
        cache: vec![(b"c2".to_vec(), None)],
        docs: vec![(T, "b".into(), None), (T, "a".into(), Some(b"one".to_vec()))],
        ..StateRows::default()
    };
    b.stage_state(&next, 2, 3).expect("stage");
    b.append(&batch(3, 1), Micros(2)).expect("append");
    assert_eq!(records(&kept), vec![(b"w".to_vec(), 1), (b"x".to_vec(), 2)]);
    assert_eq!(kept.get_doc(T, "b").expect("doc"), None, "a removed document");
    assert_eq!(kept.get_doc(T, "a").expect("doc").as_deref(), Some(b"one".as_slice()));
    assert_eq!(cache_keys(&kept), vec![b"c1".to_vec()]);
    assert_eq!(kept.applied_seq().expect("applied"), 3);

    // A rebuild replaces everything in one transaction, at the chain's head.
    a.begin().expect("begin");
    assert_eq!(a.size(), 3);
    a.clear_state(&[(T, None)]).expect("clear");
    a.stage_state(&StateRows { records: vec![(b"v".to_vec(), rec(5))], ..StateRows::default() }, 0, 0).expect("page");
    assert_eq!(records(&kept), vec![(b"w".to_vec(), 1), (b"x".to_vec(), 2)], "not visible before the commit");
    a.stage_state(&StateRows::default(), 0, 3).expect("position");
    a.commit_state().expect("commit");
    assert_eq!(records(&kept), vec![(b"v".to_vec(), 5)]);
    assert!(cache_keys(&kept).is_empty());
    assert_eq!(kept.get_doc(T, "a").expect("doc"), None, "the documents named are emptied");
    assert_eq!(kept.get_doc(OTHER, "c").expect("doc").as_deref(), Some(b"3".as_slice()), "and only those");
    assert_eq!(kept.applied_seq().expect("applied"), 3);
    assert!(a.stage_state(&StateRows::default(), 3, 4).is_err(), "nothing is staged without the chain taken");

    // A new replica copies the chain up to the kept state and that state, with the documents
    // it names only; nothing when the kept state is not at the head.
    let fresh = tempfile::tempdir().expect("tempdir");
    let (mut ledger, reader) = open_local(fresh.path());
    let state = fresh.path().join("state.redb");
    let copied = daena_store::pg::start_copy(&db.url, &state, &mut ledger, &[(T, None)]).expect("copy");
    assert_eq!(copied, Some(3));
    assert_eq!(reader.head().size, 3);
    assert_eq!(reader.verify_all(None).expect("verify").failure, None, "the copied chain verifies");
    drop((ledger, reader));
    let local = Kv::open(&state, 1 << 20).expect("the copied state");
    assert_eq!(keys(&local, b"", None), vec![b"v".to_vec()]);
    assert_eq!(local.applied_seq().expect("applied"), 3);
    assert_eq!(local.get_doc_bytes(OTHER, "c").expect("doc"), None, "a document not named stays behind");
    db.execute("update daena_applied set seq = 2");
    let again = tempfile::tempdir().expect("tempdir");
    let (mut ledger, _) = open_local(again.path());
    let state = again.path().join("state.redb");
    assert_eq!(daena_store::pg::start_copy(&db.url, &state, &mut ledger, &[]).expect("copy"), None, "behind the head");
    assert!(!state.exists(), "nothing copied");
}

/// Taking the chain copies everything others appended, however many pages that is (the first
/// page comes with the lock, the rest page by page).
#[test]
fn taking_the_chain_copies_more_than_a_page() {
    let db = TestDatabase::create();
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let (mut a, _) = open_shared(&db.url, dirs[0].path());
    let (mut b, rb) = open_shared(&db.url, dirs[1].path());
    for i in 0..5 {
        append(&mut a, &batch(1 + i * 2000, 2000), Micros(1 + i as i64));
    }
    let copied = b.begin().expect("begin");
    assert_eq!(copied.len(), 10_000, "every entry A appended");
    assert_eq!(copied.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=10_000).collect::<Vec<_>>(), "in order");
    append(&mut b, &batch(10_001, 1), Micros(9));
    assert_eq!(rb.head().size, 10_001);
    assert_eq!(rb.verify_all(None).expect("verify").failure, None);
}
