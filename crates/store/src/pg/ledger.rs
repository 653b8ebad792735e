//! The ledger chain in PostgreSQL, extended by every replica.
//!
//! A batch: `begin` opens a transaction, takes the chain lock and copies what other replicas
//! appended since into the local ledger (the commit thread replays those into its state
//! before preparing its own operations); `append` seals the batch after that head, inserts
//! it and commits, then writes it to the local ledger. The local ledger is a copy: after a
//! crash, whatever PostgreSQL holds beyond it is copied again at the next `begin` or
//! `catch_up`.
//!
//! The state the chain leaves is kept with it: between `begin` and `append` the commit thread
//! stages the batch's rows ([`LedgerAppend::stage_state`]), written in the batch's transaction
//! into [`super::PgState`]'s tables, and `daena_applied` moves from the batch's first position
//! to its last, only from there. A kept state elsewhere is rebuilt under the same lock
//! ([`LedgerAppend::clear_state`], pages of rows, [`LedgerAppend::commit_state`]).
//!
//! Checkpoints are shared too (`daena_checkpoints`): a replica signing one stores it there,
//! and the others adopt the newest their copy covers (checked against their own copy) before
//! signing one of their own, so every replica reports the same newest checkpoint once it has
//! caught up.

use super::state::{DocSplit, KEEP_ROWS, Keep, Split, write_rows};
use super::{CHAIN_LOCK, Conn, pg};
use crate::StoreError;
use crate::ledger::{LedgerAppend, LedgerWriter, Receipt, stated_hash};
use crate::state::{DocScope, StateRows};
use daena_core::ledger::Checkpoint;
use daena_core::ledger::entry::{Entry, NewEntry};
use daena_core::time::Micros;

/// Lines read per query while catching up.
const PAGE: i64 = 4096;

pub struct PgLedger {
    local: LedgerWriter,
    conn: Conn,
    in_txn: bool,
    /// Set when a batch reached PostgreSQL but not the local copy: appends stop until a
    /// restart copies it again.
    broken: Option<String>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger").field("size", &self.local.size()).finish()
    }
}

impl PgLedger {
    /// The shared chain at `url` over the local copy `local`. Refuses a local ledger that is
    /// not a prefix of the shared one (a data directory of another deployment).
    pub fn open(url: &str, local: LedgerWriter) -> Result<PgLedger, StoreError> {
        let mut ledger = PgLedger { local, conn: Conn::new(url), in_txn: false, broken: None };
        let size = ledger.local.size();
        if size > 0 {
            let head = super::off_runtime(|| -> Result<Option<String>, StoreError> {
                let client = ledger.conn.get()?;
                let row = client
                    .query_opt("select line from daena_ledger where seq = $1", &[&(size as i64)])
                    .map_err(pg("reading the shared ledger"))?;
                Ok(row.map(|r| r.get(0)))
            })?;
            let ours = ledger.local.head_line_hash();
            let theirs = head.as_deref().and_then(|line| stated_hash(line.trim_end().as_bytes()));
            if theirs.is_none() || theirs != ours {
                return Err(StoreError::Corrupt {
                    what: "the local ledger".into(),
                    detail: format!(
                        "its {size} entries are not a prefix of the shared ledger in PostgreSQL; this data \
                         directory belongs to another deployment (start the replica on an empty data directory)"
                    ),
                });
            }
        }
        Ok(ledger)
    }

    /// Copies what the shared chain holds past the local copy into it; returns those entries.
    fn pull(&mut self) -> Result<Vec<Entry>, StoreError> {
        let mut all = Vec::new();
        loop {
            let after = self.local.size() as i64;
            let (client, pull) =
                self.conn.prepared("select line from daena_ledger where seq > $1 order by seq limit $2")?;
            let lines: Vec<String> = client
                .query(&pull, &[&after, &PAGE])
                .map_err(pg("reading the shared ledger"))?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            if lines.is_empty() {
                return Ok(all);
            }
            let full = lines.len() as i64 == PAGE;
            all.extend(self.local.mirror(&lines)?);
            if !full {
                return Ok(all);
            }
        }
    }

