//! Ledger entries: one JSON line each, hash-chained.
//!
//! A line is exactly
//!
//! ```text
//! {"seq":N,"ts":T,"tenant":"..","actor":"..","action":"..","ref":"..","attrs":{..},
//!  "body_sha256":"<hex>","body":"<base64>","prev":"<hex>","hash":"<hex>"}\n
//! ```
//!
//! (one line, no spaces), with `attrs` in canonical JSON. The entry hash is
//! SHA-256(`daena-ledger-v1\n` ‖ C) where C is the line's bytes before `,"hash":"`: the hash
//! covers exactly the bytes stored, so verification needs no re-serialization. `prev` is
//! the previous entry's hash (64 zeros for the first), which chains the entries; the Merkle
//! tree over entry hashes makes checkpoints and proofs possible.

use crate::canonical;
use crate::merkle::Hash;
use crate::time::Micros;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The domain-separation prefix of entry hashes (format version 1).
pub const HASH_PREFIX: &[u8] = b"daena-ledger-v1\n";
/// `prev` of the first entry.
pub const GENESIS_PREV: Hash = [0u8; 32];
const HASH_MARKER: &str = ",\"hash\":\"";

/// An entry to append: everything but the sequence number, time and chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub reference: String,
    /// Plain-text details (a JSON object): versions, reasons, counts. Never secrets.
    pub attrs: Value,
    /// The operation body, opaque here (encrypted by the memory layer).
    pub body: Vec<u8>,
}

impl NewEntry {
    pub fn new(
        tenant: impl Into<String>,
        actor: impl Into<String>,
        action: impl Into<String>,
        reference: impl Into<String>,
    ) -> Self {
        NewEntry {
            tenant: tenant.into(),
            actor: actor.into(),
            action: action.into(),
            reference: reference.into(),
            attrs: Value::Object(Default::default()),
            body: Vec::new(),
        }
    }

    pub fn attrs(mut self, attrs: Value) -> Self {
        self.attrs = attrs;
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

/// A sealed entry as read back from the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub ts: Micros,
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub reference: String,
    pub attrs: Value,
    pub body_sha256: Hash,
    pub body: Vec<u8>,
    pub prev: Hash,
    pub hash: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("malformed entry: {0}")]
    Malformed(String),
    #[error("entry hash does not match its content")]
    HashMismatch,
    #[error("body_sha256 does not match the body")]
    BodyHashMismatch,
}

/// Seals `new` as entry `seq` at `ts` after `prev`: the line (with its newline) and its hash.
pub fn seal(new: &NewEntry, seq: u64, ts: Micros, prev: &Hash) -> (String, Hash) {
    let body_sha: Hash = Sha256::digest(&new.body).into();
    let mut line = String::with_capacity(256 + new.body.len() * 4 / 3);
    line.push_str("{\"seq\":");
    line.push_str(&seq.to_string());
    line.push_str(",\"ts\":");
    line.push_str(&ts.0.to_string());
    for (key, value) in
        [("tenant", &new.tenant), ("actor", &new.actor), ("action", &new.action), ("ref", &new.reference)]
    {
        line.push_str(",\"");
        line.push_str(key);
        line.push_str("\":");
        canonical::write_str(value, &mut line);
    }
    line.push_str(",\"attrs\":");
    match &new.attrs {
        Value::Object(_) => canonical::write(&new.attrs, &mut line),
        Value::Null => line.push_str("{}"),
        other => {
            // Attributes are an object by contract; anything else is wrapped, not dropped.
            let mut wrapped = serde_json::Map::new();
            wrapped.insert("value".to_owned(), other.clone());
            canonical::write(&Value::Object(wrapped), &mut line);
        }
    }
    line.push_str(",\"body_sha256\":\"");
    line.push_str(&hex::encode(body_sha));
    line.push_str("\",\"body\":\"");
    B64.encode_string(&new.body, &mut line);
    line.push_str("\",\"prev\":\"");
    line.push_str(&hex::encode(prev));
    line.push('"');
    let hash = content_hash(line.as_bytes());
    line.push_str(HASH_MARKER);
    line.push_str(&hex::encode(hash));
    line.push_str("\"}\n");
    (line, hash)
}

