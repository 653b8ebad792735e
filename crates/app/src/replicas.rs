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
use daena_store::datadir::{DataDir, read_optional, write_atomic};
use daena_store::kv::{DocTable, decode_doc, encode_doc};
use daena_store::pg::{self, Lease, PgDocs};
use daena_store::redis_limits::SharedLimits;
use daena_store::state::DocStore;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a replica publishes what it observed on its own.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);
/// How long the other replicas' published figures are reused before they are read again.
const PEERS_FRESH: Duration = Duration::from_secs(1);

pub struct Replicas {
    pub url: String,
    /// This deployment's id (shared by its replicas; names its Redis keys).
    pub deployment: String,
    /// This replica's id (names its cold segment directory under `storage.l3_path`).
    pub replica: String,
    pub docs: Arc<PgDocs>,
    pub lease: Lease,
    pub limits: Option<Arc<SharedLimits>>,
    pub peers: Arc<Peers>,
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
    /// into `data`; `None` for the embedded backend.
    pub fn open(config: &Config, data: &DataDir, master_from_env: bool) -> AppResult<Option<Replicas>> {
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
        let peers = Arc::new(Peers { docs: docs.clone(), replica: replica.clone(), read: Mutex::default() });
        Ok(Some(Replicas { lease: Lease::new(&url), url, deployment, replica, docs, limits, peers }))
    }

    /// Where this replica keeps its cold segments.
    pub fn cold_dir(&self, config: &Config, data: &DataDir) -> PathBuf {
        match &config.storage.l3_path {
            Some(path) => path.join(format!("replica-{}", self.replica)),
            None => data.l3_dir(),
        }
    }

    /// Whether this replica runs the schedulers now.
    pub fn leads(&self) -> bool {
        self.lease.hold()
    }
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
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("replica", &self.replica).finish()
    }
}

impl Peers {
    /// Publishes this replica's documents `(key, value)` of `table`, replacing its earlier ones.
    pub fn publish<T: Serialize>(&self, table: DocTable, docs: &[(String, T)]) -> AppResult<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let encoded = docs
            .iter()
            .map(|(key, doc)| Ok((format!("{}/{key}", self.replica), encode_doc(doc)?)))
            .collect::<Result<Vec<_>, daena_store::StoreError>>()?;
        let items: Vec<(&str, &[u8])> = encoded.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        self.docs.put_docs(table, &items).map_err(shared_err("publishing this replica's figures"))
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
}

/// Each replica's agent heartbeats, published for the others.
const HEARTBEATS_BY_REPLICA: DocTable = daena_store::kv::doc_table("heartbeats_by_replica");

/// Publishes what this replica observed on its own (analytics, cache counters and costs,
/// heartbeats) and takes in the heartbeats the others received. Run every
/// [`PUBLISH_EVERY`] and at shutdown; does nothing on the embedded backend.
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
    for (tenant, beats) in
        r.peers.others::<std::collections::BTreeMap<String, daena_core::time::Micros>>(HEARTBEATS_BY_REPLICA)
    {
        agents.absorb(&tenant, &beats);
    }
    analytics.and(cas).and(beats)
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
/// it) and Redis (degraded: the limits fall back to this replica's own).
pub fn health_checks(r: &Replicas, limiter: &crate::ratelimit::RateLimiter) -> Vec<(String, Check)> {
    let postgres = match r.docs.probe().and_then(|()| r.docs.encrypted()) {
        Ok(encrypted) => Check::new(
            CheckStatus::Pass,
            true,
            format!(
                "the shared ledger and keys answer at {} over {} (deployment {}, replica {})",
                pg::redact_url(&r.url),
                if encrypted { "TLS" } else { "an unencrypted connection" },
                r.deployment,
                r.replica
            ),
        ),
        Err(e) => Check::new(CheckStatus::Fail, true, format!("PostgreSQL does not answer: {e}; writes are refused")),
    };
    let redis = match limiter.probe_shared() {
        None => Check::new(
            CheckStatus::Warn,
            false,
            "no storage.redis_url: each replica applies the tenant rate limits on its own",
        ),
        Some(Ok(())) => {
            Check::new(CheckStatus::Pass, false, "tenant rate limits are shared by the replicas through Redis")
        }
        Some(Err(e)) => Check::new(
            CheckStatus::Fail,
            false,
            format!("Redis does not answer ({e}): each replica limits on its own until it is back"),
        ),
    };
    vec![("postgres".to_owned(), postgres), ("redis".to_owned(), redis)]
}
