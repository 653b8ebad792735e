//! Throwaway databases for tests: each test gets its own, dropped when it ends, so runs never
//! collide. The server is `DAENA_TEST_POSTGRES_URL` (default: the local one with trust auth,
//! which `scripts/services` starts).

use super::{off_runtime, pg};
use crate::StoreError;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "daena_t_";

fn admin_url() -> String {
    std::env::var("DAENA_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database made for one test, dropped with it.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Makes a fresh database; panics with what to do when PostgreSQL does not answer.
    pub fn create() -> TestDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin = admin_url();
        let name = format!("{PREFIX}{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let made = off_runtime(|| -> Result<(), StoreError> {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).map_err(pg("connecting"))?;
            drop_abandoned(&mut c);
            c.batch_execute(&format!("create database {name}")).map_err(pg("creating a test database"))
        });
        if let Err(e) = made {
            panic!(
                "these tests need PostgreSQL at {} (set DAENA_TEST_POSTGRES_URL, or run scripts/services to start the local one): {e}",
                super::redact_url(&admin)
            );
        }
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
        TestDatabase { url: format!("{base}/{name}"), name }
    }
}

impl TestDatabase {
    /// Runs `sql` on this database (a test setting up a state by hand); panics on failure.
    pub fn execute(&self, sql: &str) {
        let url = self.url.clone();
        let done = off_runtime(|| -> Result<(), StoreError> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(pg("connecting"))?;
            c.batch_execute(sql).map_err(pg("running a test's statement"))
        });
        if let Err(e) = done {
            panic!("{sql}: {e}");
        }
    }
}

/// Drops the test databases of processes that are gone (a test that panicked or was killed).
fn drop_abandoned(c: &mut postgres::Client) {
    let Ok(rows) = c.query("select datname from pg_database where datname like 'daena\\_t\\_%'", &[]) else { return };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.strip_prefix(PREFIX).and_then(|r| r.split('_').next()).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = c.batch_execute(&format!("drop database if exists {name} with (force)"));
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        off_runtime(move || {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("drop database if exists {name} with (force)"));
            }
        });
    }
}
