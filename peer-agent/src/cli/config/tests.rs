use std::ffi::OsString;

use clap::CommandFactory;

use super::*;
use crate::cli::args::{Cli, Command as Cmd, Unparsed, parse_with};

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("torrentguard")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

fn settings(text: &str) -> Settings {
    parse(text, PathBuf::from("/etc/tg.toml")).expect("a valid config")
}

fn parse_args(text: &str, args: &[&str]) -> Cli {
    match parse_with(argv(args), settings(text)) {
        Ok(cli) => cli,
        Err(Unparsed::Config(e)) => panic!("{e}"),
        Err(Unparsed::Clap(e)) => panic!("{e}"),
    }
}

const CONFIG: &str = r#"
tracker = "https://tracker.lan:8443"
tracker_fingerprint = "sha256:0909090909090909090909090909090909090909090909090909090909090909"
listen = "127.0.0.1:7000"
upload_limit = "1M"
data_dir = "/srv/tg"
"#;

#[test]
fn config_values_are_the_defaults_of_every_command_taking_them() {
    let cli = parse_args(CONFIG, &["status"]);
    assert_eq!(cli.data_dir, Some(PathBuf::from("/srv/tg")));
    let Cmd::Status(s) = cli.command else {
        panic!()
    };
    assert_eq!(urls(&s.tracker), ["https://tracker.lan:8443"]);
    assert!(s.tracker.tracker_fingerprint.is_some());
    for key in ["tracker", "tracker_fingerprint", "data_dir"] {
        assert!(s.tracker.from_config.contains(key), "{key}");
    }
    assert!(!s.tracker.from_config.contains("swarm_token"));
    let cli = parse_args(CONFIG, &["get", &"ab".repeat(32)]);
    let Cmd::Get(g) = cli.command else { panic!() };
    assert_eq!(g.endpoint.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(g.upload_limit, 1 << 20);
    let cli = parse_args(CONFIG, &["share", "f"]);
    let Cmd::Share(s) = cli.command else { panic!() };
    assert_eq!(s.endpoint.listen.to_string(), "127.0.0.1:7000");
}

fn urls(flags: &crate::cli::args::TrackerFlags) -> Vec<String> {
    flags.tracker.iter().map(|t| t.to_string()).collect()
}

/// Issue 14: several trackers, each with its own pin, from a list in the file, from repeated
/// flags, and from the environment variable's commas.
#[test]
fn several_trackers_come_from_a_list_repeated_flags_or_commas() {
    let fp = format!("sha256:{}", "0a".repeat(32));
    let list = format!("tracker = [\"https://a:1#{fp}\", \"https://b:2\"]\n");
    let cli = parse_args(&list, &["status"]);
    let Cmd::Status(s) = cli.command else {
        panic!()
    };
    assert_eq!(
        urls(&s.tracker),
        [format!("https://a:1#{fp}"), "https://b:2".into()]
    );
    assert_eq!(
        s.tracker.tracker[0].fingerprint.map(|f| f.to_string()),
        Some(fp.clone())
    );
    let cli = parse_args(
        "",
        &[
            "status",
            "--tracker",
            "https://c:3",
            "--tracker",
            "https://d:4,https://e:5",
        ],
    );
    let Cmd::Status(s) = cli.command else {
        panic!()
    };
    assert_eq!(
        urls(&s.tracker),
        ["https://c:3", "https://d:4", "https://e:5"]
    );
    let bad = parse_with(
        argv(&["status", "--tracker", "https://c:3#sha256:12"]),
        settings(""),
    );
    assert!(bad.is_err());
}

#[test]
fn a_flag_beats_the_config_file() {
    let cli = parse_args(
        CONFIG,
        &["status", "--tracker", "https://other:1", "--data-dir", "/x"],
    );
    assert_eq!(cli.data_dir, Some(PathBuf::from("/x")));
    let Cmd::Status(s) = cli.command else {
        panic!()
    };
    assert_eq!(urls(&s.tracker), ["https://other:1"]);
    assert!(!s.tracker.from_config.contains("tracker"));
    assert!(s.tracker.from_config.contains("tracker_fingerprint"));
}

/// The embedded tracker's `--listen` is the tracker's port, not the agent's.
#[cfg(feature = "embedded-tracker")]
#[test]
fn the_tracker_subcommand_keeps_its_own_defaults() {
    let cli = parse_args(CONFIG, &["tracker"]);
    let Cmd::Tracker(t) = cli.command else {
        panic!()
    };
    assert_ne!(format!("{t:?}"), "", "parsed");
    assert!(!format!("{t:?}").contains("7000"), "{t:?}");
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
    let err = parse("trackr = \"https://x\"", "/etc/tg.toml".into()).unwrap_err();
    assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "trackr"));
    let text = err.to_string();
    assert!(
        text.starts_with("unknown key \"trackr\" in the config file /etc/tg.toml"),
        "{text}"
    );
    let bad = settings("listen = \"not an address\"");
    let id = "ab".repeat(32);
    let got = parse_with(argv(&["get", &id]), bad.clone());
    let Err(Unparsed::Config(err)) = got else {
        panic!("a bad listen address was not blamed on the file: {got:?}")
    };
    // Given as a flag, the value of the file is not parsed, nor blamed.
    assert!(parse_with(argv(&["get", &id, "--listen", "127.0.0.1:0"]), bad).is_ok());
    let text = err.to_string();
    assert!(
        text.starts_with("key \"listen\" in the config file /etc/tg.toml: invalid value"),
        "{text}"
    );
    // `tracker` takes a list (issue 14: several trackers); the swarm token does not.
    let list = settings("swarm_token = [\"a\", \"b\"]");
    let Err(Unparsed::Config(err)) = parse_with(argv(&["status"]), list) else {
        panic!("a list for a one-value flag was accepted")
    };
    assert!(err.to_string().contains("takes one value"), "{err}");
    let table = parse("[tracker]\nurl = 1", "/c".into()).unwrap_err();
    assert!(matches!(table, ConfigError::BadValue { .. }), "{table}");
    let broken = parse("tracker = ", "/c".into()).unwrap_err();
    assert!(matches!(broken, ConfigError::Parse { .. }), "{broken}");
}

