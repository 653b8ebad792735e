//! PostgreSQL, for replicas that share one deployment: the ledger chain ([`PgLedger`]), the
//! documents every replica must read alike ([`PgDocs`]: the tenants' wrapped data keys) and
//! a few shared files ([`shared_file`]: the generated master key, the checkpoint key); and
//! the state store on PostgreSQL ([`PgState`]), which passes the conformance suite and whose
//! tables hold the state the chain leaves, written with each batch.
//!
//! Each replica keeps a local copy of the chain and of the state derived from it in its own
//! data directory; PostgreSQL holds the one chain they all extend. Appends are serialised by
//! a transaction-scoped advisory lock, and `seq` is the primary key, so the chain has no gap
//! and no fork whatever the replicas do.
//!
//! The `postgres` client runs its own runtime and must not block inside another: every call
//! made where a tokio runtime may be running goes through [`off_runtime`].

mod access;
mod copy;
mod fence;
mod ledger;
mod state;
mod test_db;
mod tls;

pub use access::FleetAccess;
pub use copy::start_copy;
pub use fence::{FenceState, HeadFence};
pub use ledger::PgLedger;
pub use state::PgState;
pub use test_db::TestDatabase;

use crate::StoreError;
use crate::state::{DocStore, DocTable};
use parking_lot::Mutex;

/// The schema this build reads and writes; a database with a newer one is refused.
pub const SCHEMA_VERSION: i32 = 5;

/// Migrations by version, applied in order inside one transaction each.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "create table daena_ledger (seq bigint primary key, line text not null);
     create table daena_docs (tbl text not null, key text not null, doc bytea not null, primary key (tbl, key));
     create table daena_files (name text primary key, content bytea not null);",
    ),
    (
        2,
        "create table daena_records (addr bytea primary key, row bytea not null);
     create table daena_access (addr bytea primary key, last_access bigint not null, reads bigint not null);
     create table daena_cache (key bytea primary key, row bytea not null);
     create table daena_dicts (key bytea primary key, value bytea not null);
     create table daena_applied (id int primary key check (id = 1), seq bigint not null);",
    ),
    (3, "create table daena_checkpoints (size bigint primary key, line text not null);"),
    // From here every batch of the chain writes the rows it leaves in the state with it, and
    // `daena_applied` says how far the kept state goes. A deployment that already has a chain
    // starts at 0 and the first replica of this version rebuilds it. PostgreSQL refuses an
    // insert into the chain past the kept state: a replica of an older version still running
    // (it would append without the rows) gets its batches refused, naming why.
    (
        4,
        "insert into daena_applied (id, seq) values (1, 0) on conflict (id) do nothing;
     comment on table daena_records is 'records as the shared chain leaves them, written with each batch';
     create function daena_ledger_keeps_state() returns trigger language plpgsql as $$
     declare
       newest bigint := (select max(seq) from daena_ledger);
       kept bigint := coalesce((select seq from daena_applied where id = 1), 0);
     begin
       if newest > kept then
         raise exception 'entry % was appended without the state it leaves (the kept state is at %): a replica older than schema version 4 is still running; stop it', newest, kept;
       end if;
       return null;
     end $$;
     create trigger daena_ledger_keeps_state after insert on daena_ledger
       for each statement execute function daena_ledger_keeps_state();",
    ),
    // Replicas publish the chain's head to Redis and keep the fence over it (`fence.rs`); a
    // replica older than this would do neither, so the chain now also refuses a writer that
    // does not say it is at least this version (`begin` sets `daena.chain_writer`).
    (5, MIGRATION_5),
];

