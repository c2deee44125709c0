//! Latency histograms of the group commit, kept as plain counters: one
//! count per fixed bucket and a sum, recorded on the log's own core (no
//! atomics), read whole by whoever reports them (the server's Prometheus
//! metrics).
//!
//! The buckets are fixed (not configurable) so that every log's histogram
//! can be summed and compared: from 25 us, the fastest write-through write
//! of a page on NVMe, to 2.5 s, past which a commit is an outage rather
//! than a latency; everything slower lands in the last, unbounded bucket.

/// Upper bounds of the buckets, in microseconds (a value lands in the first
/// bucket whose bound is at least the value; above the last, in the
/// overflow bucket).
pub const LATENCY_BUCKET_BOUNDS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// Buckets: one per bound, and the overflow.
pub const LATENCY_BUCKETS: usize = LATENCY_BUCKET_BOUNDS_US.len() + 1;

const _: () = {
    let mut i = 1;
    while i < LATENCY_BUCKET_BOUNDS_US.len() {
        assert!(LATENCY_BUCKET_BOUNDS_US[i - 1] < LATENCY_BUCKET_BOUNDS_US[i]);
        i += 1;
    }
};

/// A histogram of durations in microseconds over
/// [`LATENCY_BUCKET_BOUNDS_US`]. `counts` are per bucket, not cumulative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyHistogram {
    /// Values per bucket; the last is the overflow bucket.
    pub counts: [u64; LATENCY_BUCKETS],
    /// The sum of every value recorded, in microseconds.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Counts one duration of `us` microseconds.
    pub fn record(&mut self, us: u64) {
        let bucket = LATENCY_BUCKET_BOUNDS_US.partition_point(|&bound| bound < us);
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The group commit's latencies since the log was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitLatencies {
    /// Each flush round's writes (one value per round that wrote data:
    /// its count is `CommitStats::writes`).
    pub write: LatencyHistogram,
    /// Each durable append's wait, from its enqueue until it was durable
    /// (`always` only: one value per `CommitStats::durable_waits`).
    pub durable_wait: LatencyHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lands_in_the_first_bucket_whose_bound_holds_it() {
        let mut h = LatencyHistogram::default();
        for us in [0, 25, 26, 2_500_000, 2_500_001, u64::MAX] {
            h.record(us);
        }
        assert_eq!(h.counts[0], 2, "0 and 25 are at most 25");
        assert_eq!(h.counts[1], 1, "26 is in (25, 50]");
        assert_eq!(h.counts[LATENCY_BUCKETS - 2], 1, "2.5 s is the last bound");
        assert_eq!(h.counts[LATENCY_BUCKETS - 1], 2, "above it: overflow");
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum_us, u64::MAX, "the sum saturates");
    }
}
