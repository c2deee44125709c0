//! The `hadron` binary: the server (`hadron server`, `hadron repair`, both
//! in the `hadron_server` library) and the command-line client (`apply`,
//! `publish`, `subscribe`, `status`, `pipeline`, in [`cli`]). This file
//! only parses the command line and calls one of them.

mod cli;

/// mimalloc instead of the system allocator: a shard allocates and frees
/// small blocks (frames, records, per-delivery state) at a high rate, and
/// glibc's malloc and free were 10-15% of a shard's samples in the
/// pipeline benchmark; mimalloc's thread-local heaps suit thread-per-core.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hadron_server::{ACK_TIMEOUT_MS_DEFAULT, ServerArgs};

/// Default address of the client commands.
const URL_DEFAULT: &str = "127.0.0.1:7000";

#[derive(Parser, Debug)]
#[command(
    name = "hadron",
    version,
    about = "Hadron: thread-per-core event streaming and workflow orchestration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Client commands with an https:// --url: the PEM certificate of the
    /// CA that signed the server's (default: the system's trusted CAs).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client commands with an https:// --url: a PEM client certificate,
    /// for a server that requires one (tls.clientCa); needs --key.
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Server {
        /// Configuration file (multi-document YAML: settings, Streams).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (default ./hadron-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Client address (default 127.0.0.1:7000).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Number of shards (default: one per CPU).
        #[arg(long)]
        shards: Option<u16>,
        /// Milliseconds a consumer has to ack a delivery before it is
        /// redelivered.
        #[arg(long, default_value_t = ACK_TIMEOUT_MS_DEFAULT)]
        ack_timeout_ms: u64,
        /// Serve clients beyond loopback with no token (anyone who can
        /// reach the port may then read, publish and apply).
        #[arg(long)]
        insecure_no_token: bool,
    },
    /// Create or change resources from a YAML file (`-` for stdin).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Also make changes that drop work (removing a pipeline stage that
        /// unfinished executions still need).
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Pipeline commands.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// Publish one event; prints {"partition":P,"offset":N}.
    Publish {
        #[arg(long, default_value = "events")]
        stream: String,
        /// Event type.
        #[arg(long = "type")]
        ty: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        partition: Option<u32>,
        /// The event data; read from stdin when absent.
        data: Option<String>,
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Consume a stream in a group; prints each event as a JSON line.
    Subscribe {
        #[arg(long, default_value = "events")]
        stream: String,
        #[arg(long)]
        group: String,
        /// beginning, latest or an offset.
        #[arg(long, default_value = "beginning")]
        start: String,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Do not persist the group's offsets.
        #[arg(long)]
        ephemeral: bool,
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Cut damage out of the logs of a data directory, with the server
    /// stopped: the cut bytes are kept beside each segment
    /// (`<segment>.log.cut-<byte>`) and the log continues above every
    /// offset seen in them.
    Repair {
        /// Data directory (default ./hadron-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Shards, streams, partitions, offsets and group lags.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
}

#[derive(Subcommand, Debug)]
enum PipelineCommand {
    /// Per partition the cursor and unfinished executions; per stage
    /// completed, in flight, waiting, errors and failed.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Run failed executions again: one (--partition and --offset of its
    /// root event) or all of the pipeline's.
    Retry {
        name: String,
        #[arg(long, requires = "offset")]
        partition: Option<u32>,
        #[arg(long, requires = "partition")]
        offset: Option<u64>,
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if matches!(cli.command, Command::Server { .. }) {
        stop_on_panic();
    } else if let Err(e) = cli::use_tls_files(cli.ca, cli.cert, cli.key) {
        eprintln!("hadron: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Server {
            config,
            data_dir,
            listen,
            shards,
            ack_timeout_ms,
            insecure_no_token,
        } => {
            let served = hadron_server::serve(ServerArgs {
                config,
                data_dir,
                listen,
                shards,
                ack_timeout_ms,
                insecure_no_token,
            });
            if served.is_ok() {
                exit_now_without_teardown();
            }
            served
        }
        Command::Apply { file, force, url } => block_on(cli::apply(&url, &file, force)),
        Command::Pipeline {
            command: PipelineCommand::Status { name, json, url },
        } => block_on(cli::pipeline_status(&url, &name, json)),
        Command::Pipeline {
            command:
                PipelineCommand::Retry {
                    name,
                    partition,
                    offset,
                    url,
                },
        } => block_on(cli::pipeline_retry(&url, &name, partition.zip(offset))),
        Command::Publish {
            stream,
            ty,
            id,
            source,
            subject,
            partition,
            data,
            url,
        } => block_on(cli::publish(
            &url,
            cli::PublishArgs {
                stream,
                ty,
                id,
                source,
                subject,
                partition,
                data,
            },
        )),
        Command::Subscribe {
            stream,
            group,
            start,
            count,
            ephemeral,
            url,
        } => block_on(cli::subscribe(
            &url, &stream, &group, &start, count, ephemeral,
        )),
        Command::Status { json, url } => block_on(cli::status(&url, json)),
        Command::Repair { data_dir } => hadron_server::repair::run(
            &data_dir.unwrap_or_else(|| PathBuf::from(hadron_server::DATA_DIR_DEFAULT)),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hadron: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes a panic anywhere in the server end the process: one dead shard
/// would otherwise leave the others serving while every request for its
/// partitions fails, which no supervisor notices. The panic is logged, then
/// the process aborts (non-zero exit, so systemd's `Restart=on-failure`
/// restarts it).
fn stop_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(
            "panic on thread {}: {info}; stopping the server",
            thread.name().unwrap_or("unnamed")
        );
        default_hook(info);
        std::process::abort();
    }));
}

/// Ends a server that stopped cleanly (every log synced, offsets
/// committed, connections answered) with exit status 0 at once, without
/// the process teardown (`atexit` handlers, the allocator's and thread
/// locals' destructors): glommio's helper threads may still be running
/// then, and about one clean stop in ten under load ended in SIGSEGV
/// during that teardown, after "hadron stopped", which a supervisor takes
/// for a crash.
#[expect(
    unsafe_code,
    reason = "libc::_exit is the only way to skip the exit-time teardown"
)]
fn exit_now_without_teardown() -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` only ends the process: no memory is touched, and
    // nothing of this process runs after it, so no invariant can be
    // observed broken. Everything the server must make durable was synced
    // before `serve` returned.
    unsafe { libc::_exit(0) }
}

fn block_on(f: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(f)
}
