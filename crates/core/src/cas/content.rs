//! What a prompt says, as near-duplicate matching compares it: the content tokens of each
//! message, their SimHash, and the guard fingerprint.
//!
//! Two requests are near-duplicates when they say the same thing in other form: case,
//! spacing, punctuation, courtesies and filler words may differ; words, numbers, negations
//! and meaningful symbols (signs, currencies, comparison and arithmetic operators, percent,
//! degrees) may not. Each message's content becomes a sequence of tokens:
//!
//! - words: lowercase alphanumeric runs, apostrophes dropped (`don't` → `dont`), so numbers,
//!   units, dates and currency codes are words like any other;
//! - symbols that change a meaning, each its own token: currency signs, `+ = < > % ° ^ ~ # &
//!   @ |` and the math signs, a dash before a digit (a sign, a minus, a range: `-5`, `7 - 3`,
//!   `2024-01`), and `*` and `/` between two operands (`12 * 4`, `km/h`); a hyphen inside a
//!   word, a dash between words and `*` used for emphasis are punctuation;
//! - without fillers: articles and interjections anywhere (`a`, `the`, `please`, `um`,
//!   `just`, …), and at the start or end of a sentence the courtesies around a request
//!   (`hi`, `so`, `could you`, `would you mind`, `if possible`, `thanks`, `thank you`, …).
//!   A sentence ends at `. ! ? ; :` and at the end of the message.
//!
//! The guard fingerprint covers the role and tokens of every message, the numbers as written
//! (`3.50` is not `3,50`) and the negations. SimHash hashes the same tokens, so a pair the
//! guard accepts is always at distance 0 and the multi-index finds it with any threshold; the
//! threshold bounds how far the index looks. A conversation whose messages are all courtesy
//! ("Hi!", "Thanks!") keeps its whole text in the fingerprint, so "hi" never answers "thanks".

use crate::canonical;
use sha2::{Digest, Sha256};

/// Lowercase alphanumeric words.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn feature_hash(f: &str) -> u64 {
    let h = Sha256::digest(f.as_bytes());
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

/// 64-bit SimHash of a conversation (`role: content` per line) over its content tokens:
/// each message's role and tokens, and each pair of adjacent tokens.
pub fn simhash(text: &str) -> u64 {
    let mut votes = [0i32; 64];
    let mut add = |h: u64| {
        for (i, v) in votes.iter_mut().enumerate() {
            *v += if h >> i & 1 == 1 { 1 } else { -1 };
        }
    };
    let tokens: Vec<String> =
        conversation(text).into_iter().flat_map(|(role, t)| std::iter::once(role).chain(t)).collect();
    for token in &tokens {
        add(feature_hash(token));
    }
    for pair in tokens.windows(2) {
        add(feature_hash(&format!("{} {}", pair[0], pair[1])));
    }
    votes.iter().enumerate().fold(0u64, |acc, (i, v)| if *v >= 0 { acc | 1 << i } else { acc })
}

pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// floor((1 − t) · 64): the largest distance similarity `t` accepts.
pub fn max_distance(threshold: f64) -> u32 {
    ((1.0 - threshold) * 64.0 + 1e-9).floor().clamp(0.0, 64.0) as u32
}

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nobody",
    "nothing",
    "neither",
    "nor",
    "nowhere",
    "without",
    "cannot",
    "cant",
    "dont",
    "doesnt",
    "didnt",
    "isnt",
    "arent",
    "wasnt",
    "werent",
    "wont",
    "wouldnt",
    "shouldnt",
    "couldnt",
    "mustnt",
    "hasnt",
    "havent",
    "hadnt",
    "except",
    "exclude",
    "excluding",
    "unless",
];

/// Numbers (as written, digits and decimal points) and negations of a text.
pub fn guard_features(text: &str) -> (Vec<String>, Vec<String>) {
    let mut numbers: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || (c == '.' && !cur.is_empty()) {
            cur.push(c);
        } else if !cur.is_empty() {
            numbers.push(cur.trim_end_matches('.').to_owned());
            cur.clear();
        }
    }
    numbers.sort();
    let lowered = text.to_lowercase().replace(APOSTROPHES, "");
    let mut negations: Vec<String> = words(&lowered).into_iter().filter(|w| NEGATIONS.contains(&w.as_str())).collect();
    negations.sort();
    negations.dedup();
    (numbers, negations)
}

const APOSTROPHES: [char; 3] = ['\'', '’', 'ʼ'];

