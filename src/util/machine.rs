//! Readings of the machine that figures are printed with: which CPU, how many cores, which OS,
//! and the process's peak memory. A benchmark figure means little without its machine named, and
//! evaluation and training reports carry the peak memory so a user can size the next run.

use serde::Serialize;

/// The machine a figure was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub os: String,
}

/// Describes this machine.
pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    }
}

/// Peak resident memory of this process, in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory the kernel says can be allocated without swapping (`MemAvailable` in /proc/meminfo,
/// Linux), in bytes; `None` elsewhere. `VGG_MEM_AVAILABLE` (bytes) replaces the reading, for
/// tests and for a share of a machine smaller than what it has free.
pub fn available_memory_bytes() -> Option<u64> {
    if let Some(v) = std::env::var("VGG_MEM_AVAILABLE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(v);
    }
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
