//! The fleet's access statistics: each replica serves its own reads, so no replica's local
//! statistics say when a record was last read anywhere. Replicas publish theirs into
//! `daena_access` (the kept state's table; a new replica copies it with the rest), raising each
//! record's last access and read count and never lowering them, and aging asks it before it
//! judges a record idle.
//!
//! The table knows only reads published since it began ([`FleetAccess::since`]: the first
//! replica of a version that publishes, or the last rebuild of the kept state, which empties
//! it): aging counts no record idle from before then.

use super::{CHAIN_LOCK, Conn, on, pg};
use crate::StoreError;
use parking_lot::Mutex;
use std::collections::HashMap;

/// Rows per statement, both ways.
const PAGE: usize = 1000;

/// Forgets when the table began, with its rows (a rebuild of the kept state empties both).
pub(super) const FORGET: &str = "delete from daena_access; delete from daena_docs where tbl = 'fleet_access'";

/// The fleet's access statistics, on a connection of their own: publishing takes the chain
/// lock, and nothing the commit thread may wait for while it holds that lock (the documents'
/// connection: a tenant's data key) may wait behind it.
pub struct FleetAccess {
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for FleetAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetAccess").finish_non_exhaustive()
    }
}

impl FleetAccess {
    /// Connects when first used.
    pub fn new(url: &str) -> FleetAccess {
        FleetAccess { conn: Mutex::new(Conn::new(url)) }
    }

    /// Raises the fleet's statistics of `rows` (address, last access µs, reads) to at least
    /// these; rows of records the chain does not hold are left out. Each page of rows is a
    /// transaction under the chain lock, so no batch deletes a record between the check and
    /// the write (its statistics would outlive it), and appends wait at most one page.
    /// Returns how many rows it wrote; on an error, the pages before it are written.
    pub fn publish_access(&self, rows: &[(Vec<u8>, (i64, u64))]) -> Result<u64, StoreError> {
        let mut written = 0;
        for page in rows.chunks(PAGE) {
            let addrs: Vec<&[u8]> = page.iter().map(|(a, _)| a.as_slice()).collect();
            let lasts: Vec<i64> = page.iter().map(|(_, (last, _))| *last).collect();
            let reads: Vec<i64> = page.iter().map(|(_, (_, n))| i64::try_from(*n).unwrap_or(i64::MAX)).collect();
            written += on(&self.conn, |c| {
                let mut txn = c.transaction().map_err(pg("publishing access statistics"))?;
                txn.execute("select pg_advisory_xact_lock($1)", &[&CHAIN_LOCK]).map_err(pg("taking the chain lock"))?;
                let n = txn
                    .execute(
                        "insert into daena_access (addr, last_access, reads)
                         select a.addr, a.last, a.reads from unnest($1::bytea[], $2::int8[], $3::int8[]) as a (addr, last, reads)
                         where exists (select 1 from daena_records r where r.addr = a.addr)
                         on conflict (addr) do update set
                           last_access = greatest(daena_access.last_access, excluded.last_access),
                           reads = greatest(daena_access.reads, excluded.reads)",
                        &[&addrs, &lasts, &reads],
                    )
                    .map_err(pg("publishing access statistics"))?;
                txn.commit().map_err(pg("publishing access statistics"))?;
                Ok(n)
            })?;
        }
        Ok(written)
    }

    /// When the fleet began publishing reads (µs): the time stored, or `now`, stored first
    /// when none is.
    pub fn since(&self, now: i64) -> Result<i64, StoreError> {
        on(&self.conn, |c| {
            let mut txn = c.transaction().map_err(pg("reading when access statistics began"))?;
            txn.execute(
                "insert into daena_docs (tbl, key, doc) values ('fleet_access', 'since', $1)
                 on conflict (tbl, key) do nothing",
                &[&now.to_string().into_bytes()],
            )
            .map_err(pg("reading when access statistics began"))?;
            let doc: Vec<u8> = txn
                .query_one("select doc from daena_docs where tbl = 'fleet_access' and key = 'since'", &[])
                .map_err(pg("reading when access statistics began"))?
                .get(0);
            txn.commit().map_err(pg("reading when access statistics began"))?;
            std::str::from_utf8(&doc).ok().and_then(|t| t.parse().ok()).ok_or_else(|| StoreError::Corrupt {
                what: "daena_docs fleet_access/since".into(),
                detail: "not a time in microseconds".into(),
            })
        })
    }

    /// The fleet's last access (µs) of each of `addrs` that any replica published one for.
    pub fn fleet_access(&self, addrs: &[Vec<u8>]) -> Result<HashMap<Vec<u8>, i64>, StoreError> {
        let mut out = HashMap::new();
        for page in addrs.chunks(PAGE) {
            let keys: Vec<&[u8]> = page.iter().map(Vec::as_slice).collect();
            let rows = on(&self.conn, |c| {
                c.query("select addr, last_access from daena_access where addr = any($1)", &[&keys])
                    .map_err(pg("reading the fleet's access statistics"))
            })?;
            out.extend(rows.into_iter().map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, i64>(1))));
        }
        Ok(out)
    }
}
