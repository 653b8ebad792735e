//! Canonical JSON for hashing: one byte string per JSON value.
//!
//! Object keys are sorted by their UTF-8 bytes, there is no whitespace, strings escape only
//! `"`, `\` and control characters (as `\b \f \n \r \t`, else `\u00xx` lowercase) and keep
//! every other character as raw UTF-8, and numbers are written as `serde_json` writes them
//! (integers exactly, floats as the shortest text that round-trips, e.g. `0.1`, `1.0`,
//! `1e+16`). `docs/FORMATS.md` has test vectors.

use serde::Deserialize;
use serde_json::Value;

/// The canonical text of `value`.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

pub fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            use std::fmt::Write;
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => write_fields(map.iter().collect(), out, |_, _, _| false),
    }
}

/// Writes an object of `fields`, in any order (they are sorted here). `write_value` may write
/// a field's value itself and return true; otherwise its canonical value is written.
pub fn write_fields(
    mut fields: Vec<(&String, &Value)>,
    out: &mut String,
    mut write_value: impl FnMut(&str, &Value, &mut String) -> bool,
) {
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (k, v)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(k, out);
        out.push(':');
        if !write_value(k, v, out) {
            write(v, out);
        }
    }
    out.push('}');
}

/// A JSON string literal with minimal escaping. Runs that need no escape are copied whole;
/// every escaped character is ASCII, so cutting at them never splits a UTF-8 sequence.
pub fn write_str(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            use std::fmt::Write;
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value, expected: &str) {
        assert_eq!(to_string(&v), expected);
        // Canonical text parses back to the same value.
        assert_eq!(serde_json::from_str::<Value>(expected).expect("parses"), v);
    }

    #[test]
    fn vectors() {
        check(json!({"b": 1, "a": [true, null, "x"]}), r#"{"a":[true,null,"x"],"b":1}"#);
        check(json!({"z": {"y": 2, "x": 1}}), r#"{"z":{"x":1,"y":2}}"#);
        check(json!("é\u{2028}\u{1}\"\\\n"), "\"é\u{2028}\\u0001\\\"\\\\\\n\"");
        check(json!([0.1, 1.0, -7, 1e16, 1.5e-7]), "[0.1,1.0,-7,1e+16,1.5e-7]");
        check(json!({}), "{}");
    }

    /// The escaping rule one character at a time, as the module documents it.
    fn write_str_reference(s: &str) -> String {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    proptest::proptest! {
        #[test]
        fn strings_escape_as_the_reference(s in "(\\PC|[\\x00-\\x1f\"\\\\]|é|\u{2028})*") {
            let mut out = String::new();
            write_str(&s, &mut out);
            proptest::prop_assert_eq!(&out, &write_str_reference(&s));
            proptest::prop_assert_eq!(serde_json::from_str::<String>(&out).ok(), Some(s));
        }
    }
}

/// Deserializes an unsigned integer field from any JSON number with an integral value: JSON
/// has one number type, so `3.0` is the integer 3 (JSON Schema counts it as one too). A
/// fraction, a negative number or one past the field's range is refused.
pub fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let v = match (n.as_u64(), n.as_f64()) {
        (Some(v), _) => v,
        (None, Some(f)) if f.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&f) => f as u64,
        _ => return Err(D::Error::custom(format!("{n} is not a non-negative integer"))),
    };
    T::try_from(v).map_err(|_| D::Error::custom(format!("{v} is out of range")))
}

#[cfg(test)]
mod integer_tests {
    #[derive(serde::Deserialize)]
    struct N {
        #[serde(deserialize_with = "super::integer")]
        n: u32,
    }

    #[test]
    fn integral_numbers_of_any_spelling() {
        let n = |text: &str| serde_json::from_str::<N>(text).map(|v| v.n).ok();
        assert_eq!(n(r#"{"n": 27}"#), Some(27));
        assert_eq!(n(r#"{"n": 27.0}"#), Some(27));
        assert_eq!(n(r#"{"n": 2.7e1}"#), Some(27));
        assert_eq!(n(r#"{"n": 27.5}"#), None);
        assert_eq!(n(r#"{"n": -1}"#), None);
        assert_eq!(n(r#"{"n": 4294967296}"#), None, "past u32");
        assert_eq!(n(r#"{"n": "27"}"#), None);
        let big = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| super::integer::<_, u64>(v["n"].clone()).ok())
        };
        assert_eq!(big(r#"{"n": 18446744073709551615}"#), Some(u64::MAX));
        assert_eq!(big(r#"{"n": 18446744073709551616}"#), None, "2^64 does not saturate");
    }
}
