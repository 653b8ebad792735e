//! `/v1/chat/completions` through the cache, and the cache-aside API.
//!
//! Order of a request: exact key → near-duplicate (same tenant, model and parameters, within
//! the SimHash distance, guards passed) → upstream. Upstream errors pass through unchanged and
//! are never cached; a streamed miss is passed through as it arrives and cached once complete.

use super::memo::{BodyMemo, Memo};
use super::stats::{Cost, Outcome};
use super::{CasMeta, CasOp, CasRow, sse, ttl_micros};
use crate::Daena;
use crate::auth::Principal;
use crate::clock::rfc3339;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::state::Op;
use bytes::Bytes;
use daena_core::cas::{self, Keys};
use daena_core::ids::ClassName;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Per-request cache controls (from `Cache-Control` and Daena's headers).
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// `Cache-Control: no-cache`: skip lookups, go upstream.
    pub no_cache: bool,
    /// `Cache-Control: no-store`: do not store the answer.
    pub no_store: bool,
    /// `X-Daena-Near-Duplicates: off` switches near-duplicate matching off.
    pub near_off: bool,
    /// `X-Daena-Class`: the data class of the request (near-duplicates may be off for it).
    pub class: Option<String>,
    /// `X-Agent-ID`, for cost attribution.
    pub agent: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Near(u32),
    Miss,
    Bypass,
}

impl CacheStatus {
    /// Its name: `hit`, `near`, `miss` or `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Near(_) => "near",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }

    /// Answered from the cache (exactly or as a near duplicate), not by the upstream.
    pub fn served_from_cache(self) -> bool {
        matches!(self, CacheStatus::Hit | CacheStatus::Near(_))
    }
}

pub enum Body {
    Json(Value),
    /// JSON text as stored (cache hits), sent without re-serializing.
    JsonBytes(Bytes),
    /// An upstream answer passed through as is (errors, non-JSON).
    Raw {
        status: u16,
        content_type: String,
        bytes: Bytes,
    },
    /// Server-sent events.
    Stream(BoxStream<'static, Result<Bytes, std::io::Error>>),
}

pub struct ChatResponse {
    pub status: CacheStatus,
    /// The entry served or stored (hex), for `POST /api/v1/cas/feedback`.
    pub key: Option<String>,
    pub body: Body,
}

/// A validated chat request and its keys.
struct Prepared {
    map: Map<String, Value>,
    keys: Keys,
    model: String,
    stream: bool,
    include_usage: bool,
    near: bool,
    agent: String,
    class: Option<String>,
}

fn prepare(d: &Daena, who: &Principal, request: Value, opts: &ChatOptions) -> AppResult<Prepared> {
    let Value::Object(map) = request else { return Err(AppError::invalid("the request must be a JSON object")) };
    let model = match map.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() && m.chars().count() <= 256 => m.clone(),
        _ => return Err(AppError::invalid("model must be a non-empty string")),
    };
    let messages =
        map.get("messages").and_then(Value::as_array).ok_or_else(|| AppError::invalid("messages must be an array"))?;
    if messages.is_empty() {
        return Err(AppError::invalid("messages must not be empty"));
    }
    for (i, m) in messages.iter().enumerate() {
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(AppError::invalid(format!("messages[{i}].role must be a string")));
        }
    }
    let (class, agent) = caller(who, opts)?;
    let cas_cfg = &d.config().memory.cas;
    let tenant_near =
        cas_cfg.tenants.get(who.tenant()).and_then(|t| t.near_duplicates).unwrap_or(cas_cfg.near_duplicates);
    let class_near = class.as_ref().is_none_or(|c| !d.config().memory.class(c).disable_near_duplicates);
    let keys = cas::keys(who.tenant().as_str(), &map);
    Ok(Prepared {
        stream: map.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: map
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        near: tenant_near && class_near && !opts.near_off,
        map,
        keys,
        model,
        agent,
        class: class.map(|c| c.to_string()),
    })
}

/// The request's data class (`X-Daena-Class`) and the agent its cost is put down to
/// (`X-Agent-ID`, else the API key's name), validated.
fn caller(who: &Principal, opts: &ChatOptions) -> AppResult<(Option<ClassName>, String)> {
    let class = opts.class.as_deref().map(ClassName::new).transpose()?;
    Ok((class, who.acting_agent(opts.agent.as_deref())?))
}

fn today(d: &Daena) -> String {
    d.cas().today()
}