    fn rollback(&mut self) {
        if self.in_txn {
            self.in_txn = false;
            if let Ok(c) = self.conn.get()
                && let Err(e) = c.batch_execute("rollback")
            {
                tracing::warn!(error = %e, "rolling back a ledger transaction failed");
            }
        }
    }

    fn insert_and_commit(&mut self, seqs: &[i64], lines: &[&str]) -> Result<(), StoreError> {
        let (client, insert) =
            self.conn.prepared("insert into daena_ledger (seq, line) select * from unnest($1::int8[], $2::text[])")?;
        client.execute(&insert, &[&seqs, &lines]).map_err(pg("appending to the shared ledger"))?;
        client.batch_execute("commit").map_err(pg("committing to the shared ledger"))
    }
}

impl LedgerAppend for PgLedger {
    fn size(&self) -> u64 {
        self.local.size()
    }

    fn shared(&self) -> bool {
        true
    }

    fn begin(&mut self) -> Result<Vec<Entry>, StoreError> {
        super::off_runtime(|| self.begin_now())
    }

    fn release(&mut self) {
        super::off_runtime(|| self.rollback());
    }

    fn catch_up(&mut self) -> Result<Vec<Entry>, StoreError> {
        if self.in_txn {
            return Ok(Vec::new());
        }
        super::off_runtime(|| self.pull())
    }

    fn append(&mut self, entries: &[NewEntry], now: Micros) -> Result<Vec<Receipt>, StoreError> {
        super::off_runtime(|| self.append_now(entries, now))
    }

    fn checkpoint(&mut self, key: &ed25519_dalek::SigningKey, now: Micros) -> Result<Checkpoint, StoreError> {
        super::off_runtime(|| {
            self.adopt_shared(&key.verifying_key())?;
            let covered = self.local.checkpointed() == self.local.size();
            let cp = self.local.checkpoint(key, now)?;
            if !covered {
                let line = serde_json::to_string(&cp).map_err(|e| StoreError::Db(e.to_string()))?;
                let client = self.conn.get()?;
                client
                    .execute(
                        "insert into daena_checkpoints (size, line) values ($1, $2) on conflict (size) do nothing",
                        &[&(cp.size as i64), &line],
                    )
                    .map_err(pg("sharing a checkpoint"))?;
            }
            Ok(cp)
        })
    }

    fn adopt_checkpoints(&mut self, key: &ed25519_dalek::VerifyingKey) -> Result<(), StoreError> {
        super::off_runtime(|| self.adopt_shared(key))
    }

    fn publish_public_key(&self, key: &ed25519_dalek::VerifyingKey) -> Result<(), StoreError> {
        self.local.publish_public_key(key)
    }

    fn kept_state(&mut self) -> Result<u64, StoreError> {
        super::off_runtime(|| {
            self.taken("reading the kept state's position")?;
            let row = self
                .conn
                .get()?
                .query_opt("select seq from daena_applied where id = 1", &[])
                .map_err(pg("reading the kept state's position"))?;
            Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
        })
    }

    fn stage_state(&mut self, rows: &StateRows, from: u64, to: u64) -> Result<(), StoreError> {
        super::off_runtime(|| {
            self.taken("writing the state's rows")?;
            let records = Split::of(rows.records.iter().map(|(k, v)| (k.as_slice(), v.as_deref())));
            let cache = Split::of(rows.cache.iter().map(|(k, v)| (k.as_slice(), v.as_deref())));
            let dicts = Split::of(rows.dicts.iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()))));
            let keep = Keep { from, docs: DocSplit::of(&rows.docs) };
            let (client, statement) = self.conn.prepared(KEEP_ROWS)?;
            match write_rows(client, &statement, &records, &cache, &dicts, to, Some(&keep))? {
                1 => Ok(()),
                _ => Err(StoreError::Corrupt {
                    what: "the state kept in PostgreSQL".into(),
                    detail: format!(
                        "it is not at entry {from} of the chain, where this batch starts; the batch was not \
                         written, and the next batch rebuilds the kept state from this replica's copy"
                    ),
                }),
            }
        })
    }

    fn clear_state(&mut self, docs: &[DocScope]) -> Result<(), StoreError> {
        super::off_runtime(|| {
            self.taken("emptying the kept state")?;
            let client = self.conn.get()?;
            client
                .batch_execute(
                    "delete from daena_records; delete from daena_cache;
                     delete from daena_dicts; update daena_applied set seq = 0 where id = 1",
                )
                .and_then(|()| client.batch_execute(super::access::FORGET))
                .map_err(pg("emptying the kept state"))?;
            for (table, key) in docs {
                client
                    .execute(
                        "delete from daena_docs where tbl = $1 and ($2::text is null or key = $2)",
                        &[&table.name(), key],
                    )
                    .map_err(pg("emptying the kept state"))?;
            }
            Ok(())
        })
    }

    fn batch_ts(&self, now: Micros) -> Micros {
        self.local.batch_ts(now)
    }

    fn commit_state(&mut self) -> Result<(), StoreError> {
        super::off_runtime(|| {
            self.taken("committing the kept state")?;
            let committed = self.conn.get()?.batch_execute("commit").map_err(pg("committing the kept state"));
            if committed.is_err() {
                self.rollback();
            }
            self.in_txn = false;
            committed
        })
    }
}

