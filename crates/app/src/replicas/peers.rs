//! What each replica observes on its own, published for the others ([`Peers`]), and how the
//! partitions of replicas that are gone are folded away.
//!
//! A replica publishes its figures under its id (`<replica>/<key>` in a shared document
//! table), only the documents that changed since it last published them, and with each
//! publish (at least every [`TOUCH_EVERY`]) the time it was last seen (`replicas_seen/<id>`).
//!
//! Pods on `emptyDir` start as a new replica each time, so partitions of replicas that are gone
//! pile up. The lease holder folds the partitions of a replica not seen for [`RETIRE_AFTER`]
//! into one partition, `retired/<key>`, and marks that replica retired, all in one
//! transaction; reports add `retired` like any other replica, so nothing is lost or counted
//! twice. Every publish is fenced by the seen document: it writes only while that still is what
//! this replica last wrote. A replica retired while it was cut off from PostgreSQL therefore
//! cannot publish its (already folded) figures again: it says so and stops publishing, and a
//! replica started on a retired data directory refuses to start.

use super::shared_err;
use crate::error::{AppError, AppResult};
use daena_base::clock::{Clock, SystemClock};
use daena_core::time::Micros;
use daena_store::kv::{DocTable, decode_doc, doc_table, encode_doc};
use daena_store::pg::{DocChange, PgDocs};
use daena_store::state::DocStore;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long other replicas' published figures are reused before they are read again.
const PEERS_FRESH: Duration = Duration::from_secs(1);
/// A replica that has published nothing new says it is alive at least this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// A replica not seen for this long is gone: its partitions are folded into `retired`.
pub const RETIRE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the lease holder looks for replicas to retire.
pub const RETIRE_CHECK_EVERY: Duration = Duration::from_secs(600);
/// The partition that holds the figures of every retired replica.
pub const RETIRED: &str = "retired";
/// When each replica was last seen, by replica id.
const SEEN: DocTable = doc_table("replicas_seen");

#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    at: Micros,
    #[serde(default)]
    retired: bool,
}

/// Adds the encoded document `from` to `into` (the retired partition's, if any) of a table
/// and key; the sum, encoded.
pub type Merge = fn(table: DocTable, key: &str, into: Option<&[u8]>, from: &[u8]) -> AppResult<Vec<u8>>;

/// How the partitions of one table fold into `retired`.
#[derive(Debug, Clone, Copy)]
pub struct Fold {
    pub table: DocTable,
    pub merge: Merge,
}

/// A [`Fold::merge`] for documents of type `T` that `add` sums.
pub fn merge_docs<T: Serialize + DeserializeOwned + Default>(
    table: DocTable,
    key: &str,
    into: Option<&[u8]>,
    from: &[u8],
    add: impl FnOnce(&mut T, &T),
) -> AppResult<Vec<u8>> {
    let mut sum: T = match into {
        Some(bytes) => decode_doc(table, key, bytes)?,
        None => T::default(),
    };
    add(&mut sum, &decode_doc(table, key, from)?);
    Ok(encode_doc(&sum)?)
}

/// Documents as published, `(<replica>/<key>, value)`.
type Published = Arc<Vec<(String, Vec<u8>)>>;

/// What each replica counts on its own, published under its id (`<replica>/<key>` in a
/// shared document table) for the others to add to their reports.
pub struct Peers {
    docs: Arc<PgDocs>,
    replica: String,
    /// Per table, the other replicas' documents as last read, and when.
    read: Mutex<HashMap<&'static str, (Instant, Published)>>,
    /// This replica's seen document as it last wrote (or found) it, and when it wrote it.
    seen: Mutex<(Option<Vec<u8>>, Option<Instant>)>,
    /// What this replica last published, by (table, key).
    published: Mutex<HashMap<(&'static str, String), Vec<u8>>>,
    /// Set once this replica finds it was retired: it publishes nothing more.
    retired: AtomicBool,
    /// When this replica last looked for replicas to retire.
    last_retire: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("replica", &self.replica).finish()
    }
}

