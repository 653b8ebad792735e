//! Copies of what PostgreSQL keeps, each read inside one repeatable-read transaction: a view
//! of the state into the embedded format (what snapshots carry), and a new replica's start
//! from the state kept with the chain and the chain up to it ([`start_copy`]).

use super::state::{PAGE, Rows};
use super::{Conn, off_runtime, pg};
use crate::StoreError;
use crate::embedded::{Copy, CopyTable};
use crate::ledger::LedgerWriter;
use crate::state::DocScope;
use postgres::GenericClient;
use std::path::Path;

/// Copies every table into a new embedded store at `path`, a page at a time by key, inside
/// the caller's transaction; of the documents only those `docs` names (`None`: all). Returns
/// the table names and the number of records.
pub(super) fn state_into(
    c: &mut impl GenericClient,
    path: &Path,
    docs: Option<&[DocScope]>,
) -> Result<(Vec<String>, u64), StoreError> {
    let mut copy = Copy::create(path)?;
    let mut records = 0u64;
    for (table, sql) in [
        (CopyTable::Records, "select addr, row from daena_records where addr > $1 order by addr limit $2"),
        (CopyTable::Cache, "select key, row from daena_cache where key > $1 order by key limit $2"),
        (CopyTable::Dicts, "select key, value from daena_dicts where key > $1 order by key limit $2"),
    ] {
        let mut after: Vec<u8> = Vec::new();
        loop {
            let page: Rows = c
                .query(sql, &[&after, &PAGE])
                .map_err(pg("copying a view"))?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let Some((last, _)) = page.last() else { break };
            after.clone_from(last);
            if matches!(table, CopyTable::Records) {
                records += page.len() as u64;
            }
            copy.rows(table, &page)?;
            if (page.len() as i64) < PAGE {
                break;
            }
        }
    }
    let mut after: Vec<u8> = Vec::new();
    loop {
        let page: Vec<(Vec<u8>, (i64, u64))> = c
            .query(
                "select addr, last_access, reads from daena_access where addr > $1 order by addr limit $2",
                &[&after, &PAGE],
            )
            .map_err(pg("copying a view"))?
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), u64::try_from(r.get::<_, i64>(2)).unwrap_or(0))))
            .collect();
        let Some((last, _)) = page.last() else { break };
        after.clone_from(last);
        copy.access(&page)?;
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    let wanted = |tbl: &str, key: &str| {
        docs.is_none_or(|scopes| scopes.iter().any(|(t, k)| t.name() == tbl && k.is_none_or(|k| k == key)))
    };
    let (mut tbl, mut key) = (String::new(), String::new());
    loop {
        let page: Vec<(String, String, Vec<u8>)> = c
            .query(
                "select tbl, key, doc from daena_docs where (tbl, key) > ($1, $2) order by tbl, key limit $3",
                &[&tbl, &key, &PAGE],
            )
            .map_err(pg("copying a view"))?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let Some((t, k, _)) = page.last() else { break };
        (tbl, key) = (t.clone(), k.clone());
        let full = (page.len() as i64) == PAGE;
        let kept: Vec<_> = page.into_iter().filter(|(t, k, _)| wanted(t, k)).collect();
        copy.docs(&kept)?;
        if !full {
            break;
        }
    }
    let applied = c
        .query_opt("select seq from daena_applied", &[])
        .map_err(pg("copying a view"))?
        .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0));
    Ok((copy.finish(applied)?, records))
}

/// A new replica's start from PostgreSQL: in one repeatable-read transaction, the chain's
/// entries up to the kept state's position go into `ledger` (an empty local copy) and the
/// kept state into a new embedded store at `state` (of the documents, those `docs` names).
/// Returns the position, or `None` when there is nothing to copy or the kept state is not
/// at the chain's head (it awaits a rebuild: the replica then applies the whole chain).
pub fn start_copy(
    url: &str,
    state: &Path,
    ledger: &mut LedgerWriter,
    docs: &[DocScope],
) -> Result<Option<u64>, StoreError> {
    if ledger.size() != 0 {
        return Err(StoreError::Db("a replica starts from PostgreSQL only with an empty ledger".into()));
    }
    off_runtime(|| {
        let mut conn = Conn::new(url);
        let client = conn.get()?;
        let mut txn = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(pg("starting a consistent copy"))?;
        let row = txn
            .query_one(
                "select coalesce((select seq from daena_applied where id = 1), 0),
                        coalesce((select max(seq) from daena_ledger), 0)",
                &[],
            )
            .map_err(pg("reading the kept state's position"))?;
        let (kept, head): (i64, i64) = (row.get(0), row.get(1));
        if kept == 0 || kept != head {
            return Ok(None);
        }
        let mut after = 0i64;
        while after < kept {
            let lines: Vec<String> = txn
                .query(
                    "select line from daena_ledger where seq > $1 and seq <= $2 order by seq limit $3",
                    &[&after, &kept, &(PAGE * 4)],
                )
                .map_err(pg("copying the shared ledger"))?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            if lines.is_empty() {
                return Err(StoreError::Corrupt {
                    what: "the shared ledger".into(),
                    detail: format!("it ends at entry {after}, before its head {head}"),
                });
            }
            after += lines.len() as i64;
            ledger.mirror(&lines)?;
        }
        ledger.sync_all()?;
        state_into(&mut txn, state, Some(docs))?;
        txn.commit().map_err(pg("ending a consistent copy"))?;
        Ok(Some(u64::try_from(kept).unwrap_or(0)))
    })
}
