//! `daena simulate`: drives the 6×8 fleet against a running server so every monitoring and
//! analytics route has something real to show.
//!
//! Each agent is a task with a steady pace: heartbeats, memory writes and reads of its
//! department's classes (quarantined ones confirmed by a honeycomb neighbour), LLM calls
//! with a mix of repeated, near-duplicate and new prompts, and interactions with neighbours
//! and now and then another department. The LLM upstream is a scripted OpenAI-compatible
//! server the simulator runs itself; the server under test must point `llm.upstream_url`
//! at it, and the simulator refuses to send LLM traffic anywhere else (a real model costs
//! money). Before the live run it reports a baseline of past interactions (`--history`),
//! so anomaly detection has something to compare with; halfway through, one agent starts
//! failing slowly and often, and the summary says whether the server flagged it.

mod client;

use crate::cli::Global;
use crate::cli::SimulateArgs;
use anyhow::{Context, bail};
use client::*;
use daena_core::agents::{self, AgentSpec};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TOPICS: &[&str] =
    &["revenue", "churn", "hiring", "security incident", "supplier", "pricing", "support backlog", "cloud spend"];
/// Share of a normal agent's actions that are interactions; their latency dominates the
/// per-minute mean the anomaly detector watches, so the history uses the same mix.
const INTERACTION_SHARE: f64 = 0.25;

/// Parses `90s`, `2m`, `500ms`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 60s, 2m or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s:?} must be more than 0 and at most 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The memory class an agent of `department` writes most.
fn home_class(department: &str) -> &'static str {
    match department {
        "legal" => "legal",
        "finance" => "finance",
        "hr" => "pii",
        "engineering" => "ops_log",
        "product" => "research_note",
        _ => "chat",
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct KindStats {
    requests: u64,
    /// Transport failures and 5xx answers.
    errors: u64,
    /// 4xx answers by status (policy denials, quarantined reads, 429 rate limits, ...).
    refused: BTreeMap<u16, u64>,
    #[serde(skip)]
    latencies_ms: Vec<f64>,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Default)]
