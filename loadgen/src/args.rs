//! Command-line flags and their checks.
//!
//! Every knob has a `*_max`: a typo such as `--connections 100000` is
//! refused before it opens a socket. `--duration` and `--count` are
//! exclusive and one of them is required; `--target nats` only runs the
//! `publish` scenario.

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use serde::Serialize;

pub const CONNECTIONS_MAX: u32 = 1024;
pub const BATCH_EVENTS_MAX: u32 = 65_536;
pub const IN_FLIGHT_MAX: u32 = 4096;
pub const CONSUMERS_MAX: u32 = 64;
pub const THREADS_MAX: u32 = 256;
/// Data bytes per event at most: a batch of one must fit a frame.
pub const EVENT_BYTES_MAX: u32 = 8 << 20;
/// e2e and pipeline carry the send time in the first 8 data bytes.
pub const STAMP_BYTES: u32 = 8;
pub const RATE_EVENTS_PER_SEC_MAX: f64 = 100_000_000.0;
pub const DURATION_SECS_MAX: f64 = 24.0 * 3600.0;
pub const WARMUP_SECS_MAX: f64 = 3600.0;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Hadron's macro benchmark: drives real clients and reports throughput and latency"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Publish events as fast as acknowledged (or at --rate); latency is
    /// publish to ack.
    Publish(Args),
    /// Publish while a consumer group consumes; latency is publish to
    /// delivery.
    E2e(Args),
    /// Run the five-stage service-creation DAG; latency is publish to the
    /// `sync` stage.
    Pipeline(Args),
}

impl Scenario {
    pub fn args(&self) -> &Args {
        match self {
            Scenario::Publish(a) | Scenario::E2e(a) | Scenario::Pipeline(a) => a,
        }
    }

    pub fn args_mut(&mut self) -> &mut Args {
        match self {
            Scenario::Publish(a) | Scenario::E2e(a) | Scenario::Pipeline(a) => a,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Publish(_) => "publish",
            Scenario::E2e(_) => "e2e",
            Scenario::Pipeline(_) => "pipeline",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Hadron,
    Nats,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Hadron => "hadron",
            Target::Nats => "nats",
        }
    }
}

#[derive(clap::Args, Debug, Clone, PartialEq, Serialize)]
#[command(group(ArgGroup::new("stop").required(true).args(["duration", "count"])))]
pub struct Args {
    /// Server address (host:port; Hadron defaults to port 7000, NATS to
    /// 4222); `https://host:port` for a Hadron server with `tls:`. For a
    /// Hadron cluster, its nodes separated by commas
    /// (host:port,host:port): the client uses the first that answers and
    /// follows each partition's leader.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub url: String,
    /// With an https:// --url: the PEM certificate of the CA that signed
    /// the server's (default: the system's trusted CAs).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// With an https:// --url: a PEM client certificate for a server that
    /// requires one; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<std::path::PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// Client connections (each a separate client with its own sockets).
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Events per publish request.
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Outstanding publish requests per connection.
    #[arg(long, default_value_t = 1)]
    pub in_flight: u32,
    /// Data bytes per event.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Target rate in events per second over all connections; unbounded
    /// when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Expect a durable (fsync: always) server; the run fails if the
    /// server's policy disagrees. Unchecked when absent.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set, value_parser = clap::value_parser!(bool))]
    pub durable: Option<bool>,
    /// Seconds to measure (after the warmup).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Events to measure (after the warmup).
    #[arg(long)]
    pub count: Option<u64>,
    /// The system under test.
    #[arg(long, value_enum, default_value_t = Target::Hadron)]
    pub target: Target,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
    /// Stream to publish to (created when the server lacks it).
    #[arg(long, default_value = hadron::DEFAULT_STREAM)]
    pub stream: String,
    /// Report this process's VmRSS/VmHWM (the server's pid).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds run before measuring; excluded from every figure.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// e2e: members of the consumer group; pipeline: handlers per stage.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Seconds to wait after publishing for deliveries or executions still
    /// under way (e2e, pipeline).
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Threads of loadgen's own runtime. Default: half the CPUs (at least
    /// one), so that a server on the same machine keeps the other half.
    #[arg(long)]
    pub threads: Option<u32>,
}

impl Args {
    /// The runtime's thread count: `--threads`, else half the CPUs.
    pub fn threads(&self) -> usize {
        match self.threads {
            Some(n) => n as usize,
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .max(1),
        }
    }
}

