//! The shared services replicas lean on, against the real PostgreSQL and Redis: fleet-wide
//! GCRA in Redis, the schedulers' lease, schema migrations, TLS and multi-document swaps.

use daena_store::pg::{self, Lease, TestDatabase};
use daena_store::redis_limits::{SharedDecision, SharedLimits};

const REDIS: &str = "redis://127.0.0.1:6379/";

fn prefix() -> String {
    format!("daena-test:{}:{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}

/// One request per minute, bursts of `burst`: nothing refills during a test.
const MINUTE: i64 = 60_000_000;

fn allowed(limits: &SharedLimits, tenant: &str, burst: u32, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            matches!(limits.decide(tenant, MINUTE, burst).expect("redis answers"), SharedDecision::Allow { .. })
        })
        .count()
}

#[test]
fn a_burst_holds_across_replicas_and_tenants_stay_apart() {
    let p = prefix();
    let (a, b) = (SharedLimits::new(REDIS, &p).expect("a"), SharedLimits::new(REDIS, &p).expect("b"));
    let granted = allowed(&a, "acme", 10, 6) + allowed(&b, "acme", 10, 6) + allowed(&a, "acme", 10, 6);
    assert_eq!(granted, 10, "two replicas share one burst of 10");
    match b.decide("acme", MINUTE, 10).expect("decide") {
        SharedDecision::Deny { retry_after, .. } => {
            assert!(retry_after > 0 && retry_after <= MINUTE, "retry after {retry_after} µs")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(allowed(&a, "globex", 3, 5), 3, "another tenant has its own burst");
    let other_deployment = SharedLimits::new(REDIS, &prefix()).expect("c");
    assert_eq!(allowed(&other_deployment, "acme", 2, 3), 2, "another deployment's keys are apart");
    a.reset("acme").expect("reset");
    assert_eq!(allowed(&b, "acme", 10, 12), 10, "a changed limit starts from its whole burst");
}

#[test]
fn redis_down_fails_fast_and_says_so() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let limits = SharedLimits::new(&format!("redis://127.0.0.1:{port}/"), &prefix()).expect("client");
    let started = std::time::Instant::now();
    assert!(limits.decide("acme", MINUTE, 10).is_err());
    assert!(limits.decide("acme", MINUTE, 10).is_err(), "and the next call does not wait for it again");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(limits.is_down().is_some(), "it reports being down");
    assert!(limits.probe().is_err());
}

#[test]
fn one_replica_holds_the_lease_and_a_gone_holder_frees_it() {
    let db = TestDatabase::create();
    let (a, b) = (Lease::new(&db.url), Lease::new(&db.url));
    assert!(a.hold(), "a free lease is taken");
    assert!(a.hold(), "and kept");
    assert!(!b.hold(), "while another replica holds it");
    drop(a);
    // PostgreSQL frees a session lock when its connection ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !b.hold() {
        assert!(std::time::Instant::now() < deadline, "the lease was not freed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let db = TestDatabase::create();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..3).map(|_| s.spawn(|| pg::migrate(&db.url))).collect();
        for r in runs {
            r.join().expect("thread").expect("replicas migrating at once all succeed");
        }
    });
    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).expect("connect");
    let versions: i64 = c.query_one("select count(*) from daena_schema", &[]).expect("count").get(0);
    assert_eq!(versions, i64::from(pg::SCHEMA_VERSION), "each migration applied once");
    c.execute("insert into daena_schema (version) values ($1)", &[&(pg::SCHEMA_VERSION + 1)]).expect("bump");
    let err = pg::migrate(&db.url).expect_err("a newer schema");
    assert!(err.to_string().contains("newer than this build"), "{err}");
}

/// The server's TLS setting and certificate file, asked as the superuser the tests connect as.
fn server_tls(url: &str) -> (bool, String) {
    pg::off_runtime(|| {
        let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
        let on: String = c.query_one("show ssl", &[]).expect("show ssl").get(0);
        let cert: String = c.query_one("show ssl_cert_file", &[]).expect("show ssl_cert_file").get(0);
        (on == "on", cert)
    })
}

