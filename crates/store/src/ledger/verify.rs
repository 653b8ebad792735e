//! Verifying a ledger directory or file with every core: a reader thread cuts the files into
//! blocks of whole lines, workers check each line's layout, hash and body hash, and the
//! calling thread feeds the results in order to the chain and Merkle checks.

use super::reader::StreamEnd;
use super::{io, list_segments};
use crate::StoreError;
use daena_core::ledger::Checkpoint;
use daena_core::ledger::entry::{self, EntryError, LineFacts};

use daena_core::ledger::verify::{ChainVerifier, Summary};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

const BLOCK: usize = 1 << 20;

type Checked = Result<LineFacts, EntryError>;

/// Verifies `path` (a ledger directory or one JSONL file) against `checkpoints`, calling
/// `progress` with the number of entries checked so far. Read-only and lock-free.
pub fn verify_path(
    path: &Path,
    checkpoints: Vec<Checkpoint>,
    pinned_key: Option<&str>,
    mut progress: impl FnMut(u64),
) -> Result<(Summary, StreamEnd), StoreError> {
    let files: Vec<PathBuf> =
        if path.is_dir() { list_segments(path)?.into_iter().map(|(_, p)| p).collect() } else { vec![path.to_owned()] };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let mut verifier = ChainVerifier::new(checkpoints, pinned_key);
    let (block_tx, block_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(workers * 2);
    let block_rx = Arc::new(Mutex::new(block_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Vec<Checked>)>(workers * 2);

    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_blocks(&files, block_tx));
        for _ in 0..workers {
            let (rx, tx) = (block_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                let mut scratch = Vec::new();
                loop {
                    let next = rx.lock().map(|r| r.recv());
                    let Ok(Ok((idx, block))) = next else { return };
                    let results: Vec<Checked> = lines(&block)
                        .filter(|l| !l.is_empty())
                        .map(|l| entry::check_line_bytes(l, &mut scratch))
                        .collect();
                    if tx.send((idx, results)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Results come back out of order; feed them in block order.
        let mut pending: BTreeMap<u64, Vec<Checked>> = BTreeMap::new();
        let mut next = 0u64;
        let mut count = 0u64;
        for (idx, results) in done_rx {
            pending.insert(idx, results);
            while let Some(results) = pending.remove(&next) {
                count += results.len() as u64;
                for r in results {
                    verifier.push_checked(r);
                }
                next += 1;
                progress(count);
            }
        }
        let mut end = reader.join().map_err(|_| StoreError::Db("the ledger reader thread panicked".into()))??;
        end.lines = count;
        Ok((verifier.finish(), end))
    })
}

/// The lines of a block, found with `memchr` (a byte-by-byte split cost as much as a fifth
/// of verification); a block ends with a newline, but a last line without one is kept.
fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(block);
    std::iter::from_fn(move || {
        let s = rest?;
        match memchr::memchr(b'\n', s) {
            Some(n) => {
                rest = Some(&s[n + 1..]);
                Some(&s[..n])
            }
            None => {
                rest = None;
                (!s.is_empty()).then_some(s)
            }
        }
    })
}

/// Reads `files` in order into blocks that end on a line boundary. A last line without a
/// newline in the last file is a torn tail (or a write in flight) and is not sent.
fn read_blocks(files: &[PathBuf], tx: mpsc::SyncSender<(u64, Vec<u8>)>) -> Result<StreamEnd, StoreError> {
    let mut end = StreamEnd::default();
    let mut idx = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let mut f = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
        loop {
            let mut block = std::mem::take(&mut carry);
            let start = block.len();
            block.resize(start + BLOCK, 0);
            let n = f.read(&mut block[start..]).map_err(io(format!("read {}", path.display())))?;
            block.truncate(start + n);
            if n == 0 {
                carry = block;
                break;
            }
            match block.iter().rposition(|b| *b == b'\n') {
                Some(p) => {
                    carry = block.split_off(p + 1);
                    if tx.send((idx, block)).is_err() {
                        return Ok(end);
                    }
                    idx += 1;
                }
                None => carry = block,
            }
        }
        if !carry.is_empty() {
            if i + 1 == files.len() {
                end.torn_bytes = carry.len() as u64;
            } else {
                // A complete file without a final newline: its last line counts.
                carry.push(b'\n');
                end.lines += 1;
                if tx.send((idx, std::mem::take(&mut carry))).is_err() {
                    return Ok(end);
                }
                idx += 1;
            }
        }
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_split_on_newlines_and_keep_an_unterminated_tail() {
        let all = |b: &'static [u8]| super::lines(b).collect::<Vec<_>>();
        assert_eq!(all(b"a\nbc\n"), vec![&b"a"[..], b"bc"]);
        assert_eq!(all(b"a\n\nbc"), vec![&b"a"[..], b"", b"bc"]);
        assert!(all(b"").is_empty());
    }
}
