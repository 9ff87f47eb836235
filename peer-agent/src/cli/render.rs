//! Turns engine events into what the user sees: indicatif bars on a terminal, plain lines at a
//! calm rate otherwise, or one JSON object per line with `--json`. Also the one path every line
//! to stdout takes ([`print_line`]), and the helpers that keep names printable and tables aligned.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use torrentguard_agent::Event;
use torrentguard_protocol::api::NatMapping;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines,
    Json,
    Quiet,
}

impl Mode {
    pub fn pick(json: bool, quiet: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::stdout().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// Writes `line` and a newline to stdout, flushed. Every line the CLI prints goes through here
/// (never `println!`, which panics on a closed pipe): when the reader has gone (`… | head -1`)
/// the process ends silently, as coreutils tools do.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{line}").and_then(|()| out.flush());
    if let Err(e) = written {
        drop(out);
        stdout_failed(e);
    }
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        end_by_sigpipe();
    }
    let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
    std::process::exit(1)
}

/// Ends the process the way a coreutils tool ends when its reader closes the pipe: killed by
/// SIGPIPE, without a message (the shell reports status 141). Rust ignores SIGPIPE so that
/// sockets get `EPIPE` instead of killing the process; that stays so for every socket, and only
/// a closed stdout brings the default action back, at this point.
fn end_by_sigpipe() -> ! {
    #[cfg(unix)]
    // SAFETY: `signal` and `raise` with valid constants have no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached on unix (the default action of SIGPIPE terminates); elsewhere: quietly.
    std::process::exit(0)
}

/// `s` with control characters (newlines, escapes, …) and bidirectional overrides shown as
/// escapes, so a name from the network or the disk cannot break a line, a table or the
/// terminal. Used wherever a name, or an error that may quote one, is printed.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` made printable, cut to at most `width` terminal columns (with `…` when cut) and padded
/// with spaces to exactly `width` columns: wide (CJK) characters count as two.
pub fn cell(s: &str, width: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    let s = printable(s);
    let full = UnicodeWidthStr::width(s.as_ref());
    let mut out = String::new();
    let used = if full <= width {
        out.push_str(&s);
        full
    } else {
        // Leave one column for the ellipsis.
        let mut used = 0;
        for c in s.chars() {
            let w = UnicodeWidthChar::width(c).unwrap_or(0);
            if used + w + 1 > width {
                break;
            }
            out.push(c);
            used += w;
        }
        out.push('…');
        used + 1
    };
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(used)));
    out
}

pub struct Renderer {
    mode: Mode,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    names: HashMap<String, String>,
    last_line: HashMap<String, Instant>,
    /// Whether a completed download's path is a result (`get -q` prints it). Not for `share
    /// --self-download`, whose copy is a check, often in a directory removed right after.
    completed_path_is_result: bool,
}

/// A hashing bar counts bytes read.
const HASHING_TEMPLATE: &str =
    "hashing {msg} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// A download bar counts verified chunks (its length and position), so the bar, its percentage
/// and the "n/m chunks" of its text always agree.
const PROGRESS_TEMPLATE: &str = "{prefix} [{bar:30}] {percent:>3}% {msg}";

/// Interval between plain progress lines when stdout is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

impl Renderer {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn new(mode: Mode) -> Self {
        Renderer::with_target(
            mode,
            if mode == Mode::Bars {
                ProgressDrawTarget::stdout_with_hz(8)
            } else {
                ProgressDrawTarget::hidden()
            },
        )
    }

    fn with_target(mode: Mode, target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        Renderer {
            mode,
            multi,
            bars: HashMap::new(),
            names: HashMap::new(),
            last_line: HashMap::new(),
            completed_path_is_result: true,
        }
    }

    /// Keeps `-q` from printing the paths of completed downloads (see the field).
    pub fn completed_paths_are_not_results(&mut self) {
        self.completed_path_is_result = false;
    }

