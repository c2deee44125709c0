//! Helpers for the end-to-end tests in `tests/tests/`, which start the real
//! `hadron` binary on loopback and drive it with the client, the CLI and raw
//! protocol bytes.
//!
//! - [`hadron_bin`] finds the binary: the one Cargo built for the test
//!   (the files in `tests/tests/` are integration tests of `hadron-server`,
//!   see server/Cargo.toml), or `HADRON_BIN`.
//! - [`Server`] owns one server process: a fresh data dir, a free loopback
//!   port range, SIGTERM (then SIGKILL) on drop, restart on the same data.
//! - [`RawConn`] speaks frames over a plain socket, for bad input and for
//!   members that misbehave on purpose (never ack, vanish mid-delivery).
//! - [`run_cli`] runs a CLI command with a deadline.
//!
//! Invariants: nothing here connects outside 127.0.0.0/8, and every wait is
//! bounded (a deadline, a tokio timeout, or a killed child), so no test can
//! hang.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed set-up step must fail the test at once, with its message"
)]

pub mod cluster;
#[cfg(test)]
mod e2e_targets;
pub mod moves;
pub mod pki;
pub mod proxy;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hadron::{Client, ClientOptions, Event};
use hadron_wire::{ErrorCode, LENGTH_PREFIX_BYTES, Limits, Message};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a server may take to accept connections after being started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to start a server on a fresh port range when a start fails.
const START_ATTEMPTS_MAX: u32 = 5;
/// The first wait before starting again on the same fixed ports; it
/// doubles with each attempt.
const START_RETRY_WAIT: Duration = Duration::from_millis(200);
/// Default wait for one raw frame.
pub const RAW_RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports are drawn from this range (below the usual ephemeral range).
const PORT_LOW: u16 = 20_000;
const PORT_HIGH: u16 = 32_000;

/// The environment variable that names the `hadron` binary to test,
/// overriding the one Cargo built.
pub const BIN_ENV: &str = "HADRON_BIN";

/// The `hadron` binary the tests start, in this order:
///
/// 1. `HADRON_BIN` ([`BIN_ENV`]), when set.
/// 2. `CARGO_BIN_EXE_hadron`, which Cargo sets when it runs an integration
///    test of `hadron-server`. The files in `tests/tests/` are declared as
///    such in server/Cargo.toml (`[[test]]`, with their path here), so
///    `cargo test` builds the binary before them and it is never stale.
///    (Cargo sets the variable at run time since 1.94, below this
///    workspace's `rust-version`; before, only `env!` saw it.)
/// 3. `hadron` in the profile directory above the running executable
///    (`<target>/<profile>/deps/<test>` run by hand,
///    `<target>/<profile>/examples/<example>`), as the last
///    `cargo build -p hadron-server` of that profile left it.
pub fn hadron_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os(BIN_ENV) {
            return PathBuf::from(bin);
        }
        if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_hadron") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the running executable's path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("the executable is in <target>/<profile>/<deps or examples>")
            .join("hadron");
        assert!(
            bin.exists(),
            "no hadron binary at {}: build it (cargo build -p hadron-server, with the same \
             profile) or set {BIN_ENV}",
            bin.display()
        );
        bin
    })
}

/// A pseudo-random number for port picking (no dependency needed).
fn random_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The TCP sockets (`ss -tanp`, with their processes) whose local address
/// `log` names, for a failed start's report: a server that could not
/// listen names the address, so this shows whoever holds it.
fn tcp_sockets_named_in(log: &str) -> String {
    let out = match Command::new("ss").arg("-tanp").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => return format!("(ss -tanp could not run: {e})"),
    };
    out.lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(3)
                .is_some_and(|local| log.contains(local))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a listener could bind 127.0.0.1:`port` now, as the server's
/// do: a plain socket (no SO_REUSEADDR, no SO_REUSEPORT) bound to it.
/// std's listeners set SO_REUSEADDR and bind over a socket left in
/// TIME_WAIT on the port, but the server's (glommio's) set only
/// SO_REUSEPORT and do not: a port a proxy of an earlier test closed
/// connections on is taken for up to a minute. CI once failed a cluster
/// node's five starts on such a port (its TIME_WAIT sockets listed).
pub fn port_bindable(port: u16) -> bool {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, socket};
    let Ok(fd) = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let [a, b, c, d] = Ipv4Addr::LOCALHOST.octets();
    bind(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, port)).is_ok()
}