const MIGRATION_5: &str = concat!(
    "create or replace function daena_ledger_keeps_state() returns trigger language plpgsql as $$
     declare
       newest bigint := (select max(seq) from daena_ledger);
       kept bigint := coalesce((select seq from daena_applied where id = 1), 0);
       writer int := coalesce(nullif(current_setting('daena.chain_writer', true), ''), '0')::int;
     begin
       if writer < 5 then
         raise exception 'entry % was appended by a replica older than schema version 5, which does not keep the head in Redis: stop it', newest;
       end if;
       if newest > kept then
         raise exception 'entry % was appended without the state it leaves (the kept state is at %): a replica older than schema version 4 is still running; stop it', newest, kept;
       end if;
       return null;
     end $$;
     ",
    "create table daena_head_fence (
       id int primary key check (id = 1),
       epoch bigint not null,
       raised bool not null,
       raised_at timestamptz not null,
       touched_at timestamptz not null);
     insert into daena_head_fence values (1, 1, true, clock_timestamp(), clock_timestamp());"
);

/// Session-scoped advisory lock held while migrating.
const MIGRATE_LOCK: i64 = 0x6461_656e_6101;
/// Transaction-scoped advisory lock held by the replica appending to the chain.
pub(crate) const CHAIN_LOCK: i64 = 0x6461_656e_6102;
/// Transaction-scoped advisory lock serialising [`PgDocs::swap_many`].
const SWAP_LOCK: i64 = 0x6461_656e_6105;

fn pg(context: impl Into<String>) -> impl FnOnce(postgres::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Postgres { context, detail: error_detail(&source) }
}

/// The server's message when there is one (`postgres::Error`'s display says only "db error"),
/// else the error with its causes (a refused connection, a TLS certificate not trusted).
fn error_detail(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    let mut detail = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !detail.ends_with(&text) {
            detail = format!("{detail}: {text}");
        }
        cause = c.source();
    }
    detail
}

/// Runs `f` where the `postgres` client may block: on this thread outside a tokio runtime,
/// else on a short-lived thread of its own.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Runs `f` on the client of `conn`, connecting first when needed, off any tokio runtime.
pub(crate) fn on<T: Send>(
    conn: &Mutex<Conn>,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError> + Send,
) -> Result<T, StoreError> {
    off_runtime(|| f(conn.lock().get()?))
}

/// A connection that reconnects when it finds itself closed, with the statements prepared on
/// it (a prepared statement saves a round trip per query).
pub(crate) struct Conn {
    url: String,
    client: Option<postgres::Client>,
    prepared: std::collections::HashMap<&'static str, postgres::Statement>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The `postgres` client closes its connection on a runtime of its own, which must not
        // start inside another (a replica's handles are dropped on the server's runtime).
        let (client, prepared) = (self.client.take(), std::mem::take(&mut self.prepared));
        if client.is_some() {
            off_runtime(move || drop((prepared, client)));
        }
    }
}

impl Conn {
    pub(crate) fn new(url: &str) -> Conn {
        Conn { url: url.to_owned(), client: None, prepared: std::collections::HashMap::new() }
    }

    /// The client and `sql` prepared on it.
    pub(crate) fn prepared(
        &mut self,
        sql: &'static str,
    ) -> Result<(&mut postgres::Client, postgres::Statement), StoreError> {
        self.get()?;
        let client = self.client.as_mut().ok_or_else(|| StoreError::Db("no PostgreSQL connection".into()))?;
        let stmt = match self.prepared.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = client.prepare(sql).map_err(pg("preparing a statement"))?;
                self.prepared.insert(sql, s.clone());
                s
            }
        };
        Ok((client, stmt))
    }

    pub(crate) fn get(&mut self) -> Result<&mut postgres::Client, StoreError> {
        if self.client.as_ref().is_none_or(postgres::Client::is_closed) {
            self.prepared.clear();
            let connect = tls::connect(&self.url)?;
            let client = match connect.tls {
                Some(tls) => postgres::Client::connect(&connect.url, tls),
                None => postgres::Client::connect(&connect.url, postgres::NoTls),
            };
            self.client = Some(client.map_err(pg(format!("connecting to {}", redact_url(&self.url))))?);
        }
        self.client.as_mut().ok_or_else(|| StoreError::Db("no PostgreSQL connection".into()))
    }
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            let slash = if rest.contains('/') { "/" } else { "" };
            format!("{scheme}://{masked}@{host}{slash}{tail}")
        }
        None => url.to_owned(),
    }
}

