//! The command line: one definition per flag, help text and examples on every command.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  DAENA_OPS_KEY=ops-key daena serve            run on ./data with the embedded store
  daena config check                           validate config/ without starting
  daena keys create --name legal-bots --role agent --tenant acme --roles legal.officer
  daena keys list --json

Environment:
  DAENA_DATA_DIR, DAENA_CONFIG_DIR   where state and config live (./data, ./config)
  DAENA_URL, DAENA_API_KEY           a running server and an ops key, used when the data
                                     directory is held by that server
  DAENA_OPS_KEY                      provisions an ops key when the server starts
  DAENA_<SECTION>_<KEY>              any config key, e.g. DAENA_SERVER_LISTEN";

#[derive(Debug, Parser)]
#[command(
    name = "daena",
    version,
    about = "Memory, LLM cache and governance for fleets of AI agents",
    long_about = "Daena serves the memory, LLM-cache and governance API (`daena serve`) and carries every \
                  operational command. Commands that change state work against a running server through \
                  its admin API when the data directory is held by it, and directly on a stopped data \
                  directory otherwise.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Config directory holding daena.toml, memory_config.yaml and policy_config.yaml
    /// [env: DAENA_CONFIG_DIR; default ./config]
    #[arg(long, global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Data directory [env: DAENA_DATA_DIR; default ./data]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// URL of a running server, for commands that go through its admin API
    /// [default: the address in the data directory's lock file, else http://127.0.0.1:8000]
    #[arg(long, global = true, env = "DAENA_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Ops API key for a running server
    #[arg(long, global = true, env = "DAENA_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (port 8000 by default)
    #[command(after_help = "Example:\n  DAENA_OPS_KEY=ops-key daena serve --listen 127.0.0.1:8000 --log-format json")]
    Serve(ServeArgs),
    /// Validate or show the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage API keys (works online through the admin API or offline on the data directory)
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify, export and checkpoint the Merkle ledger
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Inspect the LLM cache
    #[command(subcommand)]
    Cas(CasCommand),
    /// Apply the memory aging rules now (tighten, archive to L3, expire by retention)
    #[command(subcommand)]
    Aging(AgingCommand),
    /// Consistent snapshots of the whole state: create (also while serving), list, restore
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// The master (key-encryption) key: rotate and validate
    #[command(subcommand)]
    Key(KeyCommand),
    /// Portable logical backups: decrypted records as JSON lines, zstd-compressed
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Evidence for auditors
    #[command(subcommand)]
    Governance(GovernanceCommand),
    /// Point-in-time recovery: the newest snapshot at or before the point plus the ledger up
    /// to it; the current state is kept aside, never deleted
    #[command(
        after_help = "Examples:\n  DAENA_API_KEY=ops-key daena rollback --to 120533     # the running server\n  \
                            daena rollback --to 2026-11-28T09:30:00Z --json      # a stopped data directory\n\n\
                            A running server stops serving (503) for the rollback and serves the result. Entries after \
                            the point, and the state before the rollback, are moved to <data>/replaced/<time>/. API keys \
                            created after the snapshot are not restored. The rollback is ledgered as ops.rollback."
    )]
    Rollback {
        /// A ledger sequence number, or an RFC 3339 time (the last entry at or before it)
        #[arg(long, value_name = "SEQ|TIME")]
        to: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Rebuild the state from a snapshot and a ledger's entries after it (up to --to); the
    /// current state is kept aside, never deleted
    #[command(
        after_help = "Examples:\n  daena replay --ledger /mnt/offsite/ledger --from-snapshot /mnt/offsite/daena-snapshot-...tar.zst\n  \
                            daena replay --ledger data/replaced/20261128T101500Z/ledger --to 4200\n\n\
                            The ledger must continue the snapshot (its entry at the snapshot's position has the snapshot's \
                            head hash). Without --from-snapshot, the newest snapshot in <data>/snapshots at or before the \
                            point is used. A running server stops serving (503) for the replay; give it absolute \
                            paths it can read."
    )]
    Replay {
        /// A ledger directory (segments)
        #[arg(long, value_name = "DIR")]
        ledger: PathBuf,
        /// A snapshot archive to start from
        #[arg(long, value_name = "FILE")]
        from_snapshot: Option<PathBuf>,
        /// The last entry to apply: a sequence number or an RFC 3339 time [default: the ledger's end]
        #[arg(long, value_name = "SEQ|TIME")]
        to: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Disaster-recovery drill: snapshot, restore into a scratch directory, verify, report
    /// RTO and RPO in drill_report.json; ledgered; exit 1 when a check fails
    #[command(
        after_help = "Examples:\n  DAENA_API_KEY=ops-key daena drill             # against the running server\n  \
                            daena drill --out /var/log/daena/drill_report.json --samples 500 --json"
    )]
    Drill(DrillArgs),
    /// Show the effective ABAC policy per class and explain a decision
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the runbook's daily, weekly or monthly checklist against a running server:
    /// a PASS/WARN/FAIL table, exit 1 on any FAIL
    #[command(after_help = "Examples:\n  DAENA_API_KEY=ops-key daena runbook daily\n  \
                            daena runbook weekly --url http://daena-1:8000 --json | jq '.checks[] | select(.status != \"PASS\")'\n\n\
                            Thresholds are the server's own (memory_config.yaml slo.*): CAS hit rate, L1/L2 p95, \
                            error rate, divergence; 48 active agents.")]
    Runbook {
        #[arg(value_enum)]
        cadence: Cadence,
    },
    /// Drive realistic traffic from the 6×8 agent fleet against a running server
    #[command(after_help = SIMULATE_HELP)]
    Simulate(SimulateArgs),
    /// Read or flip the read-only switch of a running server (the runbook's "stop writes")
    #[command(after_help = "Examples:\n  daena writes off     # writes get 503 writes_disabled, reads continue\n  \
                            daena writes on\n  daena writes status --json\n\n\
                            To start read-only instead, set DAENA_NBMF_ENABLED=false before `daena serve`.")]
    Writes {
        #[arg(value_enum)]
        action: WritesAction,
    },
}

