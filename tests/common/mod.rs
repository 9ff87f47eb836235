//! Harness for the end-to-end tests: the workspace's real binaries as child processes on
//! ephemeral loopback ports, their `--json` event streams, and a pinned HTTPS client for the
//! tracker's REST API.
//!
//! Every wait has a deadline; readiness comes from what a process prints (or a condition polled
//! against a deadline), never from a fixed sleep. Children are killed when their guard drops,
//! so a failing test leaves no process behind.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod api;

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

/// Bound on any single wait (a process becoming ready, a download completing, an exit).
pub const WAIT: Duration = Duration::from_secs(60);

/// Chunk size used throughout: small chunks give many chunks from a few MB.
pub const CHUNK: &str = "16K";
pub const CHUNK_BYTES: u64 = 16 * 1024;

/// The directory holding the workspace's built binaries (`target/<profile>/`), building them
/// once per test binary if they are not there.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // current_exe is target/<profile>/deps/e2e-<hash>.
        let exe = std::env::current_exe().expect("the test binary knows its path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps")
            .to_path_buf();
        let missing = ["torrentguard", "torrentguard-tracker"]
            .iter()
            .any(|b| !dir.join(b).is_file());
        if missing {
            let status = Command::new(env!("CARGO"))
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build",
                    "-p",
                    "torrentguard-tracker",
                    "-p",
                    "torrentguard-agent",
                    "--bins",
                ])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the binaries failed: {status}");
        }
        dir
    })
}

pub fn agent_bin() -> PathBuf {
    bin_dir().join("torrentguard")
}

pub fn tracker_bin() -> PathBuf {
    bin_dir().join("torrentguard-tracker")
}

/// A child process, killed (SIGKILL) and reaped when dropped, with its stdout lines arriving on a
/// channel from a reader thread and its stderr collected for diagnostics.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line received so far (by the `wait_*` methods), in order.
    pub seen: Vec<String>,
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
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
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
        let sink = stderr.clone();
        let (stderr_eof, stderr_done) = channel::<()>();
        thread::spawn(move || {
            let _until_eof = stderr_eof;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
        });
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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
                    bail!(
                        "{}: no matching line within {timeout:?}\n{}",
                        self.name,
                        self.transcript()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.stdout_closed = true;
                    bail!(
                        "{}: stdout closed before a matching line\n{}",
                        self.name,
                        self.transcript()
                    )
                }
            }
        }
    }

    /// Waits for a JSON event named `event` for which `pred` holds.
    pub fn wait_event(&mut self, event: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let line = self.wait_line(WAIT, |l| {
            parse_event(l).is_some_and(|v| v["event"] == event && pred(&v))
        })?;
        Ok(parse_event(&line).expect("matched as JSON"))
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
        while !self.stdout_closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => self.stdout_closed = true,
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: did not exit within {timeout:?}\n{}",
                        self.name,
                        self.transcript()
                    )
                }
            }
        }
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Its last words on stderr (an error line) must be in `stderr()` when we return.
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(RecvTimeoutError::Timeout) = self.stderr_done.recv_timeout(left) {
                    bail!("{}: stderr still open after exit", self.name);
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: did not exit within {timeout:?}\n{}",
                    self.name,
                    self.transcript()
                );
            }
            thread::sleep(Duration::from_millis(10)); // polling try_wait, not synchronisation
        }
    }

    /// Waits for exit and checks the exit code.
    pub fn expect_exit(&mut self, code: i32) -> Result<()> {
        let status = self.wait_exit(WAIT)?;
        ensure!(
            status.code() == Some(code),
            "{}: exit status {status}, expected {code}\n{}",
            self.name,
            self.transcript()
        );
        Ok(())
    }

    /// Sends `signal` (e.g. "INT", "TERM") by pid.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -{signal} {} failed", self.pid());
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping")?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_event(line: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    v.get("event")?;
    Some(v)
}

/// A running `torrentguard-tracker`.
pub struct Tracker {
    pub proc: Proc,
    pub url: String,
    pub port: u16,
    pub fingerprint: String,
    pub data_dir: PathBuf,
}

impl Tracker {
    /// Starts a tracker on an ephemeral loopback port.
    pub fn start(data_dir: &Path) -> Result<Tracker> {
        Tracker::start_on(data_dir, 0)
    }

    /// Starts a tracker on 127.0.0.1:`port` (0 = the OS picks) and waits for its ready line.
    /// Peers are asked to re-announce every second, so re-announcing is quick to observe.
    pub fn start_on(data_dir: &Path, port: u16) -> Result<Tracker> {
        Tracker::start_with(data_dir, port, 1, 30)
    }

    /// Starts a tracker on 127.0.0.1:`port` with the given announce interval and peer TTL.
    pub fn start_with(data_dir: &Path, port: u16, interval: u32, ttl: u32) -> Result<Tracker> {
        let command = || {
            let mut cmd = Command::new(tracker_bin());
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--announce-interval")
                .arg(interval.to_string())
                .arg("--peer-ttl")
                .arg(ttl.to_string());
            cmd
        };
        // Rebinding the fixed port of a killed tracker could meet its lingering sockets: then
        // retry while the address is in use, under the usual bound.
        eventually(WAIT, "tracker ready", || {
            let mut proc = Proc::spawn("tracker", command())?;
            match proc.wait_line(WAIT, |l| l.contains(" listening on ")) {
                Ok(line) => Tracker::from_ready(proc, &line, data_dir)
                    .map(Some)
                    .map_err(|e| e.context(FINAL)),
                Err(_) if port != 0 && proc.stderr().contains("in use") => Ok(None),
                // Anything else is final: fail at once rather than poll.
                Err(e) => Err(e.context(FINAL)),
            }
        })
        .map_err(|e| e.context("starting the tracker"))
    }