/// What `meta`'s answer would have cost upstream.
fn saving(meta: &CasMeta) -> Cost {
    let (saved_usd, client_reported_saved_usd) =
        if meta.client_reported { (0.0, meta.cost_usd) } else { (meta.cost_usd, 0.0) };
    Cost {
        requests: 1,
        hits: 1,
        saved_usd,
        client_reported_saved_usd,
        tokens_saved: meta.prompt_tokens.saturating_add(meta.completion_tokens),
        ..Cost::default()
    }
}

/// Prices `usage` for `model`: (prompt tokens, completion tokens, USD, usage present).
fn price(d: &Daena, model: &str, usage: Option<&Value>) -> (u64, u64, f64, bool) {
    let Some(u) = usage.filter(|u| u.is_object()) else { return (0, 0, 0.0, false) };
    let pt = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
    let ct = u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0);
    let cost = d
        .config()
        .llm
        .prices
        .get(model)
        .map_or(0.0, |p| pt as f64 * p.input_per_million / 1e6 + ct as f64 * p.output_per_million / 1e6);
    (pt, ct, cost, true)
}

/// Looks the request up: exact, then near. Counts guard refusals.
fn lookup_prepared(d: &Daena, who: &Principal, p: &Prepared) -> Option<(Arc<CasMeta>, CacheStatus)> {
    let tenant = who.tenant().as_str();
    if let Some(meta) = d.cas().get(tenant, &p.keys.exact) {
        return Some((meta, CacheStatus::Hit));
    }
    if !p.near {
        return None;
    }
    let max = cas::max_distance(d.config().memory.simhash_threshold);
    let mut refused = false;
    let guard = p.keys.guard();
    for (meta, dist) in d.cas().near(tenant, p.keys.scope, p.keys.simhash(), max) {
        if meta.guard == guard {
            return Some((meta, CacheStatus::Near(dist)));
        }
        refused = true;
    }
    if refused {
        d.cas().stats.lock().guard_refused(tenant);
    }
    None
}

fn count_hit(d: &Daena, who: &Principal, model: &str, agent: &str, meta: &CasMeta, status: CacheStatus) {
    meta.hits.fetch_add(1, Ordering::Relaxed);
    d.cas().stats.lock().record(
        who.tenant().as_str(),
        if let CacheStatus::Near(x) = status { Outcome::Near(x) } else { Outcome::Exact },
    );
    add_cost(d, who, model, agent, &saving(meta));
}

/// What serving a hit needs from the request.
struct HitFor<'a> {
    model: &'a str,
    agent: &'a str,
    stream: bool,
    include_usage: bool,
}

/// Serves `meta`'s answer: the stored JSON as is, or replayed as server-sent events.
fn serve_hit(d: &Daena, who: &Principal, meta: &CasMeta, status: CacheStatus, req: HitFor) -> AppResult<ChatResponse> {
    let bytes = d.cas().response_bytes(meta)?;
    count_hit(d, who, req.model, req.agent, meta, status);
    let key = Some(hex::encode(meta.key));
    let body = if req.stream {
        let response: Value = serde_json::from_slice(&bytes)
            .map_err(|e| AppError::internal(format!("cached response is not JSON: {e}")))?;
        let events: Vec<Result<Bytes, std::io::Error>> =
            sse::replay(&response, req.include_usage).into_iter().map(|e| Ok(Bytes::from(e))).collect();
        Body::Stream(futures_util::stream::iter(events).boxed())
    } else {
        Body::JsonBytes(bytes)
    };
    Ok(ChatResponse { status, key, body })
}

