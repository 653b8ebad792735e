//! Reading memory: a record by address (L1, then L2, then L3, re-heating what is read often),
//! its JSON form with system fields, and listing a class.

use super::codec::Plain;
use super::state::MemoryOp;
use super::*;
use crate::Daena;
use crate::auth::Principal;
use crate::clock::rfc3339;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::policy::Action;
use crate::state::Op;
use daena_core::ids::{ClassName, RecordKey, TenantId};
use daena_core::time::Micros;
use daena_store::records::{self, RowBody, Tier};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A record as `GET` returns it.
#[derive(Debug, Clone)]
pub struct RecordView {
    pub addr: Addr,
    pub meta: RowMeta,
    pub plain: Plain,
    pub last_accessed: i64,
    pub access_count: u64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrustView {
    pub quarantined: bool,
    pub score: f32,
    pub confirmations: Vec<String>,
    pub promote_threshold: f64,
}

/// System fields as JSON (everything but payload and meta).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SystemFields {
    pub tenant: String,
    pub class: String,
    pub key: String,
    pub version: u64,
    /// `L1` when served from the hot cache, else where the record lives: `L2`, `L2Q`, `L3`.
    pub tier: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_accessed: Option<String>,
    pub access_count: u64,
    pub content_sha256: String,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    /// The ledger entry of the last change.
    pub seq: u64,
    pub trust: TrustView,
}

pub(super) fn system_fields(
    addr: &Addr,
    meta: &RowMeta,
    served: &str,
    last_accessed: i64,
    access_count: u64,
    threshold: f64,
) -> SystemFields {
    SystemFields {
        tenant: addr.tenant.to_string(),
        class: addr.class.to_string(),
        key: addr.key.to_string(),
        version: meta.version,
        tier: served.to_owned(),
        created_at: rfc3339(Micros(meta.created_at)),
        updated_at: rfc3339(Micros(meta.updated_at)),
        last_accessed: (last_accessed > 0).then(|| rfc3339(Micros(last_accessed))),
        access_count,
        content_sha256: hex::encode(meta.content_sha256),
        size_bytes: u64::from(meta.raw_len),
        stored_bytes: meta.stored_len,
        seq: meta.seq,
        trust: TrustView {
            quarantined: meta.tier == Tier::L2Q,
            score: meta.trust.as_ref().map_or(1.0, |t| t.score),
            confirmations: meta.trust.as_ref().map(|t| t.confirmations.clone()).unwrap_or_default(),
            promote_threshold: threshold,
        },
    }
}

/// The response body of `GET`: the system fields of [`SystemFields`], in its order, then
/// `payload` and `meta` spliced in as the stored JSON text. Written directly, with no
/// intermediate strings: it is on every read (`record_json_is_system_fields_serialized`
/// holds it to the serialized struct).
pub fn record_json(view: &RecordView, served: &str, threshold: f64) -> Vec<u8> {
    use daena_core::canonical::write_str;
    use std::fmt::Write;
    fn name(out: &mut String, name: &str) {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
    }
    let (addr, meta, plain) = (&view.addr, &view.meta, &view.plain);
    let mut out = String::with_capacity(480 + plain.payload.len() + plain.meta.len());
    out.push_str("{\"tenant\":");
    write_str(addr.tenant.as_str(), &mut out);
    name(&mut out, "class");
    write_str(addr.class.as_str(), &mut out);
    name(&mut out, "key");
    write_str(addr.key.as_str(), &mut out);
    name(&mut out, "version");
    let _ = write!(out, "{}", meta.version);
    name(&mut out, "tier");
    write_str(served, &mut out);
    name(&mut out, "created_at");
    write_str(&rfc3339(Micros(meta.created_at)), &mut out);
    name(&mut out, "updated_at");
    write_str(&rfc3339(Micros(meta.updated_at)), &mut out);
    name(&mut out, "last_accessed");
    if view.last_accessed > 0 {
        write_str(&rfc3339(Micros(view.last_accessed)), &mut out);
    } else {
        out.push_str("null");
    }
    name(&mut out, "access_count");
    let _ = write!(out, "{}", view.access_count);
    name(&mut out, "content_sha256");
    let mut hex = [0u8; 64];
    if hex::encode_to_slice(meta.content_sha256, &mut hex).is_ok() {
        write_str(std::str::from_utf8(&hex).unwrap_or_default(), &mut out);
    }
    name(&mut out, "size_bytes");
    let _ = write!(out, "{}", meta.raw_len);
    name(&mut out, "stored_bytes");
    let _ = write!(out, "{}", meta.stored_len);
    name(&mut out, "seq");
    let _ = write!(out, "{}", meta.seq);
    out.push_str(",\"trust\":{\"quarantined\":");
    out.push_str(if meta.tier == Tier::L2Q { "true" } else { "false" });
    name(&mut out, "score");
    // serde_json's own float text (f32 and f64 print differently).
    out.push_str(&serde_json::to_string(&meta.trust.as_ref().map_or(1.0, |t| t.score)).unwrap_or_default());
    name(&mut out, "confirmations");
    out.push('[');
    for (i, agent) in meta.trust.iter().flat_map(|t| &t.confirmations).enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(agent, &mut out);
    }
    out.push(']');
    name(&mut out, "promote_threshold");
    out.push_str(&serde_json::to_string(&threshold).unwrap_or_default());
    out.push('}');
    name(&mut out, "payload");
    out.push_str(&plain.payload);
    name(&mut out, "meta");
    out.push_str(&plain.meta);
    out.push('}');
    out.into_bytes()
}

