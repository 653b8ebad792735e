//! Prefixes of a ledger directory, for point-in-time recovery: the last entry at or before a
//! time, and a copy of the first entries with the checkpoints that cover them.

use super::{CHECKPOINTS_FILE, PUBLIC_KEY_FILE, io, list_segments, stream_dir};
use crate::StoreError;
use serde::Deserialize;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

/// The fields of an entry line a prefix needs.
#[derive(Debug, Deserialize)]
struct LineHead {
    seq: u64,
    ts: i64,
    hash: String,
}

fn unreadable(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what: what.to_string(), detail: format!("an unreadable entry: {e}") }
}

/// The sequence number of the last entry of the ledger in `dir` written at or before `ts`
/// (microseconds since the epoch); 0 when there is none.
pub fn last_at_or_before(dir: &Path, ts: i64) -> Result<u64, StoreError> {
    let mut last = 0u64;
    let mut bad = None;
    stream_dir(dir, |line| match serde_json::from_str::<LineHead>(line) {
        Ok(h) if h.ts <= ts => last = h.seq,
        Ok(_) => {}
        Err(e) => bad = Some(e.to_string()),
    })?;
    match bad {
        Some(e) => Err(unreadable(dir.display(), e)),
        None => Ok(last),
    }
}

/// Copies the first `upto` entries of the ledger in `src` (segments, the checkpoints that
/// cover at most `upto`, the public key) to `dst`, replacing whatever `dst` held; returns how
/// many were copied and the hash of entry `mark`, if it was among them.
pub fn copy_prefix(src: &Path, dst: &Path, upto: u64, mark: u64) -> Result<(u64, Option<String>), StoreError> {
    match std::fs::remove_dir_all(dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(format!("remove {}", dst.display()), e)),
    }
    std::fs::create_dir_all(dst).map_err(io(format!("create {}", dst.display())))?;
    let (mut copied, mut mark_hash) = (0u64, None);
    for (first, path) in list_segments(src)? {
        if first > upto {
            continue;
        }
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let target = dst.join(&name);
        let mut out =
            BufWriter::new(std::fs::File::create(&target).map_err(io(format!("create {}", target.display())))?);
        let reader = BufReader::new(std::fs::File::open(&path).map_err(io(format!("open {}", path.display())))?);
        for line in reader.split(b'\n') {
            let line = line.map_err(io(format!("read {}", path.display())))?;
            if line.is_empty() {
                continue;
            }
            let head: LineHead = serde_json::from_slice(&line).map_err(|e| unreadable(path.display(), e))?;
            if head.seq > upto {
                break;
            }
            if head.seq == mark {
                mark_hash = Some(head.hash.clone());
            }
            out.write_all(&line)
                .and_then(|_| out.write_all(b"\n"))
                .map_err(io(format!("write {}", target.display())))?;
            copied += 1;
        }
        let file =
            out.into_inner().map_err(|e| StoreError::io(format!("write {}", target.display()), e.into_error()))?;
        file.sync_all().map_err(io(format!("sync {}", target.display())))?;
    }
    if let Ok(text) = std::fs::read_to_string(src.join(CHECKPOINTS_FILE)) {
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["size"].as_u64())
                    .is_some_and(|s| s <= upto)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dst.join(CHECKPOINTS_FILE), kept).map_err(io(format!("write {}", dst.display())))?;
    }
    if let Ok(p) = std::fs::read(src.join(PUBLIC_KEY_FILE)) {
        std::fs::write(dst.join(PUBLIC_KEY_FILE), p).map_err(io(format!("write {}", dst.display())))?;
    }
    Ok((copied, mark_hash))
}
