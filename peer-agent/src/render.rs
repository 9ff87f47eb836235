//! Turns engine events into what the user sees: indicatif bars on a terminal, plain lines at a
//! calm rate otherwise, or one JSON object per line with `--json`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use torrentguard_agent::Event;

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

pub struct Renderer {
    mode: Mode,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    names: HashMap<String, String>,
    last_line: HashMap<String, Instant>,
}

/// Interval between plain progress lines when stdout is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

impl Renderer {
    pub fn new(mode: Mode) -> Self {
        let multi = MultiProgress::with_draw_target(if mode == Mode::Bars {
            ProgressDrawTarget::stdout_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        });
        Renderer {
            mode,
            multi,
            bars: HashMap::new(),
            names: HashMap::new(),
            last_line: HashMap::new(),
        }
    }

    /// Prints a line of output (above the bars on a terminal). Not in JSON mode: there, every
    /// line is an event.
    pub fn say(&self, line: &str) {
        match self.mode {
            Mode::Json => {}
            Mode::Bars => {
                let _ = self.multi.println(line);
            }
            Mode::Lines | Mode::Quiet => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }

    /// Prints a JSON value as one line (JSON mode only).
    pub fn json(&self, value: &serde_json::Value) {
        if self.mode == Mode::Json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }

    fn bar(&mut self, key: &str, total: u64, style: &str) -> ProgressBar {
        if let Some(b) = self.bars.get(key) {
            return b.clone();
        }
        let b = self.multi.add(ProgressBar::new(total));
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
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, e);
            let _ = writeln!(out);
            let _ = out.flush();
            return;
        }
        match e {
            Event::Hashing {
                name,
                bytes_done,
                bytes_total,
            } => {
                let key = format!("hash:{name}");
                let mode = self.mode;
                match mode {
                    Mode::Bars => {
                        let b = self.bar(&key, *bytes_total, "hashing {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}");
                        b.set_message(name.clone());
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
            } => {
                self.names.insert(file_id.to_string(), name.clone());
                if *chunks_have > 0 || *discarded > 0 {
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
                bytes_done,
                bytes_total,
                chunks_done,
                chunks_total,
                speed_bps,
                eta_secs,
                peers,
                retries,
                bans,
                ..
            } => {
                let key = file_id.to_string();
                let name = self
                    .names
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| file_id.short());
                let mode = self.mode;
                match mode {
                    Mode::Bars => {
                        let b = self.bar(
                            &key,
                            *bytes_total,
                            "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}",
                        );
                        b.set_prefix(name);
                        b.set_position(*bytes_done);
                        b.set_message(format!(
                            "{}/s, ETA {}, {chunks_done}/{chunks_total} chunks, {peers} peer{}{}",
                            human(*speed_bps),
                            eta(*eta_secs),
                            if *peers == 1 { "" } else { "s" },
                            extra(*retries, *bans)
                        ));
                    }
                    Mode::Lines if self.throttled(&key, chunks_done == chunks_total) => {
                        self.say(&format!(
                                "{name}: {} {chunks_done}/{chunks_total} chunks, {}/s, ETA {}, {peers} peers{}",
                                percent(*bytes_done, *bytes_total),
                                human(*speed_bps),
                                eta(*eta_secs),
                                extra(*retries, *bans)
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
            } => {
                self.finish_bar(&file_id.to_string());
                if *chunks_fetched == 0 {
                    self.say(&format!(
                        "done: {} ({}) was already complete, nothing fetched; every chunk and the whole file verified",
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
                    format!(" ({chunks_reused} chunks were already on disk)")
                } else {
                    String::new()
                };
                self.say(&format!(
                    "done: {} ({}) in {:.2} s, {}/s, {chunks_fetched} chunks fetched{reused}, verified",
                    path.display(),
                    human(*bytes),
                    secs,
                    human(rate)
                ));
            }
            Event::Seeding {
                file_id,
                name,
                size,
                listen,
            } => {
                self.say(&format!(
                    "seeding {name} ({}) as {file_id} on {listen}",
                    human(*size)
                ));
            }
            Event::SelfDownload {
                ok,
                bytes,
                secs,
                seeder,
                ..
            } => {
                let rate = (*bytes as f64 / secs.max(1e-9)) as u64;
                self.say(&format!(
                    "self-download {}: {} in {secs:.2} s ({}/s) over TLS from {seeder}, every chunk and the whole file verified, {} the original",
                    if *ok { "OK" } else { "FAILED" },
                    human(*bytes),
                    human(rate),
                    if *ok { "byte-identical to" } else { "DIFFERENT from" }
                ));
            }
            Event::Withdrawn { file_id, reason } => {
                self.say(&format!("stopped serving {file_id}: {reason}"))
            }
            Event::PeerBanned {
                fingerprint,
                reason,
                ..
            } => {
                self.say(&format!("banned peer {}: {reason}", fingerprint.short()));
            }
            Event::Waiting {
                reason,
                retry_in_secs,
                ..
            } => {
                self.say(&format!(
                    "waiting for peers: {reason}; asking the tracker again in {retry_in_secs} s"
                ));
            }
            Event::PeerConnected { .. } | Event::PeerDropped { .. } | Event::ChunkRetry { .. } => {
                // Visible with -v through the logs; counted in the progress line.
            }
        }
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
}