/// SHA-256(prefix ‖ content).
pub fn content_hash(content: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(HASH_PREFIX);
    h.update(content);
    h.finalize().into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields<'a> {
    seq: u64,
    ts: i64,
    tenant: String,
    actor: String,
    action: String,
    #[serde(rename = "ref")]
    reference: String,
    #[serde(borrow)]
    attrs: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    body_sha256: &'a str,
    #[serde(borrow)]
    body: &'a str,
    #[serde(borrow)]
    prev: &'a str,
}

/// What verification needs from a line without building an [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineFacts {
    pub seq: u64,
    pub ts: Micros,
    pub prev: Hash,
    pub hash: Hash,
    /// The Merkle leaf hash of `hash`, computed alongside so verification can spread it.
    pub leaf: Hash,
}

/// Lowercase hex digit values; 0xff marks anything else (uppercase is not canonical).
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn parse_hex32(s: &str, what: &str) -> Result<Hash, EntryError> {
    hex32(s.as_bytes(), what)
}

fn hex32(b: &[u8], what: &str) -> Result<Hash, EntryError> {
    let mut out = [0u8; 32];
    let mut bad = b.len() != 64;
    if !bad {
        for (i, o) in out.iter_mut().enumerate() {
            let (hi, lo) = (HEX[usize::from(b[2 * i])], HEX[usize::from(b[2 * i + 1])]);
            bad |= (hi | lo) == 0xff || hi > 15 || lo > 15;
            *o = (hi << 4) | (lo & 0x0f);
        }
    }
    if bad {
        return Err(EntryError::Malformed(format!("{what} is not 64 lowercase hex digits")));
    }
    Ok(out)
}

/// Splits a line (without its newline) into its content and stated hash, and checks the hash.
fn split_and_hash(line: &str) -> Result<(&str, Hash), EntryError> {
    let (content, hash) = split_and_hash_bytes(line.as_bytes())?;
    // The split is at an ASCII byte, so both halves stay valid UTF-8.
    Ok((&line[..content.len()], hash))
}

/// The line ends with exactly `,"hash":"<64 hex>"}`: 75 bytes after the content.
fn split_and_hash_bytes(line: &[u8]) -> Result<(&[u8], Hash), EntryError> {
    const TAIL: usize = HASH_MARKER.len() + 64 + 2;
    let at = line.len().checked_sub(TAIL).ok_or_else(|| EntryError::Malformed("line too short".into()))?;
    let (content, rest) = line.split_at(at);
    if !rest.starts_with(HASH_MARKER.as_bytes()) || !rest.ends_with(b"\"}") {
        return Err(EntryError::Malformed("the line must end with its \"hash\" member".into()));
    }
    let stated = hex32(&rest[HASH_MARKER.len()..HASH_MARKER.len() + 64], "hash")?;
    if content_hash(content) != stated {
        return Err(EntryError::HashMismatch);
    }
    Ok((content, stated))
}