#[test]
fn tls_follows_sslmode_as_libpq_reads_it() {
    let db = TestDatabase::create();
    let with = |query: &str| format!("{}?{query}", db.url);
    let plain = pg::PgDocs::open(&db.url).expect("plain connection");
    assert!(!plain.encrypted().expect("tls state"), "no sslmode: not encrypted");
    let bad = pg::PgDocs::open(&with("sslmode=maybe")).expect_err("an unknown sslmode");
    assert!(bad.to_string().contains("sslmode=maybe is not one of"), "{bad}");
    let (on, cert) = server_tls(&db.url);
    if !on {
        eprintln!("this PostgreSQL has ssl = off: checking only that sslmode=require refuses to go on without TLS");
        assert!(pg::PgDocs::open(&with("sslmode=require")).is_err());
        return;
    }
    let required = pg::PgDocs::open(&with("sslmode=require")).expect("require");
    assert!(required.encrypted().expect("tls state"), "sslmode=require: encrypted");
    // The local server's certificate is self-signed for its host name: against the system's
    // roots it is either not trusted or (where the system trusts it) not for 127.0.0.1.
    let refused = pg::PgDocs::open(&with("sslmode=verify-full")).expect_err("a certificate that does not verify");
    assert!(refused.to_string().to_lowercase().contains("certificate"), "{refused}");
    // Trusting the server's own certificate: verify-ca accepts it; verify-full also wants the
    // name, and the tests connect to 127.0.0.1, which the certificate does not name.
    let root = format!("sslrootcert={cert}");
    let ca =
        pg::PgDocs::open(&with(&format!("sslmode=verify-ca&{root}"))).expect("verify-ca with the server's certificate");
    assert!(ca.encrypted().expect("tls state"));
    let named =
        pg::PgDocs::open(&with(&format!("sslmode=verify-full&{root}"))).expect_err("a certificate for another name");
    assert!(named.to_string().to_lowercase().contains("name"), "{named}");
}

#[test]
fn swap_many_writes_all_or_nothing_and_replicas_never_lose_an_update() {
    use daena_store::kv::doc_table;
    use daena_store::pg::PgDocs;
    use daena_store::state::DocStore;
    const T: daena_store::state::DocTable = doc_table("swap_many");
    let db = TestDatabase::create();
    pg::migrate(&db.url).expect("migrate");
    let docs = PgDocs::open(&db.url).expect("docs");
    docs.put_docs(T, &[("a", b"1"), ("b", b"2")]).expect("put");

    // A stale expectation writes nothing, not even the changes it would have made first.
    let stale = [(T, "a", Some(&b"1"[..])), (T, "b", Some(&b"9"[..]))];
    assert!(!docs.swap_many(&stale, &[(T, "c", Some(b"3")), (T, "a", None)]).expect("swap"));
    assert_eq!(docs.scan_docs(T).expect("scan").len(), 2);
    // A current one (an absent document included) writes and deletes all at once.
    let current = [(T, "a", Some(&b"1"[..])), (T, "c", None)];
    assert!(docs.swap_many(&current, &[(T, "c", Some(b"3")), (T, "a", None)]).expect("swap"));
    let keys: Vec<String> = docs.scan_docs(T).expect("scan").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["b", "c"]);

    // Two replicas adding to one counter by read, then swap: every increment lands once.
    docs.put_docs(T, &[("n", b"0")]).expect("put");
    let add = |docs: &PgDocs, times: usize| {
        for _ in 0..times {
            loop {
                let old = docs.get_doc(T, "n").expect("get").expect("present");
                let n: u64 = std::str::from_utf8(&old).expect("utf8").parse().expect("number");
                let new = (n + 1).to_string();
                if docs.swap_many(&[(T, "n", Some(&old))], &[(T, "n", Some(new.as_bytes()))]).expect("swap") {
                    break;
                }
            }
        }
    };
    let other = PgDocs::open(&db.url).expect("docs");
    std::thread::scope(|s| {
        s.spawn(|| add(&docs, 50));
        s.spawn(|| add(&other, 50));
    });
    assert_eq!(docs.get_doc(T, "n").expect("get").as_deref(), Some(&b"100"[..]));
}

/// The chain head in Redis only ever rises, and each deployment has its own.
#[test]
fn the_head_in_redis_only_rises() {
    let p = prefix();
    let (a, b) = (SharedLimits::new(REDIS, &p).expect("a"), SharedLimits::new(REDIS, &p).expect("b"));
    assert_eq!(a.head().expect("head"), None, "nothing published yet");
    assert_eq!(a.publish_head(7).expect("publish"), 7);
    assert_eq!(b.publish_head(5).expect("a late publisher"), 7, "a lower head does not replace a higher one");
    assert_eq!(b.head().expect("head"), Some(7));
    assert_eq!(b.publish_head(9).expect("publish"), 9);
    assert_eq!(a.head().expect("head"), Some(9));
    assert_eq!(SharedLimits::new(REDIS, &prefix()).expect("c").head().expect("head"), None, "another deployment");
}

