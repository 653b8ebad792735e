//! Tests of the keyring.

use super::*;

fn clock() -> Arc<dyn daena_base::clock::Clock> {
    daena_base::clock::ManualClock::new(Micros(1))
}

fn ring(master: [u8; 32]) -> (tempfile::TempDir, Keyring) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kv = Kv::open(&tmp.path().join("state.redb"), 1 << 20).expect("kv");
    (tmp, Keyring::load(kv, MasterKey::from_bytes(master, "test"), clock()).expect("ring"))
}

#[test]
fn master_key_formats() {
    let key = [7u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    assert_eq!(parse_master_key(&b64, "k").expect("base64"), key);
    assert_eq!(parse_master_key(&hex::encode(key), "k").expect("hex"), key);
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    assert_eq!(parse_master_key(&url, "k").expect("url-safe"), key);
    for bad in ["", "short", "default-key-change-in-production", &hex::encode([1u8; 31])] {
        let e = parse_master_key(bad, "DAENA_MEMORY_AES_KEY").expect_err("refused");
        assert!(e.message.contains("32 bytes"));
        assert!(bad.is_empty() || !e.message.contains(bad), "the value is not echoed");
    }
}

#[test]
fn seal_open_and_binding() {
    let (_t, ring) = ring([1u8; 32]);
    let acme = TenantId::new("acme").expect("tenant");
    let other = TenantId::new("globex").expect("tenant");
    let addr = record_address("acme", "chat", "k1");
    let env = ring.seal(&acme, &addr, Codec::Zstd, b"secret payload").expect("seal");
    assert!(!env.windows(6).any(|w| w == b"secret"));
    assert_eq!(ring.open(&acme, &addr, &env).expect("open"), (Codec::Zstd, b"secret payload".to_vec()));
    assert!(ring.open(&acme, &record_address("acme", "chat", "k2"), &env).is_err(), "bound to the address");
    assert!(ring.open(&other, &addr, &env).is_err(), "bound to the tenant's key");
    let mut tampered = env.clone();
    tampered[3] = 0;
    assert!(ring.open(&acme, &addr, &tampered).is_err(), "header is authenticated");
}

#[test]
fn wrong_master_key_refuses_to_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("state.redb");
    {
        let ring = Keyring::load(Kv::open(&path, 1 << 20).expect("kv"), MasterKey::from_bytes([1u8; 32], "a"), clock())
            .expect("ring");
        ring.seal(&TenantId::new("acme").expect("t"), b"x", Codec::Raw, b"y").expect("seal");
    }
    let err = Keyring::load(
        Kv::open(&path, 1 << 20).expect("kv"),
        MasterKey::from_bytes([2u8; 32], "DAENA_MEMORY_AES_KEY"),
        clock(),
    )
    .expect_err("wrong key");
    assert!(err.message.contains("not the one"), "{}", err.message);
    let ring = Keyring::load(Kv::open(&path, 1 << 20).expect("kv"), MasterKey::from_bytes([1u8; 32], "a"), clock())
        .expect("right key");
    assert_eq!(ring.master_id(), key_id(&[1u8; 32]));
}

#[test]
fn retiring_older_versions_leaves_the_current_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("state.redb");
    let master = || MasterKey::from_bytes([3u8; 32], "test");
    let acme = TenantId::new("acme").expect("tenant");
    let addr = record_address("acme", "chat", "k1");
    let (old, new) = {
        let ring = Keyring::load(Kv::open(&path, 1 << 20).expect("kv"), master(), clock()).expect("ring");
        let old = ring.seal(&acme, &addr, Codec::Raw, b"v1").expect("seal v1");
        assert_eq!(ring.new_data_key_versions().expect("new versions"), 1);
        let new = ring.seal(&acme, &addr, Codec::Raw, b"v2").expect("seal v2");
        assert_eq!(parse_header(&new).expect("header").1, 2);
        assert_eq!(ring.older_versions().expect("older"), vec![("acme".to_owned(), 2, 1)]);
        assert_eq!(ring.retire_below("acme", 2).expect("retire"), 1);
        assert_eq!(ring.retire_below("acme", 2).expect("again"), 0, "idempotent");
        assert_eq!(ring.retire_below("acme", 9).expect("past current"), 0, "the current version stays");
        assert!(ring.open(&acme, &addr, &old).is_err(), "the retired version is gone");
        assert!(ring.older_versions().expect("older").is_empty());
        (old, new)
    };
    let ring = Keyring::load(Kv::open(&path, 1 << 20).expect("kv"), master(), clock()).expect("reopen");
    assert!(ring.open(&acme, &addr, &old).is_err(), "gone after a reopen too");
    assert_eq!(ring.open(&acme, &addr, &new).expect("current").1, b"v2".to_vec());
    assert_eq!(parse_header(&ring.seal(&acme, &addr, Codec::Raw, b"v3").expect("seal")).expect("h").1, 2);
}