    fn from_ready(proc: Proc, line: &str, data_dir: &Path) -> Result<Tracker> {
        // torrentguard-tracker listening on https://127.0.0.1:PORT fingerprint sha256:HEX
        let words: Vec<&str> = line.split_whitespace().collect();
        let url = words
            .iter()
            .find(|w| w.starts_with("https://"))
            .ok_or_else(|| anyhow!("no URL in {line:?}"))?
            .to_string();
        let fingerprint = words
            .iter()
            .find(|w| w.starts_with("sha256:"))
            .ok_or_else(|| anyhow!("no fingerprint in {line:?}"))?
            .to_string();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .ok_or_else(|| anyhow!("no port in {url:?}"))?;
        Ok(Tracker {
            proc,
            url,
            port,
            fingerprint,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// `--tracker URL --tracker-fingerprint FP`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tracker".into(),
            self.url.clone(),
            "--tracker-fingerprint".into(),
            self.fingerprint.clone(),
        ]
    }
}

/// A `torrentguard` command with its own identity directory and `--json`.
pub fn agent(data_dir: &Path) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--data-dir").arg(data_dir).arg("--json");
    cmd
}

/// Starts `torrentguard daemon` on `data_dir` (peers on an ephemeral loopback port) and waits
/// for its ready event, which it returns with the process.
pub fn daemon(name: &str, data_dir: &Path, extra: &[String]) -> Result<(Proc, Value)> {
    let mut cmd = agent(data_dir);
    cmd.args(["daemon", "--listen", "127.0.0.1:0"]).args(extra);
    let mut p = Proc::spawn(name, cmd)?;
    let ready = p.wait_event("daemon", |_| true)?;
    Ok((p, ready))
}

/// Runs a `torrentguard --json` command to its end (against the daemon of `data_dir`, if one
/// runs) and returns its JSON events; failing unless it exits 0.
pub fn cli_events(data_dir: &Path, args: &[&str]) -> Result<Vec<Value>> {
    let out = agent(data_dir).args(args).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "{args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout.lines().filter_map(parse_event).collect())
}

/// The fingerprint of the identity in `data_dir` (created if new), from `torrentguard id`.
pub fn identity(data_dir: &Path) -> Result<String> {
    let mut proc = Proc::spawn("id", {
        let mut c = Command::new(agent_bin());
        c.arg("--data-dir").arg(data_dir).arg("id");
        c
    })?;
    let line = proc.wait_line(WAIT, |l| l.starts_with("sha256:"))?;
    proc.expect_exit(0)?;
    Ok(line.trim().to_string())
}

/// `torrentguard share FILE` against `tracker`, waiting until it is seeding. Returns the
/// process and the file id.
pub fn share(
    name: &str,
    data_dir: &Path,
    file: &Path,
    tracker: &Tracker,
    extra: &[&str],
) -> Result<(Proc, String)> {
    let mut cmd = agent(data_dir);
    cmd.arg("share")
        .arg(file)
        .args(tracker.args())
        .args(["--listen", "127.0.0.1:0", "--chunk-size", CHUNK])
        .args(extra);
    let mut proc = Proc::spawn(name, cmd)?;
    let seeding = proc.wait_event("seeding", |_| true)?;
    let id = seeding["file_id"]
        .as_str()
        .ok_or_else(|| anyhow!("seeding event without file_id: {seeding}"))?
        .to_string();
    Ok((proc, id))
}

/// Starts `torrentguard get FILE_ID -o OUT` against `tracker` (does not wait).
pub fn get(
    name: &str,
    data_dir: &Path,
    file_id: &str,
    out: &Path,
    tracker: &Tracker,
    extra: &[&str],
) -> Result<Proc> {
    let mut cmd = agent(data_dir);
    cmd.arg("get")
        .arg(file_id)
        .arg("-o")
        .arg(out)
        .args(tracker.args())
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    Proc::spawn(name, cmd)
}

/// Writes `size` deterministic pseudo-random bytes (xorshift, seeded) to `path`.
pub fn write_random_file(path: &Path, size: usize, seed: u64) -> Result<Vec<u8>> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))?;
    Ok(data)
}

/// Checks that `path` holds exactly `expected`.
pub fn assert_same(path: &Path, expected: &[u8]) -> Result<()> {
    let got = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        got.len() == expected.len(),
        "{}: {} bytes, expected {}",
        path.display(),
        got.len(),
        expected.len()
    );
    ensure!(
        got == expected,
        "{}: content differs from the original",
        path.display()
    );
    Ok(())
}

/// Context that makes [`eventually`] give up at once instead of retrying.
pub const FINAL: &str = "not retried";

/// Polls `check` until it yields `Some`, failing after `timeout`. For states another process
/// reaches in its own time (a re-announce), never a fixed sleep.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.chain().any(|c| c.to_string() == FINAL) => return Err(e),
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("{what}: not reached within {timeout:?} (last error: {last_err:?})");
        }
        thread::sleep(Duration::from_millis(100)); // poll interval, not synchronisation
    }
}

/// Every path under `root`, relative to it, sorted (for "nothing written elsewhere" checks).
pub fn tree(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            out.push(path.strip_prefix(root)?.to_path_buf());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `events` as u64 field.
pub fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("event without numeric {field}: {v}"))
}
