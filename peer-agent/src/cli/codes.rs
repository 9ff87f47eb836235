//! Share codes on the command line: a file argument that is a code or an id, the trackers a
//! command's codes and flags resolve to, and trying those trackers in order.

use std::future::Future;
use std::str::FromStr;

use anyhow::anyhow;
use torrentguard_agent::PinnedUrl;
use torrentguard_agent::agent::TrackerTarget;
use torrentguard_agent::share_code::{ShareCode, ShareCodeError};
use torrentguard_protocol::FileId;

use super::args::TrackerFlags;
use super::exit::UsageError;

/// A file named on the command line: by share code (with its tracker) or by bare id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileRef {
    Id(FileId),
    Code(ShareCode),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FileRefError {
    #[error(transparent)]
    Code(#[from] ShareCodeError),
    #[error("not a share code (tg1:…) nor a file id (64 lowercase hex digits)")]
    Neither,
}

impl FromStr for FileRef {
    type Err = FileRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        // Anything that looks meant as a code gets the code's precise complaint.
        if t.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("tg")) && t.contains(':') {
            return Ok(FileRef::Code(t.parse()?));
        }
        t.parse()
            .map(FileRef::Id)
            .map_err(|_| FileRefError::Neither)
    }
}

impl FileRef {
    pub(crate) fn file_id(&self) -> FileId {
        match self {
            FileRef::Id(id) => *id,
            FileRef::Code(c) => c.file_id,
        }
    }
}

/// The trackers to try, in order, for `refs` with `flags`; empty when neither names one.
///
/// A flag or its environment variable replaces the codes' value for its field (`--tracker`
/// replaces the code's trackers, `--tracker-fingerprint` the pin of each); the config file's
/// tracker, fingerprint and token are not used with a code (they may describe another
/// tracker). Several codes must name the same trackers: one process talks to one set.
pub(crate) fn trackers_for(
    refs: &[FileRef],
    flags: &TrackerFlags,
) -> anyhow::Result<Vec<TrackerTarget>> {
    let mut codes = refs.iter().filter_map(|r| match r {
        FileRef::Code(c) => Some(c),
        FileRef::Id(_) => None,
    });
    let Some(first) = codes.next() else {
        return Ok(super::targets(flags));
    };
    if let Some(other) = codes.find(|c| !same_tracker(c, first)) {
        return Err(anyhow!(UsageError(format!(
            "the share codes name different trackers ({} and {}); get them with one command each",
            first.tracker_list(),
            other.tracker_list()
        ))));
    }
    let explicit = |id: &str| !flags.from_config.contains(id);
    let token = match &flags.swarm_token {
        Some(t) if explicit("swarm_token") => Some(t.clone()),
        _ => first.swarm_token.clone(),
    };
    let flag_pin = flags
        .tracker_fingerprint
        .filter(|_| explicit("tracker_fingerprint"));
    let target = |url: &str, fingerprint| TrackerTarget {
        url: url.to_string(),
        fingerprint,
        token: token.clone(),
    };
    Ok(if !flags.tracker.is_empty() && explicit("tracker") {
        // A URL's own `#sha256:…` is the most specific pin.
        let pin = |t: &PinnedUrl| t.fingerprint.or(flag_pin);
        flags
            .tracker
            .iter()
            .map(|t| target(&t.url, pin(t)))
            .collect()
    } else {
        // A flag's pin beats the code's: the user checked it against the tracker.
        let pin = |t: &PinnedUrl| flag_pin.or(t.fingerprint);
        first
            .trackers
            .iter()
            .map(|t| target(&t.url, pin(t)))
            .collect()
    })
}

fn same_tracker(a: &ShareCode, b: &ShareCode) -> bool {
    a.trackers == b.trackers && a.swarm_token == b.swarm_token
}

/// `connect` to each tracker in turn until one succeeds. An error `next` accepts (the tracker
/// did not answer) moves on to the next; the first tracker's error is returned if none does,
/// as the one the user most likely meant.
pub(crate) async fn first_that_connects<T, E, Fut>(
    trackers: &[TrackerTarget],
    mut connect: impl FnMut(TrackerTarget) -> Fut,
    next: impl Fn(&E) -> bool,
) -> Option<Result<T, E>>
where
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut first_err = None;
    for (i, t) in trackers.iter().enumerate() {
        let url = t.url.clone();
        match connect(t.clone()).await {
            Ok(v) => return Some(Ok(v)),
            Err(e) if next(&e) && i + 1 < trackers.len() => {
                tracing::warn!(tracker = %url, "{e}; trying the next tracker of the share code");
                first_err.get_or_insert(e);
            }
            Err(e) => return Some(Err(first_err.unwrap_or(e))),
        }
    }
    first_err.map(Err)
}

