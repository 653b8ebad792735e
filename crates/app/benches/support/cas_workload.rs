//! A labelled workload for the LLM cache's near-duplicate quality, shared by
//! `benches/cas_quality.rs` and `tests/cas_quality.rs`.
//!
//! Base prompts from twelve templates (summaries, currency conversion, arithmetic, filters,
//! thermostat offsets, budgets, dates, percentages, distances, yes/no questions, memos) are
//! stored with answers of their own. Each family then rewrites every base it applies to:
//! benign families (case, spacing, punctuation, courtesies, filler words, and mixes of them)
//! must be served the base's answer; the others change what is asked (a number, a sign, a
//! currency, a comparison or arithmetic operator, a negation, a unit, a date, a percent sign,
//! a word, the word order) and must not be served anything. A variant that happens to equal
//! another stored prompt is left out.

#![allow(dead_code)]

use daena_app::Daena;
use daena_app::auth::Principal;
use daena_app::cas::chat::{self, ChatOptions};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

const TOPICS: &[&str] =
    &["revenue", "churn", "hiring", "security incident", "supplier", "pricing", "support backlog", "cloud spend"];
const DEPTS: &[&str] = &["engineering", "product", "sales", "marketing", "finance", "hr", "legal", "customer"];
const TEMPLATES: usize = 12;

/// One stored prompt and the values its template was filled with.
#[derive(Debug, Clone)]
pub struct Base {
    pub template: usize,
    pub topic: usize,
    pub dept: usize,
    pub k: u32,
    pub text: String,
}

fn fill(template: usize, topic: &str, dept: &str, k: u32) -> String {
    let (a, b, amt) = (k * 3 + 1, k + 4, 100 + k * 25);
    let (mm, dd) = (1 + k % 12, 1 + (k * 5) % 28);
    match template {
        0 => format!(
            "Summarize the {topic} report for the {dept} department in {k} bullet points and highlight the main risks."
        ),
        1 => format!("Convert {amt} USD to EUR for the {dept} {topic} budget."),
        2 => format!("What is {a} + {b} in the {dept} {topic} forecast?"),
        3 => format!("List the {topic} tickets of the {dept} team where the priority is > {k}."),
        4 => format!("Set the {dept} office thermostat offset to {k} degrees before the {topic} review."),
        5 => format!("Approve a budget of ${amt}.50 for the {dept} {topic} project."),
        6 => format!("Schedule the {topic} review with {dept} on 2025-{mm:02}-{dd:02} at 10:00."),
        7 => format!("Explain why {topic} costs in the {dept} region grew {k}% last quarter."),
        8 => format!("Plan a {k} km charity run for the {dept} team after the {topic} offsite."),
        9 => {
            format!("Should the {dept} team include the {topic} figures of the last {k} quarters in the board report?")
        }
        10 => format!("Multiply {a} * {b} to size the {dept} {topic} capacity."),
        _ => format!("Write a short memo of {k} paragraphs to {dept} about the {topic} changes, in a formal tone."),
    }
}

/// `n` distinct base prompts spread over every template, topic and department (every
/// template uses `k`, so a later round of combinations is not a repeat).
pub fn bases(n: usize) -> Vec<Base> {
    (0..n)
        .map(|i| {
            let template = i % TEMPLATES;
            let topic = (i / TEMPLATES) % TOPICS.len();
            let dept = (i / TEMPLATES / TOPICS.len()) % DEPTS.len();
            // Distinct while n ≤ 768 · 13: each round of the 768 (template, topic, department)
            // combinations shifts k.
            let combos = TEMPLATES * TOPICS.len() * DEPTS.len();
            let k = 2 + ((i * 7 + i / combos) % 13) as u32;
            Base { template, topic, dept, k, text: fill(template, TOPICS[topic], DEPTS[dept], k) }
        })
        .collect()
}

/// A family of rewrites: `benign` ones must hit the base, the others must miss;
/// `strict` families are held to zero false positives.
pub struct Family {
    pub name: &'static str,
    pub benign: bool,
    pub strict: bool,
    pub rewrite: fn(&Base, usize) -> Option<String>,
}

/// The base text with its first letter lowercased, to follow a courtesy.
fn lc_first(t: &str) -> String {
    let mut c = t.chars();
    c.next().map(|f| f.to_lowercase().chain(c).collect()).unwrap_or_default()
}

fn without_final_stop(t: &str) -> &str {
    t.trim_end_matches(['.', '?', '!'])
}

