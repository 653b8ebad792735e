//! Printing results: JSON with `--json`, aligned text otherwise.

use serde::Serialize;

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as a left-aligned table under `headers`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A progress line on stderr, shown only when stderr is a terminal and throttled to ~10/s.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    enabled: bool,
    last: std::time::Instant,
    started: std::time::Instant,
}

impl Progress {
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        Progress {
            label: label.to_owned(),
            total,
            done: 0,
            enabled: std::io::stderr().is_terminal(),
            last: now,
            started: now,
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.last.elapsed() >= std::time::Duration::from_millis(100) {
            self.last = std::time::Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match self.total {
            Some(t) if t > 0 => eprint!(
                "\r{}: {}/{} ({:.0}%) {:.0}/s   ",
                self.label,
                self.done,
                t,
                self.done as f64 * 100.0 / t as f64,
                rate
            ),
            _ => eprint!("\r{}: {} {:.0}/s   ", self.label, self.done, rate),
        }
    }

    /// Advances to a running total `done` (callbacks that report totals, not increments).
    pub fn set(&mut self, done: u64) {
        self.inc(done.saturating_sub(self.done));
    }

    pub fn finish(&self) {
        if self.enabled {
            self.draw();
            eprintln!();
        }
    }
}