    /// Prints a line about what is going on (above the bars on a terminal). Not with `-q`
    /// (results and errors only) nor in JSON mode (there, every line is an event).
    pub fn say(&self, line: &str) {
        match self.mode {
            Mode::Json | Mode::Quiet => {}
            Mode::Bars | Mode::Lines => self.print(line),
        }
    }

    /// Prints a result line: in every mode but JSON, `-q` included.
    pub fn result(&self, line: &str) {
        if self.mode != Mode::Json {
            self.print(line);
        }
    }

    /// Prints a result line that only `-q` needs, because the other modes already show it
    /// within their sentences (e.g. the file id of `share`).
    pub fn quiet_result(&self, line: &str) {
        if self.mode == Mode::Quiet {
            self.print(line);
        }
    }

    fn print(&self, line: &str) {
        if self.mode == Mode::Bars && !self.multi.is_hidden() {
            // Above the bars; a terminal that went away simply stops showing them.
            let _ = self.multi.println(line);
        } else {
            print_line(line);
        }
    }

    /// Prints a JSON value as one line (JSON mode only).
    pub fn json(&self, value: &serde_json::Value) {
        if self.mode == Mode::Json {
            print_line(&value.to_string());
        }
    }

    /// The bar for `key`, created with `len` (its first draw must not show an empty length
    /// as 100 %).
    fn bar(&mut self, key: &str, style: &str, len: u64) -> ProgressBar {
        if let Some(b) = self.bars.get(key) {
            return b.clone();
        }
        let b = self.multi.add(ProgressBar::new(len));
        b.set_style(
            ProgressStyle::with_template(style)
                .expect("static template is valid")
                .progress_chars("=> "),
        );
        self.bars.insert(key.to_string(), b.clone());
        b
    }

    fn finish_bar(&mut self, key: &str) {
        if let Some(b) = self.bars.remove(key) {
            b.finish_and_clear();
        }
    }

    fn throttled(&mut self, key: &str, last: bool) -> bool {
        let now = Instant::now();
        match self.last_line.get(key) {
            Some(t) if !last && now.duration_since(*t) < LINE_INTERVAL => false,
            _ => {
                self.last_line.insert(key.to_string(), now);
                true
            }
        }
    }

