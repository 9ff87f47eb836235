//! The config file: `config.toml` in the platform config directory (e.g.
//! ~/.config/torrentguard), `--config FILE` or `TORRENTGUARD_CONFIG`.
//!
//! Its keys are long flag ids in snake_case. Each value becomes the default of every argument
//! of that id in every subcommand before clap parses, so clap's own order gives flag > env >
//! config > built-in default, and arguments added later (the daemon's) are covered by naming
//! them in [`KEYS`]. The `tracker` subcommand is left alone: its `--listen` is the tracker's
//! port, not the agent's.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Every key a config file may hold.
pub(crate) const KEYS: &[&str] = &[
    "tracker",
    "tracker_fingerprint",
    "swarm_token",
    "listen",
    "advertise",
    "port_map",
    "upload_limit",
    "download_limit",
    "data_dir",
    "compression",
    "max_peers",
    "max_active_downloads",
    "seed_ratio",
    "seed_time",
    "ui",
    "api_listen",
    "download_dir",
];

/// Subcommands whose arguments are their own, whatever their ids.
const UNTOUCHED_SUBCOMMANDS: &[&str] = &["tracker"];

/// Values shown as "(set)" rather than printed (`config` output may land in a bug report).
const SECRET_KEYS: &[&str] = &["swarm_token"];

pub(crate) const CONFIG_ENV: &str = "TORRENTGUARD_CONFIG";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {} is not valid TOML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error(
        "unknown key {key:?} in the config file {}; known keys: {}",
        path.display(),
        KEYS.join(", ")
    )]
    UnknownKey { key: String, path: PathBuf },
    #[error("key {key:?} in the config file {}: {message}", path.display())]
    BadValue {
        key: String,
        path: PathBuf,
        message: String,
    },
}

/// The config file as read: where it is (or would be), and its values as text.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// The file consulted: given, or the platform default (which may not exist).
    pub(crate) path: Option<PathBuf>,
    /// Whether that file existed and was read.
    pub(crate) found: bool,
    pub(crate) values: BTreeMap<String, Vec<String>>,
}

/// The config file `argv` names (`--config FILE` / `--config=FILE`), else `env` (the value of
/// TORRENTGUARD_CONFIG), else the platform default. The flag is read ahead of clap because the
/// file decides the defaults clap parses with. Returns the path and whether it was asked for
/// (a missing file is then an error; the default may be absent).
pub(crate) fn config_path(argv: &[OsString], env: Option<OsString>) -> (Option<PathBuf>, bool) {
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            return (args.next().map(PathBuf::from), true);
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return (Some(PathBuf::from(v)), true);
        }
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return (Some(PathBuf::from(e)), true);
    }
    let default = directories::ProjectDirs::from("", "", "torrentguard")
        .map(|d| d.config_dir().join("config.toml"));
    (default, false)
}

/// Reads the config file of `argv` (see [`config_path`]).
pub(crate) fn load(argv: &[OsString]) -> Result<Settings, ConfigError> {
    let (path, asked) = config_path(argv, std::env::var_os(CONFIG_ENV));
    let Some(path) = path else {
        return Ok(Settings::default());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !asked && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Settings {
                path: Some(path),
                ..Settings::default()
            });
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    parse(&text, path)
}

/// The settings of a config file's text.
pub(crate) fn parse(text: &str, path: PathBuf) -> Result<Settings, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: e.message().to_string(),
    })?;
    let mut values = BTreeMap::new();
    for (key, value) in table {
        if !KEYS.contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey { key, path });
        }
        let texts = match &value {
            toml::Value::Array(items) => items.iter().map(scalar).collect(),
            v => scalar(v).map(|s| vec![s]),
        };
        let Some(texts) = texts else {
            return Err(ConfigError::BadValue {
                key,
                path,
                message: "expected a string, a number, a boolean or a list of them".into(),
            });
        };
        values.insert(key, texts);
    }
    Ok(Settings {
        path: Some(path),
        found: true,
        values,
    })
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Every (sub)command of `cmd` the config applies to, depth first, root included.
fn commands(cmd: &Command) -> Vec<&Command> {
    let mut out = vec![cmd];
    for sub in cmd.get_subcommands() {
        if !UNTOUCHED_SUBCOMMANDS.contains(&sub.get_name()) {
            out.extend(commands(sub));
        }
    }
    out
}

/// `cmd` with every configured value as the default of each argument of its key. Clap checks
/// those values with each argument's own parser as it parses; [`blame`] turns a refusal into
/// an error naming the file and the key.
pub(crate) fn apply(cmd: Command, settings: &Settings) -> Result<Command, ConfigError> {
    check_lists(&cmd, settings)?;
    Ok(with_defaults(cmd, &settings.values))
}