/// Serves a chat completion from the cache or the upstream.
///
/// `body` is the request's JSON text. A body the proxy has seen before from this tenant is
/// looked up by its digest ([`super::memo`]) without parsing; anything but an exact hit
/// that way takes the full path below.
pub async fn complete(d: &Arc<Daena>, who: &Principal, body: Bytes, opts: ChatOptions) -> AppResult<ChatResponse> {
    let digest = (!opts.no_cache).then(|| BodyMemo::digest(who.tenant().as_str(), &body));
    if let Some(memo) = digest.as_ref().and_then(|dg| d.cas().memo.get(dg)) {
        let (_, agent) = caller(who, &opts)?;
        if let Some(meta) = d.cas().get(who.tenant().as_str(), &memo.exact) {
            let req =
                HitFor { model: &memo.model, agent: &agent, stream: memo.stream, include_usage: memo.include_usage };
            return serve_hit(d, who, &meta, CacheStatus::Hit, req);
        }
    }
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| AppError::new(ErrorCode::InvalidJson, format!("the request body is not valid JSON: {e}")))?;
    let p = prepare(d, who, request, &opts)?;
    if let Some(dg) = digest {
        let memo = Memo {
            exact: p.keys.exact,
            model: Arc::from(p.model.as_str()),
            stream: p.stream,
            include_usage: p.include_usage,
        };
        d.cas().memo.insert(dg, memo);
    }
    if !opts.no_cache
        && let Some((meta, status)) = lookup_prepared(d, who, &p)
    {
        let req = HitFor { model: &p.model, agent: &p.agent, stream: p.stream, include_usage: p.include_usage };
        return serve_hit(d, who, &meta, status, req);
    }
    let status = if opts.no_cache { CacheStatus::Bypass } else { CacheStatus::Miss };
    let Some(base) = d.config().llm.upstream_url.clone() else {
        d.cas().stats.lock().record(who.tenant().as_str(), Outcome::UpstreamError);
        return Err(AppError::new(
            ErrorCode::UpstreamNotConfigured,
            "no upstream model is configured (llm.upstream_url); cached answers are still served, this request was not in the cache",
        ));
    };
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let mut req = d.cas().http.post(&url).json(&Value::Object(p.map.clone()));
    if let Some(k) = &d.cas().upstream_key {
        req = req.bearer_auth(k.expose());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            d.cas().stats.lock().record(who.tenant().as_str(), Outcome::UpstreamError);
            return Err(AppError::new(
                ErrorCode::UpstreamError,
                format!("the upstream model endpoint failed: {}", without_url(e)),
            ));
        }
    };
    let code = resp.status().as_u16();
    let content_type =
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_owned();
    if !(200..300).contains(&code) {
        // An error answer is passed through, cut at ERROR_BODY_LIMIT: a failing upstream
        // must not make the service buffer an unbounded body.
        let bytes = read_capped(resp, ERROR_BODY_LIMIT).await;
        d.cas().stats.lock().record(who.tenant().as_str(), Outcome::UpstreamError);
        return Ok(ChatResponse { status, key: None, body: Body::Raw { status: code, content_type, bytes } });
    }
    let outcome = if opts.no_cache { Outcome::Bypass } else { Outcome::Miss };
    if p.stream && content_type.starts_with("text/event-stream") {
        d.cas().stats.lock().record(who.tenant().as_str(), outcome);
        let no_store = opts.no_store || !d.writes_enabled();
        return Ok(ChatResponse {
            status,
            key: None,
            body: Body::Stream(stream_through(d.clone(), who.clone(), p, resp, no_store)),
        });
    }
    let max = d.config().llm.max_response_bytes;
    // Counted once the answer is in hand: one that cannot be read is an upstream error.
    let bytes = match read_limited(resp, max).await {
        Ok(b) => b,
        Err(e) => {
            d.cas().stats.lock().record(who.tenant().as_str(), Outcome::UpstreamError);
            return Err(e);
        }
    };
    let Ok(answer) = serde_json::from_slice::<Value>(&bytes) else {
        d.cas().stats.lock().record(who.tenant().as_str(), Outcome::UpstreamError);
        return Err(AppError::new(
            ErrorCode::UpstreamError,
            format!(
                "the upstream answered {code} with a body that is not JSON ({} bytes, {content_type})",
                bytes.len()
            ),
        ));
    };
    d.cas().stats.lock().record(who.tenant().as_str(), outcome);
    // Read-only mode still answers misses from the upstream, without storing them.
    let key = account_and_store(d, who, &p, &answer, opts.no_store || !d.writes_enabled()).await;
    Ok(ChatResponse { status, key, body: Body::Json(answer) })
}

/// The error text of a failed upstream call, without the URL (which may carry credentials).
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind} ({})", e.without_url())
}

/// The most of an upstream error answer passed on.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The first `max` bytes of a body (less if it ends or fails first).
async fn read_capped(resp: reqwest::Response, max: usize) -> Bytes {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = max - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    Bytes::from(out)
}