/// Sentence punctuation removed, except between digits (decimals, times).
fn strip_punctuation(t: &str) -> String {
    let chars: Vec<char> = t.chars().collect();
    let digit = |i: Option<usize>| i.and_then(|i| chars.get(i)).is_some_and(char::is_ascii_digit);
    chars
        .iter()
        .enumerate()
        .filter(|&(i, c)| !(".,?!;:".contains(*c) && !(digit(i.checked_sub(1)) && digit(Some(i + 1)))))
        .map(|(_, c)| *c)
        .collect()
}

fn title_case(t: &str) -> String {
    t.split(' ')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pick<T: Copy>(options: &[T], i: usize) -> T {
    options[i % options.len()]
}

/// Replaces the first `from` with `to`, or `None` when the text has no `from`.
fn swap(t: &str, from: &str, to: &str) -> Option<String> {
    t.contains(from).then(|| t.replacen(from, to, 1))
}

pub fn families() -> Vec<Family> {
    vec![
        // Benign: the same question in another form.
        Family {
            name: "case",
            benign: true,
            strict: false,
            rewrite: |b, i| {
                Some(match i % 4 {
                    0 => b.text.to_uppercase(),
                    1 => b.text.to_lowercase(),
                    2 => title_case(&b.text),
                    _ => b
                        .text
                        .chars()
                        .enumerate()
                        .map(|(j, c)| if j % 2 == 0 { c.to_ascii_uppercase() } else { c })
                        .collect(),
                })
            },
        },
        Family {
            name: "spacing",
            benign: true,
            strict: false,
            rewrite: |b, i| {
                Some(match i % 3 {
                    0 => format!("  {}  ", b.text.replace(' ', "   ")),
                    1 => b.text.replacen(' ', "\t", 2).replace(", ", " ,  "),
                    _ => format!("\n{}\n\n", b.text.replacen(' ', " \n ", 1)),
                })
            },
        },
        Family {
            name: "punctuation",
            benign: true,
            strict: false,
            rewrite: |b, i| {
                Some(match i % 4 {
                    0 => strip_punctuation(&b.text),
                    1 => format!("{}!", without_final_stop(&b.text)),
                    2 => format!("{}...", without_final_stop(&b.text)),
                    _ => format!("{}??", strip_punctuation(&b.text).replacen(' ', ", ", 1)),
                })
            },
        },
        Family {
            name: "politeness",
            benign: true,
            strict: false,
            rewrite: |b, i| {
                let lc = lc_first(&b.text);
                let bare = without_final_stop(&b.text);
                Some(match i % 17 {
                    0 => format!("Please {lc}"),
                    1 => format!("Could you please {lc}"),
                    2 => format!("Can you {lc}"),
                    3 => format!("Hi, could you {lc}"),
                    4 => format!("Hello! Would you mind: {lc}"),
                    5 => format!("{} Thanks!", b.text),
                    6 => format!("{} Thank you.", b.text),
                    7 => format!("{bare}, please."),
                    8 => format!("Kindly {lc} Thanks in advance."),
                    9 => format!("Hey there, I'd like you to {lc}"),
                    10 => format!("Good morning. {} Much appreciated!", b.text),
                    11 => format!("I was wondering if you could {lc}"),
                    12 => format!("Would it be possible to {lc}"),
                    13 => format!("{bare}, if you don't mind."),
                    14 => format!("Can you help me {lc}"),
                    15 => format!("Excuse me, {lc} Best regards"),
                    _ => format!("Please, when you have a moment, {lc} Thank you so much!"),
                })
            },
        },
        Family {
            name: "more courtesies",
            benign: true,
            strict: false,
            rewrite: |b, i| {
                let lc = lc_first(&b.text);
                let bare = without_final_stop(&b.text);
                Some(match i % 14 {
                    0 => format!("Please could you {lc}"),
                    1 => format!("Would you please {lc}"),
                    2 => format!("Can you kindly {lc}"),
                    3 => format!("Hey, quick favor: {lc}"),
                    4 => format!("{bare}. Thanks so much!"),
                    5 => format!("{bare}, thanks!"),
                    6 => format!("Yo, {lc}"),
                    7 => format!("Hi team, {lc}"),
                    8 => format!("{bare} pls"),
                    9 => format!("I need you to {lc}"),
                    10 => format!("Would you be able to {lc}"),
                    11 => format!("Could you do me a favor and {lc}"),
                    12 => format!("Hello, hope you're well. {lc}"),
                    _ => format!("{bare}, thanks a ton"),
                })
            },
        },
        Family {
            name: "filler words",
            benign: true,
            strict: false,
            rewrite: |b, i| {
                let lc = lc_first(&b.text);
                let (first, rest) = b.text.split_once(' ').unwrap_or((&b.text, ""));
                Some(match i % 12 {
                    0 => format!("Um, {lc}"),
                    1 => format!("So, {lc}"),
                    2 => format!("Just {lc}"),
                    3 => format!("Basically, {lc}"),
                    4 => format!("OK so {lc}"),
                    5 => format!("Actually, {lc}"),
                    6 => format!("Well, uh, {lc}"),
                    7 => format!("Alright, really just {lc}"),
                    8 => format!("{first}, like, {rest}"),
                    9 => format!("{first} basically {rest}"),
                    10 => format!("Honestly, {} real quick.", without_final_stop(&lc)),
                    _ => format!("You know, {first} um {rest}"),
                })
            },
        },
        Family {
            name: "mixed",
            benign: true,
            strict: false,
            rewrite: |b, i| {
                let lc = lc_first(&b.text);
                Some(match i % 4 {
                    0 => format!("HEY, COULD YOU PLEASE {}   THANKS!!", strip_punctuation(&lc).to_uppercase()),
                    1 => format!("  um   please {}  thank you", lc.to_lowercase()),
                    2 => format!("Hi!\nJust {}, if possible.", without_final_stop(&lc)),
                    _ => format!("so... can you   {}? cheers", strip_punctuation(&lc)),
                })
            },
        },
        // Different questions that look alike.
        Family {
            name: "number",
            benign: false,
            strict: true,
            rewrite: |b, _| {
                swap(&b.text, &format!(" {} ", b.k), &format!(" {} ", b.k + 7))
                    .or_else(|| swap(&b.text, "10:00", "11:00"))
            },
        },
        Family {
            name: "sign",
            benign: false,
            strict: true,
            rewrite: |b, i| match b.template {
                4 => swap(
                    &b.text,
                    &format!("to {} degrees", b.k),
                    &format!("to {}{} degrees", pick(&["-", "+", "−"], i), b.k),
                ),
                2 | 10 => {
                    let first = b.k * 3 + 1;
                    swap(&b.text, &format!(" {first} "), &format!(" -{first} "))
                }
                _ => None,
            },
        },
        Family {
            name: "currency symbol",
            benign: false,
            strict: true,
            rewrite: |b, i| swap(&b.text, "$", pick(&["€", "£", "¥"], i)),
        },
        Family {
            name: "currency code",
            benign: false,
            strict: true,
            rewrite: |b, i| if i % 2 == 0 { swap(&b.text, "USD", "GBP") } else { swap(&b.text, "EUR", "JPY") },
        },
        Family {
            name: "comparison",
            benign: false,
            strict: true,
            rewrite: |b, i| swap(&b.text, "> ", pick(&["< ", ">= ", "= ", "≤ "], i)),
        },
        Family {
            name: "arithmetic",
            benign: false,
            strict: true,
            rewrite: |b, i| {
                swap(&b.text, " + ", pick(&[" - ", " * ", " / "], i))
                    .or_else(|| swap(&b.text, " * ", pick(&[" / ", " + ", " - "], i)))
            },
        },
        Family {
            name: "negation",
            benign: false,
            strict: true,
            rewrite: |b, i| match b.template {
                0 => swap(&b.text, "and highlight", "and do not highlight"),
                9 => swap(&b.text, "include", pick(&["not include", "never include", "exclude"], i)),
                11 => swap(&b.text, "in a formal tone", "not in a formal tone"),
                _ => Some(format!("Don't {}", lc_first(&b.text))),
            },
        },
        Family {
            name: "unit",
            benign: false,
            strict: true,
            rewrite: |b, i| match b.template {
                8 => swap(&b.text, " km ", pick(&[" mi ", " miles ", " m "], i)),
                4 => swap(&b.text, "degrees", "percent"),
                _ => None,
            },
        },
        Family {
            name: "date",
            benign: false,
            strict: true,
            rewrite: |b, i| {
                let (mm, dd) = (1 + b.k % 12, 1 + (b.k * 5) % 28);
                let from = format!("2025-{mm:02}-{dd:02}");
                let to = match i % 3 {
                    0 => format!("2025-{mm:02}-{:02}", dd % 28 + 1),
                    1 => format!("2026-{mm:02}-{dd:02}"),
                    _ => format!("2025-{dd:02}-{mm:02}"),
                };
                (from != to).then(|| swap(&b.text, &from, &to)).flatten()
            },
        },
        Family {
            name: "percent sign",
            benign: false,
            strict: true,
            rewrite: |b, _| swap(&b.text, "% ", " ").or_else(|| swap(&b.text, "$", "")),
        },
        Family {
            name: "other topic",
            benign: false,
            strict: false,
            rewrite: |b, _| swap(&b.text, TOPICS[b.topic], TOPICS[(b.topic + 1) % TOPICS.len()]),
        },
        Family {
            name: "other department",
            benign: false,
            strict: false,
            rewrite: |b, _| swap(&b.text, DEPTS[b.dept], DEPTS[(b.dept + 3) % DEPTS.len()]),
        },
        Family {
            name: "one other word",
            benign: false,
            strict: false,
            rewrite: |b, i| {
                let pairs = [
                    ("report", "memo"),
                    ("budget", "forecast"),
                    ("review", "audit"),
                    ("team", "manager"),
                    ("short", "long"),
                    ("Plan", "Cancel"),
                    ("Explain", "Question"),
                    ("Approve", "Reject"),
                ];
                pairs.iter().cycle().skip(i % pairs.len()).take(pairs.len()).find_map(|(f, t)| swap(&b.text, f, t))
            },
        },
        Family {
            name: "word order",
            benign: false,
            strict: false,
            rewrite: |b, _| {
                let (d, t) = (DEPTS[b.dept], TOPICS[b.topic]);
                swap(&b.text, &format!("{d} {t}"), &format!("{t} {d}")).or_else(|| {
                    swap(&b.text, &format!("the {t} report for the {d}"), &format!("the {d} report for the {t}"))
                })
            },
        },
    ]
}

fn request(content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are an assistant of the fleet. Answer precisely."},
        {"role": "user", "content": content}]})
}

