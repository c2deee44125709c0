//! The `hadron` binary: the server (`hadron server`, `hadron repair`, both
//! in the `hadron_server` library) and the command-line client (`apply`,
//! `publish`, `subscribe`, `status`, `pipeline`, `token`, in [`cli`]). This file
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
    /// Log lines as text (colours only on a terminal) or as one JSON
    /// object a line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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

/// `hadron server`'s flags.
#[derive(clap::Args, Debug)]
struct ServerCommand {
    /// Configuration file (multi-document YAML: settings, Streams).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default ./hadron-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client address (default 127.0.0.1:7000).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: off).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
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
    /// Validate the configuration (file, flags, HADRON_TOKEN) and the
    /// resources it declares, print a summary and exit: 0 when valid.
    #[arg(long)]
    check_config: bool,
    /// This node's id in a cluster (`cluster.nodeId`).
    #[arg(long, value_name = "ID")]
    node_id: Option<u64>,
    /// A node of the cluster, this one included: `ID=HOST:PORT` (its
    /// client address; peers connect at port + 100), repeated per node.
    /// Replaces `cluster.peers` of the config file.
    #[arg(long = "peer", value_name = "ID=HOST:PORT", value_parser = parse_peer)]
    peers: Vec<hadron_server::PeerSpec>,
    /// A node added to a running cluster: the ids the cluster was first
    /// started with, comma-separated (`cluster.founders`; default: every
    /// peer, right only for the nodes that started it).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    founders: Vec<u64>,
}

/// `ID=HOST:PORT` for `--peer`.
fn parse_peer(s: &str) -> Result<hadron_server::PeerSpec, String> {
    let (id, address) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write a peer ID=HOST:PORT, like 2=10.0.0.2:7000"))?;
    let id = id
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?}: the node id {id:?} is not a number"))?;
    Ok(hadron_server::PeerSpec {
        id,
        address: address.trim().to_owned(),
        peer_address: None,
    })
}

impl ServerCommand {
    /// Runs the server, or only checks its configuration (exit code 2
    /// when it is invalid).
    fn run(self) -> ExitCode {
        let check = self.check_config;
        let args = ServerArgs {
            config: self.config,
            data_dir: self.data_dir,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            shards: self.shards,
            ack_timeout_ms: self.ack_timeout_ms,
            insecure_no_token: self.insecure_no_token,
            node_id: self.node_id,
            peers: self.peers,
            founders: self.founders,
        };
        let (result, failed) = if check {
            let checked = hadron_server::check_config(&args);
            (
                checked.map(|summary| println!("{summary}")),
                ExitCode::from(2),
            )
        } else {
            (hadron_server::serve(args), ExitCode::FAILURE)
        };
        match result {
            Ok(()) if check => ExitCode::SUCCESS,
            Ok(()) => exit_now_without_teardown(),
            Err(e) => {
                eprintln!("hadron: {e}");
                failed
            }
        }
    }
}