/// Connects to `url`, applies the migrations this build knows and refuses a database whose
/// schema is newer. Safe to run from several replicas at once.
pub fn migrate(url: &str) -> Result<(), StoreError> {
    off_runtime(|| {
        let mut conn = Conn::new(url);
        let client = conn.get()?;
        client.execute("select pg_advisory_lock($1)", &[&MIGRATE_LOCK]).map_err(pg("taking the migration lock"))?;
        let result = apply_migrations(client);
        let _ = client.execute("select pg_advisory_unlock($1)", &[&MIGRATE_LOCK]);
        result
    })
}

fn apply_migrations(client: &mut postgres::Client) -> Result<(), StoreError> {
    client
        .batch_execute("create table if not exists daena_schema (version int not null)")
        .map_err(pg("creating daena_schema"))?;
    let current: i32 = client
        .query_one("select coalesce(max(version), 0) from daena_schema", &[])
        .map_err(pg("reading the schema version"))?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Corrupt {
            what: "the PostgreSQL database".into(),
            detail: format!(
                "its schema is version {current}, newer than this build's {SCHEMA_VERSION}; run a Daena at least as new as the one that migrated it"
            ),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let mut txn = client.transaction().map_err(pg("starting a migration"))?;
        txn.batch_execute(sql).map_err(pg(format!("applying schema migration {version}")))?;
        txn.execute("insert into daena_schema (version) values ($1)", &[version])
            .map_err(pg(format!("recording schema migration {version}")))?;
        txn.commit().map_err(pg(format!("committing schema migration {version}")))?;
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    Ok(())
}

/// The shared file `name`: as stored, else `make()` stored by whichever replica gets there
/// first (every replica gets the same bytes).
pub fn shared_file(url: &str, name: &str, make: impl FnOnce() -> Vec<u8> + Send) -> Result<Vec<u8>, StoreError> {
    off_runtime(|| {
        let mut conn = Conn::new(url);
        let client = conn.get()?;
        client
            .execute(
                "insert into daena_files (name, content) values ($1, $2) on conflict (name) do nothing",
                &[&name, &make()],
            )
            .map_err(pg(format!("storing the shared file {name}")))?;
        let row = client
            .query_one("select content from daena_files where name = $1", &[&name])
            .map_err(pg(format!("reading the shared file {name}")))?;
        Ok(row.get(0))
    })
}

/// A document as [`PgDocs::swap_many`] expects or writes it: `None` is absent.
pub type DocChange<'a> = (DocTable, &'a str, Option<&'a [u8]>);

/// What [`PgDocs::status`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgStatus {
    /// Whether this connection is encrypted, as the server sees it.
    pub encrypted: bool,
    /// The entry the state kept with the chain reflects.
    pub kept: u64,
    /// The chain's head.
    pub head: u64,
}

/// Documents in PostgreSQL, read and written by every replica alike.
pub struct PgDocs {
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for PgDocs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDocs").finish_non_exhaustive()
    }
}

impl PgDocs {
    pub fn open(url: &str) -> Result<PgDocs, StoreError> {
        let docs = PgDocs { conn: Mutex::new(Conn::new(url)) };
        docs.probe()?;
        Ok(docs)
    }

    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        on(&self.conn, f)
    }
}

impl PgDocs {
    /// Proves PostgreSQL answers (for `/health`).
    pub fn probe(&self) -> Result<(), StoreError> {
        self.with(|c| c.execute("select 1", &[]).map_err(pg("probing PostgreSQL")).map(|_| ()))
    }

