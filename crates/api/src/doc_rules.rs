//! The limits the server enforces on identifiers and fields, written into the OpenAPI
//! document in one place, so that the document admits what the server accepts and nothing it
//! refuses: clients generated from it, and property-based testers such as Schemathesis, send
//! requests the server takes.
//!
//! Parameters are constrained by where they are and their name (`class` in a path is always a
//! data class); body fields by their schema and property name. The patterns are the ones the
//! validators in `daena_core::ids` implement.

use daena_core::ids::{AGENT_PATTERN, CLASS_PATTERN, RECORD_KEY_PATTERN, TENANT_PATTERN};
use serde_json::{Value, json};

/// (location, name) of a parameter, and what to add to its schema.
fn parameter_rules() -> Vec<((&'static str, &'static str), Value)> {
    let departments: Vec<&str> = daena_core::agents::DEPARTMENTS.iter().map(|(slug, _)| *slug).collect();
    vec![
        (("path", "class"), json!({"pattern": CLASS_PATTERN})),
        (("query", "class"), json!({"pattern": CLASS_PATTERN})),
        // An empty header is taken as absent.
        (("header", "X-Daena-Class"), json!({"pattern": format!("^$|{CLASS_PATTERN}")})),
        (("path", "key"), json!({"pattern": RECORD_KEY_PATTERN})),
        (("query", "prefix"), json!({"pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]{0,512}$"})),
        (("path", "tenant"), json!({"pattern": TENANT_PATTERN})),
        (("query", "tenant"), json!({"pattern": TENANT_PATTERN})),
        (("header", "X-Agent-ID"), json!({"pattern": format!("^$|{AGENT_PATTERN}")})),
        (("query", "agent_id"), json!({"pattern": AGENT_PATTERN})),
        (("query", "department"), json!({"enum": departments})),
        // `3`, `"3"` or `W/"3"`: a record version.
        (("header", "If-Match"), json!({"pattern": "^(W/)?\"?[0-9]{1,19}\"?$"})),
        (("query", "limit"), json!({"minimum": 1, "maximum": 1000})),
        (("query", "seq"), json!({"minimum": 1})),
        // `next_cursor`: a position in key order, hex.
        (("query", "cursor"), json!({"pattern": "^([0-9a-fA-F]{2})*$"})),
    ]
}

