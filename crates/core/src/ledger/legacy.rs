//! The ledger written by the original Python Daena (`.ledger/ledger.jsonl`).
//!
//! Each line is `{"action", "ref_id", "sha256", "meta", "txid"}` where `txid` is SHA-256 of
//! Python's `json.dumps(record_without_txid, sort_keys=True, ensure_ascii=False)`: keys
//! sorted, `", "` and `": "` separators, non-ASCII kept, floats in Python's `repr`. Later
//! lines carry `meta.prev_hash`, the previous line's txid. The Merkle root pairs hex txids:
//! parent = SHA-256(UTF-8(left_hex ‖ right_hex)) as hex, an odd last node paired with
//! itself, a single leaf its own root.
//!
//! Numbers beyond 64 bits and non-finite floats (which Python writes as `NaN`/`Infinity`)
//! cannot be reproduced byte for byte and are reported as unverifiable lines.

// Python escapes strings exactly as canonical JSON does: `"`, `\`, the named control
// characters and `\u00xx` for the rest; everything else is kept.
use crate::canonical::write_str;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Python's `json.dumps(v, sort_keys=True, ensure_ascii=False)`.
pub fn py_canonical(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&py_float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(k, out);
                out.push_str(": ");
                write(&map[k], out);
            }
            out.push('}');
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents
/// -4 ≤ e < 16 (always with a fractional part), otherwise `d.ddde±XX`.
pub fn py_float_repr(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = shortest_closest(f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let frac = if digits.len() > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}{frac}e{esign}{:02}", &digits[..1], exp.abs())
    }
}

/// The shortest digits that read back as `f` and, among those, the ones closest to `f`, ties
/// to an even last digit, as CPython's `repr` chooses them, in Rust's `{:e}` form.
///
/// Rust's `{:e}` gives the shortest round-trip digits, but when `f` lies exactly halfway
/// between two such digit strings it takes the upper one (`…119.625` prints `…119.63`) where
/// Python takes the even one (`…119.62`). Rounding `f` exactly to the same number of digits
/// gives the closest string, with ties to even; it is used whenever it still reads back as
/// `f` (next to a power of two the closest string can fall outside the narrower half-gap).
fn shortest_closest(f: f64) -> String {
    let shortest = format!("{f:e}");
    let digits = shortest.split_once('e').map_or(0, |(m, _)| m.bytes().filter(u8::is_ascii_digit).count());
    let closest = format!("{f:.*e}", digits.saturating_sub(1));
    if closest != shortest && closest.parse::<f64>() == Ok(f) { closest } else { shortest }
}

/// The txid of a legacy record: SHA-256 hex of its py-canonical form without `txid`.
pub fn txid(record: &Value) -> Option<String> {
    let mut r = record.as_object()?.clone();
    r.remove("txid");
    Some(hex::encode(Sha256::digest(py_canonical(&Value::Object(r)).as_bytes())))
}

/// The legacy Merkle root over hex txids; `None` for an empty ledger.
pub fn merkle_root(txids: &[String]) -> Option<String> {
    if txids.is_empty() {
        return None;
    }
    let mut level: Vec<String> = txids.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| {
                let (l, r) = (&pair[0], pair.get(1).unwrap_or(&pair[0]));
                hex::encode(Sha256::digest(format!("{l}{r}").as_bytes()))
            })
            .collect();
    }
    level.pop()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegacyProblem {
    /// 1-based line number in the file.
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegacyReport {
    pub entries: usize,
    pub first_txid: Option<String>,
    pub last_txid: Option<String>,
    pub merkle_root: Option<String>,
    /// Lines whose `meta.prev_hash` named their predecessor correctly.
    pub chained: usize,
    pub problems: Vec<LegacyProblem>,
}

impl LegacyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies a legacy ledger's text: every txid, and prev_hash continuity where present.
/// Blank lines are skipped as the original readers did; anything else unreadable is a problem.
pub fn verify(text: &str) -> LegacyReport {
    let mut txids = Vec::new();
    let mut problems = Vec::new();
    let mut chained = 0;
    let mut prev: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let record: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                problems.push(LegacyProblem { line: line_no, reason: format!("not JSON: {e}") });
                continue;
            }
        };
        let Some(computed) = txid(&record) else {
            problems.push(LegacyProblem { line: line_no, reason: "not a JSON object".into() });
            continue;
        };
        match record.get("txid").and_then(Value::as_str) {
            Some(stated) if stated == computed => {}
            Some(stated) => problems.push(LegacyProblem {
                line: line_no,
                reason: format!("txid {stated} does not match the content (computed {computed})"),
            }),
            None => problems.push(LegacyProblem { line: line_no, reason: "no txid".into() }),
        }
        match record.pointer("/meta/prev_hash").and_then(Value::as_str) {
            Some(p) if !p.is_empty() => {
                if prev.as_deref() == Some(p) {
                    chained += 1;
                } else {
                    problems.push(LegacyProblem {
                        line: line_no,
                        reason: format!("prev_hash {p} does not name the previous line's txid"),
                    });
                }
            }
            _ => {}
        }
        prev = Some(computed.clone());
        txids.push(computed);
    }
    LegacyReport {
        entries: txids.len(),
        first_txid: txids.first().cloned(),
        last_txid: txids.last().cloned(),
        merkle_root: merkle_root(&txids),
        chained,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (1e16, "1e+16"),
            (1e-5, "1e-05"),
            (0.1, "0.1"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (5e-324, "5e-324"),
            (1.5e300, "1.5e+300"),
            (-2.5, "-2.5"),
            (0.0001, "0.0001"),
            (1234.5678, "1234.5678"),
            (1e15, "1000000000000000.0"),
        ] {
            assert_eq!(py_float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn python_canonical_json() {
        // Vector produced by CPython 3.11: json.dumps(v, sort_keys=True, ensure_ascii=False)
        let v = json!({"b": [1.0, 1e16, 1e-5, 0.1, 123456789012345678.0, 5e-324, 1.5e300], "a": "é\u{2028}\u{1}\""});
        assert_eq!(
            py_canonical(&v),
            "{\"a\": \"é\u{2028}\\u0001\\\"\", \"b\": [1.0, 1e+16, 1e-05, 0.1, 1.2345678901234568e+17, 5e-324, 1.5e+300]}"
        );
    }

    #[test]
    fn legacy_merkle_shapes() {
        assert_eq!(merkle_root(&[]), None);
        assert_eq!(merkle_root(&["ab".into()]), Some("ab".into()));
        let two = hex::encode(Sha256::digest(b"abcd"));
        assert_eq!(merkle_root(&["ab".into(), "cd".into()]), Some(two.clone()));
        let three_right = hex::encode(Sha256::digest(b"efef"));
        let three = hex::encode(Sha256::digest(format!("{two}{three_right}").as_bytes()));
        assert_eq!(merkle_root(&["ab".into(), "cd".into(), "ef".into()]), Some(three));
    }
}
