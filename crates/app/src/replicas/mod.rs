//! Several replicas serving one deployment (`storage.backend = "postgres"`).
//!
//! The ledger is the replicated log: PostgreSQL holds the one chain every replica extends
//! (under a lock, after applying what the others appended), and each replica keeps a copy of
//! the chain and of the state derived from it in its own data directory. That copy is
//! disposable: a replica started on an empty directory rebuilds it from PostgreSQL. Reads
//! wait for a barrier (the replica applies what the chain held when the read arrived), so a
//! write acknowledged by one replica is visible through every other, and no L1 serves a
//! value another replica has replaced.
//!
//! PostgreSQL also keeps the records, cache entries, dictionaries, API key records, limit
//! overrides and write switch the chain leaves: the
//! replica appending a batch writes them in the batch's transaction (the commit thread's
//! `stage`), so they are always the state at the chain's head. Reads are still served from
//! each replica's own copy.
//!
//! What must be identical on every replica is shared through PostgreSQL: the generated
//! master key (unless `DAENA_MEMORY_AES_KEY` is set), the checkpoint signing key and the
//! tenants' wrapped data keys. Redis, when configured, keeps the tenant rate limits for the
//! whole fleet. One replica at a time (the lease holder) runs the schedulers.
//!
//! What each replica observes on its own (analytics, cache hit counters and costs, agent
//! heartbeats) it publishes to PostgreSQL under its replica id every [`PUBLISH_EVERY`]
//! ([`Peers`]); a report sums its own figures with the others' last published ones, and
//! heartbeats are merged by their latest time. A report through one replica therefore shows
//! the whole fleet's traffic, the other replicas' at most [`PUBLISH_EVERY`] late.

use crate::config::{Config, StorageBackend};
use crate::error::{AppError, AppResult};
use crate::health::{Check, CheckStatus};
use daena_core::time::Micros;
use daena_store::datadir::{DataDir, read_optional, write_atomic};
use daena_store::kv::DocTable;
use daena_store::pg::{self, FleetAccess, Lease, PgDocs};
use daena_store::redis_limits::SharedLimits;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub mod head;
mod peers;
pub mod seed;

pub use peers::{Fold, Peers, merge_docs};

/// How often a replica publishes what it observed on its own.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);

pub struct Replicas {
    pub url: String,
    /// This deployment's id (shared by its replicas; names its Redis keys).
    pub deployment: String,
    /// This replica's id (names its cold segment directory under `storage.l3_path`).
    pub replica: String,
    pub docs: Arc<PgDocs>,
    pub lease: Lease,
    pub limits: Option<Arc<SharedLimits>>,
    /// The chain's head in Redis, which lets reads skip the barrier ([`head`]).
    pub head: Arc<head::ChainHead>,
    pub peers: Arc<Peers>,
    /// The fleet's access statistics, which aging asks (`memory::aging`).
    pub access: Arc<FleetAccess>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("deployment", &self.deployment).field("replica", &self.replica).finish()
    }
}

fn shared_err(what: &str) -> impl FnOnce(daena_store::StoreError) -> AppError + '_ {
    move |e| AppError::unavailable(format!("{what}: {e}"))
}

impl Replicas {
    /// Connects to PostgreSQL (and Redis), migrates the schema and puts the shared secrets
    /// into `data`; `None` for the embedded backend. `now`: the service's clock.
    pub fn open(config: &Config, data: &DataDir, master_from_env: bool, now: Micros) -> AppResult<Option<Replicas>> {
        if config.storage.backend != StorageBackend::Postgres {
            return Ok(None);
        }
        let url = config.storage.postgres_url.clone().unwrap_or_default();
        pg::migrate(&url).map_err(shared_err("preparing the PostgreSQL schema"))?;
        if !master_from_env {
            let name = crate::keyring::MASTER_KEY_FILE;
            adopt(data, &url, name, || {
                use base64::Engine;
                let key: [u8; 32] = rand::random();
                format!("{}\n", base64::engine::general_purpose::STANDARD.encode(key)).into_bytes()
            })?;
        }
        adopt(data, &url, crate::ledger::SIGNING_KEY_FILE, || {
            format!("{}\n", hex::encode(rand::random::<[u8; 32]>())).into_bytes()
        })?;
        let deployment = pg::shared_file(&url, "deployment.id", || hex::encode(rand::random::<[u8; 8]>()).into_bytes())
            .map_err(shared_err("reading the deployment id"))?;
        let deployment = String::from_utf8_lossy(&deployment).trim().to_owned();
        let replica_path = data.root().join("replica.id");
        let replica = match read_optional(&replica_path)? {
            Some(id) => id.trim().to_owned(),
            None => {
                let id = hex::encode(rand::random::<[u8; 6]>());
                write_atomic(&replica_path, format!("{id}\n").as_bytes(), false)?;
                id
            }
        };
        let docs = Arc::new(PgDocs::open(&url).map_err(shared_err("opening the shared documents"))?);
        let limits = match config.storage.redis_url.as_deref().filter(|u| !u.is_empty()) {
            Some(redis) => Some(Arc::new(
                SharedLimits::new(redis, &format!("daena:{deployment}"))
                    .map_err(|e| AppError::invalid(e.to_string()))?,
            )),
            None => None,
        };
        tracing::info!(
            postgres = %pg::redact_url(&url),
            deployment = %deployment,
            replica = %replica,
            redis = limits.is_some(),
            "replica of a shared deployment"
        );
        let peers = Arc::new(Peers::open(docs.clone(), replica.clone())?);
        let head = head::ChainHead::new(&url, limits.clone());
        let access = Arc::new(FleetAccess::new(&url));
        // The first replica to publish reads says from when the fleet's statistics count.
        access.since(now.0).map_err(shared_err("reading when access statistics began"))?;
        Ok(Some(Replicas { lease: Lease::new(&url), url, deployment, replica, docs, limits, head, peers, access }))
    }

