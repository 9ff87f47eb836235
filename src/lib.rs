//! `torrentguard-e2e`: this package holds only the end-to-end tests in `tests/`, which start the
//! built `torrentguard-tracker` and `torrentguard` binaries as real processes.
