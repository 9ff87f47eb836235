//! Ctrl-C: a graceful, bounded stop, and the helpers commands use to honour it.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use torrentguard_signals::StopSignals;

use super::exit::INTERRUPTED;

/// After the first Ctrl-C, how long a stop may take before the process exits regardless (the
/// stop itself is bounded at ~2 s; this also covers blocking work such as hashing).
const STOP_DEADLINE: Duration = Duration::from_secs(3);

/// Cancels `stop` on the first SIGINT/SIGTERM; a graceful, bounded stop follows. A second
/// signal, or a stop overrunning [`STOP_DEADLINE`], exits with 130 at once.
pub(crate) fn watch_interrupts(stop: CancellationToken) -> anyhow::Result<()> {
    let mut signals = StopSignals::install().context("installing the Ctrl-C handler")?;
    tokio::spawn(async move {
        signals.recv().await;
        stop.cancel();
        tokio::select! {
            _ = signals.recv() => eprintln!("interrupted again: exiting now"),
            _ = tokio::time::sleep(STOP_DEADLINE) => eprintln!("stopping took too long: exiting now"),
        }
        std::process::exit(INTERRUPTED.into());
    });
    Ok(())
}

/// Cancels `to` when `from` is cancelled.
pub(crate) fn forward(from: &CancellationToken, to: CancellationToken) {
    let from = from.clone();
    tokio::spawn(async move {
        from.cancelled().await;
        to.cancel();
    });
}

/// `fut`'s output, or `None` if `stop` comes first.
pub(crate) async fn unless_stopped<T>(
    stop: &CancellationToken,
    fut: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        _ = stop.cancelled() => None,
    }
}
