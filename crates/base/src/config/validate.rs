//! What the configuration's types cannot check: ranges, URLs, cross-references between keys.

use super::*;

/// The smallest accepted `memory.l2_cache_bytes`.
pub const MIN_L2_CACHE_BYTES: u64 = 1024 * 1024;

impl Config {
    /// Checks what the types cannot. Returns `(key, message)` for the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, msg: String| Err((key.to_owned(), msg));
        let st = &self.storage;
        if st.backend == StorageBackend::Postgres && st.postgres_url.as_deref().is_none_or(str::is_empty) {
            return fail(
                "storage.postgres_url",
                "is needed by storage.backend = \"postgres\", e.g. postgres://daena@db:5432/daena".to_owned(),
            );
        }
        for (key, url, schemes) in [
            ("storage.postgres_url", &st.postgres_url, &["postgres://", "postgresql://"][..]),
            ("storage.redis_url", &st.redis_url, &["redis://", "rediss://"][..]),
        ] {
            if let Some(url) = url
                && !url.is_empty()
                && !schemes.iter().any(|s| url.starts_with(s))
            {
                return fail(key, format!("must start with {}", schemes.join(" or ")));
            }
        }
        let m = &self.memory;
        if !(m.simhash_threshold > 0.0 && m.simhash_threshold <= 1.0) {
            return fail("memory.simhash_threshold", format!("must be in (0, 1], got {}", m.simhash_threshold));
        }
        for (key, level) in [("memory.zstd_level", m.zstd_level), ("memory.l3_zstd_level", m.l3_zstd_level)] {
            if !(1..=22).contains(&level) {
                return fail(key, format!("must be a zstd level 1..=22, got {level}"));
            }
        }
        if m.l2_cache_bytes < MIN_L2_CACHE_BYTES {
            return fail(
                "memory.l2_cache_bytes",
                format!("must be at least {MIN_L2_CACHE_BYTES} (1 MiB), got {}", m.l2_cache_bytes),
            );
        }
        if usize::try_from(m.l2_cache_bytes).is_err() {
            return fail(
                "memory.l2_cache_bytes",
                format!("{} does not fit this machine's address space", m.l2_cache_bytes),
            );
        }
        if m.max_payload_bytes == 0 {
            return fail("memory.max_payload_bytes", "must be positive".into());
        }
        if m.max_payload_bytes > self.server.request_body_limit_bytes {
            return fail(
                "memory.max_payload_bytes",
                format!(
                    "{} exceeds server.request_body_limit_bytes ({}); such payloads could never arrive",
                    m.max_payload_bytes, self.server.request_body_limit_bytes
                ),
            );
        }
        for (class, cfg) in &m.classes {
            if let Some(level) = cfg.zstd_level
                && !(1..=22).contains(&level)
            {
                return fail(&format!("memory.classes.{class}.zstd_level"), format!("must be 1..=22, got {level}"));
            }
            if let Some(t) = cfg.divergence_abort
                && !(0.0..=1.0).contains(&t)
            {
                return fail(
                    &format!("memory.classes.{class}.divergence_abort"),
                    format!("must be in [0, 1], got {t}"),
                );
            }
        }
        for (i, rule) in m.aging.rules.iter().enumerate() {
            if !(rule.after_days.is_finite() && rule.after_days >= 0.0) {
                return fail(&format!("memory.aging.rules[{i}].after_days"), "must be a non-negative number".into());
            }
        }
        if !(0.0..=1.0).contains(&m.trust.promote_threshold) {
            return fail(
                "memory.trust.promote_threshold",
                format!("must be in [0, 1], got {}", m.trust.promote_threshold),
            );
        }
        let s = &m.slo;
        for (key, v) in [
            ("memory.slo.l1_p95_ms", s.l1_p95_ms),
            ("memory.slo.l2_p95_ms", s.l2_p95_ms),
            ("memory.slo.l3_p95_ms", s.l3_p95_ms),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return fail(key, format!("must be a positive number of milliseconds, got {v}"));
            }
        }
        for (key, v) in [
            ("memory.slo.max_divergence_rate", s.max_divergence_rate),
            ("memory.slo.min_cas_hit_rate", s.min_cas_hit_rate),
            ("memory.slo.max_error_rate", s.max_error_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return fail(key, format!("must be a rate in [0, 1], got {v}"));
            }
        }
        if !(m.cas.ttl_days.is_finite() && m.cas.ttl_days > 0.0) {
            return fail("memory.cas.ttl_days", "must be a positive number of days".into());
        }
        for (tenant, t) in &m.cas.tenants {
            if let Some(ttl) = t.ttl_days
                && !(ttl.is_finite() && ttl > 0.0)
            {
                return fail(
                    &format!("memory.cas.tenants.{tenant}.ttl_days"),
                    "must be a positive number of days".into(),
                );
            }
        }
        for (class, rule) in &self.policy.classes {
            if rule.require_tenant == Some(false) {
                return fail(
                    &format!("policy.classes.{class}.require_tenant"),
                    "cannot be false: every record is addressed by its tenant".into(),
                );
            }
            for role in rule.allow_roles.iter().chain(&rule.deny_roles) {
                if role.trim().is_empty() || role.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return fail(&format!("policy.classes.{class}"), format!("invalid role name {role:?}"));
                }
            }
        }
        if let Some(url) = &self.llm.upstream_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return fail("llm.upstream_url", format!("must start with http:// or https://, got {url:?}"));
        }
        if self.rate_limit.rpm == 0 || self.rate_limit.burst == 0 {
            return fail(
                "rate_limit.rpm",
                "rpm and burst must be positive (set rate_limit.enabled = false to turn limits off)".into(),
            );
        }
        if self.rate_limit.failed_auth_burst > 0 && self.rate_limit.failed_auth_per_minute == 0 {
            return fail(
                "rate_limit.failed_auth_per_minute",
                "must be positive (set rate_limit.failed_auth_burst = 0 to turn the guard off)".into(),
            );
        }
        if self.llm.timeout_secs == 0 {
            return fail("llm.timeout_secs", "must be positive".into());
        }
        for (model, p) in &self.llm.prices {
            if !(p.input_per_million >= 0.0 && p.output_per_million >= 0.0) {
                return fail(&format!("llm.prices.{model}"), "prices must be non-negative".into());
            }
        }
        if self.server.request_body_limit_bytes < 1024 {
            return fail("server.request_body_limit_bytes", "must be at least 1024".into());
        }
        if self.server.request_timeout_secs == 0 {
            return fail("server.request_timeout_secs", "must be positive".into());
        }
        if self.server.header_read_timeout_secs == 0 {
            return fail("server.header_read_timeout_secs", "must be positive".into());
        }
        if self.agents.heartbeat_window_secs == 0 {
            return fail("agents.heartbeat_window_secs", "must be positive".into());
        }
        if self.ledger.checkpoint_every_entries == 0 || self.ledger.checkpoint_every_secs == 0 {
            return fail("ledger.checkpoint_every_entries", "checkpoint intervals must be positive".into());
        }
        if self.ledger.segment_bytes < 1024 * 1024 {
            return fail("ledger.segment_bytes", "must be at least 1 MiB".into());
        }
        Ok(())
    }
}
