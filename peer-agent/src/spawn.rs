//! Named tasks. A task spawned here runs inside its tracing span, and how it failed, an error
//! it returned or a panic, is logged exactly once, here, with its name; callers neither repeat
//! that logging nor lose a failure to a dropped `JoinHandle`. Model: rqbit's
//! `librqbit_core/src/spawn_utils.rs`.
//!
//! Spawns that stay bare on purpose: `spawn_blocking` (its result is awaited and handled by the
//! caller), the download's per-peer `JoinSet` (the scheduler joins every result, panics
//! included), the file-hasher thread (joined, its panic turned into an error), and the two
//! infallible signal/cancel forwarders in `main.rs`.

use std::fmt::Display;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How loudly a task's returned error is logged (a panic is always an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Part of normal operation, e.g. a peer hanging up mid-transfer: `debug`.
    Routine,
    /// Worth an operator's attention: `warn`.
    Fault,
}

/// What a task ends with: nothing, or a result whose error is its failure.
pub trait Outcome {
    fn failure(self) -> Option<String>;
}

impl Outcome for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: Display> Outcome for Result<(), E> {
    fn failure(self) -> Option<String> {
        // `{:#}` prints an anyhow error's whole chain on one line.
        self.err().map(|e| format!("{e:#}"))
    }
}

/// Spawns `fut` on the runtime as the task `name`, inside `span`.
pub fn spawn<F>(name: &'static str, span: tracing::Span, failure: Failure, fut: F) -> JoinHandle<()>
where
    F: Future + Send + 'static,
    F::Output: Outcome,
{
    tokio::spawn(logged(name, span, failure, fut))
}

/// As [`spawn`], on `tracker`, so shutdown waits for the task.
pub fn spawn_tracked<F>(
    tracker: &TaskTracker,
    name: &'static str,
    span: tracing::Span,
    failure: Failure,
    fut: F,
) -> JoinHandle<()>
where
    F: Future + Send + 'static,
    F::Output: Outcome,
{
    tracker.spawn(logged(name, span, failure, fut))
}

async fn logged<F>(name: &'static str, span: tracing::Span, failure: Failure, fut: F)
where
    F: Future,
    F::Output: Outcome,
{
    let run = async move {
        // Unwind safety: a panicked task's own state is dropped with it; what it shared sits
        // behind mutexes, whose poisoning the other users already handle.
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(outcome) => match (outcome.failure(), failure) {
                (None, _) => tracing::trace!(task = name, "task finished"),
                (Some(error), Failure::Routine) => {
                    tracing::debug!(task = name, %error, "task failed")
                }
                (Some(error), Failure::Fault) => tracing::warn!(task = name, %error, "task failed"),
            },
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-text panic payload".into());
                tracing::error!(task = name, panic = %message, "task panicked");
            }
        }
    };
    run.instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `body` on a current-thread runtime with a subscriber capturing `debug` and up.
    fn logs_of(body: impl Future<Output = ()>) -> String {
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .without_time()
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body);
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn an_error_is_logged_once_with_name_span_and_level() {
        let logs = logs_of(async {
            let span = tracing::info_span!("conn", peer = "p1");
            let fut = async { Err::<(), _>(anyhow::anyhow!("inner").context("outer")) };
            spawn("announce", span, Failure::Fault, fut).await.unwrap();
        });
        assert_eq!(logs.matches("task failed").count(), 1, "{logs}");
        let line = logs.lines().find(|l| l.contains("task failed")).unwrap();
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("conn{peer=\"p1\"}"), "{line}");
        assert!(line.contains("task=\"announce\""), "{line}");
        assert!(line.contains("outer: inner"), "{line}");
    }

    #[test]
    fn routine_errors_are_debug_and_success_is_quiet() {
        let logs = logs_of(async {
            let tracker = TaskTracker::new();
            let span = tracing::Span::none();
            let fut = async { Err::<(), _>("peer hung up") };
            spawn_tracked(&tracker, "peer-connection", span, Failure::Routine, fut);
            let quiet = spawn("reader", tracing::Span::none(), Failure::Fault, async {});
            tracker.close();
            tracker.wait().await;
            quiet.await.unwrap();
        });
        let line = logs.lines().find(|l| l.contains("task failed")).unwrap();
        assert!(
            line.contains("DEBUG") && line.contains("peer hung up"),
            "{line}"
        );
        assert!(!logs.contains("reader"), "{logs}");
    }

    #[test]
    fn a_panic_is_logged_with_its_message_and_the_handle_completes() {
        let logs = logs_of(async {
            let fut = async {
                let nothing: &[u8] = std::hint::black_box(&[]);
                let _ = nothing[3];
            };
            let handle = spawn("peer-reader", tracing::Span::none(), Failure::Fault, fut);
            // The panic was caught and logged: the handle reports a finished task.
            assert!(handle.await.is_ok());
        });
        let line = logs.lines().find(|l| l.contains("task panicked")).unwrap();
        assert!(
            line.contains("ERROR") && line.contains("peer-reader"),
            "{line}"
        );
        assert!(line.contains("index out of bounds"), "{line}");
    }
}