/// Whether a stored seen document says its replica was retired.
fn says_retired(replica: &str, seen: Option<&[u8]>) -> AppResult<bool> {
    Ok(match seen {
        Some(bytes) => decode_doc::<Seen>(SEEN, replica, bytes)?.retired,
        None => false,
    })
}

fn retired_error(replica: &str) -> AppError {
    AppError::unavailable(format!(
        "replica {replica} was retired by the deployment (not seen for {} days): its figures were folded into \
         the retired partition, so it publishes nothing more; restart it on an empty data directory",
        RETIRE_AFTER.as_secs() / 86_400
    ))
}

impl Peers {
    /// Peers of replica `replica`; refuses a replica the deployment has retired.
    pub fn open(docs: Arc<PgDocs>, replica: String) -> AppResult<Peers> {
        let seen = docs.get_doc(SEEN, &replica).map_err(shared_err("reading when this replica was last seen"))?;
        if says_retired(&replica, seen.as_deref())? {
            return Err(retired_error(&replica));
        }
        Ok(Peers {
            docs,
            replica,
            read: Mutex::default(),
            seen: Mutex::new((seen, None)),
            published: Mutex::default(),
            retired: AtomicBool::new(false),
            last_retire: Mutex::new(None),
        })
    }

    /// Publishes this replica's documents `(key, value)` of `table` that changed since it
    /// last published them, replacing its earlier ones.
    pub fn publish<T: Serialize>(&self, table: DocTable, docs: &[(String, T)]) -> AppResult<()> {
        let mut changed = Vec::new();
        {
            let published = self.published.lock();
            for (key, doc) in docs {
                let key = format!("{}/{key}", self.replica);
                let bytes = encode_doc(doc)?;
                if published.get(&(table.name(), key.clone())) != Some(&bytes) {
                    changed.push((key, bytes));
                }
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let changes: Vec<DocChange<'_>> =
            changed.iter().map(|(k, v)| (table, k.as_str(), Some(v.as_slice()))).collect();
        self.write(&changes)?;
        let mut published = self.published.lock();
        for (key, bytes) in changed {
            published.insert((table.name(), key), bytes);
        }
        Ok(())
    }

    /// Whether this replica found itself retired (it publishes nothing more).
    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Says this replica is alive when it last did so [`TOUCH_EVERY`] ago or more.
    pub fn touch(&self) -> AppResult<()> {
        let due = self.seen.lock().1.is_none_or(|at| at.elapsed() >= TOUCH_EVERY);
        if due { self.write(&[]) } else { Ok(()) }
    }

    /// Writes `changes` and this replica's seen document, fenced by the seen document.
    fn write(&self, changes: &[DocChange<'_>]) -> AppResult<()> {
        if self.retired.load(Ordering::Relaxed) {
            return Err(retired_error(&self.replica));
        }
        // Tries twice: the seen document may have been written by the lease holder for a
        // replica it had not seen yet (or by this replica's previous run).
        for _ in 0..2 {
            let now = encode_doc(&Seen { at: SystemClock.now(), retired: false })?;
            let expected = self.seen.lock().0.clone();
            let mut all = changes.to_vec();
            all.push((SEEN, self.replica.as_str(), Some(now.as_slice())));
            let fence = [(SEEN, self.replica.as_str(), expected.as_deref())];
            if self.docs.swap_many(&fence, &all).map_err(shared_err("publishing this replica's figures"))? {
                *self.seen.lock() = (Some(now), Some(Instant::now()));
                return Ok(());
            }
            let current = self.docs.get_doc(SEEN, &self.replica).map_err(shared_err("reading this replica's seen"))?;
            if says_retired(&self.replica, current.as_deref())? {
                self.retired.store(true, Ordering::Relaxed);
                let e = retired_error(&self.replica);
                tracing::error!(error = %e, "this replica was retired while it was cut off");
                return Err(e);
            }
            self.seen.lock().0 = current;
        }
        Err(AppError::unavailable("this replica's seen document keeps changing under it; publishing later"))
    }

    /// This replica's own documents of `table` as it last published them.
    pub fn own<T: DeserializeOwned>(&self, table: DocTable) -> AppResult<Vec<(String, T)>> {
        let own = format!("{}/", self.replica);
        let all = self.docs.scan_docs(table).map_err(shared_err("reading this replica's published figures"))?;
        all.into_iter()
            .filter_map(|(k, v)| k.strip_prefix(&own).map(|key| (key.to_owned(), v)))
            .map(|(key, v)| Ok((key.clone(), decode_doc(table, &key, &v)?)))
            .collect()
    }

    /// The other replicas' documents of `table` as `(key, value)`, at most [`PEERS_FRESH`]
    /// old; one that does not decode is skipped with a warning. PostgreSQL not answering
    /// leaves them out (the report shows this replica's own figures) and says so in the log.
    pub fn others<T: DeserializeOwned>(&self, table: DocTable) -> Vec<(String, T)> {
        self.others_where(table, |_| true)
    }

    /// [`Peers::others`] under the keys `wanted` accepts, decoding only those.
    pub fn others_where<T: DeserializeOwned>(
        &self,
        table: DocTable,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<(String, T)> {
        let cached = self.read.lock().get(table.name()).filter(|(at, _)| at.elapsed() < PEERS_FRESH).cloned();
        let docs = match cached {
            Some((_, docs)) => docs,
            None => match self.docs.scan_docs(table) {
                Ok(all) => {
                    let own = format!("{}/", self.replica);
                    let docs = Arc::new(all.into_iter().filter(|(k, _)| !k.starts_with(&own)).collect::<Vec<_>>());
                    self.read.lock().insert(table.name(), (Instant::now(), docs.clone()));
                    docs
                }
                Err(e) => {
                    tracing::warn!(error = %e, table = table.name(), "reading the other replicas' figures");
                    return Vec::new();
                }
            },
        };
        docs.iter()
            .filter_map(|(k, v)| {
                let key = k.split_once('/').map_or(k.as_str(), |(_, key)| key);
                if !wanted(key) {
                    return None;
                }
                match decode_doc(table, k, v) {
                    Ok(doc) => Some((key.to_owned(), doc)),
                    Err(e) => {
                        tracing::warn!(error = %e, table = table.name(), key = %k, "skipping a replica's document");
                        None
                    }
                }
            })
            .collect()
    }

    /// Folds away replicas not seen for [`RETIRE_AFTER`] when [`RETIRE_CHECK_EVERY`] has
    /// passed since the last look (for the lease holder).
    pub fn retire_due(&self, folds: &[Fold]) -> AppResult<Vec<String>> {
        {
            let mut last = self.last_retire.lock();
            if last.is_some_and(|at| at.elapsed() < RETIRE_CHECK_EVERY) {
                return Ok(Vec::new());
            }
            *last = Some(Instant::now());
        }
        self.retire_silent(SystemClock.now(), RETIRE_AFTER, folds)
    }

    /// Folds the partitions (in `folds`' tables) of every other replica not seen since
    /// `now - silent` into `retired` and marks it retired, one transaction per replica;
    /// the ids retired. A partition whose replica was never seen (published by an older
    /// build) starts being timed now.
    pub fn retire_silent(&self, now: Micros, silent: Duration, folds: &[Fold]) -> AppResult<Vec<String>> {
        let err = || shared_err("retiring silent replicas");
        let seen: HashMap<String, Vec<u8>> = self.docs.scan_docs(SEEN).map_err(err())?.into_iter().collect();
        let mut partitioned = BTreeSet::new();
        for fold in folds {
            for (key, _) in self.docs.scan_docs(fold.table).map_err(err())? {
                if let Some((id, _)) = key.split_once('/')
                    && id != RETIRED
                {
                    partitioned.insert(id.to_owned());
                }
            }
        }
        for id in partitioned.iter().filter(|id| !seen.contains_key(id.as_str())) {
            let first = encode_doc(&Seen { at: now, retired: false })?;
            self.docs.swap_doc(SEEN, id, None, &first).map_err(err())?;
        }
        let silent = i64::try_from(silent.as_micros()).unwrap_or(i64::MAX);
        let mut retired = Vec::new();
        for (id, bytes) in self.docs.scan_docs(SEEN).map_err(err())? {
            let s: Seen = decode_doc(SEEN, &id, &bytes)?;
            if s.retired || id == self.replica || now.since(s.at) < silent {
                continue;
            }
            if self.retire(&id, &bytes, s.at, folds)? {
                tracing::info!(replica = %id, "retired a replica not seen for {} s", now.since(s.at) / 1_000_000);
                retired.push(id);
            }
        }
        Ok(retired)
    }

    /// Folds replica `id`'s partitions into `retired` and marks it retired, if its seen
    /// document still is `seen` and nothing it reads changes meanwhile; whether it did.
    fn retire(&self, id: &str, seen: &[u8], at: Micros, folds: &[Fold]) -> AppResult<bool> {
        let err = || shared_err("retiring a silent replica");
        let prefix = format!("{id}/");
        // (table, replica's key, its doc, retired key, retired doc before, after)
        let mut moves = Vec::new();
        for fold in folds {
            let all: HashMap<String, Vec<u8>> = self.docs.scan_docs(fold.table).map_err(err())?.into_iter().collect();
            for (key, doc) in &all {
                let Some(rest) = key.strip_prefix(&prefix) else { continue };
                let into_key = format!("{RETIRED}/{rest}");
                let before = all.get(&into_key).cloned();
                let after = (fold.merge)(fold.table, rest, before.as_deref(), doc)?;
                moves.push((fold.table, key.clone(), doc.clone(), into_key, before, after));
            }
        }
        let mark = encode_doc(&Seen { at, retired: true })?;
        let mut expect: Vec<DocChange<'_>> = vec![(SEEN, id, Some(seen))];
        let mut changes: Vec<DocChange<'_>> = vec![(SEEN, id, Some(mark.as_slice()))];
        for (table, key, doc, into_key, before, after) in &moves {
            expect.push((*table, key.as_str(), Some(doc.as_slice())));
            expect.push((*table, into_key.as_str(), before.as_deref()));
            changes.push((*table, into_key.as_str(), Some(after.as_slice())));
            changes.push((*table, key.as_str(), None));
        }
        self.docs.swap_many(&expect, &changes).map_err(err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daena_store::pg::{self, TestDatabase};
    use std::collections::BTreeMap;

    type Counts = BTreeMap<String, u64>;
    const COUNTS: DocTable = doc_table("counts_by_replica");

    fn merge(table: DocTable, key: &str, into: Option<&[u8]>, from: &[u8]) -> AppResult<Vec<u8>> {
        merge_docs::<Counts>(table, key, into, from, |sum, o| {
            for (k, v) in o {
                *sum.entry(k.clone()).or_default() += v;
            }
        })
    }
    const FOLDS: [Fold; 1] = [Fold { table: COUNTS, merge }];

    fn counts(n: u64) -> Counts {
        BTreeMap::from([("n".to_owned(), n)])
    }

    /// The fleet's figure of `key`, as a replica that publishes nothing sees it.
    fn fleet(db: &TestDatabase, key: &str) -> u64 {
        let reader = Peers::open(Arc::new(PgDocs::open(&db.url).expect("shared documents answer")), "reader".into())
            .expect("shared documents answer");
        reader.others_where::<Counts>(COUNTS, |k| k == key).iter().map(|(_, c)| c["n"]).sum()
    }

    fn keys(docs: &PgDocs) -> Vec<String> {
        docs.scan_docs(COUNTS).expect("shared documents answer").into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn silent_replicas_fold_into_retired_once_and_cannot_publish_again() {
        let db = TestDatabase::create();
        pg::migrate(&db.url).expect("shared documents answer");
        let docs = Arc::new(PgDocs::open(&db.url).expect("shared documents answer"));
        let open = |id: &str| Peers::open(docs.clone(), id.to_owned());
        let (a, b) = (open("a").expect("shared documents answer"), open("b").expect("shared documents answer"));
        a.publish(COUNTS, &[("t1".to_owned(), counts(3)), ("t2".to_owned(), counts(1))])
            .expect("shared documents answer");
        b.publish(COUNTS, &[("t1".to_owned(), counts(2))]).expect("shared documents answer");
        assert_eq!((fleet(&db, "t1"), fleet(&db, "t2")), (5, 1));

        // Nobody is silent for an hour yet.
        assert!(
            b.retire_silent(SystemClock.now(), Duration::from_secs(3600), &FOLDS)
                .expect("shared documents answer")
                .is_empty()
        );
        // Everyone else is silent "for 0 s": a is folded, b (the caller) never is.
        assert_eq!(b.retire_silent(SystemClock.now(), Duration::ZERO, &FOLDS).expect("shared documents answer"), ["a"]);
        assert_eq!(keys(&docs), ["b/t1", "retired/t1", "retired/t2"]);
        assert_eq!((fleet(&db, "t1"), fleet(&db, "t2")), (5, 1), "nothing lost or counted twice");

        // a was cut off, not gone: its figures are already in `retired`, so it may not publish
        // them again, and its data directory may not start again.
        let e = a.publish(COUNTS, &[("t1".to_owned(), counts(4))]).expect_err("refused").to_string();
        assert!(e.contains("was retired"), "{e}");
        assert!(a.retired() && !b.retired(), "a knows it was retired (its /health says so)");
        assert_eq!(fleet(&db, "t1"), 5);
        assert!(open("a").expect_err("refused").to_string().contains("was retired"));
        assert!(
            b.retire_silent(SystemClock.now(), Duration::ZERO, &FOLDS).expect("shared documents answer").is_empty(),
            "once only"
        );

        // A second retirement adds to what the first folded.
        let c = open("c").expect("shared documents answer");
        c.publish(COUNTS, &[("t1".to_owned(), counts(7))]).expect("shared documents answer");
        assert_eq!(b.retire_silent(SystemClock.now(), Duration::ZERO, &FOLDS).expect("shared documents answer"), ["c"]);
        assert_eq!(fleet(&db, "t1"), 12);
        assert_eq!(keys(&docs), ["b/t1", "retired/t1", "retired/t2"]);

        // A partition published before replicas were seen starts being timed when found.
        docs.put_docs(COUNTS, &[("old/t2", &encode_doc(&counts(10)).expect("shared documents answer"))])
            .expect("shared documents answer");
        assert!(
            b.retire_silent(SystemClock.now(), Duration::from_secs(3600), &FOLDS)
                .expect("shared documents answer")
                .is_empty()
        );
        assert!(docs.get_doc(SEEN, "old").expect("shared documents answer").is_some());
        assert_eq!(
            b.retire_silent(SystemClock.now(), Duration::ZERO, &FOLDS).expect("shared documents answer"),
            ["old"]
        );
        assert_eq!(fleet(&db, "t2"), 11);
    }

    #[test]
    fn a_replica_writes_only_what_changed() {
        let db = TestDatabase::create();
        pg::migrate(&db.url).expect("shared documents answer");
        let docs = Arc::new(PgDocs::open(&db.url).expect("shared documents answer"));
        let a = Peers::open(docs.clone(), "a".into()).expect("shared documents answer");
        a.publish(COUNTS, &[("t1".to_owned(), counts(1))]).expect("shared documents answer");
        let seen = docs.get_doc(SEEN, "a").expect("shared documents answer");
        std::thread::sleep(Duration::from_millis(2));
        a.publish(COUNTS, &[("t1".to_owned(), counts(1))]).expect("shared documents answer");
        a.touch().expect("shared documents answer");
        assert_eq!(
            docs.get_doc(SEEN, "a").expect("shared documents answer"),
            seen,
            "an unchanged publish and an early touch write nothing"
        );
        a.publish(COUNTS, &[("t1".to_owned(), counts(2))]).expect("shared documents answer");
        assert_ne!(docs.get_doc(SEEN, "a").expect("shared documents answer"), seen);
        // A restart reads its seen document and goes on from it.
        let again = Peers::open(docs.clone(), "a".into()).expect("shared documents answer");
        again.publish(COUNTS, &[("t1".to_owned(), counts(3))]).expect("shared documents answer");
        assert_eq!(again.own::<Counts>(COUNTS).expect("shared documents answer"), [("t1".to_owned(), counts(3))]);
    }
}