/// Words that never carry the request, wherever they stand: articles, "please" and
/// interjections.
const FILLER: &[&str] = &[
    "a",
    "an",
    "the",
    "please",
    "pls",
    "plz",
    "kindly",
    "um",
    "umm",
    "uh",
    "uhh",
    "uhm",
    "er",
    "erm",
    "hmm",
    "just",
    "basically",
    "actually",
    "really",
    "literally",
];

/// Courtesies that frame a request at the start or the end of a sentence, as word
/// sequences (apostrophes dropped: "i'd" is "id"; fillers left out, as they are gone by the
/// time phrases are matched: "thanks a lot" is `thanks lot`), longest first where one
/// extends another.
const EDGE_PHRASES: &[&[&str]] = &[
    &["i", "would", "be", "grateful", "if", "you", "could"],
    &["id", "be", "grateful", "if", "you", "could"],
    &["would", "you", "be", "so", "kind", "as", "to"],
    &["i", "was", "wondering", "if", "you", "could"],
    &["i", "wonder", "if", "you", "could"],
    &["do", "you", "think", "you", "could"],
    &["could", "i", "ask", "you", "to"],
    &["i", "would", "like", "you", "to"],
    &["i", "would", "appreciate", "it", "if", "you", "could"],
    &["id", "appreciate", "it", "if", "you", "could"],
    &["id", "like", "you", "to"],
    &["i", "want", "you", "to"],
    &["i", "need", "you", "to"],
    &["could", "you", "do", "me", "favor", "and"],
    &["can", "you", "do", "me", "favor", "and"],
    &["would", "it", "be", "possible", "for", "you", "to"],
    &["hope", "this", "finds", "you", "well"],
    &["hope", "youre", "doing", "well"],
    &["hope", "you", "are", "well"],
    &["hope", "youre", "well"],
    &["would", "you", "be", "able", "to"],
    &["could", "you", "be", "able", "to"],
    &["will", "you", "be", "able", "to"],
    &["are", "you", "able", "to"],
    &["do", "me", "favor", "and"],
    &["quick", "favor"],
    &["thanks", "ton"],
    &["would", "it", "be", "possible", "to"],
    &["is", "it", "possible", "for", "you", "to"],
    &["when", "you", "get", "chance"],
    &["when", "you", "have", "moment"],
    &["when", "you", "have", "time"],
    &["sorry", "to", "bother", "you"],
    &["if", "you", "dont", "mind"],
    &["if", "thats", "okay"],
    &["if", "thats", "ok"],
    &["can", "you", "help", "me"],
    &["could", "you", "help", "me"],
    &["would", "you", "help", "me"],
    &["quick", "question"],
    &["real", "quick"],
    &["quickly"],
    &["best", "regards"],
    &["kind", "regards"],
    &["excuse", "me"],
    &["help", "me"],
    &["regards"],
    &["tia"],
    &["thank", "you", "in", "advance"],
    &["thank", "you", "very", "much"],
    &["thanks", "in", "advance"],
    &["thank", "you", "so", "much"],
    &["thanks", "so", "much"],
    &["thanks", "lot"],
    &["thanks", "bunch"],
    &["good", "morning"],
    &["good", "afternoon"],
    &["good", "evening"],
    &["hey", "there"],
    &["hi", "there"],
    &["hello", "there"],
    &["hi", "team"],
    &["hello", "team"],
    &["hey", "team"],
    &["hi", "all"],
    &["hey", "all"],
    &["hello", "all"],
    &["hi", "everyone"],
    &["hello", "everyone"],
    &["hey", "everyone"],
    &["would", "you", "mind"],
    &["could", "you", "possibly"],
    &["can", "you", "possibly"],
    &["i", "appreciate", "it"],
    &["much", "appreciated"],
    &["many", "thanks"],
    &["thank", "you"],
    &["if", "you", "can"],
    &["if", "you", "could"],
    &["if", "possible"],
    &["when", "you", "can"],
    &["could", "you"],
    &["can", "you"],
    &["would", "you"],
    &["will", "you"],
    &["appreciate", "it"],
    &["thanks"],
    &["thx"],
    &["cheers"],
];

/// Words that only open a sentence: greetings and discourse markers ("so", "well", "ok").
/// Elsewhere they may mean something ("works well", "say hello").
const START_WORDS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "yo",
    "greetings",
    "so",
    "well",
    "ok",
    "okay",
    "alright",
    "oh",
    "honestly",
    "anyway",
    "anyways",
];

