//! The state store on PostgreSQL ([`PgState`]): records and their access statistics, cache
//! entries, dictionaries, documents and the applied ledger position, in tables of the same
//! shape as the embedded backend's (keys as `bytea`, whose order is the byte order redb
//! keeps, so scans see records in the same order).
//!
//! - A batch is one transaction. One that need not be durable commits with
//!   `synchronous_commit = off`: PostgreSQL flushes it with the next synchronous commit, or a
//!   crash loses it, which is the seam's contract.
//! - Writers take a shared advisory lock in their transaction, so [`StateStore::hold_writer`]
//!   (an exclusive one on a connection of its own) makes them wait, as redb's single writer
//!   does.
//! - A view is a read-only repeatable-read transaction on a connection of its own; its copy
//!   is an embedded store file, the format snapshots carry.
//! - Scans read pages of [`PAGE`] rows and call back with no lock held, so a callback may use
//!   the store.

use super::{Conn, off_runtime, pg};
use crate::StoreError;
use crate::records::RecordRow;
use crate::state::{DocStore, DocTable, RecordVisit, RowVisit, StateBatch, StateStore, StateView, WriterHold};
use parking_lot::Mutex;
use postgres::GenericClient;
use std::path::Path;

/// `(key, value)` rows of a table.
pub(super) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Rows a scan reads at once.
pub(super) const PAGE: i64 = 1000;
/// Shared by writers, exclusive for [`StateStore::hold_writer`].
const WRITE_LOCK: i64 = 0x6461_656e_6104;

pub struct PgState {
    url: String,
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgState").field("url", &super::redact_url(&self.url)).finish()
    }
}

impl PgState {
    /// The state store in the database at `url`, its schema migrated.
    pub fn open(url: &str) -> Result<PgState, StoreError> {
        super::migrate(url)?;
        let state = PgState { url: url.to_owned(), conn: Mutex::new(Conn::new(url)) };
        state.probe()?;
        Ok(state)
    }

    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        super::on(&self.conn, f)
    }

    /// Runs `f` in a write transaction holding the shared write lock.
    fn write_txn(
        &self,
        durable: bool,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<(), StoreError> + Send,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut txn = c.transaction().map_err(pg("starting a state write"))?;
            if !durable {
                txn.batch_execute("set local synchronous_commit = off").map_err(pg("relaxing a commit"))?;
            }
            txn.execute("select pg_advisory_xact_lock_shared($1)", &[&WRITE_LOCK])
                .map_err(pg("taking the state write lock"))?;
            f(&mut txn)?;
            txn.commit().map_err(pg("committing a state write"))
        })
    }

    /// Pages of `(key, value)` from `sql` (`$1`: the key to start at, then the last key seen;
    /// `$2`: the page size), each row once, handed to `visit` with no lock held; `visit`
    /// returns whether to go on.
    fn pages(
        &self,
        sql: &'static str,
        first: Vec<u8>,
        mut visit: impl FnMut(Rows) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut after = first;
        let mut first_page = true;
        loop {
            let mut page: Rows = self.with(|c| {
                let rows = c.query(sql, &[&after, &PAGE]).map_err(pg("scanning the state"))?;
                Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            })?;
            let full = page.len() as i64 == PAGE;
            // `>=` finds the starting key on the first page; on the next ones it finds the
            // previous page's last row again.
            if !first_page && page.first().is_some_and(|(k, _)| *k == after) {
                page.remove(0);
            }
            first_page = false;
            if let Some((last, _)) = page.last() {
                after.clone_from(last);
            }
            if !visit(page)? || !full {
                return Ok(());
            }
        }
    }

    fn scan_bytes(&self, sql: &'static str, f: &mut RowVisit<'_>) -> Result<(), StoreError> {
        // Every key sorts after the empty one, and the first page includes it (`>=`).
        self.pages(sql, Vec::new(), |page| {
            for (k, v) in &page {
                f(k, v)?;
            }
            Ok(true)
        })
    }
}

pub(super) fn get_doc(c: &mut impl GenericClient, table: DocTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let row = c
        .query_opt("select doc from daena_docs where tbl = $1 and key = $2", &[&table.name(), &key])
        .map_err(pg(format!("reading {}/{key}", table.name())))?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) fn put_doc(c: &mut impl GenericClient, table: &str, key: &str, doc: &[u8]) -> Result<(), StoreError> {
    c.execute(
        "insert into daena_docs (tbl, key, doc) values ($1, $2, $3) on conflict (tbl, key) do update set doc = excluded.doc",
        &[&table, &key, &doc],
    )
    .map(|_| ())
    .map_err(pg(format!("writing {table}/{key}")))
}

