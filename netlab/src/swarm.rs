//! Running the product in the lab: the real `torrentguard-tracker` (with its relay) in the
//! internet namespace and `torrentguard` agents on public hosts or in homes, as processes whose
//! `--json` events are read line by line against deadlines. One implementation for the NAT
//! e2e tests (`tests/nat.rs`) and the NAT bench (`bench/src/bin/nat-matrix.rs`); the binaries
//! are passed in as paths, since each builds them in its own profile.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Host, INTERNET_IP, Lab};

/// Port of a seeder's peer listener, inside its own namespace (forward it on a `Forwarded` home).
pub const SEED_PORT: u16 = 7000;
/// Port of a downloader's peer listener, inside its own namespace.
pub const GET_PORT: u16 = 7001;
/// The tracker's HTTPS port in the internet namespace (a namespace of our own: fixed is fine).
pub const TRACKER_PORT: u16 = 7443;
/// The relay's port beside it.
pub const RELAY_PORT: u16 = 7444;

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("spawning {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: no matching line within {timeout:?}\n{transcript}")]
    Timeout {
        name: String,
        timeout: Duration,
        transcript: String,
    },
    #[error("{name}: stdout closed before a matching line\n{transcript}")]
    Closed { name: String, transcript: String },
    #[error("{name}: did not exit within {timeout:?}\n{transcript}")]
    NoExit {
        name: String,
        timeout: Duration,
        transcript: String,
    },
    #[error("{name}: exit status {status}, expected {code}\n{transcript}")]
    ExitCode {
        name: String,
        status: ExitStatus,
        code: i32,
        transcript: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A line or event that lacks what the contract says it carries.
    #[error("{0}")]
    Malformed(String),
    #[error("curl /metrics in the internet namespace: {0}")]
    Metrics(String),
}

pub type Result<T> = std::result::Result<T, SwarmError>;

