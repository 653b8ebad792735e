//! Backups of the embedded backend: a cut written into an archive, unpacked and opened again
//! holds exactly what the stores held at the cut, whatever was written after it; an archive
//! with an entry outside the layout is refused before anything is written outside staging.

use daena_core::ledger::entry::NewEntry;
use daena_core::time::Micros;
use daena_store::backup::{self, ArchiveFile, Staging, UnpackError};
use daena_store::cold::ColdStore;
use daena_store::datadir::{DataDir, LockInfo};
use daena_store::kv::{DocTable, Kv};
use daena_store::ledger::{self, LedgerRead};

const T: DocTable = DocTable("backup_docs");

fn entries(from: u64, n: u64) -> Vec<NewEntry> {
    (from..from + n).map(|i| NewEntry::new("acme", "t", "memory.put", format!("k/{i}")).body(vec![1; 100])).collect()
}

#[test]
fn a_cut_round_trips_through_an_archive_and_ignores_later_writes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let info = LockInfo { pid: std::process::id(), listen: None, holder: "test".into() };
    let data = DataDir::open(&tmp.path().join("data"), &info).expect("data dir");
    let kv = Kv::open(&data.state_db(), 1 << 20).expect("kv");
    let (mut w, r, _) = ledger::open(&data.ledger_dir(), 1 << 12).expect("ledger");
    let cold = ColdStore::open(&data.l3_dir()).expect("cold");
    kv.put_doc(T, "a", &1u32).expect("doc");
    w.append(&entries(1, 30), Micros(1)).expect("append");
    let (segment, offset, len) = cold.append(b"cold bytes").expect("cold");
    cold.sync().expect("sync");
    let head = r.head();

    let cut = backup::cut(&kv, data.ledger_dir(), data.l3_dir()).expect("cut");
    // Writes after the cut are not in the archive.
    kv.put_doc(T, "b", &2u32).expect("doc");
    w.append(&entries(31, 10), Micros(2)).expect("append");
    cold.append(b"later").expect("cold");
    cold.sync().expect("sync");

    let scratch = Staging::new(data.root(), "scratch", "1").expect("scratch");
    let mut archive = ArchiveFile::create(&data.snapshots_dir(), "snap").expect("archive");
    let written = cut.write_into(&mut archive.tar, scratch.path()).expect("write");
    backup::append_bytes(&mut archive.tar, backup::MANIFEST, b"{\"m\":1}").expect("manifest");
    let (path, bytes) = archive.finish().expect("finish");
    assert!(bytes > 0 && path.ends_with("snap.tar.zst"));
    assert!(written.files.iter().any(|f| f.path == backup::STATE_FILE));
    assert!(written.files.iter().any(|f| f.path.starts_with("ledger/seg-")));
    assert!(written.files.iter().any(|f| f.path.starts_with("l3/cold-")));

    let staging = Staging::new(data.root(), "restore", "1").expect("staging");
    let unpacked = backup::unpack(&path, staging.path()).expect("unpack");
    assert_eq!(unpacked.manifest.as_deref(), Some(&b"{\"m\":1}"[..]));
    assert_eq!(unpacked.signature, None);
    assert_eq!(unpacked.archive_bytes, bytes);
    for f in &written.files {
        assert_eq!(unpacked.files.get(&f.path), Some(&(f.bytes, f.sha256.clone())), "{}", f.path);
    }
    assert_eq!(unpacked.files.len(), written.files.len());

    let restored = Kv::open(&staging.path().join(backup::STATE_FILE), 1 << 20).expect("open the copy");
    assert_eq!(restored.get_doc::<u32>(T, "a").expect("a"), Some(1));
    assert_eq!(restored.get_doc::<u32>(T, "b").expect("b"), None, "written after the cut");
    let (_, r2, _) = ledger::open(&staging.path().join("ledger"), 1 << 12).expect("open the ledger copy");
    assert_eq!(r2.head(), head, "the ledger as of the cut");
    assert_eq!(r2.verify_all(None).expect("verify").failure, None);
    let cold2 = ColdStore::open(&staging.path().join("l3")).expect("cold copy");
    assert_eq!(cold2.read(segment, offset, len).expect("read"), b"cold bytes");
    assert_eq!(cold2.disk_bytes(), 10, "only the bytes before the cut");
}

#[test]
fn an_archive_with_an_entry_outside_the_layout_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for bad in ["../escape", "/etc/x", "ledger/../../x", "other/file"] {
        let path = tmp.path().join("bad.tar.zst");
        let file = std::fs::File::create(&path).expect("create");
        let mut tar = tar::Builder::new(zstd::Encoder::new(file, 1).expect("zstd"));
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_entry_type(tar::EntryType::Regular);
        // Names are written raw, so the unsafe ones reach the reader as they are.
        let name = header.as_old_mut().name.as_mut();
        name[..bad.len()].copy_from_slice(bad.as_bytes());
        header.set_cksum();
        tar.append(&header, &b"abc"[..]).expect("append");
        tar.into_inner().expect("tar").finish().expect("zstd");
        let staging = tmp.path().join("staging");
        match backup::unpack(&path, &staging) {
            Err(UnpackError::Invalid(m)) => assert!(m.contains("unexpected entry"), "{bad}: {m}"),
            other => panic!("{bad}: {other:?}"),
        }
        assert!(!tmp.path().join("escape").exists());
    }
}