const SIMULATE_HELP: &str = "\
The simulator runs a scripted OpenAI-compatible model on --upstream-listen and refuses to send
LLM traffic to any other upstream, so start the server pointing at it:

  DAENA_OPS_KEY=ops-key DAENA_LLM_UPSTREAM_URL=http://127.0.0.1:18099/v1 daena serve
  daena simulate --url http://127.0.0.1:8000 --api-key ops-key --agents 48 --duration 60s --seed 7
  daena simulate --api-key ops-key --duration 5m --rate 0.5 --json > simulation.json
  daena simulate --api-key ops-key --no-llm          # memory, heartbeats and interactions only

Before the live run it reports --history minutes of past interactions so anomaly detection has a
baseline; halfway through, one agent turns slow and failing, and the summary says whether the
server flagged it. The default pace (0.25 actions/s per agent, ~14 requests/s for 48 agents)
stays under the default tenant limit of 1000 requests/minute; 429s are counted as refused.
Exit 1 when requests failed (transport errors or 5xx).";

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// How many agents of the fleet take part, in department then role order
    #[arg(long, default_value_t = 48)]
    pub agents: usize,
    /// How long the live run lasts: 60s, 5m, 1h ...
    #[arg(long, default_value = "60s", value_parser = crate::commands::simulate::parse_duration)]
    pub duration: std::time::Duration,
    /// Seed of the traffic mix (printed, so a run can be repeated) [default: random]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Actions per second per agent
    #[arg(long, default_value_t = 0.25)]
    pub rate: f64,
    /// Minutes of past interactions to report first, as the anomaly baseline (0: none)
    #[arg(long, default_value_t = 15)]
    pub history: u64,
    /// The tenant to act for (sent as X-Tenant-ID; needs an ops key) [default: the key's]
    #[arg(long)]
    pub tenant: Option<String>,
    /// Where the scripted LLM upstream listens
    #[arg(long, default_value = "127.0.0.1:18099", value_name = "ADDR")]
    pub upstream_listen: String,
    /// Send no LLM traffic (no upstream needed)
    #[arg(long)]
    pub no_llm: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Wrap every tenant data key under a new master key, in one transaction, while serving
    /// (records are not re-encrypted: the data keys stay). With keys/master.key the new key is
    /// generated and the old one kept in keys/retired/ for older snapshots; with
    /// DAENA_MEMORY_AES_KEY, stop the server and give the new key in DAENA_MEMORY_AES_KEY_NEW
    #[command(
        after_help = "Examples:\n  DAENA_API_KEY=ops-key daena key rotate --dry-run\n  DAENA_API_KEY=ops-key daena key rotate\n  \
                            DAENA_MEMORY_AES_KEY_NEW=$(openssl rand -base64 32) daena key rotate   # stopped server, env key"
    )]
    Rotate {
        /// Only count what would be re-wrapped
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the rotation chain, that every data key is under the current master key, and that
    /// every record reads; exit 1 otherwise
    #[command(after_help = "Example:\n  DAENA_API_KEY=ops-key daena key validate --json")]
    Validate,
    /// Seal every record, compression dictionary and LLM cache entry still under an older
    /// data key version again, under its tenant's current one, then retire the older versions:
    /// finishes a rotation a crash interrupted (`key validate` counts what is left)
    #[command(after_help = "Example:\n  DAENA_API_KEY=ops-key daena key reseal && daena key validate")]
    Reseal,
    /// Crypto-shred a tenant: destroy its data keys so its records can never be read again
    /// (they and the ledger stay; the ledger still verifies). Cannot be undone. Snapshots
    /// taken before still hold the wrapped keys: delete them too
    #[command(after_help = "Example:\n  DAENA_API_KEY=ops-key daena key shred --tenant acme --confirm acme")]
    Shred {
        #[arg(long)]
        tenant: String,
        /// The tenant id again
        #[arg(long, value_name = "TENANT")]
        confirm: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Write every record (of one tenant, or all) to <out>/legacy_archive_<UTC time>.json.zst;
    /// the archive holds plaintext
    #[command(after_help = "Examples:\n  DAENA_API_KEY=ops-key daena archive export --out /mnt/backup\n  \
                            daena archive export --tenant acme --json")]
    Export {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
    },
    /// Check an archive: format, every record's content hash, the trailer's count and hash
    #[command(after_help = "Example:\n  daena archive verify legacy_archive_20261128T101500Z.json.zst")]
    Verify { file: PathBuf },
    /// Verify an archive and its signature, then write its records (as intended revisions)
    /// into this Daena; records of quarantined classes land in quarantine, and only an archive
    /// signed by this deployment promotes those it holds promoted
    #[command(
        after_help = "Example:\n  DAENA_API_KEY=ops-key daena archive import legacy_archive_20261128T101500Z.json.zst"
    )]
    Import {
        file: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
    },
}