/// Reads a record: L1, else L2/L2Q, else L3. Returns the view and the tier it came from.
pub fn get(d: &Daena, who: &Principal, class: &str, key: &str) -> AppResult<(RecordView, &'static str)> {
    let start = Instant::now();
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    check_policy(d, who, &addr.class, &format!("{class}/{key}"), Action::Read)?;
    let m = &d.memory();
    let k = addr.table_key();
    if let Some(c) = m.l1.get(&k) {
        let (last, count) = m.touch(&k, &c);
        m.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
        m.latency.l1.record(start.elapsed().as_secs_f64() * 1e3);
        maybe_reheat(d, &addr, &c.meta, &k);
        return Ok((
            RecordView { addr, meta: c.meta.clone(), plain: c.plain.clone(), last_accessed: last, access_count: count },
            "L1",
        ));
    }
    let cached = {
        let _stripe = m.stripes[m.stripe_of(&k)].read();
        match m.l1.get(&k) {
            Some(c) => c,
            None => {
                let Some(row) = m.row(&k)? else {
                    m.counters.misses.fetch_add(1, Ordering::Relaxed);
                    return Err(AppError::not_found(format!("no record {class}/{key}")));
                };
                let envelope = match &row.body {
                    RowBody::Inline(b) => b.clone(),
                    RowBody::Cold { segment, offset, len } => m.cold.read(*segment, *offset, *len)?,
                };
                let plain = codec::open(m, &addr.tenant, class, key, &envelope)?;
                let (last, count) = match m.pending_access.lock().get(&k).copied() {
                    Some(v) => v,
                    None => m.kv.access(&k)?.unwrap_or((0, 0)),
                };
                // Reads from before this record was created were of an earlier record at this
                // address, deleted since; its statistics may not be cleared yet.
                let (last, count) = if last < row.created_at { (0, 0) } else { (last, count) };
                let c = Arc::new(Cached::new(RowMeta::of(&row), plain, last, count));
                m.l1.insert(k.clone(), c.clone());
                c
            }
        }
    };
    let (last, count) = m.touch(&k, &cached);
    let tier = cached.meta.tier;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if tier == Tier::L3 {
        m.counters.l3_hits.fetch_add(1, Ordering::Relaxed);
        m.latency.l3.record(ms);
    } else {
        m.counters.l2_hits.fetch_add(1, Ordering::Relaxed);
        m.latency.l2.record(ms);
    }
    maybe_reheat(d, &addr, &cached.meta, &k);
    Ok((
        RecordView {
            addr,
            meta: cached.meta.clone(),
            plain: cached.plain.clone(),
            last_accessed: last,
            access_count: count,
        },
        tier.as_str(),
    ))
}