pub(super) fn delete_doc(c: &mut impl GenericClient, table: DocTable, key: &str) -> Result<bool, StoreError> {
    c.execute("delete from daena_docs where tbl = $1 and key = $2", &[&table.name(), &key])
        .map(|n| n > 0)
        .map_err(pg(format!("deleting {}/{key}", table.name())))
}

pub(super) fn scan_docs(c: &mut impl GenericClient, table: DocTable) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let rows = c
        .query("select key, doc from daena_docs where tbl = $1 order by key", &[&table.name()])
        .map_err(pg(format!("scanning {}", table.name())))?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Writes `new` only if the stored document still is `expected` (`None`: absent); whether it did.
pub(super) fn swap_doc(
    c: &mut impl GenericClient,
    table: DocTable,
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
) -> Result<bool, StoreError> {
    let n = match expected {
        None => c.execute(
            "insert into daena_docs (tbl, key, doc) values ($1, $2, $3) on conflict (tbl, key) do nothing",
            &[&table.name(), &key, &new],
        ),
        Some(old) => c.execute(
            "update daena_docs set doc = $4 where tbl = $1 and key = $2 and doc = $3",
            &[&table.name(), &key, &old, &new],
        ),
    }
    .map_err(pg(format!("swapping {}/{key}", table.name())))?;
    Ok(n == 1)
}

impl DocStore for PgState {
    fn get_doc(&self, table: DocTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| get_doc(c, table, key))
    }

    fn put_docs(&self, table: DocTable, items: &[(&str, &[u8])]) -> Result<(), StoreError> {
        self.write_txn(true, |txn| items.iter().try_for_each(|(key, doc)| put_doc(txn, table.name(), key, doc)))
    }

    fn delete_doc(&self, table: DocTable, key: &str) -> Result<bool, StoreError> {
        let mut deleted = false;
        self.write_txn(true, |txn| {
            deleted = delete_doc(txn, table, key)?;
            Ok(())
        })?;
        Ok(deleted)
    }

    fn scan_docs(&self, table: DocTable) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with(|c| scan_docs(c, table))
    }

    fn swap_doc(&self, table: DocTable, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError> {
        let mut swapped = false;
        self.write_txn(true, |txn| {
            swapped = swap_doc(txn, table, key, expected, new)?;
            Ok(())
        })?;
        Ok(swapped)
    }
}

impl StateStore for PgState {
    fn record(&self, addr: &[u8]) -> Result<Option<RecordRow>, StoreError> {
        let row: Option<Vec<u8>> = self.with(|c| {
            let row = c
                .query_opt("select row from daena_records where addr = $1", &[&addr])
                .map_err(pg("reading a record"))?;
            Ok(row.map(|r| r.get(0)))
        })?;
        row.map(|bytes| RecordRow::decode(&bytes)).transpose()
    }

