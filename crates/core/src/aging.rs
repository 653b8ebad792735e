//! Aging rules: what happens to a record that has not been accessed for a while.
//!
//! Retention comes first (a class's `retention_days` of idleness deletes the record); then the
//! rule with the longest `after_days` that the idleness reaches and that would change the
//! record wins: `archive` moves an L2 record to L3, `tighten_compression` re-compresses an L2
//! record at the cold level. Quarantined records are never moved, only expired.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeKind {
    Tighten,
    Archive,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub after_days: f64,
    pub kind: AgeKind,
    /// Classes the rule applies to; empty: every class.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Warm,
    Quarantine,
    Cold,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Keep,
    Tighten,
    Archive,
    Expire,
}

/// The record as aging sees it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub class: &'a str,
    pub place: Place,
    pub level: i32,
    pub idle_days: f64,
}

pub fn decide(s: Subject<'_>, retention_days: Option<u32>, rules: &[Rule], cold_level: i32) -> Decision {
    if retention_days.is_some_and(|r| s.idle_days >= f64::from(r)) {
        return Decision::Expire;
    }
    if s.place != Place::Warm {
        return Decision::Keep;
    }
    let mut applicable: Vec<&Rule> = rules
        .iter()
        .filter(|r| s.idle_days >= r.after_days && (r.targets.is_empty() || r.targets.iter().any(|t| t == s.class)))
        .collect();
    applicable.sort_by(|a, b| b.after_days.total_cmp(&a.after_days));
    for r in applicable {
        match r.kind {
            AgeKind::Archive => return Decision::Archive,
            AgeKind::Tighten if s.level < cold_level => return Decision::Tighten,
            AgeKind::Tighten => {}
        }
    }
    Decision::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<Rule> {
        vec![
            Rule { after_days: 14.0, kind: AgeKind::Tighten, targets: vec!["chat".into(), "research_note".into()] },
            Rule { after_days: 90.0, kind: AgeKind::Archive, targets: vec!["chat".into()] },
        ]
    }

    fn check(class: &str, place: Place, level: i32, idle: f64, retention: Option<u32>, expected: Decision) {
        let s = Subject { class, place, level, idle_days: idle };
        assert_eq!(decide(s, retention, &rules(), 19), expected, "{class} {place:?} level {level} idle {idle}");
    }

    #[test]
    fn matrix() {
        check("chat", Place::Warm, 3, 1.0, Some(180), Decision::Keep);
        check("chat", Place::Warm, 3, 14.0, Some(180), Decision::Tighten);
        check("chat", Place::Warm, 19, 20.0, Some(180), Decision::Keep);
        check("chat", Place::Warm, 19, 90.0, Some(180), Decision::Archive);
        check("chat", Place::Warm, 3, 100.0, Some(180), Decision::Archive);
        check("chat", Place::Cold, 19, 100.0, Some(180), Decision::Keep);
        check("chat", Place::Cold, 19, 180.0, Some(180), Decision::Expire);
        check("research_note", Place::Warm, 3, 400.0, None, Decision::Tighten);
        check("legal", Place::Warm, 3, 400.0, Some(2555), Decision::Keep);
        check("legal", Place::Quarantine, 3, 3000.0, Some(2555), Decision::Expire);
        check("chat", Place::Quarantine, 3, 100.0, Some(180), Decision::Keep);
    }
}
