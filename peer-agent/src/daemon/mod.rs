//! `torrentguard daemon`: one long-running agent driven over a local API and a web UI.

pub mod ui;