    /// Writes `changes` (`None` deletes) only if every document named in `expect` still is
    /// what it gives (`None`: absent), all in one transaction; whether it did. Calls are
    /// serialised with each other across processes, so what one read and expects cannot be
    /// changed by another `swap_many` before it writes.
    pub fn swap_many(&self, expect: &[DocChange<'_>], changes: &[DocChange<'_>]) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut txn = c.transaction().map_err(pg("starting a document swap"))?;
            txn.execute("select pg_advisory_xact_lock($1)", &[&SWAP_LOCK]).map_err(pg("taking the swap lock"))?;
            for (table, key, expected) in expect {
                if state::get_doc(&mut txn, *table, key)?.as_deref() != *expected {
                    return Ok(false);
                }
            }
            for (table, key, doc) in changes {
                match doc {
                    Some(doc) => state::put_doc(&mut txn, table.name(), key, doc)?,
                    None => {
                        state::delete_doc(&mut txn, *table, key)?;
                    }
                }
            }
            txn.commit().map_err(pg("committing a document swap"))?;
            Ok(true)
        })
    }

    /// What `/health` reports of PostgreSQL, in one statement (which proves it answers).
    pub fn status(&self) -> Result<PgStatus, StoreError> {
        self.with(|c| {
            let row = c
                .query_one(
                    "select coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false),
                            coalesce((select seq from daena_applied where id = 1), 0),
                            coalesce((select max(seq) from daena_ledger), 0)",
                    &[],
                )
                .map_err(pg("reading PostgreSQL's status"))?;
            let seq = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
            Ok(PgStatus { encrypted: row.get(0), kept: seq(1), head: seq(2) })
        })
    }

    /// Whether this replica's connection is encrypted, as the server sees it.
    pub fn encrypted(&self) -> Result<bool, StoreError> {
        self.with(|c| {
            let row = c
                .query_opt("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[])
                .map_err(pg("reading the connection's TLS state"))?;
            Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
        })
    }
}

impl DocStore for PgDocs {
    fn get_doc(&self, table: DocTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| state::get_doc(c, table, key))
    }

    fn put_docs(&self, table: DocTable, items: &[(&str, &[u8])]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut txn = c.transaction().map_err(pg("starting a document write"))?;
            for (key, doc) in items {
                state::put_doc(&mut txn, table.name(), key, doc)?;
            }
            txn.commit().map_err(pg("committing a document write"))
        })
    }

    fn delete_doc(&self, table: DocTable, key: &str) -> Result<bool, StoreError> {
        self.with(|c| state::delete_doc(c, table, key))
    }

    fn scan_docs(&self, table: DocTable) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with(|c| state::scan_docs(c, table))
    }

    fn swap_doc(&self, table: DocTable, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError> {
        self.with(|c| state::swap_doc(c, table, key, expected, new))
    }
}

/// Held by at most one replica at a time (the schedulers' lease): a session advisory lock on
/// a connection of its own, which PostgreSQL frees when the holder's connection ends, a
/// crash included.
pub struct Lease {
    conn: Mutex<(Conn, bool)>,
}

/// The schedulers' lease.
pub const SCHEDULER_LEASE: i64 = 0x6461_656e_6103;

impl Lease {
    pub fn new(url: &str) -> Lease {
        Lease { conn: Mutex::new((Conn::new(url), false)) }
    }

    /// Whether this replica holds the lease now, taking it when it is free.
    pub fn hold(&self) -> bool {
        off_runtime(|| {
            let mut guard = self.conn.lock();
            let (conn, held) = &mut *guard;
            let alive = conn.client.as_mut().is_some_and(|c| !c.is_closed() && c.execute("select 1", &[]).is_ok());
            if *held && alive {
                return true;
            }
            // A lost connection took the lock with it.
            *held = false;
            let taken = conn.get().and_then(|c| {
                c.query_one("select pg_try_advisory_lock($1)", &[&SCHEDULER_LEASE])
                    .map(|r| r.get::<_, bool>(0))
                    .map_err(pg("taking the scheduler lease"))
            });
            match taken {
                Ok(t) => *held = t,
                Err(e) => tracing::warn!(error = %e, "the scheduler lease could not be checked"),
            }
            *held
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact_url("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("postgres://db"), "postgres://db");
        assert_eq!(redact_url("redis://:pw@h:6379/"), "redis://:***@h:6379/");
    }
}
