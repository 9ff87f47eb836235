//! The dashboard's HTML, built here and only here, every value through [`escape`]. The page
//! and the fragments the event stream pushes come from the same functions, so a live update
//! looks exactly like a reload.

use std::fmt::Write as _;

use torrentguard_protocol::api::{PeerInfo, PeerSummary, Reputation};
use torrentguard_protocol::{FileId, Fingerprint};

/// HTML-escapes text for element content and quoted attribute values alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 MiB`-style sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `12 s ago`, `3 min ago`, …, from Unix seconds.
pub fn ago(then: i64, now: i64) -> String {
    let secs = now.saturating_sub(then).max(0);
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn reputation(r: Option<Reputation>) -> String {
    match r {
        // Em dash: this tracker keeps no score for the peer (yet).
        None => "—".into(),
        Some(r) => format!("{} ({} reporters)", r.score, r.reporters),
    }
}

fn file_link(id: FileId, text: &str) -> String {
    format!("<a href=\"/dashboard/files/{id}\">{}</a>", escape(text))
}

/// A registered file as the dashboard lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub id: FileId,
    pub name: String,
    pub size: u64,
    pub chunks: u32,
    pub seeders: u32,
    pub leechers: u32,
    /// Share of all chunks the live peers could hold that they do hold; `None` without peers.
    pub completion: Option<f64>,
}

fn percent(fraction: Option<f64>) -> String {
    match fraction {
        None => "—".into(),
        Some(f) => format!("{:.0} %", (f * 100.0).clamp(0.0, 100.0)),
    }
}

fn meter(fraction: Option<f64>) -> String {
    let value = fraction.unwrap_or(0.0).clamp(0.0, 1.0);
    format!(
        "<meter min=\"0\" max=\"1\" value=\"{value:.3}\"></meter> <span class=\"pct\">{}</span>",
        percent(fraction)
    )
}

fn empty_row(columns: usize, text: &str) -> String {
    format!(
        "<tr class=\"empty\"><td colspan=\"{columns}\">{}</td></tr>",
        escape(text)
    )
}

/// The body rows of the files table.
pub fn file_rows(files: &[FileRow], more: bool) -> String {
    if files.is_empty() {
        return empty_row(6, "No files registered yet.");
    }
    let mut out = String::new();
    for f in files {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "<tr data-file-id=\"{id}\"><td class=\"name\">{link}</td><td class=\"size\">{size}</td>\
             <td class=\"chunks\">{chunks}</td><td class=\"seeders\">{seeders}</td>\
             <td class=\"leechers\">{leechers}</td><td class=\"completion\">{meter}</td></tr>",
            id = f.id,
            link = file_link(f.id, &f.name),
            size = escape(&human_size(f.size)),
            chunks = f.chunks,
            seeders = f.seeders,
            leechers = f.leechers,
            meter = meter(f.completion),
        );
    }
    if more {
        out.push_str(&empty_row(6, "More files exist: the API lists them all."));
    }
    out
}

/// The body rows of the live peers table; `names` gives the files' names where known.
pub fn peer_rows(
    peers: &[PeerSummary],
    more: bool,
    now: i64,
    names: impl Fn(FileId) -> Option<String>,
) -> String {
    if peers.is_empty() {
        return empty_row(5, "No live peers.");
    }
    let mut out = String::new();
    for p in peers {
        let files: Vec<String> = p
            .files
            .iter()
            .map(|&id| file_link(id, &names(id).unwrap_or_else(|| id.short())))
            .collect();
        let _ = write!(
            out,
            "<tr data-fingerprint=\"{fp}\"><td class=\"address\">{addr}</td>\
             <td class=\"fingerprint\" title=\"{fp}\">{short}…</td><td class=\"files\">{files}</td>\
             <td class=\"last-seen\">{seen}</td><td class=\"reputation\">{rep}</td></tr>",
            fp = p.fingerprint,
            addr = escape(&std::net::SocketAddr::new(p.address, p.port).to_string()),
            short = p.fingerprint.short(),
            files = files.join(", "),
            seen = ago(p.last_seen, now),
            rep = escape(&reputation(p.reputation)),
        );
    }
    if more {
        out.push_str(&empty_row(
            5,
            "More peers are live: the API lists them all.",
        ));
    }
    out
}