    pub fn event(&mut self, e: &Event) {
        if self.mode == Mode::Json {
            // Events hold only strings, numbers and lists: serialising cannot fail.
            let line = serde_json::to_string(e).unwrap_or_else(|err| {
                serde_json::json!({"event": "error", "message": err.to_string()}).to_string()
            });
            print_line(&line);
            return;
        }
        match e {
            Event::Hashing {
                name,
                bytes_done,
                bytes_total,
            } => {
                let key = format!("hash:{name}");
                let name = printable(name).into_owned();
                let mode = self.mode;
                match mode {
                    Mode::Bars => {
                        let b = self.bar(&key, HASHING_TEMPLATE, *bytes_total);
                        b.set_message(name.clone());
                        b.set_length(*bytes_total);
                        b.set_position(*bytes_done);
                        if bytes_done == bytes_total {
                            self.finish_bar(&key);
                        }
                    }
                    Mode::Lines if self.throttled(&key, bytes_done == bytes_total) => {
                        self.say(&format!(
                            "hashing {name}: {}",
                            percent(*bytes_done, *bytes_total)
                        ));
                    }
                    _ => {}
                }
            }
            Event::Started {
                file_id,
                name,
                size,
                chunks_total,
                chunks_have,
                discarded,
                bytes_reused,
            } => {
                let name = printable(name).into_owned();
                self.names.insert(file_id.to_string(), name.clone());
                if *bytes_reused > 0 {
                    self.say(&format!(
                        "downloading {name} ({}, {chunks_total} chunks): {chunks_have} already on this host, {} of them reused from local files, each verified",
                        human(*size),
                        human(*bytes_reused)
                    ));
                } else if *chunks_have > 0 || *discarded > 0 {
                    self.say(&format!(
                        "resuming {name}: {chunks_have}/{chunks_total} chunks verified on disk{}",
                        if *discarded > 0 {
                            format!(
                                ", {discarded} failed re-verification and will be fetched again"
                            )
                        } else {
                            String::new()
                        }
                    ));
                } else {
                    self.say(&format!(
                        "downloading {name} ({}, {chunks_total} chunks)",
                        human(*size)
                    ));
                }
            }
            Event::Progress {
                file_id,
                chunks_done,
                chunks_total,
                ..
            } => {
                let key = file_id.to_string();
                let name = self
                    .names
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| file_id.short());
                let line = progress_text(e);
                let mode = self.mode;
                match mode {
                    Mode::Bars => {
                        let b = self.bar(&key, PROGRESS_TEMPLATE, u64::from(*chunks_total));
                        b.set_prefix(name);
                        // One unit for the bar, its percentage and its text: verified chunks.
                        b.set_length(u64::from(*chunks_total));
                        b.set_position(u64::from(*chunks_done));
                        b.set_message(line);
                    }
                    Mode::Lines if self.throttled(&key, chunks_done == chunks_total) => {
                        self.say(&format!(
                            "{name}: {} {line}",
                            percent(u64::from(*chunks_done), u64::from(*chunks_total)),
                        ));
                    }
                    _ => {}
                }
            }
            Event::Completed {
                file_id,
                path,
                bytes,
                secs,
                chunks_fetched,
                bytes_fetched,
                chunks_reused,
                bytes_reused,
                whole_file_checked,
                bytes_on_wire,
                chunks_compressed,
                // For `--json` and measurements; the summary line gives the whole time.
                first_chunk_ms: _,
            } => {
                self.finish_bar(&file_id.to_string());
                let verified = match whole_file_checked {
                    true => "every chunk and the whole file verified",
                    false => "every chunk verified",
                };
                if *chunks_fetched == 0 && *bytes_reused == *bytes {
                    self.say(&format!(
                        "done: {} ({}) was already complete, nothing fetched; {verified}",
                        path.display(),
                        human(*bytes)
                    ));
                    return;
                }
                // The rate of this run's transfer: chunks found on disk took no network time.
                let rate = if *secs > 0.0 {
                    (*bytes_fetched as f64 / secs) as u64
                } else {
                    0
                };
                let reused = if *chunks_reused > 0 {
                    format!(
                        ", reused {} ({chunks_reused} chunks already on this host)",
                        human(*bytes_reused)
                    )
                } else {
                    String::new()
                };
                // Only when compression was used: otherwise the wire carried the chunks as they are.
                let wire = if *chunks_compressed > 0 {
                    format!(
                        ", {} on the wire (zstd on {chunks_compressed} chunks)",
                        human(*bytes_on_wire)
                    )
                } else {
                    String::new()
                };
                if self.completed_path_is_result {
                    self.quiet_result(&printable(&path.display().to_string()));
                }
                self.say(&format!(
                    "done: {} ({}) in {:.2} s, {}/s, fetched {} ({chunks_fetched} chunks){wire}{reused}, {verified}",
                    printable(&path.display().to_string()),
                    human(*bytes),
                    secs,
                    human(rate),
                    human(*bytes_fetched)
                ));
            }
            Event::Seeding {
                file_id,
                name,
                size,
                listen,
            } => {
                self.say(&format!(
                    "seeding {} ({}) as {file_id} on {listen}",
                    printable(name),
                    human(*size)
                ));
            }
            Event::Reach {
                inbound,
                public,
                mapping,
            } => self.say(&reach_line(*inbound, *public, *mapping)),
            Event::SelfDownload {
                ok,
                bytes,
                secs,
                seeder,
                ..
            } => {
                let rate = (*bytes as f64 / secs.max(1e-9)) as u64;
                self.result(&format!(
                    "self-download {}: {} in {secs:.2} s ({}/s) over TLS from {seeder}, every chunk verified, {} the original",
                    if *ok { "OK" } else { "FAILED" },
                    human(*bytes),
                    human(rate),
                    if *ok { "byte-identical to" } else { "DIFFERENT from" }
                ));
            }
            Event::Withdrawn { file_id, reason } => {
                self.say(&format!("stopped serving {file_id}: {}", printable(reason)))
            }
            Event::PeerBanned {
                fingerprint,
                reason,
                ..
            } => {
                self.say(&format!(
                    "banned peer {}: {}",
                    fingerprint.short(),
                    printable(reason)
                ));
            }
            Event::Waiting {
                reason,
                retry_in_secs,
                ..
            } => {
                self.say(&format!(
                    "waiting for peers: {}; asking the tracker again in {retry_in_secs} s",
                    printable(reason)
                ));
            }
            Event::PeerConnected { .. } | Event::PeerDropped { .. } | Event::ChunkRetry { .. } => {
                // Visible with -v through the logs; counted in the progress line.
            }
        }
    }
}