/// A base port `p` such that `p ..= p + 1 + shards` are all bindable ([`port_bindable`]) on
/// 127.0.0.1 right now. Ports handed out in this process do not repeat:
/// a range is handed out at most once (a port handed out but not yet bound,
/// say a cluster node's peer port before its server starts, passes the
/// bind check, so the check alone cannot tell).
pub fn free_port_range(shards: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static HANDED: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let width = shards + 2;
    let span = PORT_HIGH - PORT_LOW;
    let _ = NEXT.compare_exchange(
        0,
        PORT_LOW + (random_u64() % u64::from(span)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..4_000 {
        let mut base = NEXT.fetch_add(width + 3, Ordering::SeqCst);
        if base < PORT_LOW || base + width >= PORT_HIGH {
            // Wrap around; ranges handed out are skipped below.
            base = PORT_LOW;
            NEXT.store(base + width + 3, Ordering::SeqCst);
        }
        let ports = base..=base + 1 + shards;
        let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
        if ports.clone().any(|p| handed.contains(&p)) {
            continue;
        }
        let all_free = ports.clone().all(port_bindable);
        if all_free {
            handed.extend(ports);
            return base;
        }
    }
    panic!("no free loopback port range of {width} ports found");
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--shards`.
    pub shards: u16,
    /// `--ack-timeout-ms`, when set.
    pub ack_timeout_ms: Option<u64>,
    /// The handshake token the server requires (passed as `HADRON_TOKEN`);
    /// [`Server::client`] presents it.
    pub token: Option<String>,
    /// A config file's text (`--config`), when set: a `ServerConfig`
    /// document, for settings without a flag (say `segmentBytes`).
    pub config: Option<String>,
    /// Start without `--data-dir`, in the temporary directory, so that the
    /// default `./hadron-data` (a relative path) is used, as the README's
    /// first command does.
    pub default_data_dir: bool,
    /// Listen on 0.0.0.0 (all addresses) instead of 127.0.0.1; tests still
    /// connect through 127.0.0.1.
    pub listen_any: bool,
    /// More arguments for `hadron server`.
    pub args: Vec<String>,
    /// More environment variables for the server (say `HADRON_FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// The client port, when the test chose it (a cluster's nodes name
    /// each other's ports in their configs): kept across restarts.
    pub port: Option<u16>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            shards: 1,
            ack_timeout_ms: None,
            token: None,
            config: None,
            default_data_dir: false,
            listen_any: false,
            args: Vec::new(),
            env: Vec::new(),
            port: None,
        }
    }
}