/// Symbols that change a meaning wherever they stand.
fn always_significant(c: char) -> bool {
    matches!(
        c,
        '+' | '=' | '<' | '>' | '%' | '‰' | '‱' | '°' | '^' | '~' | '#' | '&' | '@' | '|' | '¬' | '±' | '∓' | '×'
            | '÷' | '√' | '∞' | '≈' | '≠' | '≤' | '≥' | '≪' | '≫' | '∑' | '∏' | '∫' | '∂' | '∆' | '∇' | '∈' | '∉'
            | '∩' | '∪' | '⊂' | '⊃' | '→' | '←' | '↔' | '⇒' | '⇔' | '−'
            // currencies
            | '$' | '¢' | '£' | '¤' | '¥' | '฿' | '৳' | '﷼' | '\u{20A0}'..='\u{20C0}'
    )
}

const DASHES: &[char] = &['-', '‐', '‑', '‒', '–', '—', '―', '﹣'];

/// The token a non-alphanumeric character stands for, given the nearest non-space characters
/// before and after it: `None` for punctuation.
fn symbol(prev: Option<char>, c: char, next: Option<char>) -> Option<char> {
    let operand = |x: Option<char>| x.is_some_and(|x| x.is_alphanumeric() || matches!(x, '(' | ')' | '.'));
    if c == '−' {
        return Some('-');
    }
    if always_significant(c) {
        return Some(c);
    }
    if DASHES.contains(&c) {
        // A sign, a minus or a range: the dash stands before a number.
        return next.is_some_and(|n| n.is_ascii_digit() || n == '.').then_some('-');
    }
    match c {
        '*' | '/' | '⁄' | '∕' if operand(prev) && operand(next) => Some(if c == '*' { '*' } else { '/' }),
        _ => None,
    }
}

/// One message's content as sentences of clauses of tokens (words and symbols), fillers
/// included. A comma ends a clause, except between digits (`1,000`).
fn sentences(content: &str) -> Vec<Vec<Vec<String>>> {
    let chars: Vec<char> = content.chars().filter(|c| !APOSTROPHES.contains(c)).collect();
    let mut out = Vec::new();
    let mut sentence = Vec::new();
    let mut clause = Vec::new();
    let mut word = String::new();
    let mut prev: Option<char> = None;
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
            prev = Some(c);
            continue;
        }
        if !word.is_empty() {
            clause.push(std::mem::take(&mut word));
        }
        if c.is_whitespace() {
            continue;
        }
        let next = chars[i + 1..].iter().copied().find(|x| !x.is_whitespace());
        let digit_at = |j: Option<usize>| j.and_then(|j| chars.get(j)).is_some_and(char::is_ascii_digit);
        let between_digits = digit_at(i.checked_sub(1)) && digit_at(Some(i + 1));
        if matches!(c, '.' | '!' | '?' | ';' | ':' | '。' | '！' | '？' | '；' | '：') && !(c == '.' && between_digits)
        {
            sentence.push(std::mem::take(&mut clause));
            out.push(std::mem::take(&mut sentence));
        } else if matches!(c, ',' | '，' | '、') && !between_digits {
            sentence.push(std::mem::take(&mut clause));
        } else if let Some(s) = symbol(prev, c, next) {
            clause.push(s.to_string());
        }
        prev = Some(c);
    }
    if !word.is_empty() {
        clause.push(word);
    }
    sentence.push(clause);
    out.push(sentence);
    out
}

/// What may stand as a clause of its own without saying anything ("Summarize, like, the
/// report"; "You know, …"); elsewhere these words may carry meaning.
const INTERJECTIONS: &[&str] = &[
    "like",
    "right",
    "honestly",
    "anyway",
    "anyways",
    "sure",
    "yeah",
    "you know",
    "i mean",
    "if you will",
    "btw",
    "by the way",
];

/// Removes the courtesies at the start and the end of a sentence, repeatedly.
fn trim_courtesies(s: &mut Vec<String>) {
    loop {
        let before = s.len();
        for phrase in EDGE_PHRASES {
            if s.len() >= phrase.len() && s.iter().zip(phrase.iter()).all(|(w, p)| w == p) {
                s.drain(..phrase.len());
            }
            if s.len() >= phrase.len() && s[s.len() - phrase.len()..].iter().zip(phrase.iter()).all(|(w, p)| w == p) {
                s.truncate(s.len() - phrase.len());
            }
        }
        while s.first().is_some_and(|w| START_WORDS.contains(&w.as_str())) {
            s.remove(0);
        }
        if s.len() == before {
            return;
        }
    }
}