struct Stats {
    kinds: parking_lot::Mutex<BTreeMap<&'static str, KindStats>>,
    cache: parking_lot::Mutex<BTreeMap<String, u64>>,
    interactions_neighbour: AtomicU64,
    interactions_cross: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    fn record(&self, kind: &'static str, status: Option<u16>, ms: f64) {
        let mut kinds = self.kinds.lock();
        let k = kinds.entry(kind).or_default();
        k.requests += 1;
        k.latencies_ms.push(ms);
        self.total.fetch_add(1, Ordering::Relaxed);
        match status {
            Some(s) if s < 400 => {}
            Some(s) if s < 500 => *k.refused.entry(s).or_default() += 1,
            _ => {
                k.errors += 1;
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A question from the department's pool of `pool` recurring ones.
fn pooled_prompt(department: &str, i: usize) -> String {
    format!(
        "Summarize the {} report for the {} department in {} bullet points, highlight the main risks and keep it under 200 words.",
        TOPICS[i % TOPICS.len()],
        department,
        3 + i % 3
    )
}

/// The same question as it arrives from another agent: other spacing, case, punctuation or
/// courtesy, which the near-duplicate index is there to catch.
fn near_duplicate(text: &str, form: usize) -> String {
    match form % 4 {
        0 => format!("  {}  ", text.replace(' ', "  ")),
        1 => text.to_uppercase(),
        2 => text.replace(',', "").replace('.', "!"),
        _ => format!("Please {}", text.replacen("Summarize", "summarize", 1)),
    }
}

/// Everything one agent task needs.
struct AgentCtx {
    spec: AgentSpec,
    others: Arc<Vec<AgentSpec>>,
    client: Client,
    stats: Arc<Stats>,
    rng: StdRng,
    interval: Duration,
    deadline: Instant,
    /// When this agent turns anomalous, if it is the one.
    anomaly_from: Option<Instant>,
    llm: bool,
    stop: Arc<AtomicBool>,
}

async fn run_agent(mut a: AgentCtx) {
    use reqwest::Method;
    let id = a.spec.id.clone();
    let dept = a.spec.department;
    let mut written: Vec<(String, String)> = Vec::new();
    let mut quarantined: Vec<(String, String)> = Vec::new();
    let mut next_heartbeat = Instant::now();
    let mut n = 0usize;
    // Spread the agents' first actions over one interval.
    tokio::time::sleep(a.interval.mul_f64(a.rng.random_range(0.0..1.0))).await;
    while Instant::now() < a.deadline && !a.stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        if tick >= next_heartbeat {
            a.client
                .call(&a.stats, "heartbeat", Method::POST, &format!("/api/v1/agents/{id}/heartbeat"), &id, None)
                .await;
            next_heartbeat = tick + Duration::from_secs(30);
        }
        let anomalous = a.anomaly_from.is_some_and(|t| tick >= t);
        let roll: f64 = a.rng.random_range(0.0..1.0);
        n += 1;
        if anomalous || roll < INTERACTION_SHARE {
            interact(&mut a, anomalous).await;
        } else if roll < 0.45 {
            let class = match a.rng.random_range(0..10) {
                0..5 => home_class(dept),
                5..8 => "chat",
                _ => "research_note",
            };
            let revise = !written.is_empty() && a.rng.random_bool(0.05);
            let (class, key) = if revise {
                let (c, k) = &written[a.rng.random_range(0..written.len())];
                (c.clone(), k.clone())
            } else {
                (class.to_owned(), format!("{id}-{n}"))
            };
            let body = json!({
                "payload": {"agent": id, "note": format!("{} finding #{n} on {}", dept, TOPICS[n % TOPICS.len()]),
                            "confidence": a.rng.random_range(0.5..1.0)},
                "meta": {"agent_id": id, "department": dept},
                "intended_revision": revise,
            });
            let path = format!("/api/v1/memory/{class}/{key}");
            if let Some(ans) = a.client.call(&a.stats, "memory_write", Method::PUT, &path, &id, Some(&body)).await
                && ans.status < 300
            {
                if ans.body["trust"]["quarantined"] == true {
                    quarantined.push((class.clone(), key.clone()));
                }
                if !revise {
                    written.push((class, key));
                }
            }
        } else if roll < 0.70 {
            if let Some((class, key)) =
                (!written.is_empty()).then(|| written[a.rng.random_range(0..written.len())].clone())
            {
                let path = format!("/api/v1/memory/{class}/{key}");
                a.client.call(&a.stats, "memory_read", Method::GET, &path, &id, None).await;
            } else {
                a.client.call(&a.stats, "memory_read", Method::GET, "/api/v1/memory?limit=5", &id, None).await;
            }
        } else if roll < 0.78 && !quarantined.is_empty() {
            // A honeycomb neighbour reviews one of this agent's quarantined records.
            let (class, key) = quarantined.swap_remove(a.rng.random_range(0..quarantined.len()));
            let reviewer = a.spec.neighbours.first().cloned().unwrap_or_else(|| id.clone());
            let path = format!("/api/v1/memory/{class}/{key}/confirm");
            a.client.call(&a.stats, "memory_confirm", Method::POST, &path, &reviewer, Some(&json!({}))).await;
        } else if a.llm {
            let i = a.rng.random_range(0..12usize);
            let base = pooled_prompt(dept, i);
            let prompt = match a.rng.random_range(0..100) {
                0..45 => base,
                45..75 => near_duplicate(&base, a.rng.random_range(0..4)),
                _ => format!("{base} Also compare with ticket {} from {id}.", a.rng.random_range(0..1_000_000u32)),
            };
            let t = Instant::now();
            let ans =
                a.client.send(Method::POST, "/v1/chat/completions", Some(&id), Some(&chat_request(&prompt))).await.ok();
            a.stats.record("llm", ans.as_ref().map(|x| x.status), t.elapsed().as_secs_f64() * 1000.0);
            let label = match &ans {
                Some(x) if x.status < 300 => x.cache.clone().unwrap_or_else(|| "unknown".into()),
                Some(x) => format!("error {}", x.status),
                None => "unreachable".into(),
            };
            *a.stats.cache.lock().entry(label).or_default() += 1;
        } else {
            interact(&mut a, false).await;
        }
        let pace = if anomalous { a.interval / 10 } else { a.interval };
        let jitter = pace.mul_f64(a.rng.random_range(0.9..1.1));
        tokio::time::sleep(jitter.saturating_sub(tick.elapsed())).await;
    }
}

/// One agent-to-agent interaction: a honeycomb neighbour four times in five, else an agent
/// of another department. An anomalous agent is slow and fails nine times in ten.
async fn interact(a: &mut AgentCtx, anomalous: bool) {
    let neighbour = !a.spec.neighbours.is_empty() && a.rng.random_bool(0.8);
    let to = if neighbour {
        a.spec.neighbours[a.rng.random_range(0..a.spec.neighbours.len())].clone()
    } else {
        let others: Vec<&AgentSpec> = a.others.iter().filter(|o| o.department != a.spec.department).collect();
        match others.len() {
            0 => a.spec.id.clone(),
            n => others[a.rng.random_range(0..n)].id.clone(),
        }
    };
    let latency = interaction_latency(&mut a.rng) * if anomalous { 8.0 } else { 1.0 };
    let success = if anomalous { a.rng.random_bool(0.1) } else { a.rng.random_bool(0.98) };
    let kind = ["message", "delegation", "review"][a.rng.random_range(0..3)];
    let tokens = a.rng.random_range(50..800u64);
    let body = json!({"from": a.spec.id, "to": to, "kind": kind, "latency_ms": latency, "success": success,
                      "tokens": tokens, "cost_usd": tokens as f64 * 0.000_000_6});
    a.client
        .call(&a.stats, "interaction", reqwest::Method::POST, "/api/v1/analytics/interactions", &a.spec.id, Some(&body))
        .await;
    let counter = if neighbour { &a.stats.interactions_neighbour } else { &a.stats.interactions_cross };
    counter.fetch_add(1, Ordering::Relaxed);
}

fn interaction_latency(rng: &mut StdRng) -> f64 {
    (40.0 + rng.random_range(0.0..160.0f64)).round()
}

/// Reports `minutes` of steady past interactions for every agent, as many per minute as the
/// live run produces events, with the live mix of latencies.
async fn backfill(
    client: &Client,
    fleet: &[AgentSpec],
    minutes: u64,
    per_minute: f64,
    rng: &mut StdRng,
) -> anyhow::Result<u64> {
    let now = daena_app::clock::Clock::now(&daena_app::clock::SystemClock);
    let minute = 60_000_000i64;
    let start_of_minute = now.0 - now.0.rem_euclid(minute);
    let mut batch = Vec::new();
    let mut sent = 0u64;
    for spec in fleet {
        for m in 0..=minutes as i64 {
            // Whole minutes before this one, and the part of this minute already gone.
            let (from, len) = if m == 0 {
                (start_of_minute, now.0 - start_of_minute)
            } else {
                (start_of_minute - m * minute, minute)
            };
            let count = (per_minute * len as f64 / minute as f64 * rng.random_range(0.95..1.05)).round() as u64;
            for _ in 0..count {
                let at = from + rng.random_range(0..len.max(1));
                let to = spec.neighbours.first().cloned();
                let latency = if rng.random_bool(INTERACTION_SHARE) { interaction_latency(rng) } else { 3.0 };
                batch.push(json!({"from": spec.id, "to": to, "kind": "history", "latency_ms": latency,
                    "success": rng.random_bool(0.99), "at": daena_app::clock::rfc3339(daena_core::time::Micros(at))}));
                if batch.len() == daena_app::analytics::MAX_BATCH {
                    sent += post_batch(client, &mut batch).await?;
                }
            }
        }
    }
    if !batch.is_empty() {
        sent += post_batch(client, &mut batch).await?;
    }
    Ok(sent)
}

async fn post_batch(client: &Client, batch: &mut Vec<Value>) -> anyhow::Result<u64> {
    let body = Value::Array(std::mem::take(batch));
    let a = client.send(reqwest::Method::POST, "/api/v1/analytics/interactions", None, Some(&body)).await?;
    if a.status >= 300 {
        bail!("reporting the history: {} {}", a.status, error_text(&a.body));
    }
    Ok(a.body["count"].as_u64().unwrap_or(0))
}

#[derive(Debug, Serialize)]
struct Summary {
    url: String,
    seed: u64,
    agents: usize,
    duration_s: f64,
    history_interactions: u64,
    requests: u64,
    errors: u64,
    requests_per_s: f64,
    by_kind: BTreeMap<&'static str, KindStats>,
    llm_cache: BTreeMap<String, u64>,
    upstream_calls: u64,
    interactions_neighbour: u64,
    interactions_cross_department: u64,
    anomaly_agent: String,
    anomaly_detected: Vec<String>,
    server: Value,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    (sorted[i.min(sorted.len() - 1)] * 100.0).round() / 100.0
}

pub async fn run(global: &Global, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let base = global.url.clone().unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
    let Some(key) = global.api_key.clone() else {
        bail!("daena simulate needs an API key of the running server: --api-key or DAENA_API_KEY");
    };
    if !(1..=agents::EXPECTED_AGENTS).contains(&args.agents) {
        bail!("--agents must be 1..={}, got {}", agents::EXPECTED_AGENTS, args.agents);
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 50.0) {
        bail!("--rate must be more than 0 and at most 50 actions per second per agent");
    }
    if args.history > 170 {
        bail!("--history is at most 170 minutes (the server keeps three hours of per-minute analytics)");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .context("building the HTTP client")?;
    let client = Client { http, base: base.trim_end_matches('/').to_owned(), key, tenant: args.tenant.clone() };

    // Preflight: the server answers and the key may use it.
    client.get("/api/v1/agents/structure").await.context("checking the server and the API key")?;
    let (upstream, upstream_url) = if args.no_llm {
        (Arc::new(Upstream::default()), String::new())
    } else {
        start_upstream(&args.upstream_listen).await?
    };
    if !args.no_llm {
        let probe = chat_request(&format!("Simulator preflight {seed}-{}", rand::random::<u64>()));
        let a = client.send(reqwest::Method::POST, "/v1/chat/completions", None, Some(&probe)).await?;
        let hint = format!(
            "start the server with DAENA_LLM_UPSTREAM_URL={upstream_url} (the simulator's scripted model), \
             or run the simulator with --no-llm"
        );
        if a.status >= 300 {
            bail!("the server's LLM path failed: {} {}; {hint}", a.status, error_text(&a.body));
        }
        if upstream.calls.load(Ordering::Relaxed) == 0 {
            bail!(
                "the server answered the preflight LLM call from another upstream; refusing to send simulated \
                 traffic to a real model: {hint}"
            );
        }
    }

    let fleet: Vec<AgentSpec> = agents::fleet().into_iter().take(args.agents).collect();
    let stats = Arc::new(Stats::default());
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let history = if args.history > 0 {
        eprintln!("reporting {} minutes of interaction history for {} agents...", args.history, fleet.len());
        backfill(&client, &fleet, args.history, args.rate * 60.0, &mut rng).await?
    } else {
        0
    };
    let anomaly = fleet[rng.random_range(0..fleet.len())].id.clone();
    let started = Instant::now();
    let deadline = started + args.duration;
    let anomaly_at = started + args.duration / 2;
    eprintln!(
        "simulating {} agents for {:.0}s at {} actions/s each against {} (seed {seed}); {} turns anomalous at {:.0}s",
        fleet.len(),
        args.duration.as_secs_f64(),
        args.rate,
        client.base,
        anomaly,
        (anomaly_at - started).as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let others = Arc::new(agents::fleet());
    let mut tasks = tokio::task::JoinSet::new();
    for spec in fleet.iter().cloned() {
        let anomaly_from = (spec.id == anomaly).then_some(anomaly_at);
        tasks.spawn(run_agent(AgentCtx {
            spec,
            others: others.clone(),
            client: client.clone(),
            stats: stats.clone(),
            rng: StdRng::seed_from_u64(rng.random()),
            interval,
            deadline,
            anomaly_from,
            llm: !args.no_llm,
            stop: stop.clone(),
        }));
    }
    // Progress: a live line on a terminal, a line every ten seconds otherwise.
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal { Duration::from_millis(500) } else { Duration::from_secs(10) };
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let progress = |done: bool| {
        let elapsed = started.elapsed().as_secs_f64();
        let total = stats.total.load(Ordering::Relaxed);
        let cache = stats.cache.lock().clone();
        let llm: u64 = cache.values().sum();
        let hits = cache.get("hit").copied().unwrap_or(0) + cache.get("near").copied().unwrap_or(0);
        let line = format!(
            "{:>5.0}s/{:.0}s  {} requests ({:.0}/s)  {} errors  llm {} ({:.0}% cached)  upstream {}",
            elapsed.min(args.duration.as_secs_f64()),
            args.duration.as_secs_f64(),
            total,
            total as f64 / elapsed.max(1e-3),
            stats.errors.load(Ordering::Relaxed),
            llm,
            if llm > 0 { hits as f64 * 100.0 / llm as f64 } else { 0.0 },
            upstream.calls.load(Ordering::Relaxed)
        );
        if terminal {
            eprint!("\r{line}   ");
            if done {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => progress(false),
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Err(e)) => bail!("an agent task failed: {e}"),
                Some(Ok(())) => {}
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ninterrupted; finishing the agents' current requests");
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
    if terminal {
        progress(true);
    }
    let elapsed = started.elapsed().as_secs_f64();

    // What the server made of it.
    let anomalies = client.get("/api/v1/analytics/anomalies").await?;
    let detected: Vec<String> = anomalies["anomalies"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|x| x["agent_id"] == anomaly.as_str())
                .filter_map(|x| {
                    Some(format!("{} ({}, score {})", x["metric"].as_str()?, x["severity"].as_str()?, x["score"]))
                })
                .collect()
        })
        .unwrap_or_default();
    let analytics = client.get("/api/v1/analytics/summary").await?;
    let cas = client.get("/monitoring/memory/cas").await.unwrap_or(Value::Null);
    let health = client.send(reqwest::Method::GET, "/health", None, None).await.map(|a| a.body).unwrap_or(Value::Null);
    let mut by_kind = stats.kinds.lock().clone();
    for k in by_kind.values_mut() {
        k.latencies_ms.sort_by(f64::total_cmp);
        k.p50_ms = percentile(&k.latencies_ms, 0.5);
        k.p99_ms = percentile(&k.latencies_ms, 0.99);
    }
    let summary = Summary {
        url: client.base.clone(),
        seed,
        agents: fleet.len(),
        duration_s: (elapsed * 10.0).round() / 10.0,
        history_interactions: history,
        requests: stats.total.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        requests_per_s: (stats.total.load(Ordering::Relaxed) as f64 / elapsed.max(1e-3)).round(),
        by_kind,
        llm_cache: stats.cache.lock().clone(),
        upstream_calls: upstream.calls.load(Ordering::Relaxed),
        interactions_neighbour: stats.interactions_neighbour.load(Ordering::Relaxed),
        interactions_cross_department: stats.interactions_cross.load(Ordering::Relaxed),
        anomaly_agent: anomaly,
        anomaly_detected: detected,
        server: json!({
            "health": health["status"],
            "active_agents": analytics["active_agents"],
            "error_rate_5m": analytics["error_rate_5m"]["rate"],
            "cas_hit_rate": cas["hit_rate"].clone(),
            "anomalies": anomalies["total_anomalies"],
        }),
    };
    if global.json {
        crate::output::json(&summary)?;
    } else {
        print_summary(&summary);
    }
    Ok(if summary.errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn print_summary(s: &Summary) {
    println!(
        "{} agents, {:.1}s, {} requests ({}/s), {} errors; seed {}",
        s.agents, s.duration_s, s.requests, s.requests_per_s, s.errors, s.seed
    );
    if s.history_interactions > 0 {
        println!("history: {} past interactions reported before the run", s.history_interactions);
    }
    let rows: Vec<Vec<String>> = s
        .by_kind
        .iter()
        .map(|(k, v)| {
            let refused: Vec<String> = v.refused.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            vec![
                (*k).to_owned(),
                v.requests.to_string(),
                v.errors.to_string(),
                if refused.is_empty() { "-".into() } else { refused.join(" ") },
                format!("{:.2}", v.p50_ms),
                format!("{:.2}", v.p99_ms),
            ]
        })
        .collect();
    crate::output::table(&["kind", "requests", "errors", "refused", "p50 ms", "p99 ms"], &rows);
    let llm: u64 = s.llm_cache.values().sum();
    if llm > 0 {
        let cache: Vec<String> = s.llm_cache.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("llm cache: {} ; upstream answered {} calls", cache.join(", "), s.upstream_calls);
    }
    println!(
        "interactions: {} with honeycomb neighbours, {} across departments",
        s.interactions_neighbour, s.interactions_cross_department
    );
    if s.anomaly_detected.is_empty() {
        println!("injected anomaly: {} not flagged (yet) by /api/v1/analytics/anomalies", s.anomaly_agent);
    } else {
        println!("injected anomaly: {} flagged: {}", s.anomaly_agent, s.anomaly_detected.join(", "));
    }
    println!(
        "server: health {}, active agents {}, error rate 5m {}, CAS hit rate {}, anomalies {}",
        s.server["health"],
        s.server["active_agents"],
        s.server["error_rate_5m"],
        s.server["cas_hit_rate"],
        s.server["anomalies"]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("48h").is_err());
    }
}