/// The body rows of one file's peers table.
pub fn file_peer_rows(peers: &[PeerInfo], chunks: u32, now: i64) -> String {
    if peers.is_empty() {
        return empty_row(6, "No live peers for this file.");
    }
    let mut out = String::new();
    for p in peers {
        let held = (chunks > 0).then(|| f64::from(p.have) / f64::from(chunks));
        let role = if p.complete { "seeder" } else { "leecher" };
        let _ = write!(
            out,
            "<tr data-fingerprint=\"{fp}\"><td class=\"address\">{addr}</td>\
             <td class=\"fingerprint\" title=\"{fp}\">{short}…</td><td class=\"role\">{role}</td>\
             <td class=\"have\">{meter}</td><td class=\"last-seen\">{seen}</td>\
             <td class=\"reputation\">{rep}</td></tr>",
            fp = p.fingerprint,
            addr = escape(&std::net::SocketAddr::new(p.address, p.port).to_string()),
            short = p.fingerprint.short(),
            meter = meter(if p.complete { Some(1.0) } else { held }),
            seen = ago(p.last_seen, now),
            rep = escape(&reputation(p.reputation)),
        );
    }
    out
}

/// Requests of one route and method since start, and per second over the last interval.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRow {
    pub route: String,
    pub method: &'static str,
    pub total: u64,
    /// Answers with a 4xx or 5xx status.
    pub errors: u64,
    /// `None` until there is an earlier sample to compare with.
    pub per_sec: Option<f64>,
    pub errors_per_sec: Option<f64>,
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{r:.1}/s"))
}

/// The body rows of the request table.
pub fn request_rows(rows: &[RouteRow]) -> String {
    if rows.is_empty() {
        return empty_row(6, "No requests yet.");
    }
    let mut out = String::new();
    for r in rows {
        let _ = write!(
            out,
            "<tr><td class=\"route\">{route}</td><td class=\"method\">{method}</td>\
             <td class=\"total\">{total}</td><td class=\"rate\">{rate}</td>\
             <td class=\"errors\">{errors}</td><td class=\"error-rate\">{error_rate}</td></tr>",
            route = escape(&r.route),
            method = r.method,
            total = r.total,
            rate = rate(r.per_sec),
            errors = r.errors,
            error_rate = rate(r.errors_per_sec),
        );
    }
    out
}

/// The line under the title of the overview.
pub fn overview_summary(files: usize, files_more: bool, peers: usize, peers_more: bool) -> String {
    let count = |n: usize, more: bool, one: &str, many: &str| {
        let plus = if more { "+" } else { "" };
        format!("{n}{plus} {}", if n == 1 && !more { one } else { many })
    };
    format!(
        "{} · {}",
        count(files, files_more, "file", "files"),
        count(peers, peers_more, "live peer", "live peers")
    )
}

/// A whole page around `body`; `events` is the event stream's URL.
pub fn page(title: &str, fingerprint: Fingerprint, events: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · TorrentGuard tracker</title>\
         <link rel=\"icon\" href=\"/dashboard/icon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/dashboard/dashboard.css\">\
         <script src=\"/dashboard/dashboard.js\" defer></script></head>\
         <body><header><h1><a href=\"/\">TorrentGuard tracker</a></h1>\
         <p class=\"identity\">certificate <code>{fp}</code></p>\
         <p id=\"live-status\" data-state=\"connecting\">connecting…</p></header>\
         <main data-events=\"{events}\">{body}</main></body></html>\n",
        title = escape(title),
        fp = fingerprint,
        events = escape(events),
    )
}

/// The overview's body; each `id`ed element is a fragment the event stream replaces.
pub fn overview_body(summary: &str, files: &str, peers: &str, requests: &str) -> String {
    format!(
        "<p id=\"summary\">{summary}</p>\
         <section><h2>Files</h2><table class=\"files\"><thead><tr><th>Name</th><th>Size</th>\
         <th>Chunks</th><th>Seeders</th><th>Leechers</th><th>Swarm completion</th></tr></thead>\
         <tbody id=\"files-body\">{files}</tbody></table></section>\
         <section><h2>Live peers</h2><table class=\"peers\"><thead><tr><th>Address</th>\
         <th>Fingerprint</th><th>Files</th><th>Last seen</th><th>Reputation</th></tr></thead>\
         <tbody id=\"peers-body\">{peers}</tbody></table></section>\
         <section><h2>Requests</h2><table class=\"requests\"><thead><tr><th>Route</th>\
         <th>Method</th><th>Total</th><th>Rate</th><th>Errors</th><th>Error rate</th></tr></thead>\
         <tbody id=\"requests-body\">{requests}</tbody></table></section>",
        summary = escape(summary),
    )
}