/// Words after which "like" is a verb or a comparison ("I like", "looks like").
const LIKE_AFTER: &[&str] = &[
    "i",
    "id",
    "you",
    "youd",
    "we",
    "wed",
    "they",
    "theyd",
    "he",
    "she",
    "would",
    "do",
    "does",
    "did",
    "dont",
    "doesnt",
    "didnt",
    "not",
    "look",
    "looks",
    "looked",
    "feel",
    "feels",
    "sound",
    "sounds",
    "seem",
    "seems",
    "something",
    "things",
    "anything",
    "nothing",
    "more",
    "much",
    "be",
    "is",
    "are",
    "was",
];

/// Drops "like" used as a filler ("summarize like the report"); keeps the verb, the
/// comparison and the end of a question ("what is it like").
fn drop_filler_like(s: &mut Vec<String>) {
    for i in (0..s.len().saturating_sub(1)).rev() {
        let after = i.checked_sub(1).map(|j| s[j].as_str());
        if s[i] == "like" && !after.is_some_and(|w| LIKE_AFTER.contains(&w)) {
            s.remove(i);
        }
    }
}

/// The content tokens of one message's text, in order.
pub fn content_tokens(content: &str) -> Vec<String> {
    let mut out = Vec::new();
    for sentence in sentences(content) {
        let mut s = Vec::new();
        for mut clause in sentence {
            clause.retain(|w| !FILLER.contains(&w.as_str()));
            let mut rest = clause.clone();
            trim_courtesies(&mut rest);
            if !rest.is_empty() && !INTERJECTIONS.contains(&rest.join(" ").as_str()) {
                s.append(&mut clause);
            }
        }
        trim_courtesies(&mut s);
        drop_filler_like(&mut s);
        trim_courtesies(&mut s);
        out.append(&mut s);
    }
    out
}

/// A conversation (`role: content` per line) as (role, content tokens) per message.
fn conversation(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .map(|line| {
            let (role, content) = line.split_once(": ").unwrap_or(("", line));
            (role.to_lowercase(), content_tokens(content))
        })
        .collect()
}