/// The fence over the head in Redis: a new deployment starts with it up; raising it tells
/// how long until every lease taken before it went up has run out; it is lowered only at the
/// epoch it was read at; and the chain refuses a writer that does not keep it.
#[test]
fn the_fence_waits_out_leases_and_lowers_only_where_it_was_read() {
    use std::time::Duration;
    let db = TestDatabase::create();
    pg::migrate(&db.url).expect("migrate");
    let fence = pg::HeadFence::open(&db.url);
    let lease = Duration::from_millis(800);
    let start = fence.state(Duration::ZERO).expect("state");
    assert!(start.raised && start.quiet, "{start:?}");
    assert_eq!(start.head, 0, "an empty chain");
    assert!(!fence.state(Duration::from_secs(60)).expect("state").quiet, "touched at the migration");
    // Raising it when up waits only for what is left since it went up.
    assert!(fence.raise(lease).expect("raise") <= lease);
    assert!(fence.lower(start.epoch - 1).is_ok_and(|lowered| !lowered), "a stale epoch lowers nothing");
    assert!(!fence.lower(start.epoch).expect("lower"), "raised again since that read: stays up");
    assert!(fence.is_raised().expect("raised"));
    let now = fence.state(Duration::ZERO).expect("state");
    assert!(fence.lower(now.epoch).expect("lower"));
    assert!(!fence.is_raised().expect("raised"));
    // Raised from down: the whole lease to wait.
    let wait = fence.raise(lease).expect("raise");
    assert!(wait > lease - Duration::from_millis(200) && wait <= lease, "{wait:?}");
    std::thread::sleep(Duration::from_millis(300));
    let again = fence.raise(lease).expect("raise");
    assert!(again <= wait - Duration::from_millis(250), "only what is left: {again:?} after {wait:?}");

    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).expect("connect");
    let err = c.execute("insert into daena_ledger (seq, line) values (1, 'x')", &[]).expect_err("no writer version");
    assert!(format!("{err:?}").contains("older than schema version 5"), "{err:?}");
}

/// A Redis restarted (here: a private server stopped and started again on its port) changes
/// the generation, so what was read from it before is known to be possibly gone.
#[test]
fn a_restarted_redis_changes_the_generation() {
    let mut server = daena_store::test_redis::TestRedis::start();
    let limits = SharedLimits::new(&server.url, &prefix()).expect("client");
    limits.publish_head(5).expect("publish");
    let g0 = limits.generation();
    assert_eq!(limits.head().expect("head"), Some(5));
    assert_eq!(limits.generation(), g0, "nothing changed");
    server.restart();
    // The pooled connection breaks (a failure), or a new one reaches the new process.
    let mut head = limits.head();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while head.is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        head = limits.head();
    }
    assert_eq!(head.expect("the new server answers"), None, "the restarted server lost the head");
    assert!(limits.generation() > g0, "the restart changed the generation");
    let g1 = limits.generation();
    assert_eq!(limits.head().expect("head"), None);
    assert_eq!(limits.generation(), g1, "and stays put while the server does");
}

/// The fleet's access statistics only rise, and only records the chain holds get any: a
/// statistic never outlives its record. They say from when they count.
#[test]
fn the_fleet_access_statistics_only_rise_and_need_their_record() {
    let db = TestDatabase::create();
    pg::migrate(&db.url).expect("migrate");
    db.execute("insert into daena_records (addr, row) values ('\\x01', '\\x00'), ('\\x02', '\\x00')");
    let (a, b) = (pg::FleetAccess::new(&db.url), pg::FleetAccess::new(&db.url));
    assert_eq!(a.since(10).expect("since"), 10, "the first to ask says when they began");
    assert_eq!(b.since(20).expect("since"), 10, "and it stays");
    let row = |addr: u8, last: i64, reads: u64| (vec![addr], (last, reads));
    assert_eq!(a.publish_access(&[row(1, 100, 3), row(3, 100, 1)]).expect("publish"), 1, "no record 3");
    assert_eq!(b.publish_access(&[row(1, 50, 9), row(2, 70, 1)]).expect("publish"), 2);
    let fleet = b.fleet_access(&[vec![1], vec![2], vec![3]]).expect("read");
    assert_eq!(fleet.get(&vec![1]), Some(&100), "an older read elsewhere does not lower it");
    assert_eq!(fleet.get(&vec![2]), Some(&70));
    assert_eq!(fleet.get(&vec![3]), None);
    let addrs: Vec<Vec<u8>> = (0..2500u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let many: Vec<(Vec<u8>, (i64, u64))> = addrs.iter().map(|a| (a.clone(), (1, 1))).collect();
    db.execute("insert into daena_records (addr, row) select int4send(i), '\\x00' from generate_series(0, 2499) i");
    assert_eq!(a.publish_access(&many).expect("publish"), 2500, "pages of a thousand");
    assert_eq!(a.fleet_access(&addrs).expect("read").len(), 2500);
}
