//! Room in the open-file limit for the connection cap.
//!
//! The connection table can only make room for a newcomer it has accepted; if the process runs
//! out of file descriptors first, `accept` fails and nobody new gets in, which is the lock-out
//! the cap exists to prevent. So at start the soft limit is raised toward the hard one, and the
//! cap is lowered to what fits if that is not enough.

/// Descriptors kept for everything but client connections: the listener, the database and its
/// journal, log output, the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The connection cap that fits the open-file limit, after raising the soft limit as far as
/// the hard one allows. Returns `wanted` where the limit cannot be read.
pub fn fit_connection_cap(wanted: usize) -> usize {
    let needed = wanted as u64 + RESERVED_DESCRIPTORS;
    let Some(available) = raise_soft_limit(needed) else {
        return wanted;
    };
    let fits =
        usize::try_from(available.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if fits < wanted {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = available,
            using = fits.max(1),
            "the open-file limit is too low for --max-connections; raise `ulimit -n` (or the container's nofile limit) to use it all"
        );
    }
    fits.clamp(1, wanted.max(1))
}

/// Raises the soft RLIMIT_NOFILE to `needed` if it is lower (capped by the hard limit) and
/// returns the soft limit now in force; `None` if unlimited or unknown.
#[cfg(unix)]
fn raise_soft_limit(needed: u64) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    if current >= needed {
        return Some(current);
    }
    let target = limit.maximum.map_or(needed, |hard| hard.min(needed));
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::debug!(error = %e, "could not raise the open-file limit");
            Some(current)
        }
    }
}

#[cfg(not(unix))]
fn raise_soft_limit(_needed: u64) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_that_fits_is_kept_and_the_limit_then_covers_it() {
        // Small enough for any test environment's hard limit.
        assert_eq!(fit_connection_cap(100), 100);
        #[cfg(unix)]
        {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            if let Some(soft) = limit.current {
                assert!(soft >= 100 + RESERVED_DESCRIPTORS);
            }
        }
    }
}
