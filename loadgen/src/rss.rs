//! The server's memory, from `/proc/PID/status`: VmRSS at the start, its
//! peak over 100 ms samples during the run, at the end, and the kernel's own
//! high-water mark VmHWM (which also catches peaks between samples).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RssReport {
    pub pid: u32,
    pub start_kb: u64,
    pub peak_kb: u64,
    pub end_kb: u64,
    pub hwm_kb: u64,
}

/// Samples a process every `SAMPLE_INTERVAL` until `finish`.
#[derive(Debug)]
pub struct Sampler {
    pid: u32,
    start: Sample,
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl Sampler {
    /// Takes the start sample (failing if the process cannot be read) and
    /// starts sampling.
    pub fn start(pid: u32) -> Result<Sampler, String> {
        let start = read(pid)?;
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
            stop,
            task,
        })
    }

    /// Takes the end sample and stops sampling.
    pub async fn finish(self) -> Result<RssReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.task.await.unwrap_or(self.start.rss_kb);
        let end = read(self.pid)?;
        Ok(RssReport {
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

    #[tokio::test]
    async fn samples_this_process() {
        let s = Sampler::start(std::process::id()).unwrap();
        tokio::time::sleep(SAMPLE_INTERVAL * 2).await;
        let r = s.finish().await.unwrap();
        assert!(r.start_kb > 0 && r.end_kb > 0);
        assert!(r.peak_kb >= r.start_kb.max(r.end_kb));
        assert!(r.hwm_kb >= r.end_kb);
        assert!(read(u32::MAX).is_err());
    }
}