fn answer(i: usize) -> Value {
    json!({"id": format!("a{i}"), "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer {i}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 150}})
}

/// One family's results.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub benign: bool,
    pub strict: bool,
    pub lookups: usize,
    pub hits: usize,
    /// Hits that served another base's answer.
    pub wrong: usize,
    /// A few examples of what went wrong, for the report.
    pub examples: Vec<String>,
}

impl Tally {
    /// Recall for a benign family, the false-positive rate for the others.
    pub fn rate(&self) -> f64 {
        if self.lookups == 0 { 0.0 } else { self.hits as f64 / self.lookups as f64 }
    }
}

/// Stores `n` bases through the cache-aside API, then looks every variant up through the
/// real lookup path (exact key, SimHash index, guard).
pub async fn run(d: &Daena, who: &Principal, n: usize) -> BTreeMap<&'static str, Tally> {
    let bases = bases(n);
    let index: HashMap<&str, usize> = bases.iter().enumerate().map(|(i, b)| (b.text.as_str(), i)).collect();
    assert_eq!(index.len(), n, "base prompts must be distinct");
    for (i, b) in bases.iter().enumerate() {
        chat::store(d, who, request(&b.text), answer(i), ChatOptions::default()).await.expect("store");
    }
    let served = |v: &Value| v["choices"][0]["message"]["content"].as_str().map(str::to_owned);
    let mut out = BTreeMap::new();
    for family in families() {
        let tally: &mut Tally = out.entry(family.name).or_default();
        tally.benign = family.benign;
        tally.strict = family.strict;
        for (i, b) in bases.iter().enumerate() {
            let Some(text) = (family.rewrite)(b, i) else { continue };
            if !family.benign && (text == b.text || index.contains_key(text.as_str())) {
                continue;
            }
            let r = chat::lookup(d, who, request(&text), ChatOptions::default()).expect("lookup");
            tally.lookups += 1;
            if !r.hit {
                if family.benign && tally.examples.len() < 3 {
                    tally.examples.push(format!("missed: {text:?}"));
                }
                continue;
            }
            tally.hits += 1;
            let got = r.response.as_ref().and_then(served);
            if got != Some(format!("answer {i}")) {
                tally.wrong += 1;
            }
            if !family.benign && tally.examples.len() < 3 {
                tally.examples.push(format!("served: {text:?} for {:?}", b.text));
            }
        }
    }
    out
}
