use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use herald::run::RunOptions;
use herald_core::config::Config;
use herald_k8s::parse_manifest;

/// glibc's allocator spent ~40% of herald's CPU during a 5,000-node cold start (the Kubernetes
/// lists' objects decoded, converted and freed: `_int_malloc`, `unlink_chunk`,
/// `malloc_consolidate`); jemalloc halves herald's CPU for the start. mimalloc did as well, but
/// held ~50% more memory at the peak of a flood of the plan API (BENCHMARKS.md, cold start).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Announces Kubernetes Service IPs over BGP through a gobgpd sidecar.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run herald: watch the cluster, plan, keep gobgpd's RIB equal to the plan, serve the API.
    Run {
        #[arg(long, env = "HERALD_CONFIG")]
        config: PathBuf,
        /// A kubeconfig for `source: {kubernetes: {}}` (default: in-cluster, then $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "HERALD_LOG_FORMAT")]
        log_format: LogFormat,
        /// Overrides the config's api.listen (the manifests' TLS component sets it to the node's
        /// address, from the downward API).
        #[arg(long, env = "HERALD_API_LISTEN")]
        api_listen: Option<std::net::SocketAddr>,
        /// Overrides the config's api.tls: the server's PEM certificate chain ...
        #[arg(long, env = "HERALD_API_TLS_CERT_FILE", requires = "api_tls_key_file")]
        api_tls_cert_file: Option<PathBuf>,
        /// ... its PEM key ...
        #[arg(long, env = "HERALD_API_TLS_KEY_FILE", requires = "api_tls_cert_file")]
        api_tls_key_file: Option<PathBuf>,
        /// ... and the CA of the clients' certificates (clients without one are refused).
        #[arg(
            long,
            env = "HERALD_API_TLS_CLIENT_CA_FILE",
            requires = "api_tls_cert_file"
        )]
        api_tls_client_ca_file: Option<PathBuf>,
    },
    /// Print the advertisement plan for a config and a cluster-state file, and exit.
    Plan {
        #[arg(long)]
        config: Option<PathBuf>,
        /// YAML as printed by `kubectl get services,endpointslices,nodes -A -o yaml`. Without it (and
        /// without --config), the built-in yaobank example of the seed lab is planned.
        #[arg(long)]
        cluster_state: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// The seed lab's final stage, built in so that `herald plan` shows what herald does out of the box.
const EXAMPLE_CONFIG: &str = include_str!("../../examples/yaobank/herald.yaml");
const EXAMPLE_STATE: &str = include_str!("../../examples/yaobank/cluster-state.yaml");

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; stop herald with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("herald: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            kubeconfig,
            log_format,
            api_listen,
            api_tls_cert_file,
            api_tls_key_file,
            api_tls_client_ca_file,
        } => {
            init_logging(log_format);
            let mut config = Config::load(&config)?;
            if let Some(listen) = api_listen {
                config.api.listen = listen;
            }
            if let (Some(cert_file), Some(key_file)) = (api_tls_cert_file, api_tls_key_file) {
                config.api.tls = Some(herald_core::config::TlsConfig {
                    cert_file,
                    key_file,
                    client_ca_file: api_tls_client_ca_file,
                });
            }
            if config.api.health_listen == Some(config.api.listen) {
                anyhow::bail!(
                    "api.healthListen {} is the API's address too: give the health listener a port of its own",
                    config.api.listen
                );
            }
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(herald::run::run(
                config,
                RunOptions { kubeconfig },
                shutdown_signal(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            config,
            cluster_state,
            output,
        } => {
            let (config, state) = match (config, cluster_state) {
                (None, None) => {
                    eprintln!(
                        "herald: no --config and --cluster-state: planning the built-in yaobank example"
                    );
                    (
                        Config::parse(EXAMPLE_CONFIG).map_err(anyhow::Error::msg)?,
                        parse_manifest(EXAMPLE_STATE)?,
                    )
                }
                (config, Some(path)) => {
                    let config = match config {
                        Some(path) => Config::load(&path)?,
                        None => Config::default(),
                    };
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read cluster state {}", path.display()))?;
                    let state = parse_manifest(&text)
                        .with_context(|| format!("invalid cluster state {}", path.display()))?;
                    (config, state)
                }
                (Some(_), None) => anyhow::bail!("--cluster-state is required with --config"),
            };
            let plan = herald_core::planner::plan(&state, &config);
            match output {
                Format::Json => {
                    let response = herald_grpc::proto::list_routes(&plan, 0);
                    println!("{}", serde_json::to_string_pretty(&response)?);
                }
                Format::Table => print!("{}", herald_grpc::table::plan(&plan)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