/// The text after a download's bar or percentage: chunks, bytes, speed, ETA, peers.
fn progress_text(e: &Event) -> String {
    let Event::Progress {
        bytes_done,
        bytes_total,
        chunks_done,
        chunks_total,
        speed_bps,
        eta_secs,
        peers,
        retries,
        bans,
        files_done,
        files_total,
        current_file,
        ..
    } = e
    else {
        return String::new();
    };
    let files = match (files_done, files_total) {
        (Some(d), Some(t)) => format!(
            ", files {d}/{t}{}",
            current_file
                .as_deref()
                .map(|f| format!(" ({})", printable(f)))
                .unwrap_or_default()
        ),
        _ => String::new(),
    };
    format!(
        "{chunks_done}/{chunks_total} chunks, {}/{}, {}/s, ETA {}, {peers} peer{}{}{files}",
        human(*bytes_done),
        human(*bytes_total),
        human(*speed_bps),
        eta(*eta_secs),
        if *peers == 1 { "" } else { "s" },
        extra(*retries, *bans)
    )
}

/// The line `share` prints once it knows how it can be reached.
pub fn reach_line(inbound: bool, public: std::net::SocketAddr, mapping: NatMapping) -> String {
    let inbound = if inbound { "yes" } else { "no" };
    format!(
        "reachability: inbound {inbound}, public {public}, NAT {}",
        mapping_name(mapping)
    )
}

/// A NAT mapping in words, as `share` and `status` show it.
pub fn mapping_name(mapping: NatMapping) -> &'static str {
    match mapping {
        NatMapping::Open => "open",
        NatMapping::PortPreserving => "port-preserving",
        NatMapping::Unpredictable => "unpredictable",
        NatMapping::Unknown => "unknown",
    }
}

fn extra(retries: u32, bans: u32) -> String {
    let mut s = String::new();
    if retries > 0 {
        s.push_str(&format!(", {retries} retries"));
    }
    if bans > 0 {
        s.push_str(&format!(", {bans} banned"));
    }
    s
}

fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        "100.0%".into()
    } else {
        format!("{:.1}%", done as f64 * 100.0 / total as f64)
    }
}