/// One `hadron server` process with its own data dir and ports. Dropping it
/// stops the process (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Server {
    options: ServerOptions,
    data: tempfile::TempDir,
    logs: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Server {
    /// Starts a server with the defaults (1 shard, stream `events`).
    pub fn start() -> Server {
        Server::start_with(ServerOptions::default())
    }

    /// A fresh data dir, log dir and port range; no process yet.
    fn unstarted(options: ServerOptions) -> Server {
        Server {
            data: tempfile::Builder::new()
                .prefix("hadron-e2e-data")
                .tempdir()
                .unwrap(),
            logs: tempfile::Builder::new()
                .prefix("hadron-e2e-logs")
                .tempdir()
                .unwrap(),
            port: options
                .port
                .unwrap_or_else(|| free_port_range(options.shards)),
            options,
            child: None,
            starts: 0,
        }
    }

    /// Starts a server and waits until every port accepts connections.
    pub fn start_with(options: ServerOptions) -> Server {
        let mut server = Server::unstarted(options);
        server.launch();
        server
    }

    /// Starts a server that is expected to fail: waits (up to `timeout`) for
    /// the process to exit and returns its status and log. Panics when it
    /// is still running at the deadline.
    pub fn start_expecting_exit(options: ServerOptions, timeout: Duration) -> (ExitStatus, String) {
        let mut server = Server::unstarted(options);
        let child = server.spawn();
        server.child = Some(child);
        match server.wait_exit(timeout) {
            Some(status) => (status, server.log()),
            None => panic!(
                "the server still runs {timeout:?} after its start; log:\n{}",
                server.log()
            ),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The client address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of shard `shard`.
    pub fn shard_port(&self, shard: u16) -> u16 {
        self.port + 1 + shard
    }

    /// The number of shards.
    pub fn shards(&self) -> u16 {
        self.options.shards
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        if self.options.default_data_dir {
            self.data.path().join("hadron-data")
        } else {
            self.data.path().to_path_buf()
        }
    }

    /// A client for this server with default options (and the server's
    /// token, if it has one).
    pub fn client(&self) -> Client {
        self.client_with(ClientOptions {
            token: self.options.token.clone(),
            ..ClientOptions::default()
        })
    }

    /// A client for this server.
    pub fn client_with(&self, options: ClientOptions) -> Client {
        Client::new(&self.addr(), options).unwrap()
    }

    /// The server's peak resident memory (`VmHWM`) in bytes, while it runs.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        Some(memory_kib(self.pid()?).1 * 1024)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Whether the process runs, without reaping it (for `&self`
    /// callers): started, not stopped by the harness, and not a zombie.
    pub fn is_alive(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return false;
        };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state is the field after the parenthesised name.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    /// The server's log (stderr) of every start so far.
    pub fn log(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.starts {
            let path = self.logs.path().join(format!("server-{i}.log"));
            all.push_str(&format!("--- start {i} ---\n"));
            all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        all
    }

    fn spawn(&mut self) -> Child {
        self.starts += 1;
        let log_path = self.logs.path().join(format!("server-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(hadron_bin());
        cmd.arg("server");
        if self.options.default_data_dir {
            cmd.current_dir(self.data.path());
        } else {
            cmd.arg("--data-dir").arg(self.data.path());
        }
        let listen = if self.options.listen_any {
            format!("0.0.0.0:{}", self.port)
        } else {
            self.addr()
        };
        cmd.arg("--listen")
            .arg(listen)
            .arg("--shards")
            .arg(self.options.shards.to_string());
        if let Some(ms) = self.options.ack_timeout_ms {
            cmd.arg("--ack-timeout-ms").arg(ms.to_string());
        }
        if let Some(config) = &self.options.config {
            let path = self.logs.path().join("config.yaml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        match &self.options.token {
            Some(token) => cmd.env("HADRON_TOKEN", token),
            None => cmd.env_remove("HADRON_TOKEN"),
        };
        cmd.args(&self.options.args);
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd.spawn().unwrap()
    }

    /// Starts the process on the current port range, moving to a fresh
    /// range when the start fails (a port taken meanwhile by someone else).
    fn launch(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        for attempt in 1..=START_ATTEMPTS_MAX {
            let child = self.spawn();
            self.child = Some(child);
            if self.wait_ready() {
                return;
            }
            self.kill_now();
            if attempt == START_ATTEMPTS_MAX {
                break;
            }
            if self.options.port.is_none() {
                self.port = free_port_range(self.options.shards);
            } else {
                // The ports are fixed (a cluster node's are named in the
                // other nodes' configs): whoever holds one may let go, so
                // wait longer each time (0.2 s, then 0.4, 0.8, 1.6).
                std::thread::sleep(START_RETRY_WAIT * 2u32.pow(attempt - 1));
            }
        }
        let log = self.log();
        panic!(
            "the server did not start in {START_ATTEMPTS_MAX} attempts; log:\n{log}\n\
             TCP sockets on the addresses it names (ss -tanp):\n{}",
            tcp_sockets_named_in(&log)
        );
    }

    /// Waits until this start's log says every shard is ready (each
    /// reports only once it listens on its ports, so a port that accepts
    /// because someone else holds it is never taken for ours), then checks
    /// that the client port and every shard port accept a connection;
    /// false when the process exits or the deadline passes.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        let log_path = self.logs.path().join(format!("server-{}.log", self.starts));
        let ready_line = format!("all {} shards ready", self.options.shards);
        loop {
            if !self.is_running() {
                return false;
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains(&ready_line) {
                break;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        std::iter::once(self.port)
            .chain((0..self.options.shards).map(|s| self.shard_port(s)))
            .all(|port| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
    }

    /// SIGTERM, then waits for the exit (SIGKILL after a timeout). Returns
    /// the exit status; panics when the server had to be killed.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is not running");
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the server did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// SIGKILL: the process dies at once, without flushing anything.
    pub fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data dir expecting it to
    /// refuse to start: waits (up to the start timeout) for the process to
    /// exit, and returns its exit status and this start's log. Panics if
    /// it is still running then.
    pub fn restart_refused(&mut self) -> (std::process::ExitStatus, String) {
        assert!(self.child.is_none(), "the server is already running");
        let mut child = self.spawn();
        let pid = child.id();
        let path = self.logs.path().join(format!("server-{}.log", self.starts));
        // The exit, as a blocking wait on its own thread reports it.
        let (exited, exit) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = exited.send(child.wait());
        });
        match exit.recv_timeout(START_TIMEOUT) {
            Ok(Ok(status)) => (status, std::fs::read_to_string(&path).unwrap_or_default()),
            Ok(Err(e)) => panic!("waiting for the server: {e}"),
            Err(_) => {
                if let Ok(raw) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                }
                panic!("the server did not refuse to start; log:\n{}", self.log());
            }
        }
    }

    /// Like [`Server::restart`], with another shard count.
    pub fn restart_with_shards(&mut self, shards: u16) {
        self.options.shards = shards;
        self.restart();
    }

    /// Starts the server again on the same data dir (and the same ports
    /// when they are still free). Clients must be created anew with
    /// [`Server::addr`], which may have changed.
    pub fn restart(&mut self) {
        let free = (self.port..=self.port + 1 + self.options.shards).all(port_bindable);
        if !free && self.options.port.is_none() {
            self.port = free_port_range(self.options.shards);
        }
        self.launch();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server log of the failed test:\n{}", self.log());
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(raw) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What a CLI command did.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Stdout lines parsed as JSON; panics (with the output) on a bad line.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}; whole output: {self:?}"))
            })
            .collect()
    }
}

/// Runs `hadron ARGS...`, killing it after `timeout`.
pub fn run_cli(args: &[&str], timeout: Duration) -> CliOutput {
    run_cli_with_token(args, None, timeout)
}

/// [`run_cli`] with `HADRON_TOKEN` set to `token` (unset for `None`).
pub fn run_cli_with_token(args: &[&str], token: Option<&str>, timeout: Duration) -> CliOutput {
    let mut command = Command::new(hadron_bin());
    match token {
        Some(token) => command.env("HADRON_TOKEN", token),
        None => command.env_remove("HADRON_TOKEN"),
    };
    let mut child = command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!("hadron {args:?} ran past {timeout:?}; stdout:\n{stdout}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CliOutput {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// The server's status document, parsed.
pub async fn status(client: &Client) -> serde_json::Value {
    let json = tokio::time::timeout(Duration::from_secs(10), client.status())
        .await
        .expect("status timed out")
        .expect("status failed");
    serde_json::from_str(&json).unwrap()
}

/// `next_offset` of every partition of `stream`, by partition.
pub fn next_offsets(status: &serde_json::Value, stream: &str) -> BTreeMap<u32, u64> {
    stream_partitions(status, stream)
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap() as u32,
                p["next_offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The `partitions` array of `stream` in a status document.
pub fn stream_partitions<'a>(
    status: &'a serde_json::Value,
    stream: &str,
) -> &'a Vec<serde_json::Value> {
    status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stream)
        .unwrap_or_else(|| panic!("no stream {stream:?} in status {status}"))["partitions"]
        .as_array()
        .unwrap()
}

/// The status entry of `group` on `partition` of `stream`, if it has one.
pub fn group_status(
    status: &serde_json::Value,
    stream: &str,
    partition: u32,
    group: &str,
) -> Option<serde_json::Value> {
    stream_partitions(status, stream)
        .iter()
        .find(|p| p["partition"] == partition)?["groups"]
        .as_array()?
        .iter()
        .find(|g| g["group"] == group)
        .cloned()
}

/// Every record of `stream`/`partition` from offset 0, fetched in pages.
pub async fn fetch_all(client: &Client, stream: &str, partition: u32) -> Vec<(u64, Event)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..10_000 {
        let page = tokio::time::timeout(
            Duration::from_secs(10),
            client.fetch(stream, partition, offset, 64 << 10),
        )
        .await
        .expect("fetch timed out")
        .unwrap_or_else(|e| panic!("fetch {stream}/{partition}@{offset}: {e}"));
        if page.records.is_empty() {
            assert_eq!(page.next_offset, offset, "an empty page ends the partition");
            return out;
        }
        assert!(page.next_offset > offset, "fetch made no progress");
        offset = page.next_offset;
        out.extend(page.records);
    }
    panic!("{stream}/{partition} did not end after 10000 pages");
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One received frame, owned: its request id and a decoded summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    HandshakeOk {
        request_id: u64,
        shards: u16,
        shard_ports: Vec<u16>,
    },
    PublishOk {
        request_id: u64,
        offsets: Vec<(u64, bool)>,
    },
    SubscribeOk {
        request_id: u64,
        subscription_id: u64,
    },
    Delivery(Box<RawDelivery>),
    StageDelivery(Box<RawStageDelivery>),
    AckOk {
        request_id: u64,
    },
    StatusOk {
        request_id: u64,
        json: String,
    },
    Error {
        request_id: u64,
        code: ErrorCode,
        message: String,
    },
    /// An `Error` with code `NotLeader`, and the leader it names: (node id,
    /// address, shard port, term).
    NotLeader {
        request_id: u64,
        message: String,
        leader: Option<(u64, String, u16, u64)>,
    },
    /// Any other body, by name.
    Other {
        request_id: u64,
        name: &'static str,
    },
}

/// A `Delivery` push, with its event decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDelivery {
    pub subscription_id: u64,
    pub delivery_id: u64,
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
    pub event: Event,
}

/// A `StageDelivery` push, with its events decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStageDelivery {
    pub delivery_id: u64,
    pub stage: String,
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
    pub root: Event,
    /// Outputs of the stage's dependencies, by stage name.
    pub inputs: BTreeMap<String, Event>,
}

/// A connection speaking raw frames, for bad input and misbehaving members.
#[derive(Debug)]
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    next_request_id: u64,
}

