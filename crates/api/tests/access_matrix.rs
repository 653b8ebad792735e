//! Access matrices: every route of the OpenAPI document called by each principal (anonymous,
//! an agent of tenant acme, an agent of tenant globex, an auditor of acme, ops), the answer
//! checked against the table in `access_matrix.txt`; and tenant isolation end to end: what
//! one tenant writes, another never reads, lists, counts or learns of.

mod common;

use axum::http::StatusCode;
use common::{OPS, TestApp};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const TABLE: &str = include_str!("access_matrix.txt");
const PRINCIPALS: [&str; 5] = ["anonymous", "agent-a", "agent-b", "auditor", "ops"];

/// (method, path template, expected answer per principal) from the table.
fn table() -> Vec<(String, String, Vec<String>)> {
    TABLE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 2 + PRINCIPALS.len(), "malformed row: {l}");
            (cols[0].to_owned(), cols[1].to_owned(), cols[2..].iter().map(|s| (*s).to_owned()).collect())
        })
        .collect()
}

/// A concrete request for a route: its path filled in, and a body that is harmless (a dry
/// run, or one the handler refuses after authorization).
fn request(method: &str, template: &str) -> (String, Option<Value>) {
    let path = template
        .replace("{class}", "chat")
        .replace("{key}", "k1")
        .replace("{tenant}", "acme")
        .replace("{id}", if template.starts_with("/api/v1/agents/") { "legal_synth" } else { "nope" });
    let body = match (method, template) {
        ("GET" | "DELETE", _) => None,
        (_, "/api/v1/admin/key-rotation" | "/api/v1/admin/aging/run") => Some(json!({"dry_run": true})),
        _ => Some(json!({})),
    };
    (path, body)
}

fn verdict(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "401",
        StatusCode::FORBIDDEN => "403",
        _ => "ok",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_principal_as_the_table_says() {
    let app = TestApp::new();
    let keys = [
        None,
        Some(app.key("agent-a", "agent", "acme", &[]).await),
        Some(app.key("agent-b", "agent", "globex", &[]).await),
        Some(app.key("auditor-a", "auditor", "acme", &[]).await),
        Some(OPS.to_owned()),
    ];
    let rows = table();
    // Every operation of the document has its row, and no row names a route it lacks.
    let doc: Value = serde_json::from_str(&daena_api::openapi_json()).expect("document");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("operations").keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let listed: BTreeSet<(String, String)> = rows.iter().map(|(m, p, _)| (m.clone(), p.clone())).collect();
    assert_eq!(listed.len(), rows.len(), "a route is listed twice");
    let missing: Vec<_> = documented.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&documented).collect();
    assert!(missing.is_empty() && extra.is_empty(), "table vs document: missing {missing:?}, not documented {extra:?}");

    let mut wrong = Vec::new();
    for (method, template, expected) in &rows {
        let (path, body) = request(method, template);
        for (i, key) in keys.iter().enumerate() {
            let r = app.call(method, &path, key.as_deref(), body.clone()).await;
            assert!(
                r.status.as_u16() < 500 || r.status == StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path} as {}: {} {}",
                PRINCIPALS[i],
                r.status,
                r.text()
            );
            if verdict(r.status) != expected[i] {
                wrong.push(format!(
                    "{method} {path} as {}: {} ({}), table says {}",
                    PRINCIPALS[i],
                    r.status,
                    r.text(),
                    expected[i]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{} answers differ from the table:\n{}", wrong.len(), wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_never_reads_lists_counts_or_learns_of_another() {
    let app = TestApp::new();
    let a = app.key("agent-a", "agent", "acme", &[]).await;
    let b = app.key("agent-b", "agent", "globex", &[]).await;
    let secret = "acme-only-payload-7f3a";
    let r = app.call("PUT", "/api/v1/memory/chat/plan", Some(&a), Some(json!({"payload": {"text": secret}}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let seq = r.json()["seq"].as_u64().expect("seq");

    // Memory: not readable, not listed, not addressable through X-Tenant-ID.
    let r = app.call("GET", "/api/v1/memory/chat/plan", Some(&b), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let r = app.call_as("GET", "/api/v1/memory/chat/plan", Some(&b), Some("acme"), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = app.call("GET", "/api/v1/memory", Some(&b), None).await;
    assert_eq!(r.json()["items"], json!([]), "{}", r.text());
    let r = app.call("DELETE", "/api/v1/memory/chat/plan", Some(&b), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "globex cannot delete acme's record");
    assert_eq!(app.call("GET", "/api/v1/memory/chat/plan", Some(&a), None).await.status, StatusCode::OK);

    // Ledger: globex's view holds its own entries and none of acme's, and no proof of them.
    let r = app.call("PUT", "/api/v1/memory/chat/own", Some(&b), Some(json!({"payload": 1}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let page = app.call("GET", "/api/v1/ledger/entries?limit=1000", Some(&b), None).await.json();
    let entries = page["entries"].as_array().cloned().unwrap_or_default();
    assert!(!entries.is_empty() && entries.iter().all(|e| e["tenant"] == "globex"), "{page}");
    assert!(!page.to_string().contains("plan"), "{page}");
    let r = app.call("GET", &format!("/api/v1/ledger/proof/inclusion?seq={seq}"), Some(&b), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let r = app.call("GET", "/api/v1/ledger/entries?tenant=acme", Some(&b), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());

    // LLM cache: acme's stored answer is never a hit for globex.
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is acme's plan?"}]});
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": secret}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5}});
    let r = app.call("POST", "/api/v1/cas/store", Some(&a), Some(json!({"request": chat, "response": answer}))).await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(app.call("POST", "/api/v1/cas/lookup", Some(&a), Some(chat.clone())).await.json()["hit"], true);
    let r = app.call("POST", "/api/v1/cas/lookup", Some(&b), Some(chat)).await.json();
    assert_eq!(r["hit"], false, "{r}");
    assert!(!r.to_string().contains(secret), "{r}");

    // Rate limits: another tenant's status is not globex's to read; its own is.
    let r = app.call("GET", "/api/v1/tenant-rate-limit/acme/status", Some(&b), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(app.call("GET", "/api/v1/tenant-rate-limit/globex/status", Some(&b), None).await.status, StatusCode::OK);

    // A revoked key is refused on the very next request.
    let keys = app.call("GET", "/api/v1/admin/keys", Some(OPS), None).await.json();
    let id = keys["keys"].as_array().expect("keys").iter().find(|k| k["name"] == "agent-a").expect("agent-a")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(app.call("DELETE", &format!("/api/v1/admin/keys/{id}"), Some(OPS), None).await.status, StatusCode::OK);
    assert_eq!(app.call("GET", "/api/v1/memory/chat/plan", Some(&a), None).await.status, StatusCode::UNAUTHORIZED);
}