    /// Whether this replica runs the schedulers now.
    pub fn leads(&self) -> bool {
        self.lease.hold()
    }
}

/// Starts an empty data directory from what PostgreSQL keeps: the chain up to the kept
/// state's position and that state, copied in one consistent read (staged, then moved into
/// place), so the replica applies nothing at open and needs no shared filesystem. Returns
/// the position, or `None` when the directory is not empty or the kept state awaits a
/// rebuild (the replica then starts from a seed or the whole chain). A failed copy is
/// logged and leaves the directory as it was.
pub fn start_from_postgres(config: &Config, data: &DataDir, r: &Replicas) -> AppResult<Option<u64>> {
    if !seed::empty(data)? {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let stamp = crate::clock::compact_stamp(crate::clock::Clock::now(&crate::clock::SystemClock));
    let staged = daena_store::backup::Staging::new(data.root(), "start", &stamp)?;
    let copied = daena_store::ledger::open(&staged.path().join("ledger"), config.ledger.segment_bytes).and_then(
        |(mut ledger, _, _)| {
            let state = staged.path().join(daena_store::backup::STATE_FILE);
            pg::start_copy(&r.url, &state, &mut ledger, &crate::governance::KEPT_DOCS)
        },
    );
    let position = match copied {
        Ok(Some(position)) => position,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "could not start from the state PostgreSQL keeps; applying the chain instead");
            return Ok(None);
        }
    };
    put_in_place(config, data, r, staged.path(), &stamp)?;
    tracing::info!(
        entries = position,
        millis = started.elapsed().as_millis() as u64,
        "started from the state PostgreSQL keeps; only entries after it are copied and applied"
    );
    Ok(Some(position))
}

/// Moves a start staged in `staging` (state, ledger copy, cold segments) into an empty data
/// directory.
fn put_in_place(
    config: &Config,
    data: &DataDir,
    r: &Replicas,
    staging: &std::path::Path,
    stamp: &str,
) -> AppResult<()> {
    let cold = crate::service::cold_dir(config, data, Some(r));
    let aside = daena_store::backup::swap_in(data.root(), &cold, staging, stamp)?;
    // What was set aside is the empty directory's empty parts.
    let _ = std::fs::remove_dir_all(&aside);
    Ok(())
}

/// Each replica's agent heartbeats, published for the others.
const HEARTBEATS_BY_REPLICA: DocTable = daena_store::kv::doc_table("heartbeats_by_replica");

/// A tenant's agents' latest heartbeats.
type Beats = BTreeMap<String, Micros>;

/// Folds heartbeats by their latest time.
fn merge_beats(table: DocTable, key: &str, into: Option<&[u8]>, from: &[u8]) -> AppResult<Vec<u8>> {
    merge_docs::<Beats>(table, key, into, from, |sum, o| {
        for (agent, at) in o {
            let mine = sum.entry(agent.clone()).or_insert(*at);
            *mine = (*mine).max(*at);
        }
    })
}

/// Every table replicas publish into, and how a retired replica's partition folds.
const FOLDS: [Fold; 3] =
    [crate::analytics::FOLD, crate::cas::report::FOLD, Fold { table: HEARTBEATS_BY_REPLICA, merge: merge_beats }];

