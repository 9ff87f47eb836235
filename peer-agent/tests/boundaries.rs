//! The agent's rooms, enforced (issue 11): `peer/` never reaches the tracker (only `session`
//! talks to it), and `torrent/` never touches a socket or TLS (nor the tracker, nor `peer/`,
//! where the sockets are). Reads every `.rs` file under those directories and names the file
//! and line of each forbidden mention; comments do not count.

use std::fs;
use std::path::{Path, PathBuf};

/// A directory of `src/` and what its code must not mention.
struct Rule {
    dir: &'static str,
    /// Path fragments and names matched anywhere in a line of code.
    forbidden: &'static [&'static str],
    /// Modules of this crate it must not import, also inside `use crate::{…}` groups.
    modules: &'static [&'static str],
    why: &'static str,
}

const TRACKER: [&str; 3] = ["session::", "tracker_client", "TrackerClient"];

const RULES: [Rule; 2] = [
    Rule {
        dir: "peer",
        forbidden: &TRACKER,
        modules: &["session"],
        why: "peer/ must not talk to the tracker: the session does",
    },
    Rule {
        dir: "torrent",
        forbidden: &[
            "tokio::net",
            "tokio_rustls",
            "rustls",
            "TcpStream",
            "TcpListener",
            "UdpSocket",
            TRACKER[0],
            TRACKER[1],
            TRACKER[2],
            "crate::peer",
        ],
        modules: &["session", "peer"],
        why: "torrent/ holds state only: no sockets, no TLS, no tracker",
    },
];

#[test]
fn peer_never_reaches_the_tracker_and_torrent_never_touches_a_socket() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for rule in &RULES {
        let files = rust_files(&src.join(rule.dir));
        assert!(!files.is_empty(), "no source files under src/{}", rule.dir);
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            let shown = file.strip_prefix(&src).unwrap().display().to_string();
            for (line, what) in violations(rule, &text) {
                found.push(format!("src/{shown}:{line}: {what} ({})", rule.why));
            }
        }
    }
    assert!(found.is_empty(), "boundary broken:\n{}", found.join("\n"));
}

/// The session is the only caller of the tracker: outside `session/`, only the agent that
/// connects the client and hands it over (`agent.rs`) and the CLI name it.
#[test]
fn only_the_session_and_its_owner_name_the_tracker_client() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = ["session", "cli", "agent.rs"];
    let others = Rule {
        dir: "",
        forbidden: &["tracker_client", "TrackerClient"],
        modules: &[],
        why: "only the session talks to the tracker",
    };
    let mut found = Vec::new();
    for file in rust_files(&src) {
        let shown = file.strip_prefix(&src).unwrap();
        let top = shown.components().next().unwrap().as_os_str();
        if allowed.iter().any(|a| top == *a) {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        for (line, what) in violations(&others, &text) {
            found.push(format!("src/{}:{line}: {what}", shown.display()));
        }
    }
    assert!(
        found.is_empty(),
        "tracker client outside the session:\n{}",
        found.join("\n")
    );
}

/// The checker itself: a forbidden `use` is caught, with its line, in each of its forms.
#[test]
fn forbidden_imports_are_caught_with_their_line() {
    let peer = &RULES[0];
    let torrent = &RULES[1];
    let clean = "//! talks to the session, in a comment only\nuse super::frames::Incoming;\nlet (_, session) = tls.get_ref();\n";
    assert!(violations(peer, clean).is_empty());
    assert!(violations(torrent, clean).is_empty());

    let direct = "use std::sync::Arc;\nuse crate::session::TrackerClient;\n";
    let v = violations(peer, direct);
    assert_eq!(v.first().map(|(line, _)| *line), Some(2), "{v:?}");

    let grouped = "use crate::{\n    events::Event,\n    session,\n};\n";
    assert_eq!(violations(peer, grouped).first().map(|(l, _)| *l), Some(1));

    let socket = "fn f() {\n    let s = tokio::net::TcpStream::connect(a);\n}\n";
    assert_eq!(
        violations(torrent, socket).first().map(|(l, _)| *l),
        Some(2)
    );
    let tls = "use tokio_rustls::TlsAcceptor;\n";
    assert_eq!(violations(torrent, tls).first().map(|(l, _)| *l), Some(1));
    let upward = "use crate::{peer::BufferPool, events::Event};\n";
    assert!(!violations(torrent, upward).is_empty());
    assert!(violations(peer, upward).is_empty());
}

/// Each forbidden mention in `text`: its 1-based line and what was found.
fn violations(rule: &Rule, text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let code: Vec<&str> = text.lines().map(strip_comment).collect();
    for (i, line) in code.iter().enumerate() {
        for pat in rule.forbidden {
            if line.contains(pat) {
                out.push((i + 1, format!("mentions `{pat}`")));
            }
        }
    }
    // `use crate::{a, b::C}` groups name modules without `crate::a`: read whole statements.
    for (start, stmt) in use_statements(&code) {
        let rooted = stmt.starts_with("use crate::{") || stmt.starts_with("pub use crate::{");
        if !rooted {
            continue;
        }
        let idents: Vec<&str> = stmt
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|s| !s.is_empty())
            .collect();
        for module in rule.modules {
            if idents.contains(module) {
                out.push((start, format!("imports crate::{module}")));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `use` statements joined across lines, with the line each starts on.
fn use_statements(code: &[&str]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in code.iter().enumerate() {
        let t = line.trim();
        if current.is_none() && (t.starts_with("use ") || t.starts_with("pub use ")) {
            current = Some((i + 1, String::new()));
        }
        if let Some((_, stmt)) = current.as_mut() {
            stmt.push_str(t);
            if t.ends_with(';') {
                out.extend(current.take());
            }
        }
    }
    out
}

fn strip_comment(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}