/// How log lines are written (to standard error).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Server(ServerCommand),
    /// Create or change resources from a YAML file (`-` for stdin).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Also make changes that drop work (removing a pipeline stage that
        /// unfinished executions still need).
        #[arg(long)]
        force: bool,
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port; the first that answers is used).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Pipeline commands.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// Publish events; prints {"partition":P,"offset":N} for each.
    ///
    /// Either describe one event with --type (and --id, --source, --subject,
    /// --datacontenttype, DATA), or give -f FILE of CloudEvents JSON: an
    /// event, a JSON array of them (the batch format), or lines as `hadron
    /// subscribe` prints them (docs/cloudevents.md).
    Publish {
        #[arg(long, default_value = "events")]
        stream: String,
        /// CloudEvents JSON (`-` for stdin): an event, an array of events,
        /// or several of either, like the lines `hadron subscribe` prints;
        /// published in order.
        #[arg(short = 'f', long = "file", conflicts_with_all = ["ty", "id", "source", "subject", "datacontenttype", "data"])]
        file: Option<String>,
        /// Event type.
        #[arg(long = "type", value_name = "TYPE", required_unless_present = "file")]
        ty: Option<String>,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        /// Media type of DATA (default: application/json when DATA is
        /// JSON, text/plain; charset=utf-8 when it is other UTF-8 text,
        /// none otherwise).
        #[arg(long)]
        datacontenttype: Option<String>,
        /// Send every event to this partition (default: the subject's hash,
        /// else the hash of source and id).
        #[arg(long)]
        partition: Option<u32>,
        /// The event data; read from stdin when absent.
        data: Option<String>,
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port; the first that answers is used).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Consume a stream in a group; prints each event as a line of
    /// CloudEvents JSON, with `partition` and `offset` members.
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
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port; the first that answers is used).
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
    /// Cluster commands.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Token commands (need a token with admin in HADRON_TOKEN).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Shards, streams, partitions, offsets and group lags.
    Status {
        #[arg(long)]
        json: bool,
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port; the first that answers is used).
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
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port): each is asked, and each partition is
        /// counted from the node that runs it.
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
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port): without --partition each is asked and
        /// retries the runs it leads; with it, the node that runs the
        /// partition is found from any of them.
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Every node's state, each replicated partition's leader and term,
    /// and each replica's lag behind its leader.
    Status {
        #[arg(long)]
        json: bool,
        /// Every node to ask, separated by commas (host:port,host:port):
        /// each is asked on its own.
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Move a replicated partition's replicas to other nodes (needs
    /// admin): sent to the metadata group's leader, found from any node
    /// listed.
    Move {
        stream: String,
        partition: u32,
        /// The target node ids, separated by commas (the first is the
        /// preferred leader): as many as the stream's replicas.
        #[arg(long)]
        to: String,
        /// Nodes of the cluster, separated by commas (any that answer).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Add a node to the running cluster (needs admin): start it first
    /// with `cluster.founders`; sent to the metadata group's leader,
    /// found from any node listed.
    AddNode {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Its client address, host:port.
        #[arg(long)]
        address: String,
        /// Where its shard 0 takes peer connections, host:port.
        #[arg(long)]
        peer_address: String,
        /// Nodes of the cluster, separated by commas (any that answer).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Remove a node no partition is placed on (needs admin); sent to
    /// the metadata group's leader, found from any node listed.
    RemoveNode {
        id: u64,
        /// Nodes of the cluster, separated by commas (any that answer).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Move replicas so that every node holds, and leads, about as many
    /// replicated partitions as the others (needs admin), after a node
    /// was added; with --drain, first move every replica off those nodes
    /// (before remove-node). Prints the moves; the partitions then move
    /// on their own (`cluster status` shows them).
    Rebalance {
        /// Node ids to empty, separated by commas.
        #[arg(long, default_value = "")]
        drain: String,
        /// The most partitions to move in this call (the rest: run it
        /// again); the server's default (64) when left out.
        #[arg(long)]
        max_moves: Option<u32>,
        /// Plan and print the moves, making none.
        #[arg(long)]
        dry_run: bool,
        /// Nodes of the cluster, separated by commas (any that answer).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; prints its secret, this once (the server keeps only
    /// its SHA-256).
    Create {
        name: String,
        /// A stream it may publish to (`*`: every stream); repeatable.
        #[arg(long)]
        publish: Vec<String>,
        /// A stream it may read, with the stages of its pipelines (`*`:
        /// every stream); repeatable.
        #[arg(long)]
        subscribe: Vec<String>,
        /// Publish and subscribe on every stream.
        #[arg(long, conflicts_with_all = ["publish", "subscribe"])]
        all: bool,
        /// Apply, pipeline retry and token management.
        #[arg(long)]
        admin: bool,
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port; the first that answers is used).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Every token's name and scope (never secrets).
    List {
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port; the first that answers is used).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
    /// Revoke a token: connections using it lose access at once.
    Revoke {
        name: String,
        /// The server: host:port, or a cluster's nodes separated by commas
        /// (host:port,host:port; the first that answers is used).
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
    },
}

/// Logs go to standard error, filtered by `RUST_LOG` (default `info`):
/// text with colours only when standard error is a terminal (so journald
/// and files get none), or one JSON object a line.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if matches!(cli.command, Command::Server(_)) {
        stop_on_panic();
    } else if let Err(e) = cli::use_tls_files(cli.ca, cli.cert, cli.key) {
        eprintln!("hadron: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Server(server) => return server.run(),
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
            file,
            ty,
            id,
            source,
            subject,
            datacontenttype,
            partition,
            data,
            url,
        } => block_on(cli::publish(
            &url,
            cli::PublishArgs {
                stream,
                file,
                ty,
                datacontenttype,
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
        Command::Token { command } => block_on(token(command)),
        Command::Cluster { command } => block_on(cluster(command)),
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

async fn cluster(command: ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Status { json, url } => cli::cluster::status(&url, json).await,
        ClusterCommand::Move {
            stream,
            partition,
            to,
            url,
        } => cli::cluster::move_partition(&url, &stream, partition, &to).await,
        ClusterCommand::AddNode {
            id,
            address,
            peer_address,
            url,
        } => cli::cluster::add_node(&url, id, &address, &peer_address).await,
        ClusterCommand::RemoveNode { id, url } => cli::cluster::remove_node(&url, id).await,
        ClusterCommand::Rebalance {
            drain,
            max_moves,
            dry_run,
            url,
        } => cli::cluster::rebalance(&url, &drain, max_moves, dry_run).await,
    }
}

async fn token(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Create {
            name,
            publish,
            subscribe,
            all,
            admin,
            url,
        } => {
            let scope = hadron::TokenScope {
                all,
                admin,
                publish,
                subscribe,
            };
            cli::tokens::create(&url, &name, scope).await
        }
        TokenCommand::List { url } => cli::tokens::list(&url).await,
        TokenCommand::Revoke { name, url } => cli::tokens::revoke(&url, &name).await,
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
