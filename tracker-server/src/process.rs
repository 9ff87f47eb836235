//! The standard `process_*` metrics of Prometheus client libraries, read from `/proc/self`
//! (Linux only: elsewhere the families are left out rather than shown as zeros).

use std::fmt::Write as _;

/// What `/proc/self` tells about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// The fields of `/proc/self/stat` after the command name, which may itself hold spaces and
/// parentheses, hence the split at the last `)`.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Parses `/proc/self/stat` given the clock tick rate, the page size and the boot time (Unix
/// seconds): (CPU seconds, RSS bytes, virtual bytes, start time in Unix seconds).
fn parse_stat(stat: &str, ticks: u64, page: u64, boot: u64) -> Option<(f64, u64, u64, f64)> {
    let f = stat_fields(stat)?;
    // proc(5) numbers the fields from 1 with the pid and the name first: utime is field 14,
    // so index 11 here, where field 3 (state) is index 0.
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let ticks = ticks.max(1) as f64;
    let cpu = (num(11)? + num(12)?) as f64 / ticks;
    let start = boot as f64 + num(19)? as f64 / ticks;
    Some((cpu, num(21)? * page, num(20)?, start))
}

/// The `btime` line of `/proc/stat`: boot time in Unix seconds.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(target_os = "linux")]
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let ticks = rustix::param::clock_ticks_per_second();
    let page = rustix::param::page_size() as u64;
    let (cpu_seconds, resident_bytes, virtual_bytes, start_time_seconds) =
        parse_stat(&stat, ticks, page, boot)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    Some(ProcessStats {
        cpu_seconds,
        resident_bytes,
        virtual_bytes,
        open_fds,
        max_fds,
        start_time_seconds,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn read() -> Option<ProcessStats> {
    None
}

/// Appends the process families, if this platform has them.
pub fn render(out: &mut String) {
    let Some(p) = read() else { return };
    let mut family = |name: &str, kind: &str, help: &str, value: String| {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds.to_string(),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.resident_bytes.to_string(),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        p.virtual_bytes.to_string(),
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        p.open_fds.to_string(),
    );
    if let Some(max) = p.max_fds {
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max.to_string(),
        );
    }
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds.to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name_parses() {
        // The name may hold spaces and ")": only the last ")" ends it.
        let stat = "4242 (tor) rent (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    8 0 1000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 \
                    1 0 0 0 0 0";
        let (cpu, rss, vsize, start) = parse_stat(stat, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(cpu, 3.0);
        assert_eq!(rss, 300 * 4096);
        assert_eq!(vsize, 123_456_789);
        assert_eq!(start, 1_700_000_010.0);
        assert!(parse_stat("garbage", 100, 4096, 0).is_none());
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_figures() {
        let p = read().expect("/proc/self is readable on Linux");
        assert!(p.resident_bytes > 0 && p.open_fds > 0, "{p:?}");
    }
}