/// Parses the fields of `content` (the object without its last member) and hands them to `f`.
fn with_fields<R>(content: &str, f: impl FnOnce(Fields<'_>) -> Result<R, EntryError>) -> Result<R, EntryError> {
    let mut closed = String::with_capacity(content.len() + 1);
    closed.push_str(content);
    closed.push('}');
    let fields: Fields<'_> = serde_json::from_str(&closed).map_err(|e| EntryError::Malformed(e.to_string()))?;
    f(fields)
}

/// A strict reader of the exact line layout `seal` writes; anything else is malformed.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn bad(&self, what: &str) -> EntryError {
        EntryError::Malformed(format!("{what} at byte {}", self.i))
    }

    fn lit(&mut self, l: &[u8]) -> Result<(), EntryError> {
        if self.s[self.i..].starts_with(l) {
            self.i += l.len();
            Ok(())
        } else {
            Err(self.bad(&format!("expected {}", String::from_utf8_lossy(l))))
        }
    }

    fn digits(&mut self) -> Result<&'a [u8], EntryError> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let d = &self.s[start..self.i];
        if d.is_empty() || d.len() > 19 || (d.len() > 1 && d[0] == b'0') {
            return Err(self.bad("expected a number"));
        }
        Ok(d)
    }

    fn uint(&mut self) -> Result<u64, EntryError> {
        let d = self.digits()?;
        std::str::from_utf8(d).ok().and_then(|t| t.parse().ok()).ok_or_else(|| self.bad("number out of range"))
    }

    fn int(&mut self) -> Result<i64, EntryError> {
        let neg = self.s.get(self.i) == Some(&b'-');
        if neg {
            self.i += 1;
        }
        let v = i64::try_from(self.uint()?).map_err(|_| self.bad("number out of range"))?;
        Ok(if neg { -v } else { v })
    }

    /// Skips a JSON string literal.
    fn string(&mut self) -> Result<(), EntryError> {
        self.lit(b"\"")?;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                b'\\' => self.i += 2,
                c if c < 0x20 => return Err(self.bad("raw control character in a string")),
                _ => self.i += 1,
            }
        }
        Err(self.bad("unterminated string"))
    }

    /// Skips a JSON object, strings included.
    fn object(&mut self) -> Result<(), EntryError> {
        self.lit(b"{")?;
        let mut depth = 1usize;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'"' => self.string()?,
                b'{' | b'[' => {
                    depth += 1;
                    self.i += 1;
                }
                b'}' | b']' => {
                    depth -= 1;
                    self.i += 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => self.i += 1,
            }
        }
        Err(self.bad("unterminated attrs"))
    }

    /// The raw bytes up to the next `"` (hex and base64 fields, which need no escapes).
    fn raw(&mut self) -> &'a [u8] {
        let start = self.i;
        self.i = memchr::memchr(b'"', &self.s[start..]).map_or(self.s.len(), |n| start + n);
        &self.s[start..self.i]
    }
}

/// Checks a line's layout, hash and body hash and returns the facts the chain needs.
/// `scratch` is reused for decoding the body.
pub fn check_line(line: &str, scratch: &mut Vec<u8>) -> Result<LineFacts, EntryError> {
    check_line_bytes(line.as_bytes(), scratch)
}

/// [`check_line`] on raw bytes: the hash covers bytes, so verification needs no UTF-8 pass.
pub fn check_line_bytes(line: &[u8], scratch: &mut Vec<u8>) -> Result<LineFacts, EntryError> {
    let (content, hash) = split_and_hash_bytes(line)?;
    let mut c = Cursor { s: content, i: 0 };
    c.lit(b"{\"seq\":")?;
    let seq = c.uint()?;
    c.lit(b",\"ts\":")?;
    let ts = c.int()?;
    for key in [&b",\"tenant\":"[..], b",\"actor\":", b",\"action\":", b",\"ref\":"] {
        c.lit(key)?;
        c.string()?;
    }
    c.lit(b",\"attrs\":")?;
    c.object()?;
    c.lit(b",\"body_sha256\":\"")?;
    let body_sha = hex32(c.raw(), "body_sha256")?;
    c.lit(b"\",\"body\":\"")?;
    let body = c.raw();
    c.lit(b"\",\"prev\":\"")?;
    let prev = hex32(c.raw(), "prev")?;
    c.lit(b"\"")?;
    if c.i != c.s.len() {
        return Err(c.bad("trailing bytes"));
    }
    scratch.clear();
    B64.decode_vec(body, scratch).map_err(|e| EntryError::Malformed(format!("body: {e}")))?;
    if <[u8; 32]>::from(Sha256::digest(&scratch[..])) != body_sha {
        return Err(EntryError::BodyHashMismatch);
    }
    Ok(LineFacts { seq, ts: Micros(ts), prev, hash, leaf: crate::merkle::leaf_hash(&hash) })
}

