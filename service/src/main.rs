use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use herald::cluster::parse_manifest;
use herald::config::Config;

/// Announces Kubernetes Service IPs over BGP through a gobgpd sidecar.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the advertisement plan for a config and a cluster-state file, and exit.
    Plan {
        #[arg(long)]
        config: Option<PathBuf>,
        /// YAML as printed by `kubectl get services,endpointslices,nodes -A -o yaml`.
        #[arg(long)]
        cluster_state: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
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
        Command::Plan { config, cluster_state, output } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            let text = std::fs::read_to_string(&cluster_state)
                .with_context(|| format!("cannot read cluster state {}", cluster_state.display()))?;
            let state = parse_manifest(&text)
                .with_context(|| format!("invalid cluster state {}", cluster_state.display()))?;
            let plan = herald::planner::plan(&state, &config);
            match output {
                Format::Json => {
                    let response = herald::api::proto::list_routes(&plan, 0);
                    println!("{}", serde_json::to_string_pretty(&response)?);
                }
                Format::Table => print!("{}", herald::api::table::plan(&plan)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