async fn read_limited(resp: reqwest::Response, max: usize) -> AppResult<Bytes> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            AppError::new(ErrorCode::UpstreamError, format!("reading the upstream answer: {}", without_url(e)))
        })?;
        if out.len() + chunk.len() > max {
            return Err(AppError::new(
                ErrorCode::UpstreamError,
                format!("the upstream answer exceeds llm.max_response_bytes ({max})"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// Counts an answer the upstream gave (spend, tokens, missing usage) for the tenant, model and
/// agent; returns (prompt tokens, completion tokens, cost).
fn count_miss(d: &Daena, who: &Principal, p: &Prepared, answer: &Value) -> (u64, u64, f64) {
    let (pt, ct, cost, has_usage) = price(d, &p.model, answer.get("usage"));
    let spend = Cost {
        requests: 1,
        misses: 1,
        spend_usd: cost,
        prompt_tokens: pt,
        completion_tokens: ct,
        usage_missing: u64::from(!has_usage),
        ..Cost::default()
    };
    add_cost(d, who, &p.model, &p.agent, &spend);
    (pt, ct, cost)
}

/// Adds to the costs of today, this tenant, `model` and `agent` (bounded per tenant).
fn add_cost(d: &Daena, who: &Principal, model: &str, agent: &str, add: &Cost) {
    let bounds = super::stats::CostBounds { agents: d.config().agents.max_tracked_per_tenant, models: UNPRICED_MODELS };
    let priced = d.config().llm.prices.contains_key(model);
    let key = super::stats::CostKey {
        day: today(d),
        tenant: who.tenant().to_string(),
        model: model.to_owned(),
        agent: agent.to_owned(),
    };
    d.cas().stats.lock().cost(key, priced, add, bounds);
}

/// Models without a price whose costs are kept apart per tenant; more are `(other)`.
const UNPRICED_MODELS: usize = 32;

/// Counts the spend of an upstream answer and stores it (unless `no_store`); the entry key.
async fn account_and_store(d: &Daena, who: &Principal, p: &Prepared, answer: &Value, no_store: bool) -> Option<String> {
    let (pt, ct, cost) = count_miss(d, who, p, answer);
    if no_store || answer.get("choices").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        return None;
    }
    let usage = Usage { prompt_tokens: pt, completion_tokens: ct, cost_usd: cost, client_reported: false };
    match store_answer(d, who, p, answer, usage).await {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e.message, "storing an upstream answer in the cache failed");
            None
        }
    }
}

/// An answer's usage as it is stored with it.
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    /// A client's word (cache-aside store), not an upstream's answer through Daena.
    client_reported: bool,
}

async fn store_answer(d: &Daena, who: &Principal, p: &Prepared, answer: &Value, usage: Usage) -> AppResult<String> {
    let Usage { prompt_tokens: pt, completion_tokens: ct, cost_usd: cost, client_reported } = usage;
    let now = d.clock().now().0;
    let envelope = d.cas().seal(who.tenant(), &p.keys.exact, answer)?;
    let row = CasRow {
        format: super::ROW_FORMAT,
        model: p.model.clone(),
        scope: p.keys.scope,
        simhash: p.keys.simhash(),
        guard: p.keys.guard(),
        // Keyed, like a record's content hash in the ledger: it tells repeated prompts apart
        // for diagnostics without confirming a guessed prompt.
        prompt_hash: d.governance().data_keys().content_mac(who.tenant(), p.keys.text.as_bytes())?.1,
        created_at: now,
        expires_at: now + ttl_micros(d.config(), who.tenant()),
        prompt_tokens: pt,
        completion_tokens: ct,
        cost_usd: cost,
        agent: Some(p.agent.clone()),
        class: p.class.clone(),
        envelope,
        client_reported,
    };
    let op =
        CasOp::Store { tenant: who.tenant().to_string(), key: p.keys.exact, row: Box::new(row), actor: who.actor() };
    d.commit().submit(Op::from(op)).await?;
    d.cas().stats.lock().stored(who.tenant().as_str());
    Ok(hex::encode(p.keys.exact))
}

/// Passes an upstream event stream through while assembling it; stores it when complete.
fn stream_through(
    d: Arc<Daena>,
    who: Principal,
    p: Prepared,
    resp: reqwest::Response,
    no_store: bool,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let assembler = Arc::new(parking_lot::Mutex::new(Some(sse::Assembler::default())));
    let feed = assembler.clone();
    let max = d.config().llm.max_response_bytes;
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = resp.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| std::io::Error::other(without_url(e)))?;
        if seen.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len() > max {
            // Too large to cache; keep passing it through.
            feed.lock().take();
        } else if let Some(a) = feed.lock().as_mut() {
            a.push(&chunk);
        }
        Ok(chunk)
    });
    let finish = futures_util::stream::once(async move {
        let complete = assembler.lock().take().and_then(sse::Assembler::finish);
        if let Some(answer) = complete {
            let key = account_and_store(&d, &who, &p, &answer, no_store).await;
            tracing::debug!(stored = key.is_some(), "streamed answer assembled");
        }
        Ok::<Bytes, std::io::Error>(Bytes::new())
    })
    .filter(|b: &Result<Bytes, std::io::Error>| std::future::ready(b.as_ref().map_or(true, |b| !b.is_empty())));
    body.chain(finish).boxed()
}