fn bad_value(key: &str, settings: &Settings, message: String) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        path: settings.path.clone().unwrap_or_default(),
        message,
    }
}

/// A list is a value only for a repeatable flag.
fn check_lists(cmd: &Command, settings: &Settings) -> Result<(), ConfigError> {
    for c in commands(cmd) {
        for arg in c.get_arguments() {
            let key = arg.get_id().as_str();
            let Some(values) = settings.values.get(key) else {
                continue;
            };
            if values.len() != 1 && !matches!(arg.get_action(), ArgAction::Append) {
                return Err(bad_value(
                    key,
                    settings,
                    "takes one value, not a list".into(),
                ));
            }
        }
    }
    Ok(())
}

/// The config file's part in a clap error: a value it gave that the flag's parser refused
/// (clap parses a default only when the command runs without that flag).
pub(crate) fn blame(e: &clap::Error, cmd: &Command, settings: &Settings) -> Option<ConfigError> {
    use clap::error::{ContextKind, ContextValue};
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let (shown_arg, value) = (
        text(ContextKind::InvalidArg)?,
        text(ContextKind::InvalidValue)?,
    );
    // An argument shows as "--listen <ADDR>" only once its command is built.
    let mut built = cmd.clone();
    built.build();
    let arg = commands(&built)
        .into_iter()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.to_string() == shown_arg)?;
    let key = arg.get_id().as_str();
    if !settings.values.get(key)?.iter().any(|v| v == value) {
        return None;
    }
    let rendered = e.to_string();
    let head = rendered.lines().next().unwrap_or_default();
    let message = head.strip_prefix("error: ").unwrap_or(head).to_string();
    Some(bad_value(key, settings, message))
}

fn with_defaults(mut cmd: Command, values: &BTreeMap<String, Vec<String>>) -> Command {
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| values.contains_key(id))
        .collect();
    for id in ids {
        let defaults: Vec<clap::builder::OsStr> = values[&id]
            .iter()
            .map(|v| v.as_str().to_owned().into())
            .collect();
        cmd = cmd.mut_arg(&id, |a| a.default_values(defaults));
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .filter(|n| !UNTOUCHED_SUBCOMMANDS.contains(&n.as_str()))
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(&name, |s| with_defaults(s, values));
    }
    cmd
}

/// The argument ids of the chosen subcommand whose value is the config file's (no flag, no
/// env): a share code's tracker may replace those, never a flag.
pub(crate) fn from_config(matches: &ArgMatches, settings: &Settings) -> BTreeSet<String> {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    m.ids()
        .map(|id| id.as_str())
        .filter(|id| settings.values.contains_key(*id))
        .filter(|id| m.value_source(id) == Some(ValueSource::DefaultValue))
        .map(str::to_string)
        .collect()
}

/// One line of `torrentguard config`: a key, its effective value, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Effective {
    pub(crate) key: &'static str,
    pub(crate) value: Option<String>,
    pub(crate) source: String,
}

/// The effective value of every key some subcommand of `cmd` (built without the config) takes,
/// with `env` to read variables.
pub(crate) fn effective(
    cmd: &Command,
    settings: &Settings,
    env: impl Fn(&OsStr) -> Option<OsString>,
) -> Vec<Effective> {
    let all = commands(cmd);
    let mut out = Vec::new();
    for &key in KEYS {
        let Some(arg) = all
            .iter()
            .flat_map(|c| c.get_arguments())
            .find(|a| a.get_id() == key)
        else {
            // A key for flags this build lacks (the daemon's, before it exists) is still shown.
            if let Some(v) = settings.values.get(key) {
                let value = Some(v.join(", "));
                let path = settings.path.as_deref().unwrap_or(Path::new(""));
                let source = format!("config {} (no command takes it)", path.display());
                out.push(Effective { key, value, source });
            }
            continue;
        };
        let shown = |v: String| {
            if SECRET_KEYS.contains(&key) {
                "(set)".to_string()
            } else {
                v
            }
        };
        let from_env = arg.get_env().and_then(|name| Some((name, env(name)?)));
        let (value, source) = if let Some((name, v)) = from_env {
            let value = shown(v.to_string_lossy().into_owned());
            (Some(value), format!("env {}", name.to_string_lossy()))
        } else if let Some(v) = settings.values.get(key) {
            let path = settings.path.as_deref().unwrap_or(Path::new(""));
            (
                Some(shown(v.join(", "))),
                format!("config {}", path.display()),
            )
        } else {
            let d: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            ((!d.is_empty()).then(|| d.join(", ")), "default".to_string())
        };
        out.push(Effective { key, value, source });
    }
    out
}

#[cfg(test)]
mod tests;