/// Whose signature a restored snapshot or an imported archive must carry.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// Accept a backup that is unsigned or not signed by the expected key (an imported
    /// archive's quarantined classes then stay in quarantine)
    #[arg(long)]
    pub trust_unsigned: bool,
    /// Trust backups signed by this other deployment's key (hex; `daena ledger checkpoint`
    /// shows a deployment's public key) instead of this deployment's
    #[arg(long, value_name = "HEX")]
    pub public_key: Option<String>,
}

impl From<TrustArgs> for daena_app::backup_trust::Trust {
    fn from(t: TrustArgs) -> Self {
        daena_app::backup_trust::Trust { trust_unsigned: t.trust_unsigned, public_key: t.public_key }
    }
}

#[derive(Debug, Subcommand)]
pub enum GovernanceCommand {
    /// Write the ledger manifest, policy summary, newest drill report, key status, a governance
    /// summary and compliance_report.md into one directory
    #[command(
        after_help = "Examples:\n  DAENA_API_KEY=ops-key daena governance artifacts --out-dir /srv/audit/2026-11\n  \
                            daena governance artifacts --json"
    )]
    Artifacts {
        /// Where to write [default: ./governance_artifacts_<UTC time>]
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Where the report goes
    #[arg(long, default_value = "drill_report.json", value_name = "FILE")]
    pub out: PathBuf,
    /// Records read back from the restored copy
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Restore into this (empty or new) directory and keep it [default: a temporary directory, removed]
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Keep the temporary scratch directory
    #[arg(long)]
    pub keep_scratch: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot the state, ledger and L3 at one ledger position into <data>/snapshots/ as
    /// a .tar.zst with a manifest of SHA-256 per file; no key material is archived
    #[command(
        after_help = "Examples:\n  DAENA_API_KEY=ops-key daena snapshot create     # through the running server\n  \
                            daena snapshot create --json | jq .ledger_size        # offline, on a stopped directory"
    )]
    Create,
    /// The snapshots in <data>/snapshots/, oldest first
    #[command(after_help = "Example:\n  daena snapshot list --json")]
    List,
    /// Verify a snapshot (hashes, ledger chain and root, master key) and put it in place of
    /// the state; the replaced state is kept under <data>/replaced/
    #[command(
        after_help = "Examples:\n  DAENA_API_KEY=ops-key daena snapshot restore latest   # the running server\n  \
                            daena snapshot restore data/snapshots/daena-snapshot-20261128T101500Z-00000042.tar.zst\n\n\
                            A running server stops serving (503) while it verifies and swaps, then serves the restored \
                            state; a snapshot that does not verify changes nothing. The master key (DAENA_MEMORY_AES_KEY or keys/master.key) must be \
                            the one the snapshot was sealed under."
    )]
    Restore {
        /// An archive path, or `latest`
        file: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Cadence {
    /// Morning checks: health, latency objectives, CAS hit rate, error rate, agents, growth,
    /// anomalies, rate limits
    Daily,
    /// Governance (policy, ledger), performance (efficiency, cost, communication) and DR
    Weekly,
    /// Key rotation and policy review
    Monthly,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The rules of policy_config.yaml per class as compiled to Cedar; with --explain, the
    /// decision for one caller and the rules that made it
    #[command(after_help = "Examples:\n  daena policy inspect\n  daena policy inspect --class pii --cedar\n  \
                            daena policy inspect --class legal --explain --role finance.analyst --tenant acme --action read")]
    Inspect {
        /// Only this class
        #[arg(long)]
        class: Option<String>,
        /// Decide for the caller given by --role, --tenant and --action (needs --class)
        #[arg(long)]
        explain: bool,
        /// The caller's ABAC roles, comma-separated
        #[arg(long, value_delimiter = ',', requires = "explain")]
        role: Vec<String>,
        /// The caller's tenant
        #[arg(long, default_value = "default", requires = "explain")]
        tenant: String,
        /// read, write, delete or list
        #[arg(long, default_value = "read", requires = "explain")]
        action: String,
        /// Also print the compiled Cedar policies
        #[arg(long)]
        cedar: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WritesAction {
    Status,
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [env: DAENA_LISTEN; default 0.0.0.0:8000]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log format
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate every config layer without starting; exit 1 naming the bad key
    #[command(after_help = "Example:\n  DAENA_CONFIG_DIR=/etc/daena daena config check")]
    Check,
    /// Print the effective configuration (secrets redacted)
    #[command(after_help = "Example:\n  daena config show --json | jq .memory.slo")]
    Show,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its text is printed once and stored only as a hash
    #[command(after_help = "Examples:\n  daena keys create --name ops-oncall --role ops\n  \
                            daena keys create --name legal-bots --role agent --tenant acme --roles legal.officer --department legal\n  \
                            daena keys create --name legal-synth --role agent --tenant acme --agent legal_synth")]
    Create(CreateKeyArgs),
    /// List keys (never their text)
    List,
    /// Revoke a key by id or name; effective immediately, also on a running server
    #[command(after_help = "Example:\n  daena keys revoke key_3f2a9c01be77")]
    Revoke {
        /// Key id or name
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    /// A unique name for the key's holder
    #[arg(long)]
    pub name: String,
    /// ops (everything, any tenant), auditor (read-only governance) or agent (data plane of one tenant)
    #[arg(long, value_parser = ["ops", "auditor", "agent"])]
    pub role: String,
    /// The tenant the key belongs to
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// ABAC roles, comma-separated (e.g. legal.officer,admin)
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// The holder's department (an ABAC attribute)
    #[arg(long)]
    pub department: Option<String>,
    /// Bind the key to one agent of the fleet (e.g. legal_synth): it then writes, confirms
    /// and sends heartbeats only as that agent
    #[arg(long)]
    pub agent: Option<String>,
    /// Grant an auditor key every tenant (X-Tenant-ID); without it an auditor reads its own
    /// tenant only
    #[arg(long)]
    pub all_tenants: bool,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check every entry hash, the chain and the Merkle root against signed checkpoints;
    /// exit 1 naming the first bad sequence number. Read-only: safe while the server runs.
    #[command(after_help = "Examples:\n  daena ledger verify\n  \
                            daena ledger verify --checkpoint /mnt/offsite/checkpoint-2026-11.json --json\n  \
                            daena ledger verify --legacy --ledger .ledger/ledger.jsonl")]
    Verify {
        /// A ledger directory or a single JSONL file [default: <data dir>/ledger, or
        /// .ledger/ledger.jsonl with --legacy]
        #[arg(long, value_name = "FILE|DIR")]
        ledger: Option<PathBuf>,
        /// A checkpoint kept elsewhere (from `ledger checkpoint` or `ledger export`); repeatable
        #[arg(long, value_name = "FILE")]
        checkpoint: Vec<PathBuf>,
        /// Require every checkpoint to be signed by this Ed25519 public key (hex)
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
        /// Verify a ledger written by the original Python Daena
        #[arg(long)]
        legacy: bool,
    },
    /// Write a manifest: entries, Merkle root, first and last hash, newest checkpoint
    #[command(after_help = "Example:\n  daena ledger export --out ledger_chain_$(date +%Y%m).json")]
    Export {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a checkpoint of the current size and write it for safekeeping elsewhere
    #[command(after_help = "Example:\n  daena ledger checkpoint --out /mnt/offsite/daena-checkpoint.json")]
    Checkpoint {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify a legacy Python ledger and record it (count and root) as the genesis of an
    /// empty ledger
    #[command(after_help = "Example:\n  daena ledger import-legacy .ledger/ledger.jsonl")]
    ImportLegacy {
        /// The legacy ledger.jsonl
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgingCommand {
    /// Run the aging rules of memory_config.yaml once; every action is ledgered
    #[command(after_help = "Examples:\n  daena aging run --dry-run     # what would happen\n  daena aging run --json")]
    Run {
        /// Only report what would happen
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CasCommand {
    /// Entries, bytes, hit and near rates, near-hit distances, guard refusals, false-positive
    /// reports, top repeated prompts (hashed), TTL expiry forecast, and advice below 60%
    #[command(after_help = "Examples:\n  daena cas diagnostics\n  daena cas diagnostics --json | jq .cas.hit_rate")]
    Diagnostics,
}