/// (schema, property) of a body field, and what to add to its schema.
fn property_rules() -> Vec<((&'static str, &'static str), Value)> {
    // A ledger sequence number or an RFC 3339 time.
    let seq_or_time = json!({"anyOf": [{"pattern": "^[0-9]{1,19}$"}, {"format": "date-time"}]});
    let printable =
        |max: u32| json!({"minLength": 1, "maxLength": max, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"});
    vec![
        (("ArchiveRequest", "tenant"), json!({"pattern": TENANT_PATTERN})),
        (("ShredRequest", "confirm"), json!({"pattern": TENANT_PATTERN})),
        (("CreateKeyRequest", "tenant"), json!({"pattern": TENANT_PATTERN})),
        (("CreateKeyRequest", "role"), json!({"enum": ["ops", "auditor", "agent"]})),
        // Trimmed by the server: no whitespace at either end.
        (
            ("CreateKeyRequest", "name"),
            json!({"maxLength": 128, "pattern": "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]([^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f])?$"}),
        ),
        (("CreateKeyRequest", "agent"), json!({"pattern": AGENT_PATTERN})),
        (
            ("CreateKeyRequest", "roles"),
            json!({"items": {"type": "string", "pattern": "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]+$"}}),
        ),
        (("ConfirmBody", "agent_id"), json!({"pattern": AGENT_PATTERN})),
        (("Interaction", "from"), json!({"pattern": AGENT_PATTERN})),
        (("Interaction", "to"), json!({"pattern": AGENT_PATTERN})),
        (("Interaction", "kind"), printable(64)),
        (("Interaction", "latency_ms"), json!({"minimum": 0, "maximum": 86_400_000})),
        (("Interaction", "cost_usd"), json!({"minimum": 0, "maximum": daena_app::analytics::MAX_COST_USD})),
        (("Interaction", "tokens"), json!({"maximum": daena_app::analytics::MAX_TOKENS})),
        (("FeedbackBody", "key"), json!({"pattern": "^[0-9a-fA-F]{64}$"})),
        (("DrillRecord", "snapshot"), json!({"minLength": 1, "maxLength": 200})),
        (("DrillRecord", "failed_checks"), json!({"maxItems": 100})),
        (("DrillRecord", "rto_seconds"), json!({"minimum": 0})),
        (("DrillRecord", "rpo_seconds"), json!({"minimum": 0})),
        (("LimitView", "rpm"), json!({"minimum": 1})),
        (("LimitView", "burst"), json!({"minimum": 1})),
        (
            ("StoreBody", "response"),
            json!({"required": ["choices"], "properties": {"choices": {"type": "array", "minItems": 1}}}),
        ),
        (("Interaction", "at"), json!({"format": "date-time"})),
        (("RestoreRequest", "snapshot"), json!({"pattern": "^(latest|/.*)$"})),
        (("ReplayRequest", "ledger"), json!({"pattern": "^/"})),
        (("ReplayRequest", "from_snapshot"), json!({"pattern": "^/"})),
        (("RollbackRequest", "to"), seq_or_time.clone()),
        (("ReplayRequest", "to"), seq_or_time),
    ]
}

/// Rules across fields of one schema (JSON Schema `if`/`then`).
fn schema_rules() -> Vec<(&'static str, Value)> {
    let only = |role: &str, field: &str, value: Value| {
        json!({"if": {"required": ["role"], "properties": {"role": {"not": {"const": role}}}},
               "then": {"properties": {field: value}}})
    };
    vec![(
        "CreateKeyRequest",
        // Only agent keys are bound to an agent; only auditor keys are granted every tenant.
        json!({"allOf": [only("agent", "agent", json!({"type": "null"})), only("auditor", "all_tenants", json!({"const": false}))]}),
    )]
}

/// `allOf` of object schemas written as one object: a part with `additionalProperties:
/// false` would otherwise refuse the other parts' fields (`LastDrill` is a `DrillRecord` with
/// `at` and `seq`).
fn flatten_all_of(schemas: &mut serde_json::Map<String, Value>) {
    let names: Vec<String> = schemas.keys().cloned().collect();
    for name in names {
        let Some(parts) = schemas[&name].get("allOf").and_then(Value::as_array).cloned() else { continue };
        let mut merged = json!({"type": "object", "properties": {}, "required": []});
        for part in &parts {
            let part = match part.get("$ref").and_then(Value::as_str) {
                Some(r) => schemas.get(r.trim_start_matches("#/components/schemas/")).cloned().unwrap_or_default(),
                None => part.clone(),
            };
            if let (Some(into), Some(from)) = (merged["properties"].as_object_mut(), part["properties"].as_object()) {
                into.extend(from.clone());
            }
            if let (Some(into), Some(from)) = (merged["required"].as_array_mut(), part["required"].as_array()) {
                into.extend(from.iter().cloned());
            }
        }
        if let Some(d) = schemas[&name].get("description").cloned() {
            merged["description"] = d;
        }
        schemas.insert(name, merged);
    }
}

/// Unsigned integers as the server reads them: `u32` and `u64` up to their own maximum
/// (the `int32`/`int64` formats would say signed).
fn unsigned(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let integer = map
                .get("type")
                .is_some_and(|t| t == "integer" || t.as_array().is_some_and(|a| a.contains(&json!("integer"))));
            if integer && map.get("minimum") == Some(&json!(0)) {
                let max = match map.get("format").and_then(Value::as_str) {
                    Some("int32") => Some(json!(u32::MAX)),
                    Some("int64") => Some(json!(u64::MAX)),
                    _ => None,
                };
                if let Some(max) = max {
                    map.remove("format");
                    map.entry("maximum").or_insert(max);
                }
            }
            // Object keys are strings: a map keyed by numbers has digit strings as names.
            if map.get("propertyNames").is_some_and(|p| p["type"] == "integer") {
                map.insert("propertyNames".into(), json!({"pattern": "^[0-9]+$"}));
            }
            map.values_mut().for_each(unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned),
        _ => {}
    }
}

/// What a chat completion request must hold for the cache (`/v1/chat/completions`,
/// `/api/v1/cas/lookup`, `StoreBody.request`); other fields pass through to the upstream.
fn chat_request() -> Value {
    json!({
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "maxLength": 256, "pattern": "\\S"},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}}}
            }
        }
    })
}