#[test]
fn the_config_file_is_the_flag_else_the_env_else_the_default() {
    let env = Some(OsString::from("/env.toml"));
    assert_eq!(
        config_path(&argv(&["--config", "/a.toml", "status"]), env.clone()),
        (Some(PathBuf::from("/a.toml")), true)
    );
    assert_eq!(
        config_path(&argv(&["status", "--config=/b.toml"]), env.clone()),
        (Some(PathBuf::from("/b.toml")), true)
    );
    assert_eq!(
        config_path(&argv(&["status", "--", "--config"]), env.clone()),
        (Some(PathBuf::from("/env.toml")), true)
    );
    let (default, asked) = config_path(&argv(&["status"]), None);
    assert!(!asked);
    if let Some(d) = default {
        assert!(d.ends_with("torrentguard/config.toml"), "{}", d.display());
    }
}

#[test]
fn effective_settings_say_where_each_comes_from() {
    let s = settings("listen = \"127.0.0.1:7000\"\nswarm_token = \"secret\"");
    let env = |name: &OsStr| (name == "TORRENTGUARD_TRACKER").then(|| OsString::from("https://e"));
    let rows = effective(&Cli::command(), &s, env);
    let get = |k: &str| rows.iter().find(|r| r.key == k).expect(k).clone();
    assert_eq!(get("tracker").value.as_deref(), Some("https://e"));
    assert_eq!(get("tracker").source, "env TORRENTGUARD_TRACKER");
    assert_eq!(get("listen").value.as_deref(), Some("127.0.0.1:7000"));
    assert_eq!(get("listen").source, "config /etc/tg.toml");
    assert_eq!(get("swarm_token").value.as_deref(), Some("(set)"));
    assert_eq!(get("upload_limit").value.as_deref(), Some("0"));
    assert_eq!(get("upload_limit").source, "default");
    assert_eq!(get("advertise").value, None);
}