    fn access(&self, addr: &[u8]) -> Result<Option<(i64, u64)>, StoreError> {
        self.with(|c| {
            let row = c
                .query_opt("select last_access, reads from daena_access where addr = $1", &[&addr])
                .map_err(pg("reading access statistics"))?;
            Ok(row.map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0))))
        })
    }

    fn scan_records(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut RecordVisit<'_>) -> Result<(), StoreError> {
        // The first page starts at the prefix (`>=`), or just after `after` when that is past it.
        let (first, skip) = match after {
            Some(a) if a >= prefix => (a.to_vec(), Some(a.to_vec())),
            _ => (prefix.to_vec(), None),
        };
        self.pages("select addr, row from daena_records where addr >= $1 order by addr limit $2", first, |page| {
            for (k, v) in page {
                if !k.starts_with(prefix) {
                    return Ok(false);
                }
                if skip.as_deref().is_some_and(|a| k.as_slice() <= a) {
                    continue;
                }
                if !f(&k, RecordRow::decode(&v)?)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    fn applied_seq(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            let row = c.query_opt("select seq from daena_applied", &[]).map_err(pg("reading the applied position"))?;
            Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
        })
    }

    fn cache_row(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            let row = c
                .query_opt("select row from daena_cache where key = $1", &[&key])
                .map_err(pg("reading a cache entry"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn scan_cache(&self, f: &mut RowVisit<'_>) -> Result<(), StoreError> {
        self.scan_bytes("select key, row from daena_cache where key >= $1 order by key limit $2", f)
    }

    fn scan_dicts(&self, f: &mut RowVisit<'_>) -> Result<(), StoreError> {
        self.scan_bytes("select key, value from daena_dicts where key >= $1 order by key limit $2", f)
    }

    fn put_dict(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write_txn(true, |txn| {
            txn.execute(
                "insert into daena_dicts (key, value) values ($1, $2) on conflict (key) do update set value = excluded.value",
                &[&key, &value],
            )
            .map(|_| ())
            .map_err(pg("writing a dictionary"))
        })
    }

    fn write(&self, batch: &StateBatch<'_>) -> Result<(), StoreError> {
        self.write_txn(batch.durable, |txn| write_batch(txn, batch))
    }

    fn view(&self) -> Result<Box<dyn StateView>, StoreError> {
        off_runtime(|| {
            let mut c = Conn::new(&self.url);
            let client = c.get()?;
            // The snapshot is taken at the first query, so the view holds the state as of now.
            client
                .batch_execute("begin isolation level repeatable read read only; select 1")
                .map_err(pg("starting a consistent view"))?;
            Ok(Box::new(View(Mutex::new(c))) as Box<dyn StateView>)
        })
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("select 1 from daena_applied limit 1", &[]).map(|_| ()).map_err(pg("probing the state"))
        })
    }

    fn hold_writer(&self) -> Result<Box<dyn WriterHold>, StoreError> {
        off_runtime(|| {
            let mut c = Conn::new(&self.url);
            c.get()?.execute("select pg_advisory_lock($1)", &[&WRITE_LOCK]).map_err(pg("holding the state writer"))?;
            Ok(Box::new(Hold { _conn: c }) as Box<dyn WriterHold>)
        })
    }
}

/// Records, cache entries and dictionaries written in one statement (one round trip): rows
/// to upsert as parallel arrays of keys and values, keys to delete, then the applied
/// position. Data-modifying `with` clauses all run, on one snapshot, so the keys put and
/// deleted must be disjoint ([`Split`] makes them so).
macro_rules! write_rows_sql {
    ($more:literal, $applied:literal) => {
        concat!(
            "with put_records as (insert into daena_records (addr, row) select * from unnest($1::bytea[], $2::bytea[])
               on conflict (addr) do update set row = excluded.row),
             gone_records as (delete from daena_records where addr = any($3::bytea[])),
             gone_access as (delete from daena_access where addr = any($3::bytea[])),
             put_cache as (insert into daena_cache (key, row) select * from unnest($4::bytea[], $5::bytea[])
               on conflict (key) do update set row = excluded.row),
             gone_cache as (delete from daena_cache where key = any($6::bytea[])),
             put_dicts as (insert into daena_dicts (key, value) select * from unnest($7::bytea[], $8::bytea[])
               on conflict (key) do update set value = excluded.value)",
            $more,
            " ",
            $applied
        )
    };
}

/// A state store batch: the applied position is whatever the batch says (its documents are
/// written apart).
const STORE_ROWS: &str = write_rows_sql!(
    "",
    "insert into daena_applied (id, seq) values (1, $9) on conflict (id) do update set seq = excluded.seq"
);
/// A chain batch's rows and documents: the kept state moves from `$10` to `$9`, and only from
/// there (no row is updated otherwise, which the caller checks).
pub(super) const KEEP_ROWS: &str = write_rows_sql!(
    ",
     put_docs as (insert into daena_docs (tbl, key, doc) select * from unnest($11::text[], $12::text[], $13::bytea[])
       on conflict (tbl, key) do update set doc = excluded.doc),
     gone_docs as (delete from daena_docs d using unnest($14::text[], $15::text[]) as g (tbl, key)
       where d.tbl = g.tbl and d.key = g.key)",
    "update daena_applied set seq = $9 where id = 1 and seq = $10"
);

/// Documents by (table, key) as the last write for each leaves them, as parallel arrays.
#[derive(Default)]
pub(super) struct DocSplit<'a> {
    put_tables: Vec<&'a str>,
    put_keys: Vec<&'a str>,
    put_docs: Vec<&'a [u8]>,
    gone_tables: Vec<&'a str>,
    gone_keys: Vec<&'a str>,
}