/// Merges `extra` into the object `schema` (a nullable field keeps its `null`).
fn merge(schema: &mut Value, extra: &Value) {
    if let (Some(into), Some(from)) = (schema.as_object_mut(), extra.as_object()) {
        for (k, v) in from {
            into.insert(k.clone(), v.clone());
        }
    }
}

/// Writes the rules into the document (JSON).
pub fn apply(doc: &mut Value) {
    unsigned(doc);
    let params = parameter_rules();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(ops) = item.as_object_mut() else { continue };
            for (method, op) in ops.iter_mut() {
                for p in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                    let at = (
                        p["in"].as_str().unwrap_or_default().to_owned(),
                        p["name"].as_str().unwrap_or_default().to_owned(),
                    );
                    if let Some((_, extra)) =
                        params.iter().find(|((i, n), _)| (*i, *n) == (at.0.as_str(), at.1.as_str()))
                    {
                        merge(&mut p["schema"], extra);
                    }
                    // The one `id` that is an agent id (keys and operations have their own).
                    if path == "/api/v1/agents/{id}/heartbeat" && at == ("path".to_owned(), "id".to_owned()) {
                        merge(&mut p["schema"], &json!({"pattern": AGENT_PATTERN}));
                    }
                    // An optional header is absent, never `null`.
                    if at.0 == "header" {
                        p["schema"]["type"] = json!("string");
                    }
                }
                let chat = matches!(
                    (method.as_str(), path.as_str()),
                    ("post", "/v1/chat/completions") | ("post", "/api/v1/cas/lookup")
                );
                if chat && let Some(body) = op.pointer_mut("/requestBody/content/application~1json/schema") {
                    *body = chat_request();
                }
            }
        }
    }
    let rate_limited = doc.pointer("/paths/~1metrics/get/responses/429").cloned();
    for op in doc.get_mut("paths").and_then(Value::as_object_mut).into_iter().flat_map(|p| p.values_mut()) {
        for op in op.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            // Per-address limits apply before any route, anonymous ones included.
            if let (Some(responses), Some(r)) = (op.get_mut("responses").and_then(Value::as_object_mut), &rate_limited)
            {
                responses.entry("429").or_insert_with(|| r.clone());
            }
        }
    }
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else { return };
    for ((schema, property), extra) in property_rules() {
        match schemas.get_mut(schema).and_then(|s| s.pointer_mut(&format!("/properties/{property}"))) {
            Some(field) => merge(field, &extra),
            None => tracing::warn!(schema, property, "an OpenAPI rule names a field the document does not have"),
        }
    }
    flatten_all_of(schemas);
    for (schema, extra) in schema_rules() {
        if let Some(s) = schemas.get_mut(schema) {
            merge(s, &extra);
        }
    }
    // A record's payload is any JSON value, not only an object.
    for schema in ["PutBody", "RecordBody"] {
        if let Some(payload) = schemas.get_mut(schema).and_then(|s| s.pointer_mut("/properties/payload")) {
            *payload = json!({"description": "Any JSON value."});
        }
    }
    if let Some(request) = schemas.get_mut("StoreBody").and_then(|s| s.pointer_mut("/properties/request")) {
        *request = chat_request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule names a parameter or field the document has: a renamed field would
    /// otherwise lose its limits silently.
    #[test]
    fn every_rule_finds_its_target() {
        let doc: Value = serde_json::from_str(&crate::openapi_json()).expect("document");
        let schemas = doc.pointer("/components/schemas").expect("schemas");
        for ((schema, property), _) in property_rules() {
            assert!(schemas[schema]["properties"].get(property).is_some(), "{schema}.{property}");
        }
        let mut seen = std::collections::HashSet::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("operations").values() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    seen.insert((
                        p["in"].as_str().unwrap_or_default().to_owned(),
                        p["name"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
                assert!(op["responses"].get("429").is_some(), "every route may answer 429: {op}");
            }
        }
        for ((at, name), _) in parameter_rules() {
            assert!(seen.contains(&(at.to_owned(), name.to_owned())), "{at} {name}");
        }
        assert_eq!(schemas["CreateKeyRequest"]["properties"]["tenant"]["pattern"], TENANT_PATTERN);
        assert_eq!(schemas["StoreBody"]["properties"]["request"]["required"], json!(["model", "messages"]));
    }
}
