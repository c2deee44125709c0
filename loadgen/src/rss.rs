//! The server's memory, from `/proc/PID/status`: VmRSS at the start, its
//! peak over 100 ms samples during the run, at the end, and the kernel's own
//! high-water mark VmHWM (which also catches peaks between samples).
//!
//! And the CPU the server and loadgen itself used over the run, from
//! `/proc/PID/stat` (user plus system time of every thread, io_uring's
//! `iou-wrk` workers included; kernel workers outside the process are not):
//! on a machine they share, this says which side a figure is bounded by.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// VmRSS and VmHWM in kB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// Reads `VmRSS:` and `VmHWM:` (kB) out of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<Sample> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut words = rest.split_whitespace();
            let value = words.next()?.parse::<u64>().ok()?;
            match words.next() {
                Some("kB") | None => Some(value),
                Some(_) => None,
            }
        })
    };
    Some(Sample {
        rss_kb: field("VmRSS")?,
        hwm_kb: field("VmHWM")?,
    })
}

pub fn read(pid: u32) -> Result<Sample, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {path} (is --server-pid right?): {e}"))?;
    parse_status(&text).ok_or_else(|| format!("{path} has no VmRSS/VmHWM (a kernel thread?)"))
}

/// User plus system CPU time of a process so far, in clock ticks, from a
/// `/proc/PID/stat` text (fields 14 and 15; the command name, field 2, may
/// hold spaces and parentheses, so fields are counted from its last `)`).
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat_ticks(&std::fs::read_to_string(path).ok()?)
}

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on
/// every Linux architecture loadgen builds for).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time of both processes at one moment.
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    at: Instant,
    server: Option<u64>,
    loadgen: Option<u64>,
}

impl CpuMark {
    fn now(pid: u32) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            server: cpu_ticks(Some(pid)),
            loadgen: cpu_ticks(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RssReport {
    pub pid: u32,
    pub start_kb: u64,
    pub peak_kb: u64,
    pub end_kb: u64,
    pub hwm_kb: u64,
    /// The server's CPU use averaged over the whole run (warmup and drain
    /// included): CPU seconds per second, so 1.0 is one core busy.
    pub server_cpu_cores: Option<f64>,
    /// The same for loadgen itself.
    pub loadgen_cpu_cores: Option<f64>,
}

/// Samples a process every `SAMPLE_INTERVAL` until `finish`.
#[derive(Debug)]
pub struct Sampler {
    pid: u32,
    start: Sample,
    cpu_start: CpuMark,
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl Sampler {
    /// Takes the start sample (failing if the process cannot be read) and
    /// starts sampling.
    pub fn start(pid: u32) -> Result<Sampler, String> {
        let start = read(pid)?;
        let cpu_start = CpuMark::now(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut peak = start.rss_kb;
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(s) = read(pid) {
                    peak = peak.max(s.rss_kb);
                }
            }
            peak
        });
        Ok(Sampler {
            pid,
            start,
            cpu_start,
            stop,
            task,
        })
    }

    /// Takes the end sample and stops sampling.
    pub async fn finish(self) -> Result<RssReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.task.await.unwrap_or(self.start.rss_kb);
        let end = read(self.pid)?;
        let cpu_end = CpuMark::now(self.pid);
        let secs = cpu_end
            .at
            .saturating_duration_since(self.cpu_start.at)
            .as_secs_f64()
            .max(1e-3);
        let cores = |a: Option<u64>, b: Option<u64>| {
            Some(b?.saturating_sub(a?) as f64 / TICKS_PER_SEC / secs)
        };
        Ok(RssReport {
            server_cpu_cores: cores(self.cpu_start.server, cpu_end.server),
            loadgen_cpu_cores: cores(self.cpu_start.loadgen, cpu_end.loadgen),
            pid: self.pid,
            start_kb: self.start.rss_kb,
            peak_kb: peak.max(end.rss_kb),
            end_kb: end.rss_kb,
            hwm_kb: end.hwm_kb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\thadron\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t4242\nVmPeak:\t 2170000 kB\nVmSize:\t 2169000 kB\nVmLck:\t       0 kB\n\
        VmHWM:\t  183212 kB\nVmRSS:\t  150004 kB\nRssAnon:\t  120000 kB\n\
        VmRSSx:\t 1 kB\nThreads:\t5\n";

    #[test]
    fn parses_rss_and_hwm() {
        assert_eq!(
            parse_status(STATUS),
            Some(Sample {
                rss_kb: 150_004,
                hwm_kb: 183_212
            })
        );
    }

    #[test]
    fn kernel_threads_and_garbage_have_no_sample() {
        assert_eq!(parse_status("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(parse_status("VmRSS:\tlots kB\nVmHWM:\t1 kB\n"), None);
        assert_eq!(parse_status("VmRSS:\t1 MB\nVmHWM:\t1 kB\n"), None);
    }

    #[test]
    fn parses_cpu_ticks_past_odd_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    731 269 0 0 20 0 5 0 123 456 789";
        assert_eq!(parse_stat_ticks(stat), Some(1000));
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[tokio::test]
    async fn samples_this_process() {
        let s = Sampler::start(std::process::id()).unwrap();
        tokio::time::sleep(SAMPLE_INTERVAL * 2).await;
        let r = s.finish().await.unwrap();
        assert!(r.start_kb > 0 && r.end_kb > 0);
        assert!(r.peak_kb >= r.start_kb.max(r.end_kb));
        assert!(r.hwm_kb >= r.end_kb);
        // Both sides are this process here.
        assert!(r.server_cpu_cores.is_some() && r.loadgen_cpu_cores.is_some());
        assert!(read(u32::MAX).is_err());
    }
}