/// Publishes what this replica observed on its own (analytics, cache counters and costs,
/// heartbeats) and takes in the heartbeats the others received; the lease holder also folds
/// away replicas that are gone ([`peers::RETIRE_AFTER`]). Run every [`PUBLISH_EVERY`] and at
/// shutdown; does nothing on the embedded backend.
pub fn exchange(d: &crate::Daena) -> AppResult<()> {
    let Some(r) = d.replicas() else { return Ok(()) };
    let analytics = d.monitoring().analytics().publish();
    let cas = crate::cas::report::publish(d);
    let agents = d.governance().agents();
    let beats = if agents.take_unpublished() {
        r.peers.publish(HEARTBEATS_BY_REPLICA, &agents.latest()).inspect_err(|_| agents.mark_unpublished())
    } else {
        Ok(())
    };
    for (tenant, beats) in r.peers.others::<Beats>(HEARTBEATS_BY_REPLICA) {
        agents.absorb(&tenant, &beats);
    }
    let read = d.memory().take_unpublished_access();
    let access = r.access.publish_access(&read).map(|_| ()).map_err(shared_err("publishing access statistics"));
    if access.is_err() {
        d.memory().unpublish_access(read);
    }
    let touched = r.peers.touch();
    let retired = if d.leads() { r.peers.retire_due(&FOLDS).map(|_| ()) } else { Ok(()) };
    analytics.and(cas).and(beats).and(access).and(touched).and(retired)
}

/// Puts the deployment's shared `keys/<name>` into this data directory: the stored one, or
/// `make()` stored by the first replica. Refuses a directory holding another deployment's.
fn adopt(data: &DataDir, url: &str, name: &str, make: impl FnOnce() -> Vec<u8> + Send) -> AppResult<()> {
    let shared = pg::shared_file(url, &format!("keys/{name}"), make).map_err(shared_err("reading a shared key"))?;
    let path = data.keys_dir().join(name);
    match read_optional(&path)? {
        Some(local) if local.as_bytes() == shared.as_slice() => Ok(()),
        Some(_) => Err(AppError::unavailable(format!(
            "{} differs from the deployment's in PostgreSQL: this data directory belongs to another deployment \
             (start the replica on an empty data directory)",
            path.display()
        ))),
        None => Ok(write_atomic(&path, &shared, true)?),
    }
}

/// Refuses an operation that works on one data directory only when replicas share the
/// deployment, naming what to use instead.
pub fn single_node_only(config: &Config, what: &str) -> AppResult<()> {
    if config.storage.backend == StorageBackend::Postgres {
        return Err(AppError::invalid(format!(
            "{what} works on the embedded backend only; with storage.backend = \"postgres\" back up and restore \
             PostgreSQL itself (pg_dump / pg_restore, or point-in-time recovery), from which every replica \
             rebuilds its data directory"
        )));
    }
    Ok(())
}

/// `/health` checks of a replica: PostgreSQL (critical: nothing can be acknowledged without
/// it), Redis (degraded: the limits fall back to this replica's own) and the replica itself
/// (degraded when it was retired; the seeds new replicas start from).
pub fn health_checks(r: &Replicas, limiter: &crate::ratelimit::RateLimiter, config: &Config) -> Vec<(String, Check)> {
    let postgres = match r.docs.status() {
        Ok(pg::PgStatus { encrypted, kept, head }) => {
            let (status, state) = if kept == head {
                (CheckStatus::Pass, format!("the state it keeps is at the chain's head (entry {head})"))
            } else {
                (
                    CheckStatus::Warn,
                    format!(
                        "the state it keeps is at entry {kept} of the chain's {head}: the next write or a replica's \
                         start rebuilds it from that replica's copy"
                    ),
                )
            };
            Check::new(
                status,
                true,
                format!(
                    "the shared ledger and keys answer at {} over {} (deployment {}, replica {}); {state}",
                    pg::redact_url(&r.url),
                    if encrypted { "TLS" } else { "an unencrypted connection" },
                    r.deployment,
                    r.replica
                ),
            )
        }
        Err(e) => Check::new(CheckStatus::Fail, true, format!("PostgreSQL does not answer: {e}; writes are refused")),
    };
    let redis = match limiter.probe_shared() {
        None => Check::new(
            CheckStatus::Warn,
            false,
            format!(
                "no storage.redis_url: each replica applies the tenant rate limits on its own; {}",
                r.head.describe()
            ),
        ),
        Some(Ok(())) => Check::new(
            CheckStatus::Pass,
            false,
            format!("tenant rate limits are shared by the replicas through Redis; {}", r.head.describe()),
        ),
        Some(Err(e)) => Check::new(
            CheckStatus::Fail,
            false,
            format!(
                "Redis does not answer ({e}): each replica limits on its own and reads take the barrier \
                 (PostgreSQL) until it is back"
            ),
        ),
    };
    let replica = if r.peers.retired() {
        Check::new(
            CheckStatus::Fail,
            false,
            format!(
                "replica {} was retired while it was cut off: its figures are no longer published; restart it on \
                 an empty data directory",
                r.replica
            ),
        )
    } else {
        Check::new(CheckStatus::Pass, false, format!("replica {}; {}", r.replica, seed::describe(config)))
    };
    vec![("postgres".to_owned(), postgres), ("redis".to_owned(), redis), ("replica".to_owned(), replica)]
}