impl Scenario {
    /// Checks what clap cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), String> {
        let a = self.args();
        let range = |name: &str, v: u32, max: u32| {
            if v == 0 || v > max {
                Err(format!("--{name} must be 1..={max}, not {v}"))
            } else {
                Ok(())
            }
        };
        range("connections", a.connections, CONNECTIONS_MAX)?;
        range("batch", a.batch, BATCH_EVENTS_MAX)?;
        range("in-flight", a.in_flight, IN_FLIGHT_MAX)?;
        range("consumers", a.consumers, CONSUMERS_MAX)?;
        if let Some(t) = a.threads {
            range("threads", t, THREADS_MAX)?;
        }
        if a.size > EVENT_BYTES_MAX {
            return Err(format!(
                "--size must be at most {EVENT_BYTES_MAX} bytes, not {}",
                a.size
            ));
        }
        if !matches!(self, Scenario::Publish(_)) && a.size < STAMP_BYTES {
            return Err(format!(
                "{} needs --size of at least {STAMP_BYTES} bytes: events carry their send time",
                self.name()
            ));
        }
        if let Some(rate) = a.rate
            && !(rate > 0.0 && rate <= RATE_EVENTS_PER_SEC_MAX)
        {
            return Err(format!(
                "--rate must be above 0 and at most {RATE_EVENTS_PER_SEC_MAX}, not {rate}"
            ));
        }
        if let Some(d) = a.duration
            && !(d > 0.0 && d <= DURATION_SECS_MAX)
        {
            return Err(format!(
                "--duration must be above 0 and at most {DURATION_SECS_MAX} s, not {d}"
            ));
        }
        if a.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if !(a.warmup >= 0.0 && a.warmup <= WARMUP_SECS_MAX) {
            return Err(format!(
                "--warmup must be 0..={WARMUP_SECS_MAX} s, not {}",
                a.warmup
            ));
        }
        if !(a.drain_timeout >= 0.0 && a.drain_timeout <= DURATION_SECS_MAX) {
            return Err(format!(
                "--drain-timeout must be 0..={DURATION_SECS_MAX} s, not {}",
                a.drain_timeout
            ));
        }
        if a.target == Target::Nats && !matches!(self, Scenario::Publish(_)) {
            return Err(format!(
                "scenario {} is not supported with --target nats (only publish is)",
                self.name()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Scenario, clap::Error> {
        Cli::try_parse_from(line.split_whitespace()).map(|c| c.scenario)
    }

    #[test]
    fn defaults_and_flags() {
        let s = parse("loadgen publish --duration 3").unwrap();
        let a = s.args();
        assert_eq!(s.name(), "publish");
        assert_eq!(a.url, "127.0.0.1:7000");
        assert_eq!(
            (a.connections, a.batch, a.in_flight, a.size),
            (1, 1, 1, 256)
        );
        assert_eq!(a.durable, None);
        assert_eq!(a.stream, "events");
        assert_eq!(a.warmup, 1.0);
        assert_eq!(a.target, Target::Hadron);
        assert!(!a.json);
        assert!(s.validate().is_ok());

        let s = parse(
            "loadgen e2e --url 127.0.0.1:17300 --connections 4 --batch 64 --in-flight 2 \
             --size 1024 --rate 5000 --durable false --count 100 --target hadron --json \
             --stream bench --server-pid 42 --warmup 0.5",
        )
        .unwrap();
        let a = s.args();
        assert_eq!(s.name(), "e2e");
        assert_eq!(
            (a.connections, a.batch, a.in_flight, a.size),
            (4, 64, 2, 1024)
        );
        assert_eq!(a.rate, Some(5000.0));
        assert_eq!(a.durable, Some(false));
        assert_eq!((a.count, a.duration), (Some(100), None));
        assert_eq!(a.server_pid, Some(42));
        assert_eq!(a.stream, "bench");
        assert!(a.json);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn duration_and_count_are_exclusive_and_one_is_required() {
        assert!(parse("loadgen publish --duration 3 --count 10").is_err());
        assert!(parse("loadgen publish").is_err());
        assert!(parse("loadgen publish --count 10").is_ok());
    }

    #[test]
    fn durable_takes_true_or_false() {
        assert_eq!(
            parse("loadgen publish --count 1 --durable true")
                .unwrap()
                .args()
                .durable,
            Some(true)
        );
        assert!(parse("loadgen publish --count 1 --durable").is_err());
        assert!(parse("loadgen publish --count 1 --durable maybe").is_err());
    }

    #[test]
    fn ranges_and_combinations_are_checked() {
        let bad = [
            "loadgen publish --count 1 --connections 0",
            "loadgen publish --count 1 --batch 100000",
            "loadgen publish --count 1 --in-flight 0",
            "loadgen publish --count 1 --rate 0",
            "loadgen publish --count 1 --rate=-5",
            "loadgen publish --count 0",
            "loadgen publish --duration 0",
            "loadgen publish --count 1 --warmup=-1",
            "loadgen e2e --count 1 --size 4",
            "loadgen e2e --count 1 --target nats",
            "loadgen pipeline --count 1 --target nats",
        ];
        for line in bad {
            let s = parse(line).unwrap();
            assert!(s.validate().is_err(), "{line} should be refused");
        }
        let s = parse("loadgen e2e --count 1 --target nats").unwrap();
        assert!(s.validate().unwrap_err().contains("not supported"));
        assert!(
            parse("loadgen publish --count 1 --target nats --url 127.0.0.1:4222 --size 0")
                .unwrap()
                .validate()
                .is_ok()
        );
    }
}