impl PgLedger {
    /// Adopts the newest checkpoint any replica shared that this copy covers and has not
    /// got yet; no query when this copy's newest checkpoint covers all of it.
    fn adopt_shared(&mut self, key: &ed25519_dalek::VerifyingKey) -> Result<(), StoreError> {
        let (newest, size) = (self.local.checkpointed(), self.local.size());
        if newest >= size {
            return Ok(());
        }
        let client = self.conn.get()?;
        let row = client
            .query_opt(
                "select line from daena_checkpoints where size > $1 and size <= $2 order by size desc limit 1",
                &[&(newest as i64), &(size as i64)],
            )
            .map_err(pg("reading the shared checkpoints"))?;
        let Some(line) = row.map(|r| r.get::<_, String>(0)) else { return Ok(()) };
        let cp: Checkpoint = serde_json::from_str(&line)
            .map_err(|e| StoreError::Corrupt { what: "a shared checkpoint".into(), detail: e.to_string() })?;
        self.local.adopt_checkpoint(&cp, key).map(|_| ())
    }

    /// Refuses a call that needs the chain taken ([`LedgerAppend::begin`]).
    fn taken(&self, what: &str) -> Result<(), StoreError> {
        if self.in_txn {
            return Ok(());
        }
        Err(StoreError::Db(format!("{what} needs the chain taken first (begin)")))
    }

    fn begin_now(&mut self) -> Result<Vec<Entry>, StoreError> {
        if let Some(why) = &self.broken {
            return Err(StoreError::Corrupt { what: "the local ledger".into(), detail: why.clone() });
        }
        self.rollback();
        // One round trip: the transaction and the chain lock.
        let client = self.conn.get()?;
        self.in_txn = true;
        if let Err(e) = client.batch_execute(&format!(
            "begin; set local daena.chain_writer = {}; select pg_advisory_xact_lock({CHAIN_LOCK})",
            super::SCHEMA_VERSION
        )) {
            self.rollback();
            return Err(pg("taking the chain lock")(e));
        }
        match self.pull() {
            Ok(lines) => Ok(lines),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn append_now(&mut self, entries: &[NewEntry], now: Micros) -> Result<Vec<Receipt>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if !self.in_txn {
            let foreign = self.begin_now()?;
            if !foreign.is_empty() {
                self.rollback();
                return Err(StoreError::Corrupt {
                    what: "the shared ledger".into(),
                    detail: "other replicas appended since this batch was prepared; it was not written".into(),
                });
            }
        }
        let sealed = self.local.seal(entries, now);
        let seqs: Vec<i64> = sealed.receipts.iter().map(|r| r.seq as i64).collect();
        let lines: Vec<&str> = sealed.lines.lines().collect();
        if let Err(e) = self.insert_and_commit(&seqs, &lines) {
            self.rollback();
            return Err(e);
        }
        self.in_txn = false;
        // The local copy is not synced: PostgreSQL holds the batch durably, and whatever a
        // crash takes off the copy is copied again at the next start.
        if let Err(e) = self.local.write_sealed_unsynced(&sealed) {
            let why = format!("a batch is in PostgreSQL but could not be copied here ({e}); restart the replica");
            tracing::error!("{why}");
            self.broken = Some(why);
            return Err(e);
        }
        Ok(sealed.receipts)
    }
}