/// A child process, killed (SIGKILL) and reaped when dropped, with its stdout lines arriving on
/// a channel from a reader thread and its stderr collected for diagnostics.
pub struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line received so far (by the `wait_*` methods), in order.
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Disconnected once the stderr reader has seen EOF, i.e. holds everything written.
    stderr_done: Receiver<()>,
    stdout_closed: bool,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Colourless, readable logs in failure messages.
        cmd.env("NO_COLOR", "1");
        let mut child = cmd.spawn().map_err(|source| SwarmError::Spawn {
            name: format!("{name}: {cmd:?}"),
            source,
        })?;
        let (Some(stdout), Some(stderr_pipe)) = (child.stdout.take(), child.stderr.take()) else {
            // Both were set to piped just above; a child without them is not one we can read.
            let _ = child.kill();
            let _ = child.wait();
            return Err(SwarmError::Malformed(format!(
                "{name}: no stdout/stderr pipe"
            )));
        };
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (stderr_eof, stderr_done) = channel::<()>();
        let sink = stderr.clone();
        thread::spawn(move || collect_stderr(stderr_pipe, &sink, stderr_eof));
        Ok(Proc {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stderr_done,
            stdout_closed: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every stdout line received so far by the `wait_*` methods.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What this process printed, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.seen.join("\n"),
            self.name,
            self.stderr()
        )
    }

    /// Receives stdout lines until one satisfies `pred`, within `timeout`.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(SwarmError::Timeout {
                        name: self.name.clone(),
                        timeout,
                        transcript: self.transcript(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.stdout_closed = true;
                    return Err(SwarmError::Closed {
                        name: self.name.clone(),
                        transcript: self.transcript(),
                    });
                }
            }
        }
    }

    /// Waits up to `timeout` for a JSON event named `event` for which `pred` holds.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        event: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let mut found = None;
        self.wait_line(timeout, |l| {
            parse_event(l).is_some_and(|v| v["event"] == event && pred(&v))
        })
        .map(|line| found = parse_event(&line))?;
        found.ok_or_else(|| SwarmError::Malformed(format!("{}: lost the event {event}", self.name)))
    }

    /// Every JSON event seen so far named `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|l| parse_event(l))
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Drains stdout until it closes, then waits for the exit status; all within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let no_exit = |p: &Proc| SwarmError::NoExit {
            name: p.name.clone(),
            timeout,
            transcript: p.transcript(),
        };
        while !self.stdout_closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => self.stdout_closed = true,
                Err(RecvTimeoutError::Timeout) => return Err(no_exit(self)),
            }
        }
        loop {
            let status = self.child.try_wait().map_err(|source| SwarmError::Io {
                what: format!("{}: waiting for its exit", self.name),
                source,
            })?;
            if let Some(status) = status {
                // Its last words on stderr (an error line) must be in `stderr()` on return.
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(RecvTimeoutError::Timeout) = self.stderr_done.recv_timeout(left) {
                    return Err(no_exit(self));
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(no_exit(self));
            }
            thread::sleep(Duration::from_millis(10)); // polling try_wait, not synchronisation
        }
    }

    /// Sends `signal` (a name `kill -s` takes: INT, TERM) to the process, for a graceful stop.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .map_err(|source| SwarmError::Io {
                what: format!("{}: sending {signal}", self.name),
                source,
            })?;
        if !status.success() {
            return Err(SwarmError::Malformed(format!(
                "{}: kill -s {signal} failed ({status})",
                self.name
            )));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the exit and checks its code.
    pub fn expect_exit(&mut self, code: i32, timeout: Duration) -> Result<()> {
        let status = self.wait_exit(timeout)?;
        if status.code() == Some(code) {
            return Ok(());
        }
        Err(SwarmError::ExitCode {
            name: self.name.clone(),
            status,
            code,
            transcript: self.transcript(),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends everything `pipe` yields to `sink` until EOF; `eof` drops (disconnects) then.
fn collect_stderr(
    mut pipe: impl std::io::Read,
    sink: &Mutex<String>,
    eof: std::sync::mpsc::Sender<()>,
) {
    let _until_eof = eof;
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buf[..n]);
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&text);
    }
}

/// The line as a JSON event (an object with an `event` field), if it is one.
pub fn parse_event(line: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    v.get("event")?;
    Some(v)
}

/// The tracker with its relay in the internet namespace, on [`TRACKER_PORT`] and [`RELAY_PORT`].
pub struct LabTracker {
    /// Held so the tracker is killed with this guard.
    _proc: Proc,
    pinned_url: String,
    fingerprint: String,
}

impl LabTracker {
    /// Starts `tracker_bin` with its data in `dir/tracker` (announce interval 1 s, peer TTL
    /// 30 s, plus `extra`) and waits up to `timeout` for its ready line.
    pub fn start(
        lab: &Lab,
        tracker_bin: &Path,
        dir: &Path,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<LabTracker> {
        let mut cmd = lab.internet().command(tracker_bin);
        cmd.arg("--listen")
            .arg(format!("{INTERNET_IP}:{TRACKER_PORT}"))
            .arg("--relay-listen")
            .arg(format!("{INTERNET_IP}:{RELAY_PORT}"))
            .arg("--data-dir")
            .arg(dir.join("tracker"))
            .args(["--announce-interval", "1", "--peer-ttl", "30"])
            .args(extra);
        let mut proc = Proc::spawn("tracker", cmd)?;
        let ready = proc.wait_line(timeout, |l| l.contains(" listening on "))?;
        let fingerprint = ready
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .ok_or_else(|| SwarmError::Malformed(format!("no fingerprint in {ready:?}")))?
            .to_string();
        let pinned_url = format!("https://{INTERNET_IP}:{TRACKER_PORT}#{fingerprint}");
        Ok(LabTracker {
            _proc: proc,
            pinned_url,
            fingerprint,
        })
    }

    /// `https://100.64.0.1:PORT#sha256:…`: the URL with its pin, as `--tracker` takes it.
    pub fn pinned_url(&self) -> &str {
        &self.pinned_url
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The value of the unlabelled metric `name` (None when not exported), read with curl from
    /// inside the internet namespace. `-k`: this reads our own tracker in our own namespace;
    /// what is checked is a number, not the tracker's identity.
    pub fn metric(&self, lab: &Lab, name: &str) -> Result<Option<f64>> {
        let out = lab
            .internet()
            .command("curl")
            .args(["-sSfk", "--max-time", "20"])
            .arg(format!("https://{INTERNET_IP}:{TRACKER_PORT}/metrics"))
            .output()
            .map_err(|source| SwarmError::Io {
                what: "running curl in the internet namespace".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(SwarmError::Metrics(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(metric_value(&String::from_utf8_lossy(&out.stdout), name))
    }
}

/// The value of the unlabelled sample `name` in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// How agents are started in the lab: which binary, where their data directories go, which
/// tracker they use, and how long to wait for a sharer to be seeding.
pub struct Agents<'a> {
    pub bin: &'a Path,
    /// Each agent's data directory is `dir/NAME` (a downloader's `dir/downloader`).
    pub dir: &'a Path,
    pub tracker: &'a LabTracker,
    pub timeout: Duration,
}

impl Agents<'_> {
    /// `torrentguard --json share FILE` on `host` as `name`, listening on [`SEED_PORT`], plus
    /// `extra`; waits for `seeding`. Returns the process and the file id.
    pub fn share_on(
        &self,
        host: &Host,
        name: &str,
        file: &Path,
        extra: &[&str],
    ) -> Result<(Proc, String)> {
        let mut cmd = host.command(self.bin);
        cmd.arg("--data-dir")
            .arg(self.dir.join(name))
            .arg("--json")
            .arg("share")
            .arg(file)
            .args(["--tracker", self.tracker.pinned_url()])
            .args(["--listen", &format!("0.0.0.0:{SEED_PORT}")])
            .args(extra);
        let mut proc = Proc::spawn(name, cmd)?;
        let seeding = proc.wait_event(self.timeout, "seeding", |_| true)?;
        let id = seeding["file_id"]
            .as_str()
            .ok_or_else(|| {
                SwarmError::Malformed(format!("seeding event without file_id: {seeding}"))
            })?
            .to_string();
        Ok((proc, id))
    }

    /// `torrentguard --json get ID -o OUT` on `host` (data in `dir/downloader`), listening on
    /// [`GET_PORT`], plus `extra`. Does not wait.
    pub fn get_on(&self, host: &Host, id: &str, out: &Path, extra: &[&str]) -> Result<Proc> {
        let mut cmd = host.command(self.bin);
        cmd.arg("--data-dir")
            .arg(self.dir.join("downloader"))
            .arg("--json")
            .arg("get")
            .arg(id)
            .args(["--tracker", self.tracker.pinned_url()])
            .arg("-o")
            .arg(out)
            .args(["--listen", &format!("0.0.0.0:{GET_PORT}")])
            .args(extra);
        Proc::spawn("downloader", cmd)
    }
}

/// One `peer_connected` event: how the downloader reached a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub fingerprint: String,
    /// "direct", "punched" or "relayed".
    pub path: String,
    /// Attempts of that path.
    pub tries: u64,
    /// From the start of the attempt to the TLS session.
    pub after_ms: u64,
}

impl Connection {
    /// Reads a `peer_connected` event, failing on any field the contract promises but lacks.
    pub fn from_event(e: &Value) -> Result<Connection> {
        let missing =
            |field: &str| SwarmError::Malformed(format!("peer_connected without {field}: {e}"));
        Ok(Connection {
            fingerprint: e["fingerprint"]
                .as_str()
                .ok_or_else(|| missing("fingerprint"))?
                .to_string(),
            path: e["path"]
                .as_str()
                .ok_or_else(|| missing("path"))?
                .to_string(),
            tries: e["tries"].as_u64().ok_or_else(|| missing("tries"))?,
            after_ms: e["after_ms"].as_u64().ok_or_else(|| missing("after_ms"))?,
        })
    }
}

/// Every `peer_connected` event `get` printed so far; an error if there is none.
pub fn connections(get: &Proc) -> Result<Vec<Connection>> {
    let connected = get.events("peer_connected");
    if connected.is_empty() {
        return Err(SwarmError::Malformed(format!(
            "{}: no peer_connected event",
            get.name()
        )));
    }
    connected.iter().map(Connection::from_event).collect()
}

/// Whether the files at `a` and `b` hold the same bytes (read in blocks: files of the bench's
/// size need not sit in memory twice).
pub fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| {
        std::fs::File::open(p).map_err(|source| SwarmError::Io {
            what: format!("opening {}", p.display()),
            source,
        })
    };
    let (fa, fb) = (open(a)?, open(b)?);
    let len = |f: &std::fs::File, p: &Path| {
        f.metadata()
            .map(|m| m.len())
            .map_err(|source| SwarmError::Io {
                what: format!("stat {}", p.display()),
                source,
            })
    };
    if len(&fa, a)? != len(&fb, b)? {
        return Ok(false);
    }
    let (mut ra, mut rb) = (BufReader::new(fa), BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut ra, &mut ba, a)?;
        let m = read_full(&mut rb, &mut bb, b)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fills `buf` as far as the file allows; the count read (short only at the end).
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(SwarmError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                });
            }
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metric_value_reads_the_unlabelled_sample_only() {
        let text = "# TYPE torrentguard_relay_bytes_total counter\n\
                    torrentguard_relay_bytes_total 12345\n\
                    torrentguard_relay_sessions_total{outcome=\"paired\"} 2\n";
        assert_eq!(
            metric_value(text, "torrentguard_relay_bytes_total"),
            Some(12345.0)
        );
        assert_eq!(
            metric_value(text, "torrentguard_relay_sessions_total"),
            None
        );
        assert_eq!(metric_value(text, "torrentguard_nothing"), None);
    }

    #[test]
    fn a_connection_needs_every_contract_field() {
        let full = json!({"event": "peer_connected", "fingerprint": "sha256:ab",
                          "path": "punched", "tries": 2, "after_ms": 340});
        let c = Connection::from_event(&full).expect("complete event");
        assert_eq!((c.path.as_str(), c.tries, c.after_ms), ("punched", 2, 340));
        for field in ["fingerprint", "path", "tries", "after_ms"] {
            let mut partial = full.clone();
            partial.as_object_mut().expect("an object").remove(field);
            let err = Connection::from_event(&partial).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn proc_reads_lines_events_and_exit() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"echo plain; echo '{"event":"x","n":1}'; echo oops >&2; exit 3"#,
        ]);
        let mut p = Proc::spawn("sh", cmd).expect("sh runs");
        let ev = p
            .wait_event(Duration::from_secs(20), "x", |v| v["n"] == 1)
            .expect("the event");
        assert_eq!(ev["n"], 1);
        assert_eq!(p.events("x").len(), 1);
        let err = p
            .expect_exit(0, Duration::from_secs(20))
            .expect_err("exit 3");
        assert!(matches!(err, SwarmError::ExitCode { .. }), "{err}");
        assert!(p.stderr().contains("oops"));
        assert_eq!(p.seen()[0], "plain");
    }

    #[test]
    fn a_closed_stdout_ends_a_wait_with_the_transcript() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo only"]);
        let mut p = Proc::spawn("sh", cmd).expect("sh runs");
        let err = p
            .wait_line(Duration::from_secs(20), |l| l == "never")
            .expect_err("no such line");
        assert!(matches!(err, SwarmError::Closed { .. }), "{err}");
        assert!(err.to_string().contains("only"), "{err}");
    }

    #[test]
    fn same_bytes_compares_length_and_content() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        let big: Vec<u8> = (0..3 * (1 << 20) + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &big).expect("write a");
        std::fs::write(&b, &big).expect("write b");
        let mut changed = big.clone();
        changed[2 * (1 << 20) + 1] ^= 1;
        std::fs::write(&c, &changed).expect("write c");
        assert!(same_bytes(&a, &b).expect("compare"));
        assert!(!same_bytes(&a, &c).expect("compare"));
        std::fs::write(&c, &big[..10]).expect("write short c");
        assert!(!same_bytes(&a, &c).expect("compare"));
    }
}
