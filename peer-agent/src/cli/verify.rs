//! `torrentguard verify PATH FILE_ID`: a file or folder on disk checked against the share's
//! manifest, fetched from the tracker (and checked against the id).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use torrentguard_agent::torrent::verify::{VerifyReport, verify_path};

use super::args::VerifyArgs;
use super::render::{Mode, print_line, printable};
use super::{first_tracker_client, require_trackers};

pub(crate) async fn verify(args: VerifyArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    let trackers = require_trackers(std::slice::from_ref(&args.file_id), &args.tracker)?;
    let client = first_tracker_client(&trackers, dir).await?;
    let file_id = args.file_id.file_id();
    let manifest = Arc::new(client.manifest(&file_id).await?);
    let path = args.path.clone();
    let m = manifest.clone();
    let report = tokio::task::spawn_blocking(move || verify_path(&m, &path))
        .await
        .context("the verifying task failed")??;
    let shown = printable(&args.path.display().to_string()).into_owned();
    if mode == Mode::Json {
        print_line(
            &serde_json::json!({
                "event": "verified",
                "file_id": file_id,
                "path": args.path,
                "ok": report.ok(),
                "report": report,
            })
            .to_string(),
        );
    } else {
        print_line(&sentence(&shown, &manifest.name, &report));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line: verified, or what differs.
fn sentence(path: &str, name: &str, r: &VerifyReport) -> String {
    if r.ok() {
        let what = match r.content_digest_ok {
            Some(_) => "every chunk and the whole file",
            None => "every entry and every chunk",
        };
        return format!(
            "verified: {path} is {} ({} chunks): {what} match the manifest",
            printable(name),
            r.chunks
        );
    }
    let mut why = Vec::new();
    if !r.wrong_entries.is_empty() {
        let first: Vec<_> = r
            .wrong_entries
            .iter()
            .take(5)
            .map(|w| printable(w).into_owned())
            .collect();
        why.push(format!(
            "{} entries differ ({}{})",
            r.wrong_entries.len(),
            first.join("; "),
            if r.wrong_entries.len() > 5 {
                "; …"
            } else {
                ""
            }
        ));
    }
    if r.bad_chunks > 0 {
        why.push(format!(
            "{} of {} chunks differ (first: {:?})",
            r.bad_chunks, r.chunks, r.bad
        ));
    }
    if r.content_digest_ok == Some(false) && r.bad_chunks == 0 {
        why.push(
            "every chunk matches but the whole-file digest does not: the manifest is inconsistent"
                .into(),
        );
    }
    format!(
        "DIFFERENT: {path} is not {}: {}",
        printable(name),
        why.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_verified_or_what_differs() {
        let mut r = VerifyReport {
            chunks: 4,
            content_digest_ok: Some(true),
            ..Default::default()
        };
        assert_eq!(
            sentence("out/f", "f", &r),
            "verified: out/f is f (4 chunks): every chunk and the whole file match the manifest"
        );
        r.bad_chunks = 2;
        r.bad = vec![1, 3];
        r.content_digest_ok = Some(false);
        assert_eq!(
            sentence("out/f", "f", &r),
            "DIFFERENT: out/f is not f: 2 of 4 chunks differ (first: [1, 3])"
        );
        let r = VerifyReport {
            chunks: 1,
            wrong_entries: vec!["a is missing".into()],
            ..Default::default()
        };
        assert_eq!(
            sentence("t", "t", &r),
            "DIFFERENT: t is not t: 1 entries differ (a is missing)"
        );
    }
}