/// `POST /api/v1/cas/lookup`: a chat request without calling anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LookupResult {
    pub hit: bool,
    /// `hit`, `near` or `miss`.
    pub status: String,
    pub distance: Option<u32>,
    pub key: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub response: Option<Value>,
}

pub fn lookup(d: &Daena, who: &Principal, request: Value, opts: ChatOptions) -> AppResult<LookupResult> {
    let p = prepare(d, who, request, &opts)?;
    match lookup_prepared(d, who, &p) {
        Some((meta, status)) => {
            let response = d.cas().response(&meta)?;
            count_hit(d, who, &p.model, &p.agent, &meta, status);
            Ok(LookupResult {
                hit: true,
                status: status.as_str().to_owned(),
                distance: if let CacheStatus::Near(x) = status { Some(x) } else { Some(0) },
                key: Some(hex::encode(meta.key)),
                response: Some(response),
            })
        }
        None => {
            d.cas().stats.lock().record(who.tenant().as_str(), Outcome::Miss);
            Ok(LookupResult { hit: false, status: "miss".into(), distance: None, key: None, response: None })
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreResult {
    pub key: String,
    pub expires_at: String,
}

/// `POST /api/v1/cas/store`: an answer the client got from a model itself.
pub async fn store(
    d: &Daena,
    who: &Principal,
    request: Value,
    response: Value,
    opts: ChatOptions,
) -> AppResult<StoreResult> {
    let p = prepare(d, who, request, &opts)?;
    if response.get("choices").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        return Err(AppError::invalid("response must be a chat completion with choices"));
    }
    if !d.writes_enabled() {
        return Err(AppError::new(ErrorCode::WritesDisabled, "the service is read-only; nothing is stored"));
    }
    // The usage is the client's word: its cost is kept apart from spend.
    let (pt, ct, cost, has_usage) = price(d, &p.model, response.get("usage"));
    let reported = Cost {
        requests: 1,
        misses: 1,
        client_reported_spend_usd: cost,
        usage_missing: u64::from(!has_usage),
        ..Cost::default()
    };
    add_cost(d, who, &p.model, &p.agent, &reported);
    let usage = Usage { prompt_tokens: pt, completion_tokens: ct, cost_usd: cost, client_reported: true };
    let key = store_answer(d, who, &p, &response, usage).await?;
    let expires = d.clock().now().saturating_add(ttl_micros(d.config(), who.tenant()));
    Ok(StoreResult { key, expires_at: rfc3339(expires) })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedbackResult {
    pub evicted: bool,
    pub key: String,
}

/// `POST /api/v1/cas/feedback`: a served entry was wrong; it is evicted and counted.
pub async fn feedback(d: &Daena, who: &Principal, key_hex: &str, reason: Option<&str>) -> AppResult<FeedbackResult> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(key_hex.trim(), &mut key)
        .map_err(|_| AppError::invalid("key must be the 64 hex digits of X-Daena-Cache-Key"))?;
    let tenant = who.tenant().to_string();
    if d.cas().get(&tenant, &key).is_none() {
        return Err(AppError::not_found("no such cache entry for this tenant (already evicted or expired?)"));
    }
    d.cas().stats.lock().false_positive(&tenant);
    let op = CasOp::Evict { tenant, key, reason: "feedback", actor: who.actor() };
    d.commit().submit(Op::from(op)).await?;
    if let Some(r) = reason {
        tracing::info!(reason = %r.chars().take(200).collect::<String>(), "cache entry reported wrong and evicted");
    }
    Ok(FeedbackResult { evicted: true, key: key_hex.trim().to_owned() })
}

/// Evicts expired entries (scheduler); returns how many.
pub async fn sweep_expired(d: &Daena) -> AppResult<usize> {
    let now = d.clock().now().0;
    let expired: Vec<Arc<CasMeta>> = d.cas().all().into_iter().filter(|m| m.expires_at <= now).collect();
    let mut n = 0;
    for m in expired {
        let op = CasOp::Evict { tenant: m.tenant.clone(), key: m.key, reason: "ttl", actor: "system:cas".into() };
        if d.commit().submit(Op::from(op)).await.is_ok() {
            n += 1;
        }
    }
    Ok(n)
}
