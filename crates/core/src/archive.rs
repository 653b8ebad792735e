//! The archive format, `daena-archive/1`: portable logical backups as JSON lines (the file
//! is zstd-compressed around them).
//!
//! ```text
//! {"header":{"format":"daena-archive/1","created_at":"...","tenant":null,"daena_version":"0.1.0"}}
//! {"record":{"tenant":"acme","class":"chat","key":"k1","version":3,...,"payload":{...},"meta":{...}}}
//! ...
//! {"trailer":{"records":2,"sha256":"<SHA-256 of every record line, newline included>","signature":{...}}}
//! ```
//! Each record carries `content_sha256`, the SHA-256 of its canonical payload, so a reader
//! checks every record as well as the whole. The trailer's signature covers the header line,
//! the record count and the records' SHA-256 ([`signed_manifest`]); who signed is for the
//! caller to judge.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::BufRead;

pub const FORMAT: &str = "daena-archive/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub created_at: String,
    pub tenant: Option<String>,
    pub daena_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedRecord {
    pub tenant: String,
    pub class: String,
    pub key: String,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub tier: String,
    pub content_sha256: String,
    pub payload: Value,
    pub meta: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trailer {
    pub records: u64,
    pub sha256: String,
    /// The signature as written (its shape is the signer's: see the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line<'a> {
    Header(std::borrow::Cow<'a, Header>),
    Record(Box<std::borrow::Cow<'a, ArchivedRecord>>),
    Trailer(std::borrow::Cow<'a, Trailer>),
}

/// What an archive's signature covers: its header line as written, the record count and
/// the SHA-256 of the record lines.
pub fn signed_manifest(header_line: &[u8], records: u64, sha256: &str) -> Vec<u8> {
    let mut m = header_line.to_vec();
    m.extend_from_slice(format!("\n{records}\n{sha256}").as_bytes());
    m
}

/// The SHA-256 (hex) of a payload's canonical JSON: a record's `content_sha256`.
pub fn content_sha256(payload: &Value) -> String {
    hex::encode(Sha256::digest(crate::canonical::to_string(payload).as_bytes()))
}

fn line(l: &Line<'_>) -> Vec<u8> {
    // Serializing these types cannot fail: string keys, no non-finite floats.
    let mut bytes = serde_json::to_vec(l).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The header line, newline included.
pub fn header_line(h: &Header) -> Vec<u8> {
    line(&Line::Header(std::borrow::Cow::Borrowed(h)))
}

/// A record line, newline included.
pub fn record_line(r: &ArchivedRecord) -> Vec<u8> {
    line(&Line::Record(Box::new(std::borrow::Cow::Borrowed(r))))
}

/// The trailer line, newline included.
pub fn trailer_line(t: &Trailer) -> Vec<u8> {
    line(&Line::Trailer(std::borrow::Cow::Borrowed(t)))
}

/// What reading an archive's lines found, every check passed.
#[derive(Debug, Clone)]
pub struct Contents {
    pub header: Header,
    /// The header line as written (the signature covers it).
    pub header_line: Vec<u8>,
    pub records: u64,
    pub tenants: BTreeSet<String>,
    /// SHA-256 (hex) of the record lines.
    pub sha256: String,
    pub signature: Option<Value>,
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError<E> {
    /// Line `n` (from 1) is not what the format allows there.
    Line(usize, String),
    /// The archive as a whole is wrong (no header, cut short, count or hash differ).
    Whole(String),
    /// The caller's function refused a record.
    Stopped(E),
}

/// Reads an archive's lines through, calling `f` for every record after checking it: the
/// header first and once, every record's content hash, nothing after the trailer, and the
/// trailer's count and hash against the records read.
pub fn read_lines<E>(
    reader: impl BufRead,
    mut f: impl FnMut(ArchivedRecord) -> Result<(), E>,
) -> Result<Contents, ReadError<E>> {
    let (mut header, mut trailer) = (None::<(Header, Vec<u8>)>, None::<Trailer>);
    let mut hasher = Sha256::new();
    let (mut records, mut tenants) = (0u64, BTreeSet::new());
    for (i, text) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let text = text.map_err(|e| ReadError::Line(n, format!("unreadable: {e}")))?;
        if trailer.is_some() {
            return Err(ReadError::Line(n, "data after the trailer".into()));
        }
        match serde_json::from_slice::<Line<'_>>(&text).map_err(|e| ReadError::Line(n, e.to_string()))? {
            Line::Header(h) if n == 1 => {
                if h.format != FORMAT {
                    return Err(ReadError::Line(n, format!("format {:?} is not {FORMAT}", h.format)));
                }
                header = Some((h.into_owned(), text));
            }
            Line::Header(_) => return Err(ReadError::Line(n, "a second header".into())),
            Line::Record(_) if header.is_none() => return Err(ReadError::Line(n, "a record before the header".into())),
            Line::Record(r) => {
                let r = r.into_owned();
                if content_sha256(&r.payload) != r.content_sha256 {
                    return Err(ReadError::Line(
                        n,
                        format!("{}/{}/{}: the payload does not match its content_sha256", r.tenant, r.class, r.key),
                    ));
                }
                hasher.update(&text);
                hasher.update(b"\n");
                records += 1;
                tenants.insert(r.tenant.clone());
                f(r).map_err(ReadError::Stopped)?;
            }
            Line::Trailer(t) => trailer = Some(t.into_owned()),
        }
    }
    let (header, header_line) = header.ok_or_else(|| ReadError::Whole("empty or no header".into()))?;
    let trailer = trailer.ok_or_else(|| ReadError::Whole("no trailer (the archive was cut short)".into()))?;
    let sha256 = hex::encode(hasher.finalize());
    if trailer.records != records || trailer.sha256 != sha256 {
        return Err(ReadError::Whole(format!(
            "the trailer says {} records with SHA-256 {}, the archive holds {records} with {sha256}",
            trailer.records, trailer.sha256
        )));
    }
    Ok(Contents { header, header_line, records, tenants, sha256, signature: trailer.signature })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(key: &str) -> ArchivedRecord {
        let payload = json!({"text": key});
        ArchivedRecord {
            tenant: "acme".into(),
            class: "chat".into(),
            key: key.into(),
            version: 1,
            created_at: "2026-12-07T00:00:00Z".into(),
            updated_at: "2026-12-07T00:00:00Z".into(),
            tier: "L2".into(),
            content_sha256: content_sha256(&payload),
            payload,
            meta: Value::Null,
        }
    }

    fn archive(records: &[ArchivedRecord]) -> Vec<u8> {
        let header = Header {
            format: FORMAT.into(),
            created_at: "2026-12-07T00:00:00Z".into(),
            tenant: None,
            daena_version: "0".into(),
        };
        let mut out = header_line(&header);
        let mut hasher = Sha256::new();
        for r in records {
            let l = record_line(r);
            hasher.update(&l);
            out.extend_from_slice(&l);
        }
        let trailer =
            Trailer { records: records.len() as u64, sha256: hex::encode(hasher.finalize()), signature: None };
        out.extend_from_slice(&trailer_line(&trailer));
        out
    }

    #[test]
    fn round_trip_and_every_damage_refused() {
        let good = archive(&[record("a"), record("b")]);
        let mut seen = Vec::new();
        let c = read_lines(good.as_slice(), |r| {
            seen.push(r.key);
            Ok::<(), ()>(())
        })
        .expect("reads");
        assert_eq!((c.records, seen), (2, vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(c.tenants.into_iter().collect::<Vec<_>>(), vec!["acme".to_owned()]);

        let text = String::from_utf8(good.clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        let cases = [
            ("cut short", lines[..3].join("\n")),
            ("a record dropped", [lines[0], lines[1], lines[3]].join("\n")),
            ("a payload changed", text.replacen("\"text\":\"a\"", "\"text\":\"z\"", 1)),
            ("data after the trailer", format!("{text}{}\n", lines[1])),
            ("no header", lines[1..].join("\n")),
            ("two headers", format!("{}\n{text}", lines[0])),
        ];
        for (what, bad) in cases {
            assert!(read_lines(bad.as_bytes(), |_| Ok::<(), ()>(())).is_err(), "{what} must be refused");
        }
    }
}
