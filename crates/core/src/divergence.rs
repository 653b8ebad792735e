//! Divergence between two versions of a record's payload: 0 identical … 1 wholly different.
//!
//! JSON-aware and linear in the payload size:
//! - objects: the mean over the union of keys, a key present on one side only counting 1;
//! - arrays: 1 − Sørensen–Dice over the multisets of their elements' canonical texts;
//! - strings: 1 − Sørensen–Dice over character bigrams (multisets), equality for strings
//!   shorter than two characters;
//! - numbers: |a − b| / max(|a|, |b|), clamped to [0, 1];
//! - anything else: 0 when equal, 1 when not (including a change of type).

use crate::canonical;
use serde_json::Value;
use std::collections::HashMap;

pub fn divergence(old: &Value, new: &Value) -> f64 {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            if a.is_empty() && b.is_empty() {
                return 0.0;
            }
            let mut total = 0.0;
            let mut n = 0usize;
            for (k, va) in a {
                total += b.get(k).map_or(1.0, |vb| divergence(va, vb));
                n += 1;
            }
            for k in b.keys() {
                if !a.contains_key(k) {
                    total += 1.0;
                    n += 1;
                }
            }
            total / n as f64
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.is_empty() && b.is_empty() {
                return 0.0;
            }
            let texts = |v: &[Value]| v.iter().map(canonical::to_string).collect::<Vec<_>>();
            1.0 - dice(texts(a), texts(b))
        }
        (Value::String(a), Value::String(b)) => {
            if a == b {
                0.0
            } else {
                1.0 - string_similarity(a, b)
            }
        }
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if x == y => 0.0,
            (Some(x), Some(y)) => ((x - y).abs() / x.abs().max(y.abs())).clamp(0.0, 1.0),
            _ => f64::from(u8::from(a != b)),
        },
        (a, b) => f64::from(u8::from(a != b)),
    }
}

/// Sørensen–Dice coefficient of two multisets: 2·|A ∩ B| / (|A| + |B|).
fn dice<T: std::hash::Hash + Eq>(a: Vec<T>, b: Vec<T>) -> f64 {
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let mut counts: HashMap<T, isize> = HashMap::with_capacity(a.len());
    for x in a {
        *counts.entry(x).or_default() += 1;
    }
    let mut common = 0usize;
    for y in b {
        if let Some(c) = counts.get_mut(&y)
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    2.0 * common as f64 / total as f64
}

fn string_similarity(a: &str, b: &str) -> f64 {
    let bigrams = |s: &str| {
        let chars: Vec<char> = s.chars().collect();
        chars.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>()
    };
    let (ba, bb) = (bigrams(a), bigrams(b));
    if ba.is_empty() || bb.is_empty() {
        return f64::from(u8::from(a == b));
    }
    dice(ba, bb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(a: Value, b: Value, lo: f64, hi: f64) {
        let d = divergence(&a, &b);
        assert!((lo..=hi).contains(&d), "divergence({a}, {b}) = {d}, expected {lo}..={hi}");
        let back = divergence(&b, &a);
        assert!((d - back).abs() < 1e-12, "symmetric");
    }

    #[test]
    fn vectors() {
        check(json!({"a": 1, "b": "x"}), json!({"b": "x", "a": 1}), 0.0, 0.0);
        check(json!("night"), json!("nacht"), 0.74, 0.76);
        check(json!({"amount": 100, "currency": "EUR"}), json!({"amount": 101, "currency": "EUR"}), 0.004, 0.006);
        check(json!({"amount": 100}), json!({"total": 100}), 1.0, 1.0);
        check(json!([1, 2, 3]), json!([3, 2, 1]), 0.0, 0.0);
        check(json!([1, 2, 3, 4]), json!([1, 2]), 0.33, 0.34);
        check(json!("a"), json!("b"), 1.0, 1.0);
        check(json!(null), json!(0), 1.0, 1.0);
        check(json!({}), json!({}), 0.0, 0.0);
        check(
            json!({"clause": "The supplier shall deliver within 30 days."}),
            json!({"clause": "The supplier shall deliver within 60 days."}),
            0.0,
            0.1,
        );
        check(
            json!({"clause": "The supplier shall deliver within 30 days."}),
            json!({"clause": "Payment is due upon receipt of the invoice."}),
            0.75,
            1.0,
        );
    }
}