/// Counts a read of an L3 record and moves it back to L2 after `promote_after_accesses`.
pub(super) fn maybe_reheat(d: &Daena, addr: &Addr, meta: &RowMeta, key: &[u8]) {
    if meta.tier != Tier::L3 || !d.writes_enabled() {
        return;
    }
    let reads = {
        let mut l3 = d.memory().l3_reads.lock();
        let n = l3.entry(key.to_vec()).or_default();
        *n += 1;
        *n
    };
    if reads < d.config().memory.promote_after_accesses {
        return;
    }
    d.memory().l3_reads.lock().remove(key);
    let op = MemoryOp::Reheat { addr: addr.clone(), expect_seq: meta.seq, reads };
    let commit = d.commit().clone();
    tokio::spawn(async move {
        if let Err(e) = commit.submit(Op::from(op)).await
            && e.code != ErrorCode::VersionConflict
        {
            tracing::warn!(error = %e.message, "moving a record back from L3 failed");
        }
    });
}

/// Reads a record by its table key as the local operator of its tenant, for the offline
/// tools that walk every record (archives, drills, key validation); errors name the record.
pub fn get_stored(d: &Daena, table_key: &[u8]) -> AppResult<RecordView> {
    let (t, c, k) = records::split_key(table_key).ok_or_else(|| {
        AppError::internal(format!("a record address is malformed: {:?}", String::from_utf8_lossy(table_key)))
    })?;
    let who = Principal::local_operator(TenantId::new(t)?);
    get(d, &who, c, k)
        .map(|(view, _)| view)
        .map_err(|e| AppError { message: format!("{t}/{c}/{k}: {}", e.message), ..e })
}

