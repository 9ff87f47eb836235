//! Counters for `/metrics`, rendered in the Prometheus text format.
//!
//! Hand-rolled rather than a metrics crate: a few series, and label values that come only from
//! bounded sets (matched route templates, a fixed list of methods, status codes), so a client
//! cannot grow the map by sending odd paths or methods.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::Method;

use crate::limits::Scope;
use crate::store::Counts;

#[derive(Debug, Default)]
pub struct Metrics {
    /// (route, method, status) → count.
    requests: Mutex<BTreeMap<(String, &'static str, u16), u64>>,
    announces: AtomicU64,
    connections: Arc<ConnectionStats>,
    /// 429 answers by [`Scope`], indexed as [`Scope::ALL`].
    rate_limited: [AtomicU64; 3],
}

/// The connection table's figures (see `connections.rs`), kept here so `/metrics` shows them.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    idle_closed: AtomicU64,
}

impl ConnectionStats {
    pub fn set_open(&self, n: usize) {
        self.open.store(n as u64, Ordering::Relaxed);
    }
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    pub fn record_evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_idle_closed(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let series: [(&str, &str, &str, &AtomicU64); 4] = [
            (
                "open_connections",
                "gauge",
                "TLS connections open, handshakes included.",
                &self.open,
            ),
            (
                "connections_evicted_total",
                "counter",
                "Idle connections closed to make room for a new one at a connection cap.",
                &self.evicted,
            ),
            (
                "connections_refused_total",
                "counter",
                "New connections closed at once: every connection of their address, or every connection, was busy.",
                &self.refused,
            ),
            (
                "connections_idle_closed_total",
                "counter",
                "Connections closed for sending no request within the first-request or idle timeout.",
                &self.idle_closed,
            ),
        ];
        for (name, kind, help, value) in series {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP torrentguard_tracker_{name} {help}");
            let _ = writeln!(out, "# TYPE torrentguard_tracker_{name} {kind}");
            let _ = writeln!(
                out,
                "torrentguard_tracker_{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// A method label from a fixed set, so custom methods cannot add series.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

impl Metrics {
    /// The connection figures, shared with the connection table.
    pub fn connections(&self) -> &Arc<ConnectionStats> {
        &self.connections
    }

    /// `route` is the matched route template, or `None` for a request no route matched.
    pub fn record_request(&self, route: Option<&str>, method: &Method, status: u16) {
        let key = (
            route.unwrap_or("unmatched").to_string(),
            method_label(method),
            status,
        );
        // A poisoned lock only means another request panicked mid-increment; the counts are
        // still usable, so keep counting.
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(key).or_insert(0) += 1;
    }

    pub fn record_announce(&self) {
        self.announces.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, counts: Counts) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(
            out,
            "# HELP torrentguard_tracker_http_requests_total HTTP requests by matched route, method and status."
        );
        let _ = writeln!(
            out,
            "# TYPE torrentguard_tracker_http_requests_total counter"
        );
        {
            let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            for ((route, method, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "torrentguard_tracker_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    escape_label(route)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP torrentguard_tracker_live_peers Peers that announced within the TTL."
        );
        let _ = writeln!(out, "# TYPE torrentguard_tracker_live_peers gauge");
        let _ = writeln!(out, "torrentguard_tracker_live_peers {}", counts.live_peers);
        let _ = writeln!(
            out,
            "# HELP torrentguard_tracker_files Registered manifests."
        );
        let _ = writeln!(out, "# TYPE torrentguard_tracker_files gauge");
        let _ = writeln!(out, "torrentguard_tracker_files {}", counts.files);
        let _ = writeln!(
            out,
            "# HELP torrentguard_tracker_announces_total Announces accepted since start."
        );
        let _ = writeln!(out, "# TYPE torrentguard_tracker_announces_total counter");
        let _ = writeln!(
            out,
            "torrentguard_tracker_announces_total {}",
            self.announces.load(Ordering::Relaxed)
        );
        self.connections.render(&mut out);
        self.render_rate_limited(&mut out);
        out
    }

    pub fn record_rate_limited(&self, scope: Scope) {
        let i = Scope::ALL.iter().position(|s| *s == scope).unwrap_or(0);
        self.rate_limited[i].fetch_add(1, Ordering::Relaxed);
    }

    fn render_rate_limited(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP torrentguard_tracker_rate_limited_total Requests refused with 429, by limit: per-identity or per-address write rate, or the concurrency bound."
        );
        let _ = writeln!(
            out,
            "# TYPE torrentguard_tracker_rate_limited_total counter"
        );
        for (scope, n) in Scope::ALL.iter().zip(&self.rate_limited) {
            let _ = writeln!(
                out,
                "torrentguard_tracker_rate_limited_total{{scope=\"{}\"}} {}",
                scope.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let m = Metrics::default();
        m.record_request(Some("/api/v1/files"), &Method::GET, 200);
        m.record_request(Some("/api/v1/files"), &Method::GET, 200);
        m.record_request(None, &Method::from_bytes(b"BREW").unwrap(), 404);
        m.record_announce();
        let text = m.render(Counts {
            files: 3,
            live_peers: 2,
        });
        assert!(text.contains(
            "torrentguard_tracker_http_requests_total{route=\"/api/v1/files\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "torrentguard_tracker_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"} 1"
        ));
        assert!(text.contains("torrentguard_tracker_live_peers 2\n"));
        assert!(text.contains("torrentguard_tracker_files 3\n"));
        assert!(text.contains("torrentguard_tracker_announces_total 1\n"));
        m.connections().set_open(7);
        m.connections().record_evicted();
        let text = m.render(Counts {
            files: 0,
            live_peers: 0,
        });
        assert!(text.contains("torrentguard_tracker_open_connections 7\n"));
        assert!(text.contains("torrentguard_tracker_connections_evicted_total 1\n"));
        assert!(text.contains("torrentguard_tracker_connections_refused_total 0\n"));
        m.record_rate_limited(Scope::Address);
        let text = m.render(Counts {
            files: 0,
            live_peers: 0,
        });
        assert!(text.contains("torrentguard_tracker_rate_limited_total{scope=\"address\"} 1\n"));
        assert!(text.contains("torrentguard_tracker_rate_limited_total{scope=\"identity\"} 0\n"));
    }
}
