//! Peak resident memory, of the process and of a phase of it (Linux; 0 elsewhere).
//!
//! The process's peak is the kernel's high-water mark (VmHWM). A phase's peak comes from a
//! thread that samples the resident set every 50 ms: the kernel's mark could be reset per
//! phase (`/proc/self/clear_refs`), but that would also lower what `time` and `getrusage`
//! report for the whole run. Each phase here holds its memory for seconds, far longer than
//! a sampling period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

/// The largest resident set seen since the last [`start_phase`], in KiB.
static PHASE_PEAK: AtomicU64 = AtomicU64::new(0);

fn kib_of(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Peak resident set size of the process so far, in MiB.
pub fn peak_rss_mb() -> f64 {
    kib_of("VmHWM:") as f64 / 1024.0
}

/// Resident set size now, in MiB.
pub fn rss_mb() -> f64 {
    kib_of("VmRSS:") as f64 / 1024.0
}

/// Starts a phase whose peak [`phase_peak_mb`] reads (and the sampler, on first use).
///
/// Nothing is handed back to the kernel between phases. Trimming malloc's free pages here
/// (`malloc_trim`) lowered the resident set at a phase's start, but not a step's peak, and
/// each phase then faulted its memory in and zeroed it anew: 3 default steps took 7.6 M page
/// faults and 114 s of system time with it, 3.9 M and 78 s without, and ran 11% faster
/// (BENCHMARKS.md, "Self-play: one default step", eighteenth session). So a phase's peak
/// includes memory an earlier phase freed and malloc keeps for the next.
pub fn start_phase() {
    static SAMPLER: Once = Once::new();
    PHASE_PEAK.store(kib_of("VmRSS:"), Ordering::Relaxed);
    SAMPLER.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("azr-rss".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(50));
                PHASE_PEAK.fetch_max(kib_of("VmRSS:"), Ordering::Relaxed);
            });
        // Without the thread a phase's peak is its resident set at the start and the end.
        drop(spawned);
    });
}

/// Peak resident set size since the last [`start_phase`], in MiB.
pub fn phase_peak_mb() -> f64 {
    let now = kib_of("VmRSS:");
    PHASE_PEAK.fetch_max(now, Ordering::Relaxed).max(now) as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_peak_sees_memory_held_inside_it_and_forgets_it_after() {
        if kib_of("VmRSS:") == 0 {
            eprintln!("skipped: no /proc/self/status here");
            return;
        }
        start_phase();
        let before = phase_peak_mb();
        // 256 MiB touched and held for a few sampling periods, then freed.
        let big = vec![1u8; 256 << 20];
        std::hint::black_box(&big);
        std::thread::sleep(Duration::from_millis(300));
        drop(big);
        let held = phase_peak_mb();
        assert!(
            held > before + 200.0,
            "phase peak {held} MiB missed 256 MiB (from {before})"
        );
        assert!(
            peak_rss_mb() >= held - 1.0,
            "the process peak is below a phase's"
        );
        start_phase();
        let after = phase_peak_mb();
        assert!(
            after < held - 128.0,
            "a new phase's peak {after} MiB still holds the freed 256 MiB ({held})"
        );
    }
}