fn eta(secs: Option<u64>) -> String {
    match secs {
        None => "?".into(),
        Some(s) if s < 60 => format!("{s}s"),
        Some(s) if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        Some(s) => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Bytes in binary units, e.g. `1.50 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reach_line_says_inbound_public_and_nat() {
        let public = "100.64.0.11:7000".parse().unwrap();
        assert_eq!(
            reach_line(false, public, NatMapping::PortPreserving),
            "reachability: inbound no, public 100.64.0.11:7000, NAT port-preserving"
        );
        assert_eq!(
            reach_line(true, public, NatMapping::Open),
            "reachability: inbound yes, public 100.64.0.11:7000, NAT open"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1536), "1.50 KiB");
        assert_eq!(human(3 << 30), "3.00 GiB");
        assert_eq!(eta(Some(5)), "5s");
        assert_eq!(eta(Some(125)), "2m05s");
        assert_eq!(eta(None), "?");
        assert_eq!(percent(1, 4), "25.0%");
        assert_eq!(percent(0, 0), "100.0%");
    }

    #[test]
    fn printable_escapes_control_and_bidi_characters() {
        assert!(matches!(printable("plain 名前.bin"), Cow::Borrowed(_)));
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable("x\ty\r"), "x\\ty\\r");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert!(!printable("a\nb").contains('\n'));
    }

    #[test]
    fn cells_pad_and_cut_by_display_width() {
        use unicode_width::UnicodeWidthStr;
        // Two columns per CJK character: 6 characters fill 12 columns.
        assert_eq!(cell("データセット", 14), "データセット  ");
        assert_eq!(cell("abc", 5), "abc  ");
        for (name, width) in [
            ("データセット.tar", 8),
            ("データセット.tar", 9),
            ("ascii-name-that-is-long", 10),
            ("a\nb", 6),
            ("", 4),
        ] {
            let c = cell(name, width);
            assert_eq!(
                UnicodeWidthStr::width(c.as_str()),
                width,
                "{name:?} -> {c:?}"
            );
        }
        assert_eq!(cell("データセット.tar", 8), "データ… ");
        assert_eq!(cell("ascii-name-that-is-long", 10), "ascii-nam…");
        assert_eq!(cell("a\nb", 6), "a\\nb  ");
    }

    fn progress(chunks_done: u32, chunks_total: u32, bytes_done: u64, bytes_total: u64) -> Event {
        Event::Progress {
            file_id: torrentguard_protocol::FileId([7; 32]),
            bytes_done,
            bytes_total,
            chunks_done,
            chunks_total,
            files_done: None,
            files_total: None,
            current_file: None,
            speed_bps: 1 << 20,
            eta_secs: Some(3),
            peers: 2,
            peer_rates: Vec::new(),
            retries: 0,
            bans: 0,
        }
    }

    /// Captures what indicatif draws, as a terminal would show it.
    #[derive(Debug, Default, Clone)]
    struct Screen(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            160
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.is_empty() {
                self.0.lock().unwrap().push(s.to_string());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn download_bar_counts_verified_chunks_and_shows_a_percentage() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut r = Renderer::with_target(Mode::Bars, target);
        // The case of the report: every byte received, 489 of 763 chunks verified so far.
        let e = progress(489, 763, 200_000_000, 200_000_000);
        r.event(&e);
        let key = torrentguard_protocol::FileId([7; 32]).to_string();
        let bar = r.bars.get(&key).expect("a bar for the download").clone();
        assert_eq!((bar.position(), bar.length()), (489, Some(763)));
        bar.force_draw();
        let drawn = screen.0.lock().unwrap().join("\n");
        assert!(drawn.contains(" 64% 489/763 chunks"), "{drawn}");
        assert!(!drawn.contains("100%"), "{drawn}");
        r.event(&progress(763, 763, 200_000_000, 200_000_000));
        assert_eq!(bar.position(), 763);
    }

    #[test]
    fn progress_text_and_plain_line_agree_on_chunks() {
        let e = progress(1, 4, 16384, 65536);
        assert_eq!(
            progress_text(&e),
            "1/4 chunks, 16.00 KiB/64.00 KiB, 1.00 MiB/s, ETA 3s, 2 peers"
        );
        let mut tree = progress(1, 4, 16384, 65536);
        if let Event::Progress {
            files_done,
            files_total,
            current_file,
            ..
        } = &mut tree
        {
            (*files_done, *files_total) = (Some(3), Some(9));
            *current_file = Some("data/b\u{1b}.bin".into());
        }
        assert_eq!(
            progress_text(&tree),
            "1/4 chunks, 16.00 KiB/64.00 KiB, 1.00 MiB/s, ETA 3s, 2 peers, files 3/9 (data/b\\u{1b}.bin)"
        );
    }
}