impl RawConn {
    /// Opens a TCP connection to `127.0.0.1:port` (no handshake).
    pub async fn connect(port: u16) -> RawConn {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        )
        .await
        .expect("connect timed out")
        .expect("connect failed");
        RawConn {
            stream,
            buf: Vec::new(),
            next_request_id: 1,
        }
    }

    /// Connects and completes the handshake.
    pub async fn handshaken(port: u16) -> RawConn {
        let mut conn = RawConn::connect(port).await;
        let id = conn
            .send(&Message::Handshake(hadron_wire::Handshake {
                version: hadron_wire::PROTOCOL_VERSION,
                token: "",
                client_name: "e2e-raw",
            }))
            .await;
        match conn.recv().await {
            Some(Frame::HandshakeOk { request_id, .. }) if request_id == id => {}
            other => panic!("expected HandshakeOk, got {other:?}"),
        }
        conn
    }

    /// Writes raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        tokio::time::timeout(Duration::from_secs(5), self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Sends `message` with the next request id and returns that id.
    pub async fn send(&mut self, message: &Message<'_>) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        self.send_with_id(id, message).await;
        id
    }

    /// Sends `message` with request id `id`.
    pub async fn send_with_id(&mut self, id: u64, message: &Message<'_>) {
        let frame = hadron_wire::encode(id, message).unwrap();
        self.send_bytes(&frame).await;
    }

    /// The next frame, or `None` when the server closed the connection.
    /// Panics after [`RAW_RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Option<Frame> {
        self.recv_within(RAW_RECV_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no frame within {RAW_RECV_TIMEOUT:?}"))
    }

    /// The next frame within `timeout`: `None` on timeout, `Some(None)` when
    /// the server closed the connection.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(total) = hadron_wire::check(&self.buf, &Limits::DEFAULT).unwrap() {
                let frame: Vec<u8> = self.buf.drain(..total).collect();
                return Some(Some(summarize(&frame[LENGTH_PREFIX_BYTES..])));
            }
            self.buf.reserve(64 << 10);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection closed inside a frame: {} bytes left",
                        self.buf.len()
                    );
                    return Some(None);
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame that is not a delivery push (deliveries are kept for
    /// [`RawConn::next_delivery`]).
    pub async fn recv_reply(&mut self, pushed: &mut Vec<RawDelivery>) -> Option<Frame> {
        loop {
            match self.recv().await {
                Some(Frame::Delivery(d)) => pushed.push(*d),
                other => return other,
            }
        }
    }

    /// Sends a request and waits for its answer, keeping deliveries that
    /// arrive meanwhile in `pushed`.
    pub async fn request(&mut self, message: &Message<'_>, pushed: &mut Vec<RawDelivery>) -> Frame {
        let id = self.send(message).await;
        let reply = self
            .recv_reply(pushed)
            .await
            .unwrap_or_else(|| panic!("connection closed before the answer to {message:?}"));
        assert_eq!(
            request_id(&reply),
            id,
            "answer to another request: {reply:?}"
        );
        reply
    }

    /// Subscribes; returns the subscription id.
    pub async fn subscribe(
        &mut self,
        stream: &str,
        group: &str,
        durable: bool,
        max_in_flight: u32,
    ) -> u64 {
        let mut pushed = Vec::new();
        let reply = self
            .request(
                &Message::Subscribe(hadron_wire::Subscribe {
                    stream,
                    group,
                    durable,
                    start: hadron_wire::StartPoint::Beginning,
                    max_in_flight,
                }),
                &mut pushed,
            )
            .await;
        assert!(
            pushed.is_empty(),
            "deliveries before SubscribeOk: {pushed:?}"
        );
        match reply {
            Frame::SubscribeOk {
                subscription_id, ..
            } => subscription_id,
            other => panic!("expected SubscribeOk, got {other:?}"),
        }
    }

    /// A connection to `127.0.0.1:port`, handshaken, that is a member of
    /// `stage` of `pipeline` with room for `max_in_flight` deliveries.
    pub async fn stage_member(
        port: u16,
        pipeline: &str,
        stage: &str,
        max_in_flight: u32,
    ) -> RawConn {
        let mut member = RawConn::handshaken(port).await;
        member
            .pipeline_subscribe(pipeline, stage, max_in_flight)
            .await;
        member
    }

    /// Subscribes as a member of `stage` of `pipeline` with room for
    /// `max_in_flight` deliveries.
    pub async fn pipeline_subscribe(&mut self, pipeline: &str, stage: &str, max_in_flight: u32) {
        let subscribe = hadron_wire::PipelineSubscribe {
            pipeline,
            stage,
            max_in_flight,
        };
        let reply = self
            .request(&Message::PipelineSubscribe(subscribe), &mut Vec::new())
            .await;
        assert!(
            matches!(reply, Frame::AckOk { .. }),
            "PipelineSubscribe: {reply:?}"
        );
    }

    /// The next delivery within `timeout`; `None` when none came.
    pub async fn next_delivery(&mut self, timeout: Duration) -> Option<RawDelivery> {
        match self.recv_within(timeout).await {
            None => None,
            Some(Some(Frame::Delivery(d))) => Some(*d),
            Some(other) => panic!("expected a Delivery, got {other:?}"),
        }
    }

    /// Acks `delivery_ids` and returns the answer (deliveries arriving
    /// meanwhile go to `pushed`).
    pub async fn ack(&mut self, delivery_ids: &[u64], pushed: &mut Vec<RawDelivery>) -> Frame {
        self.request(
            &Message::Ack(hadron_wire::Ack {
                delivery_ids: delivery_ids.to_vec(),
            }),
            pushed,
        )
        .await
    }

    /// Closes the connection (both directions).
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The request id of a frame (0 for pushes).
pub fn request_id(frame: &Frame) -> u64 {
    match frame {
        Frame::HandshakeOk { request_id, .. }
        | Frame::PublishOk { request_id, .. }
        | Frame::SubscribeOk { request_id, .. }
        | Frame::AckOk { request_id }
        | Frame::StatusOk { request_id, .. }
        | Frame::Error { request_id, .. }
        | Frame::NotLeader { request_id, .. }
        | Frame::Other { request_id, .. } => *request_id,
        Frame::Delivery(_) | Frame::StageDelivery(_) => 0,
    }
}

/// Verifies and summarizes a frame body the server sent. A frame that fails
/// verification fails the test: the server must only send valid frames.
fn summarize(body: &[u8]) -> Frame {
    let f = hadron_wire::decode(body, &Limits::DEFAULT)
        .unwrap_or_else(|e| panic!("the server sent an invalid frame: {e}"));
    let request_id = f.request_id;
    match f.message {
        Message::HandshakeOk(h) => Frame::HandshakeOk {
            request_id,
            shards: h.shards,
            shard_ports: h.shard_ports,
        },
        Message::PublishOk(p) => Frame::PublishOk {
            request_id,
            offsets: p.results.iter().map(|r| (r.offset, r.duplicate)).collect(),
        },
        Message::SubscribeOk(s) => Frame::SubscribeOk {
            request_id,
            subscription_id: s.subscription_id,
        },
        Message::Delivery(d) => Frame::Delivery(Box::new(RawDelivery {
            subscription_id: d.subscription_id,
            delivery_id: d.delivery_id,
            partition: d.partition,
            offset: d.offset,
            attempt: d.attempt,
            event: Event::decode(d.event)
                .unwrap_or_else(|e| panic!("the server delivered an invalid event: {e}")),
        })),
        Message::StageDelivery(d) => Frame::StageDelivery(Box::new(RawStageDelivery {
            delivery_id: d.delivery_id,
            stage: d.stage.to_owned(),
            partition: d.partition,
            offset: d.offset,
            attempt: d.attempt,
            root: Event::decode(d.root)
                .unwrap_or_else(|e| panic!("the server delivered an invalid root event: {e}")),
            inputs: d
                .inputs
                .iter()
                .map(|i| {
                    let event = Event::decode(i.event).unwrap_or_else(|e| {
                        panic!("the server delivered an invalid input event: {e}")
                    });
                    (i.stage.to_owned(), event)
                })
                .collect(),
        })),
        Message::AckOk => Frame::AckOk { request_id },
        Message::StatusOk(s) => Frame::StatusOk {
            request_id,
            json: s.json.to_owned(),
        },
        Message::Error(e) if e.code == ErrorCode::NotLeader => Frame::NotLeader {
            request_id,
            message: e.message.to_owned(),
            leader: e
                .leader
                .map(|l| (l.node_id, l.address.to_owned(), l.shard_port, l.term)),
        },
        Message::Error(e) => Frame::Error {
            request_id,
            code: e.code,
            message: e.message.to_owned(),
        },
        other => Frame::Other {
            request_id,
            name: other.name(),
        },
    }
}

/// A wire event with the given id, source and type, as publishers send it.
pub fn event_bytes(id: &str, source: &str, ty: &str, data: &[u8]) -> Vec<u8> {
    hadron_wire::encode_event(&hadron_wire::EventRef {
        id,
        source,
        specversion: hadron_wire::SPECVERSION,
        ty,
        data,
        ..hadron_wire::EventRef::default()
    })
}

/// YAML for a `kind: Stream` with `partitions` partitions.
pub fn stream_yaml(name: &str, partitions: u32) -> String {
    format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata:\n  name: {name}\nspec:\n  partitions: {partitions}\n"
    )
}