impl<'a> DocSplit<'a> {
    pub(super) fn of(docs: &'a [(DocTable, String, Option<Vec<u8>>)]) -> DocSplit<'a> {
        let last: std::collections::BTreeMap<(&str, &str), Option<&[u8]>> =
            docs.iter().map(|(t, k, d)| ((t.name(), k.as_str()), d.as_deref())).collect();
        let mut split = DocSplit::default();
        for ((table, key), doc) in last {
            match doc {
                Some(d) => {
                    split.put_tables.push(table);
                    split.put_keys.push(key);
                    split.put_docs.push(d);
                }
                None => {
                    split.gone_tables.push(table);
                    split.gone_keys.push(key);
                }
            }
        }
        split
    }
}

/// Rows by key as the last write for each leaves them: keys and values to put, keys to delete.
#[derive(Default)]
pub(super) struct Split<'a> {
    put_keys: Vec<&'a [u8]>,
    put_values: Vec<&'a [u8]>,
    gone: Vec<&'a [u8]>,
}

impl<'a> Split<'a> {
    pub(super) fn of(rows: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>) -> Split<'a> {
        let last: std::collections::BTreeMap<&[u8], Option<&[u8]>> = rows.into_iter().collect();
        let mut split = Split::default();
        for (key, value) in last {
            match value {
                Some(v) => {
                    split.put_keys.push(key);
                    split.put_values.push(v);
                }
                None => split.gone.push(key),
            }
        }
        split
    }
}

/// Where a chain batch moves the kept state, and the documents it writes.
pub(super) struct Keep<'a> {
    pub from: u64,
    pub docs: DocSplit<'a>,
}

/// Runs [`STORE_ROWS`] (`keep`: `None`) or [`KEEP_ROWS`] (`statement`) for `rows`; the number
/// of applied rows it updated (1, or 0 when [`KEEP_ROWS`] found the kept state elsewhere than
/// `from`).
pub(super) fn write_rows<S: postgres::ToStatement + ?Sized>(
    c: &mut impl GenericClient,
    statement: &S,
    records: &Split<'_>,
    cache: &Split<'_>,
    dicts: &Split<'_>,
    applied: u64,
    keep: Option<&Keep<'_>>,
) -> Result<u64, StoreError> {
    let seq = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let (applied, from) = (seq(applied), keep.map(|k| seq(k.from)));
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![
        &records.put_keys,
        &records.put_values,
        &records.gone,
        &cache.put_keys,
        &cache.put_values,
        &cache.gone,
        &dicts.put_keys,
        &dicts.put_values,
        &applied,
    ];
    if let (Some(from), Some(keep)) = (&from, keep) {
        let d = &keep.docs;
        params.extend_from_slice(&[
            from as &(dyn postgres::types::ToSql + Sync),
            &d.put_tables,
            &d.put_keys,
            &d.put_docs,
            &d.gone_tables,
            &d.gone_keys,
        ]);
    }
    c.execute(statement, &params).map_err(pg("writing the state's rows"))
}

/// One batch, in the caller's transaction.
fn write_batch(txn: &mut postgres::Transaction<'_>, batch: &StateBatch<'_>) -> Result<(), StoreError> {
    let records = Split::of(batch.records.iter().map(|(k, v)| (*k, v.as_deref())));
    let cache = Split::of(batch.cache.iter().map(|(k, v)| (*k, v.as_deref())));
    write_rows(txn, STORE_ROWS, &records, &cache, &Split::default(), batch.applied, None)?;
    for (addr, (last, reads)) in &batch.access {
        // A statistic never outlives its record.
        txn.execute(
            "insert into daena_access (addr, last_access, reads) select $1, $2, $3
             where exists (select 1 from daena_records where addr = $1)
             on conflict (addr) do update set last_access = excluded.last_access, reads = excluded.reads",
            &[addr, last, &i64::try_from(*reads).unwrap_or(i64::MAX)],
        )
        .map_err(pg("writing access statistics"))?;
    }
    for (table, key, json) in batch.docs {
        put_doc(txn, table.name(), key, json)?;
    }
    Ok(())
}

/// A consistent view: a read-only repeatable-read transaction on its own connection.
struct View(Mutex<Conn>);

impl View {
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        super::on(&self.0, f)
    }
}

impl StateView for View {
    fn copy_to(&self, path: &Path) -> Result<(Vec<String>, u64), StoreError> {
        self.with(|c| super::copy::state_into(c, path, None))
    }

    fn record_keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with(|c| {
            let rows = c.query("select addr from daena_records order by addr", &[]).map_err(pg("listing records"))?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }
}

/// The exclusive write lock, held on a connection of its own: dropping it closes the
/// connection, which releases the session lock.
struct Hold {
    _conn: Conn,
}

impl WriterHold for Hold {}