/// Parses and checks a whole entry.
pub fn parse_line(line: &str) -> Result<Entry, EntryError> {
    check_line(line, &mut Vec::new())?;
    let (content, hash) = split_and_hash(line)?;
    with_fields(content, |f| {
        let attrs: Value =
            serde_json::from_str(f.attrs.get()).map_err(|e| EntryError::Malformed(format!("attrs: {e}")))?;
        if !attrs.is_object() {
            return Err(EntryError::Malformed("attrs is not an object".into()));
        }
        let body = B64.decode(f.body).map_err(|e| EntryError::Malformed(format!("body: {e}")))?;
        let body_sha256 = parse_hex32(f.body_sha256, "body_sha256")?;
        if <[u8; 32]>::from(Sha256::digest(&body)) != body_sha256 {
            return Err(EntryError::BodyHashMismatch);
        }
        Ok(Entry {
            seq: f.seq,
            ts: Micros(f.ts),
            tenant: f.tenant,
            actor: f.actor,
            action: f.action,
            reference: f.reference,
            attrs,
            body_sha256,
            body,
            prev: parse_hex32(f.prev, "prev")?,
            hash,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> NewEntry {
        NewEntry::new("default", "key:ops", "memory.put", "chat/greeting")
            .attrs(json!({"version": 1, "class": "chat"}))
            .body(b"opaque".to_vec())
    }

    /// The test vector of docs/FORMATS.md, computed independently with Python's hashlib.
    #[test]
    fn format_vector() {
        let (line, hash) = seal(&sample(), 1, Micros(1_764_302_400_000_000), &GENESIS_PREV);
        let expected = concat!(
            r#"{"seq":1,"ts":1764302400000000,"tenant":"default","actor":"key:ops","action":"memory.put","#,
            r#""ref":"chat/greeting","attrs":{"class":"chat","version":1},"#,
            r#""body_sha256":"6d229884c1268bb0ab32d8da315d0fe52f9147228bd830a37bc9fb28a954940d","body":"b3BhcXVl","#,
            r#""prev":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""hash":"d1317e223efb456a74135675547b32aba882c0dd116c8abd636dda4a91b899fc"}"#,
            "\n"
        );
        assert_eq!(line, expected);
        assert_eq!(hex::encode(hash), "d1317e223efb456a74135675547b32aba882c0dd116c8abd636dda4a91b899fc");
    }

    #[test]
    fn round_trip_and_tamper() {
        let (line, hash) = seal(&sample(), 7, Micros(42), &[9u8; 32]);
        let line = line.trim_end_matches('\n');
        let e = parse_line(line).expect("parses");
        assert_eq!((e.seq, e.ts, e.hash, e.prev), (7, Micros(42), hash, [9u8; 32]));
        assert_eq!(e.body, b"opaque");
        assert_eq!(e.attrs, json!({"class": "chat", "version": 1}));
        let mut scratch = Vec::new();
        assert_eq!(check_line(line, &mut scratch).expect("facts").hash, hash);
        let tampered = line.replace("greeting", "greetinG");
        assert_eq!(parse_line(&tampered), Err(EntryError::HashMismatch));
        assert!(parse_line(&line[..line.len() - 3]).is_err());
        assert!(parse_line("{}").is_err());
    }

    #[test]
    fn strings_are_escaped_canonically() {
        let new = NewEntry::new("t", "a\"b", "x", "line\nbreak");
        let (line, _) = seal(&new, 1, Micros(0), &GENESIS_PREV);
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        let e = parse_line(line.trim_end()).expect("parses");
        assert_eq!(e.actor, "a\"b");
        assert_eq!(e.reference, "line\nbreak");
    }
}