/// Applies a new stream through `client` and checks the summary.
pub async fn create_stream(client: &Client, name: &str, partitions: u32) {
    let summary = tokio::time::timeout(
        Duration::from_secs(10),
        client.apply(&stream_yaml(name, partitions)),
    )
    .await
    .expect("apply timed out")
    .unwrap_or_else(|e| panic!("apply of stream {name}: {e}"));
    assert_eq!(
        summary,
        vec![format!("stream/{name} created ({partitions} partitions)")]
    );
}

/// What a test group member recorded of one delivery.
pub type Received = (u32, u64, String);

/// Subscribes `group` on `stream` with a handler that records each
/// delivery's (partition, offset, event id) and acks it; returns the
/// subscription and the shared record.
pub async fn record_group(
    client: &Client,
    stream: &str,
    group: &str,
    options: hadron::SubscribeOptions,
) -> (
    hadron::Subscription,
    std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
) {
    let received: std::sync::Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
    let sink = received.clone();
    let subscription = client
        .subscribe(stream, group, options, move |d: hadron::Delivery| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .push((d.partition, d.offset, d.event.id));
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    (subscription, received)
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM` from
/// `/proc/<pid>/status`), in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Waits until `group` has settled every event of `stream` (on every
/// partition the committed offset is the partition's next offset, and
/// nothing is in flight), for at most `timeout`; returns that status.
///
/// This is the barrier that "nothing more arrives" at a group's members
/// (no duplicate, no redelivery): a delivery is in flight from the moment
/// the server hands it out until its ack arrives, and a member records a
/// delivery before it acks it. Once everything is committed and nothing
/// is in flight, every delivery the server made for the group has been
/// recorded, and no other can follow without a new event or a delivery
/// in flight to time out, be nacked or be orphaned.
pub async fn until_group_settled(
    client: &Client,
    stream: &str,
    group: &str,
    timeout: Duration,
) -> serde_json::Value {
    let what = format!("group {group} to settle every event of {stream}");
    eventually(timeout, &what, || async move {
        let st = status(client).await;
        let settled = stream_partitions(&st, stream).iter().all(|p| {
            let partition = p["partition"].as_u64().unwrap() as u32;
            group_status(&st, stream, partition, group).is_some_and(|g| {
                g["committed"] == p["next_offset"] && g["lag"] == 0 && g["in_flight"] == 0
            })
        });
        settled.then_some(st)
    })
    .await
}

impl RawConn {
    /// Closes the write side, so the server reads EOF after everything
    /// sent, and waits (up to `timeout`) until the server closes the
    /// connection in turn: the proof that it has read all of it. Panics
    /// when a frame arrives instead or the connection stays open.
    pub async fn finish(mut self, timeout: Duration) {
        tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown())
            .await
            .expect("shutdown timed out")
            .expect("shutdown failed");
        match self.recv_within(timeout).await {
            Some(None) => {}
            Some(Some(frame)) => panic!("expected the server to close, got {frame:?}"),
            None => panic!("the server kept the connection open for {timeout:?} after EOF"),
        }
    }
}

/// Publishes `events` events of `bytes` bytes each (ids `{prefix}-N`, type
/// `fill`) to `partition` of `stream`, in batches of four; for tests and
/// measurements that need data to read.
pub async fn fill_partition(
    client: &Client,
    stream: &str,
    partition: u32,
    prefix: &str,
    events: usize,
    bytes: usize,
) {
    let publisher = client.publisher_for(stream, "filler").await.unwrap();
    let all: Vec<hadron::NewEvent> = (0..events)
        .map(|i| hadron::NewEvent {
            id: format!("{prefix}-{i}"),
            ty: "fill".into(),
            data: vec![i as u8; bytes],
            ..hadron::NewEvent::default()
        })
        .collect();
    for batch in all.chunks(4) {
        for event in batch {
            publisher
                .publish_to(partition, event.clone())
                .await
                .unwrap_or_else(|e| panic!("filling {stream}/{partition}: {e}"));
        }
    }
}

/// Waits for the marker event at `offset` to arrive on `conn` twice, as
/// attempt 1 and then attempt 2 after its ack timeout: a barrier showing
/// that nothing else was delivered meanwhile (`why` says what would have
/// been).
pub async fn expect_marker_held_past_its_deadline(conn: &mut RawConn, offset: u64, why: &str) {
    for attempt in [1, 2] {
        let d = conn
            .next_delivery(Duration::from_secs(5))
            .await
            .expect("the marker is delivered");
        assert_eq!(
            (d.offset, d.attempt, d.event.id.as_str()),
            (offset, attempt, "marker"),
            "{why}"
        );
    }
}

/// The walkthrough's five-stage pipeline (`shared/seed/service-provisioning.md`)
/// on the stream `events`.
pub const SERVICE_CREATION_PIPELINE: &str = r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: service-creation
spec:
  sourceStream: events
  triggers:
    - service.created
  startPoint:
    location: beginning
  maxParallel: 50
  stages:
    - name: deploy-service
    - name: setup-billing
      dependencies: ["deploy-service"]
    - name: setup-monitoring
      dependencies: ["deploy-service"]
    - name: notify-user
      dependencies: ["deploy-service"]
    - name: sync
      dependencies:
        - deploy-service
        - setup-billing
        - setup-monitoring
        - notify-user
"#;