/// The current (version, body) of the record at `addr` (`table_key`), from L1 or L2/L3.
pub(super) fn get_current(d: &Daena, addr: &Addr, table_key: &[u8]) -> AppResult<Option<(u64, Plain)>> {
    if let Some(c) = d.memory().l1.get(table_key) {
        return Ok(Some((c.meta.version, c.plain.clone())));
    }
    let Some(row) = d.memory().row(table_key)? else { return Ok(None) };
    let envelope = match &row.body {
        RowBody::Inline(b) => b.clone(),
        RowBody::Cold { segment, offset, len } => d.memory().cold.read(*segment, *offset, *len)?,
    };
    let plain = codec::open(d.memory(), &addr.tenant, addr.class.as_str(), addr.key.as_str(), &envelope)?;
    Ok(Some((row.version, plain)))
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub class: Option<String>,
    pub prefix: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListItem {
    pub class: String,
    pub key: String,
    pub version: u64,
    pub tier: String,
    pub updated_at: String,
    pub size_bytes: u64,
    pub content_sha256: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListPage {
    pub items: Vec<ListItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Lists the caller tenant's records (system fields only), in key order.
pub async fn list(d: &Daena, who: &Principal, q: ListQuery) -> AppResult<ListPage> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(AppError::invalid("limit must be 1..=1000"));
    }
    let class = q.class.as_deref().map(ClassName::new).transpose()?;
    if let Some(p) = &q.prefix
        && (p.chars().count() > daena_core::ids::RecordKey::MAX_LEN || p.chars().any(char::is_control))
    {
        return Err(AppError::invalid("prefix: at most 512 characters, no control characters"));
    }
    // With a class the prefix narrows the scan; without one it filters every class's keys.
    let key_prefix = if class.is_none() { q.prefix.clone() } else { None };
    if let Some(c) = &class {
        check_policy(d, who, c, &format!("{c}/*"), Action::List)?;
    }
    let mut prefix = records::tenant_prefix(who.tenant().as_str());
    if let Some(c) = &class {
        prefix.extend_from_slice(c.as_str().as_bytes());
        prefix.push(0);
        if let Some(p) = &q.prefix {
            prefix.extend_from_slice(p.as_bytes());
        }
    }
    let after = match &q.cursor {
        Some(c) => Some(hex::decode(c).map_err(|_| AppError::invalid("cursor must be hex, as next_cursor is"))?),
        None => None,
    };
    // A cursor is a position in key order: the scan starts after it and never leaves the
    // tenant's (and class's) prefix, wherever the cursor points.
    // Rows written in the last moments may still be in the overlay; put them in redb first.
    d.commit().settle().await?;
    let mut items = Vec::new();
    let mut next = None;
    let mut allowed: HashMap<String, bool> = HashMap::new();
    d.memory().kv.scan_records(&prefix, after.as_deref(), |k, row| {
        let Some((_, c, key)) = records::split_key(k) else { return Ok(true) };
        if key_prefix.as_deref().is_some_and(|p| !key.starts_with(p)) {
            return Ok(true);
        }
        let ok = *allowed.entry(c.to_owned()).or_insert_with(|| {
            ClassName::new(c).map(|cn| d.governance().policy().decide(who, &cn, Action::List).allowed).unwrap_or(false)
        });
        if !ok {
            return Ok(true);
        }
        if items.len() == limit {
            next = Some(hex::encode(k));
            return Ok(false);
        }
        items.push(ListItem {
            class: c.to_owned(),
            key: key.to_owned(),
            version: row.version,
            tier: row.tier.as_str().to_owned(),
            updated_at: rfc3339(Micros(row.updated_at)),
            size_bytes: u64::from(row.raw_len),
            content_sha256: hex::encode(row.content_sha256),
        });
        Ok(true)
    })?;
    // `next` names the first key of the next page; the scan resumes after the last item.
    let next_cursor =
        next.and(items.last().map(|i| hex::encode(records::address_key(who.tenant().as_str(), &i.class, &i.key))));
    Ok(ListPage { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use daena_core::ids::TenantId;

    /// The reference: the serialized [`SystemFields`] with payload and meta spliced in.
    fn serialized(view: &RecordView, served: &str, threshold: f64) -> String {
        let fields = system_fields(&view.addr, &view.meta, served, view.last_accessed, view.access_count, threshold);
        let mut out = serde_json::to_string(&fields).expect("fields serialize");
        out.pop();
        format!("{out},\"payload\":{},\"meta\":{}}}", view.plain.payload, view.plain.meta)
    }

    #[test]
    fn record_json_is_system_fields_serialized() {
        let view = |tier, trust, last_accessed, payload: &str| RecordView {
            addr: Addr {
                tenant: TenantId::new("acme").expect("tenant"),
                class: ClassName::new("legal").expect("class"),
                key: RecordKey::new("contracts/2027-q1.v2").expect("key"),
            },
            meta: RowMeta {
                seq: 912,
                version: 7,
                tier,
                created_at: 1_764_302_400_123_456,
                updated_at: 1_764_302_401_000_000,
                content_sha256: [0xa7; 32],
                raw_len: 311,
                stored_len: 187,
                level: 3,
                trust,
            },
            plain: Plain { payload: payload.into(), meta: r#"{"agent":"legal_scout"}"#.into() },
            last_accessed,
            access_count: 42,
        };
        let trusted = Some(TrustRow {
            writer: "legal_scout".into(),
            confirmations: vec!["legal_synth".into(), "odd \"name\"\u{1}".into()],
            score: 0.1,
        });
        let cases = [
            view(Tier::L2, None, 0, "{}"),
            view(Tier::L2Q, trusted.clone(), 1_764_302_402_000_001, r#"{"text":"é \u2028 \"q\""}"#),
            view(Tier::L3, trusted, -5, "[1,2.5,null]"),
        ];
        for v in &cases {
            for (served, threshold) in [("L1", 0.8), ("L2", 1.0), ("L3", 0.3333333333333333)] {
                let ours = String::from_utf8(record_json(v, served, threshold)).expect("utf-8");
                assert_eq!(ours, serialized(v, served, threshold));
                serde_json::from_str::<Value>(&ours).expect("valid JSON");
            }
        }
    }
}