#[cfg(test)]
mod tests {
    use torrentguard_protocol::Fingerprint;

    use super::*;

    fn code(url: &str) -> ShareCode {
        ShareCode {
            file_id: FileId([1; 32]),
            trackers: vec![
                PinnedUrl {
                    url: url.into(),
                    fingerprint: Some(Fingerprint::from_bytes([2; 32])),
                },
                PinnedUrl {
                    url: "https://backup:8443".into(),
                    fingerprint: Some(Fingerprint::from_bytes([4; 32])),
                },
            ],
            swarm_token: Some("tok".into()),
        }
    }

    fn flags(tracker: Option<&str>, from_config: &[&str]) -> TrackerFlags {
        TrackerFlags {
            tracker: tracker.iter().map(|t| t.parse().unwrap()).collect(),
            tracker_fingerprint: Some(Fingerprint::from_bytes([3; 32])),
            swarm_token: None,
            from_config: from_config.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_code_or_an_id_parses_and_garbage_says_what_was_expected() {
        let c = code("https://t:1");
        assert_eq!(
            c.to_string().parse::<FileRef>().unwrap(),
            FileRef::Code(c.clone())
        );
        let id = "ab".repeat(32);
        assert!(matches!(id.parse::<FileRef>(), Ok(FileRef::Id(_))));
        let cut = &c.to_string()[..20];
        let err = cut.parse::<FileRef>().unwrap_err().to_string();
        assert_eq!(err, "the share code is incomplete: was it cut when copied?");
        assert!(matches!(
            "xyz".parse::<FileRef>(),
            Err(FileRefError::Neither)
        ));
    }

    #[test]
    fn the_code_brings_its_trackers_in_order_unless_a_flag_overrides() {
        let refs = [FileRef::Code(code("https://main:8443"))];
        // Tracker and fingerprint from the config file: the code's win.
        let t = trackers_for(
            &refs,
            &flags(Some("https://cfg"), &["tracker", "tracker_fingerprint"]),
        )
        .unwrap();
        let urls: Vec<_> = t.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(urls, ["https://main:8443", "https://backup:8443"]);
        assert_eq!(t[0].fingerprint, Some(Fingerprint::from_bytes([2; 32])));
        assert_eq!(t[1].fingerprint, Some(Fingerprint::from_bytes([4; 32])));
        assert_eq!(t[1].token.as_deref(), Some("tok"));
        // Given as flags: the flags win, field by field.
        let t = trackers_for(&refs, &flags(Some("https://flag"), &[])).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].url, "https://flag");
        assert_eq!(t[0].fingerprint, Some(Fingerprint::from_bytes([3; 32])));
        assert_eq!(t[0].token.as_deref(), Some("tok"));
    }

    #[test]
    fn codes_of_different_trackers_are_refused_and_ids_alone_use_the_flags() {
        let refs = [
            FileRef::Code(code("https://a")),
            FileRef::Id(FileId([5; 32])),
            FileRef::Code(code("https://b")),
        ];
        let err = trackers_for(&refs, &flags(None, &[])).unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some());
        assert!(err.to_string().contains("name different trackers"), "{err}");
        let ids = [FileRef::Id(FileId([5; 32]))];
        let t = trackers_for(&ids, &flags(Some("https://x"), &["tracker"])).unwrap();
        assert_eq!(t[0].url, "https://x");
        assert!(trackers_for(&ids, &flags(None, &[])).unwrap().is_empty());
    }

    #[tokio::test]
    async fn trackers_are_tried_in_order_until_one_connects() {
        let refs = [FileRef::Code(code("https://down"))];
        let targets = trackers_for(&refs, &flags(None, &[])).unwrap();
        let mut tried = Vec::new();
        let got = first_that_connects(
            &targets,
            |t| {
                tried.push(t.url.clone());
                async move {
                    if t.url == "https://down" {
                        Err("unreachable".to_string())
                    } else {
                        Ok(t.url)
                    }
                }
            },
            |_| true,
        )
        .await;
        assert_eq!(got, Some(Ok("https://backup:8443".to_string())));
        assert_eq!(tried, ["https://down", "https://backup:8443"]);
        let none = first_that_connects(&targets, |_| async { Err::<(), _>("x") }, |_| true).await;
        assert_eq!(none, Some(Err("x")));
        let stop =
            first_that_connects(&targets, |_| async { Err::<(), _>("pin") }, |_| false).await;
        assert_eq!(stop, Some(Err("pin")));
    }
}
