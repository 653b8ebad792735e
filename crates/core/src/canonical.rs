//! Canonical JSON for hashing: one byte string per JSON value.
//!
//! Object keys are sorted by their UTF-8 bytes, there is no whitespace, strings escape only
//! `"`, `\` and control characters (as `\b \f \n \r \t`, else `\u00xx` lowercase) and keep
//! every other character as raw UTF-8, and numbers are written as `serde_json` writes them
//! (integers exactly, floats as the shortest text that round-trips, e.g. `0.1`, `1.0`,
//! `1e+16`). `docs/FORMATS.md` has test vectors.

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
        Value::Number(n) => out.push_str(&n.to_string()),
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
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write(&map[k], out);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal with minimal escaping.
pub fn write_str(s: &str, out: &mut String) {
    out.push('"');
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
}
