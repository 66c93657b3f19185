//! What the benchmarks read about processes: CPU time, memory, percentiles; and RTP time
//! unwrapped ([`RtpClock`]).

/// Clock ticks per second of `/proc/*/stat` times on Linux.
pub const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of process `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of process `pid`, in KiB.
pub fn peak_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// The `q` quantile (0..=1) of `values` by nearest rank; NaN when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Pins process `pid` (every thread it has now, and so those it starts later) to `cpus`
/// (`taskset` syntax, e.g. `"0"`). False if `taskset` is missing or refused.
pub fn pin(pid: u32, cpus: &str) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A benchmark's numeric flags (`--name N`, in any order), each starting at its default. An
/// unknown flag, or a value that is not a whole number, ends the run with a usage line (exit
/// code 2).
pub fn numeric_flags<const N: usize>(program: &str, defaults: [(&str, u64); N]) -> [u64; N] {
    parse_flags(std::env::args().skip(1), defaults).unwrap_or_else(|usage| {
        eprintln!("usage: {program} {usage}");
        std::process::exit(2)
    })
}

/// [`numeric_flags`] of `args`; the usage line when they do not read.
fn parse_flags<const N: usize>(
    mut args: impl Iterator<Item = String>,
    defaults: [(&str, u64); N],
) -> Result<[u64; N], String> {
    let mut values = defaults.map(|(_, default)| default);
    while let Some(flag) = args.next() {
        let known = defaults.iter().position(|(name, _)| *name == flag);
        match (known, args.next().and_then(|v| v.parse().ok())) {
            (Some(i), Some(value)) => values[i] = value,
            _ => {
                let usage: Vec<String> = defaults
                    .iter()
                    .map(|(name, default)| format!("[{name} N ({default})]"))
                    .collect();
                return Err(usage.join(" "));
            }
        }
    }
    Ok(values)
}

/// 90 kHz RTP timestamps, unwrapped past their 32-bit wrap, from the first one seen.
#[derive(Debug, Default)]
pub struct RtpClock {
    first: Option<u32>,
    last: u32,
    wraps: i64,
}

impl RtpClock {
    /// Ticks from the first timestamp.
    pub fn ticks(&mut self, ts: u32) -> i64 {
        let first = *self.first.get_or_insert(ts);
        if ts < self.last && self.last - ts > u32::MAX / 2 {
            self.wraps += 1;
        }
        self.last = ts;
        (self.wraps << 32) + i64::from(ts) - i64::from(first)
    }

    /// Seconds from the first timestamp.
    pub fn seconds(&mut self, ts: u32) -> f64 {
        self.ticks(ts) as f64 / 90_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_take_their_defaults_and_refuse_what_does_not_read() {
        let args = |a: &[&str]| {
            a.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        let defaults = [("--rows", 5000), ("--tasks", 8)];
        assert_eq!(parse_flags(args(&[]), defaults), Ok([5000, 8]));
        assert_eq!(
            parse_flags(args(&["--tasks", "2"]), defaults),
            Ok([5000, 2])
        );
        let usage = "[--rows N (5000)] [--tasks N (8)]".to_string();
        for bad in [&["--rows"][..], &["--rows", "x"], &["--other", "1"], &["2"]] {
            assert_eq!(
                parse_flags(args(bad), defaults),
                Err(usage.clone()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rtp_time_unwraps_past_its_32_bits() {
        let mut clock = RtpClock::default();
        assert_eq!(clock.ticks(u32::MAX - 9), 0);
        assert_eq!(clock.ticks(u32::MAX), 9);
        assert_eq!(clock.ticks(80), 90, "past the wrap");
        assert_eq!(clock.seconds(90_000 - 10), 1.0, "a second past the first");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(rss_kib(pid).is_some_and(|k| k > 0));
        assert!(cpu_ticks(u32::MAX).is_none());
    }
}