/// The head of one file's page.
pub fn file_summary(file: &FileRow) -> String {
    format!(
        "<dl><dt>Name</dt><dd class=\"name\">{name}</dd><dt>File id</dt><dd><code>{id}</code></dd>\
         <dt>Size</dt><dd>{size}</dd><dt>Chunks</dt><dd>{chunks}</dd>\
         <dt>Seeders</dt><dd class=\"seeders\">{seeders}</dd><dt>Leechers</dt>\
         <dd class=\"leechers\">{leechers}</dd><dt>Swarm completion</dt><dd>{meter}</dd></dl>",
        name = escape(&file.name),
        id = file.id,
        size = escape(&human_size(file.size)),
        chunks = file.chunks,
        seeders = file.seeders,
        leechers = file.leechers,
        meter = meter(file.completion),
    )
}

/// One file's page body.
pub fn file_body(name: &str, summary: &str, peers: &str) -> String {
    format!(
        "<p><a href=\"/\">← all files</a></p><h2 class=\"file-title\">{name}</h2>\
         <div id=\"file-summary\">{summary}</div>\
         <section><h2>Peers of this file</h2><table class=\"peers\"><thead><tr><th>Address</th>\
         <th>Fingerprint</th><th>Role</th><th>Has</th><th>Last seen</th><th>Reputation</th>\
         </tr></thead><tbody id=\"file-peers-body\">{peers}</tbody></table></section>",
        name = escape(name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fid(n: u8) -> FileId {
        hex::encode([n; 32]).parse().unwrap()
    }

    #[test]
    fn markup_in_names_is_escaped_everywhere() {
        let evil = "<script>alert(1)</script>\"'&.bin";
        let row = FileRow {
            id: fid(1),
            name: evil.into(),
            size: 1536,
            chunks: 2,
            seeders: 1,
            leechers: 0,
            completion: Some(0.5),
        };
        for html in [
            file_rows(std::slice::from_ref(&row), false),
            file_summary(&row),
            file_body(evil, "", ""),
            page(evil, Fingerprint::from_bytes([7; 32]), "/e?x=\"", ""),
        ] {
            assert!(!html.contains("<script>alert"), "{html}");
            assert!(!html.contains("\"'&.bin"), "{html}");
        }
        let rows = file_rows(&[row], false);
        assert!(rows.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;.bin"));
        assert!(rows.contains("1.5 KiB") && rows.contains("50 %"), "{rows}");
    }

    #[test]
    fn peers_without_reputation_show_a_dash_and_link_their_files() {
        let peer = PeerSummary {
            fingerprint: Fingerprint::from_bytes([9; 32]),
            address: "192.0.2.1".parse().unwrap(),
            port: 7000,
            files: vec![fid(1), fid(2)],
            last_seen: 100,
            reputation: None,
            reach: None,
        };
        let named = fid(1);
        let html = peer_rows(std::slice::from_ref(&peer), false, 112, |id| {
            (id == named).then(|| "<b>".to_string())
        });
        assert!(html.contains("<td class=\"reputation\">—</td>"), "{html}");
        assert!(html.contains(&format!(
            "<a href=\"/dashboard/files/{named}\">&lt;b&gt;</a>"
        )));
        assert!(html.contains(&format!(">{}</a>", fid(2).short())));
        assert!(
            html.contains("192.0.2.1:7000") && html.contains("12 s ago"),
            "{html}"
        );
        let scored = PeerSummary {
            reputation: Some(Reputation {
                score: 40,
                reporters: 3,
            }),
            ..peer
        };
        assert!(peer_rows(&[scored], false, 100, |_| None).contains("40 (3 reporters)"));
    }

    #[test]
    fn empty_tables_say_so() {
        assert!(file_rows(&[], false).contains("No files registered yet."));
        assert!(peer_rows(&[], false, 0, |_| None).contains("No live peers."));
        assert!(request_rows(&[]).contains("No requests yet."));
        assert_eq!(
            overview_summary(1, false, 2, false),
            "1 file · 2 live peers"
        );
        assert_eq!(
            overview_summary(200, true, 1, false),
            "200+ files · 1 live peer"
        );
    }

    #[test]
    fn sizes_times_and_rates_read_naturally() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
        assert_eq!(ago(0, 59), "59 s ago");
        assert_eq!(ago(0, 120), "2 min ago");
        assert_eq!(ago(100, 50), "0 s ago");
        assert_eq!(rate(None), "—");
        assert_eq!(rate(Some(2.25)), "2.2/s");
    }
}
