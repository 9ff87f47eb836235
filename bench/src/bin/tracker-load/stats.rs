//! What a worker counts, and the report made from every worker's counts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::hist::Histogram;
use crate::mix::Event;

#[derive(Debug, Default)]
pub struct Stats {
    /// Latency of answered announces (2xx, not refused), µs.
    pub latency: Histogram,
    /// Time to open a connection (TCP + TLS handshake + HTTP/1.1 set-up), µs.
    pub connect: Histogram,
    pub statuses: BTreeMap<u16, u64>,
    /// 200 answers that refuse (opentracker's `failure reason`).
    pub refused: u64,
    pub transport_errors: u64,
    /// Requests sent again on a new connection because the server had closed the kept-alive
    /// one as they went out.
    pub stale_retries: u64,
    pub events: [u64; 4],
    pub first_error: Option<String>,
}

impl Stats {
    pub fn answer(&mut self, status: u16, refused: bool, event: Event, latency: Duration) {
        *self.statuses.entry(status).or_default() += 1;
        self.events[event.index()] += 1;
        if refused {
            self.refused += 1;
            self.note(format!("{status} with a failure reason"));
        } else if (200..300).contains(&status) {
            self.latency.record(micros(latency));
        } else {
            self.note(format!("HTTP {status}"));
        }
    }

    pub fn transport_error(&mut self, e: &anyhow::Error) {
        self.transport_errors += 1;
        self.note(format!("{e:#}"));
    }

    fn note(&mut self, what: String) {
        self.first_error.get_or_insert(what);
    }

    pub fn merge(&mut self, other: Stats) {
        self.latency.merge(&other.latency);
        self.connect.merge(&other.connect);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.refused += other.refused;
        self.transport_errors += other.transport_errors;
        self.stale_retries += other.stale_retries;
        for (a, b) in self.events.iter_mut().zip(other.events) {
            *a += b;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn count(&self, f: impl Fn(u16) -> bool) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| f(**s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.count(|s| s >= 500)
    }

    /// The report: throughput counts answered announces only; 429s, other 4xx, 5xx and
    /// transport errors are counted apart.
    pub fn report(&self, window: Duration, setup: Value) -> Value {
        let secs = window.as_secs_f64().max(1e-9);
        let ok = self.latency.count();
        let ms = |h: &Histogram, q: f64| h.quantile(q).map(|us| us as f64 / 1000.0);
        let events: BTreeMap<_, _> = Event::ALL
            .iter()
            .map(|e| (e.as_str(), self.events[e.index()]))
            .collect();
        json!({
            "setup": setup,
            "window_s": round3(secs),
            "announces": ok,
            "announces_per_s": round3(ok as f64 / secs),
            "p50_ms": ms(&self.latency, 0.50),
            "p90_ms": ms(&self.latency, 0.90),
            "p99_ms": ms(&self.latency, 0.99),
            "p999_ms": ms(&self.latency, 0.999),
            "max_ms": self.latency.max() as f64 / 1000.0,
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "rate_limited_429": self.count(|s| s == 429),
            "client_errors_other": self.count(|s| (400..500).contains(&s) && s != 429) + self.refused,
            "server_errors_5xx": self.server_errors(),
            "transport_errors": self.transport_errors,
            "stale_connection_retries": self.stale_retries,
            "connections": self.connect.count(),
            "connect_p50_ms": ms(&self.connect, 0.50),
            "connect_p99_ms": ms(&self.connect, 0.99),
            "events": events,
            "first_error": self.first_error,
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_apart_from_announces() {
        let mut a = Stats::default();
        let ms = Duration::from_millis;
        a.answer(200, false, Event::Started, ms(2));
        a.answer(429, false, Event::Progress, ms(1));
        a.answer(200, true, Event::Progress, ms(1));
        let mut b = Stats::default();
        b.answer(503, false, Event::Stopped, ms(9));
        b.answer(404, false, Event::Completed, ms(1));
        b.transport_error(&anyhow::anyhow!("reset"));
        a.merge(b);
        let r = a.report(Duration::from_secs(2), json!({}));
        assert_eq!(r["announces"], 1);
        assert_eq!(r["announces_per_s"], 0.5);
        assert_eq!(r["rate_limited_429"], 1);
        assert_eq!(r["client_errors_other"], 2);
        assert_eq!(r["server_errors_5xx"], 1);
        assert_eq!(r["transport_errors"], 1);
        assert_eq!(r["p50_ms"], 2.0);
        assert_eq!(r["events"]["progress"], 2);
        assert_eq!(r["first_error"], "HTTP 429");
    }
}