/// A fingerprint of what a conversation says: equal fingerprints are near-duplicates.
pub fn guard_fingerprint(text: &str) -> u64 {
    let (numbers, _) = guard_features(text);
    let messages = conversation(text);
    // The negations of what is asked, not of the courtesies around it ("if you don't mind").
    let mut negations: Vec<&str> = messages
        .iter()
        .flat_map(|(_, tokens)| tokens.iter().map(String::as_str))
        .filter(|t| NEGATIONS.contains(t))
        .collect();
    negations.sort_unstable();
    negations.dedup();
    let courtesy_only = messages.iter().all(|(_, tokens)| tokens.is_empty());
    let mut doc = serde_json::json!({"v": 2, "numbers": numbers, "negations": negations, "messages": messages});
    if courtesy_only {
        doc["text"] = serde_json::Value::String(words(text).join(" "));
    }
    let h = Sha256::digest(canonical::to_string(&doc).as_bytes());
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(t: &str) -> String {
        content_tokens(t).join(" ")
    }

    #[test]
    fn simhash_vectors() {
        // Pinned values (docs/FORMATS.md).
        assert_eq!(format!("{:016x}", simhash("user: What is the capital of France?")), "3418b42287f2422d");
        assert_eq!(format!("{:016x}", simhash("user: Please list 3 risks.")), "0702890d4226bac9");
        assert_eq!(format!("{:016x}", simhash("user: Offset -5 degrees")), "edf41067ff63a5ba");
        assert_eq!(format!("{:016x}", simhash("")), "ffffffffffffffff");
        assert_eq!(simhash("user: What is the capital of France?"), simhash("user: what is the capital of france"));
        let a =
            simhash("user: Summarize the quarterly revenue report for the board in five bullet points, keep it short.");
        let b =
            simhash("user: Summarize the quarterly revenue report for the board in five bullet points; keep it brief.");
        let c = simhash("user: Write a poem about the sea.");
        // One word apart is closer than another request altogether.
        assert!(hamming(a, b) < hamming(a, c), "{} {}", hamming(a, b), hamming(a, c));
        assert!(hamming(a, c) > 16, "{}", hamming(a, c));
        assert_eq!(max_distance(0.88), 7);
        assert_eq!(max_distance(1.0), 0);
    }

    #[test]
    fn tokens_keep_content_and_drop_form() {
        for (text, expected) in [
            ("Summarize the churn report.", "summarize churn report"),
            ("Could you please summarize the churn report? Thanks!", "summarize churn report"),
            ("Hi, so, would you mind summarizing it, if possible", "summarizing it"),
            ("I'd like you to list 3 risks, thank you very much", "list 3 risks"),
            ("Um, just   LIST the risks...", "list risks"),
            ("Write a thank you note", "write thank you note"),
            ("Does it work well?", "does it work well"),
            ("Say hello in French", "say hello in french"),
            ("Don't ship it", "dont ship it"),
            ("offset -5 degrees", "offset - 5 degrees"),
            ("offset − 5 degrees", "offset - 5 degrees"),
            ("what is 7 - 3 and 12 * 4 and 12 / 4", "what is 7 - 3 and 12 * 4 and 12 / 4"),
            ("a follow-up e-mail — short", "follow up e mail short"),
            ("**Bold** request", "bold request"),
            ("costs $50 or €50 > 1000 at 5% and 20°C", "costs $ 50 or € 50 > 1000 at 5 % and 20 ° c"),
            ("pi is 3.14. Next", "pi is 3 14 next"),
            ("C++ vs C#", "c + + vs c #"),
            ("Summarize, like, the report, you know", "summarize report"),
            ("Write a note, thank you, and send it", "write note and send it"),
            ("Would it be possible to list 1,000 rows, if you don't mind?", "list 1 000 rows"),
            ("Can you help me plan it? Best regards", "plan it"),
            ("Do you like the plan", "do you like plan"),
            ("Summarize like the report real quick", "summarize report"),
            ("What is Paris like?", "what is paris like"),
            ("It looks like rain, and I like tea", "it looks like rain and i like tea"),
        ] {
            assert_eq!(tokens(text), expected, "{text}");
        }
    }

    #[test]
    fn phrases_are_written_as_they_are_matched() {
        for phrase in EDGE_PHRASES {
            for w in *phrase {
                assert!(!FILLER.contains(w), "{phrase:?} holds the filler {w:?}, removed before phrases are matched");
                assert!(w.chars().all(|c| c.is_alphanumeric() && !c.is_uppercase()), "{phrase:?}");
            }
        }
    }

    #[test]
    fn guards() {
        let g = |t: &str| guard_fingerprint(&format!("user: {t}"));
        assert_eq!(g("Ship 3 boxes to Paris"), g("ship 3 boxes to paris!"));
        assert_ne!(g("Ship 3 boxes to Paris"), g("Ship 4 boxes to Paris"));
        assert_ne!(g("Is the invoice paid?"), g("Is the invoice not paid?"));
        assert_ne!(g("Can we do this?"), g("Can't we do this?"));
        assert_eq!(guard_features("price 3.50, qty 2.").0, vec!["2", "3.50"]);
        assert_ne!(g("Summarize the churn report"), g("Summarize the pricing report"));
        assert_ne!(g("dog bites man"), g("man bites dog"));
        assert_eq!(g("Please summarize the churn report."), g("summarize churn report"));
        assert_eq!(g("Could you summarize the churn report, please? Thanks"), g("Summarize the churn report"));
        assert_eq!(g("Ship it, if you don't mind."), g("Ship it"), "a courtesy's negation is not the request's");
        assert_ne!(g("Don't ship it, if you don't mind."), g("Ship it"));
        // One symbol apart: never the same question.
        for (a, b) in [
            ("offset 5 degrees", "offset -5 degrees"),
            ("offset 5 degrees", "offset +5 degrees"),
            ("budget of $50", "budget of €50"),
            ("budget of 50 USD", "budget of 50 EUR"),
            ("rows where x > 1000", "rows where x < 1000"),
            ("rows where x >= 1000", "rows where x > 1000"),
            ("what is 7 + 3", "what is 7 - 3"),
            ("what is 12 * 4", "what is 12 / 4"),
            ("grow 5% a year", "grow 5 a year"),
            ("set it to 20°C", "set it to 20°F"),
            ("meet on 2024-01-05", "meet on 2024-05-01"),
            ("a 5 km run", "a 5 mi run"),
            ("3.50 each", "3,50 each"),
        ] {
            assert_ne!(g(a), g(b), "{a} / {b}");
        }
        // Conversations of courtesies only keep their words.
        assert_ne!(g("Hi!"), g("Thanks!"));
        assert_eq!(g("Hi!"), g("hi"));
        // Roles are part of it.
        assert_ne!(guard_fingerprint("user: list risks"), guard_fingerprint("system: list risks"));
    }
}
