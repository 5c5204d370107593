//! heraldctl: asks a running herald what it announces and why.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use herald_api::herald::v1 as pb;
use herald_api::herald::v1::control_service_client::ControlServiceClient;
use herald_api::herald::v1::plan_service_client::PlanServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Parser)]
#[command(version, about = "Query herald's advertisement plan")]
struct Cli {
    /// herald's API address.
    #[arg(
        long,
        global = true,
        env = "HERALD_SERVER",
        default_value = "http://127.0.0.1:50151"
    )]
    server: String,
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// CA certificate (PEM) to verify herald's TLS certificate; use with an https:// --server.
    #[arg(long, global = true, env = "HERALD_CA")]
    ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a herald that requires client certificates.
    #[arg(long, global = true, env = "HERALD_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true, env = "HERALD_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// The name herald's certificate is checked against, when it is not --server's host (a
    /// certificate for a DNS name, reached at a node's IP).
    #[arg(long, global = true, env = "HERALD_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The routes herald announces (or wants to), with their next hops.
    Routes {
        /// cluster-range, external-range, load-balancer-range, cluster-ip, external-ip, load-balancer-ip
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        node: Option<String>,
        /// namespace/name
        #[arg(long)]
        service: Option<String>,
        /// An IP or a prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Why a Service's IPs are (not) announced: `heraldctl explain yaobank/customer`.
    Explain { service: String },
    /// Follow plan changes as they happen.
    Watch,
    /// herald's health: source, plan generation, gobgpd and its BGP neighbors.
    Status,
    /// Every node: eligible or why not, how many ranges, parts and host routes it announces, and
    /// what ecmp.maxPaths left it out of; with a node name, each of its prefixes.
    Nodes { node: Option<String> },
    /// The plan against gobgpd's RIB, path by path (herald's paths and others' marked).
    Diff {
        /// Show paths in sync too, not only the differences.
        #[arg(long)]
        all: bool,
    },
    /// The withdrawal brake: what it holds (`heraldctl brake`), or release it (`heraldctl brake release`).
    Brake {
        #[command(subcommand)]
        action: Option<BrakeAction>,
    },
}

#[derive(Subcommand)]
enum BrakeAction {
    /// Withdraw what the brake holds now (the nodes it holds for are still lost): the operator's
    /// word that they are really gone.
    Release,
}

/// The brake in a few lines.
fn brake_lines(brake: &pb::WithdrawalBrake) -> Vec<String> {
    let time = |t: &Option<herald_api::pbjson_types::Timestamp>| {
        t.as_ref()
            .map(|t| {
                serde_json::to_value(t)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let mut lines = Vec::new();
    if !brake.enabled {
        lines.push("off (guard.withdrawalBrake.enabled: false)".to_string());
    } else if brake.engaged {
        lines.push(format!(
            "ENGAGED since {} (engagement {}): {}",
            time(&brake.engaged_at),
            brake.engagement,
            brake.reason
        ));
        lines.push(format!(
            "holding {} path(s) for {} prefix(es) of {} node(s): {}",
            brake.paths,
            brake.prefixes,
            brake.nodes.len(),
            brake.nodes.join(", ")
        ));
        lines.push(format!(
            "releases at {} at the latest (heraldctl brake release: now)",
            time(&brake.releases_at)
        ));
    } else {
        lines.push("armed, holding nothing".to_string());
    }
    if !brake.last_release.is_empty() {
        lines.push(format!(
            "last released {}: {}",
            time(&brake.last_release_at),
            brake.last_release
        ));
    }
    lines
}

fn kind_from_name(name: &str) -> anyhow::Result<pb::RouteKind> {
    let wanted = format!("ROUTE_KIND_{}", name.to_uppercase().replace('-', "_"));
    pb::RouteKind::from_str_name(&wanted).with_context(|| format!("unknown route kind `{name}`"))
}

fn kind_name(kind: i32) -> String {
    pb::RouteKind::try_from(kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("ROUTE_KIND_")
                .to_lowercase()
                .replace('_', "-")
        })
        .unwrap_or_else(|_| kind.to_string())
}

fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A route's kind, and the range a part is a part of.
fn route_kind(kind: i32, part_of: &str) -> String {
    if part_of.is_empty() {
        kind_name(kind)
    } else {
        format!("{} of {part_of}", kind_name(kind))
    }
}

fn hops(next_hops: &[pb::NextHop]) -> String {
    next_hops
        .iter()
        .map(|h| format!("{} ({})", h.address, h.node))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn routes_table(routes: &[pb::Route], with_rib: bool) -> String {
    let mut rows = vec![vec![
        "PREFIX".to_string(),
        "KIND".into(),
        "NEXT HOPS".into(),
    ]];
    if with_rib {
        rows[0].push("IN RIB".into());
    }
    rows[0].push("SOURCES".into());
    for r in routes {
        let mut row = vec![
            r.prefix.clone(),
            route_kind(r.kind, &r.part_of),
            hops(&r.next_hops),
        ];
        if with_rib {
            row.push(if r.in_rib { "yes" } else { "no" }.into());
        }
        row.push(r.sources.join(", "));
        rows.push(row);
    }
    align(&rows)
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut endpoint = Channel::from_shared(cli.server.clone())
        .with_context(|| format!("bad --server `{}`", cli.server))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if cli.server.starts_with("https://") || cli.ca.is_some() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &cli.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &cli.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach herald at {}", cli.server))?;
    let client_channel = channel.clone();
    // A large cluster's plan is more than gRPC's default 4 MiB message limit.
    let mut client = PlanServiceClient::new(channel).max_decoding_message_size(512 << 20);
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Routes {
            kind,
            node,
            service,
            prefix,
        } => {
            let request = pb::ListRoutesRequest {
                kind: kind
                    .as_deref()
                    .map(kind_from_name)
                    .transpose()?
                    .unwrap_or_default() as i32,
                node: node.unwrap_or_default(),
                service: service.unwrap_or_default(),
                prefix: prefix.unwrap_or_default(),
            };
            let response = client.list_routes(request).await?.into_inner();
            if json {
                return print_json(&response);
            }
            let status = client
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            print!("{}", routes_table(&response.routes, status.gobgp.is_some()));
            if !response.refusals.is_empty() {
                println!("\nREFUSED");
                let mut rows = vec![vec!["SERVICE".to_string(), "IP".into(), "REASON".into()]];
                rows.extend(
                    response
                        .refusals
                        .iter()
                        .map(|r| vec![r.service.clone(), r.ip.clone(), r.reason.clone()]),
                );
                print!("{}", align(&rows));
            }
        }
        Command::Explain { service } => {
            let (namespace, name) = service
                .split_once('/')
                .unwrap_or(("default", service.as_str()));
            let request = pb::ExplainServiceRequest {
                namespace: namespace.into(),
                name: name.into(),
            };
            let response = client.explain_service(request).await?.into_inner();
            if json {
                return print_json(&response);
            }
            if !response.found {
                println!("{}", response.notes.join("\n"));
                return Ok(());
            }
            println!(
                "Service {namespace}/{name}: type {}, externalTrafficPolicy {}, internalTrafficPolicy {}",
                response.r#type, response.external_traffic_policy, response.internal_traffic_policy
            );
            let mut rows = vec![vec![
                "IP".to_string(),
                "ROLE".into(),
                "ANNOUNCED".into(),
                "PREFIX".into(),
                "NEXT HOPS".into(),
                "WHY".into(),
            ]];
            for ip in &response.ips {
                rows.push(vec![
                    ip.ip.clone(),
                    ip.role.clone(),
                    match (ip.announced, ip.pool.as_str()) {
                        (true, _) => "yes".to_string(),
                        (false, "") => "no".to_string(),
                        (false, pool) => format!("by {pool}"),
                    },
                    ip.prefix.clone(),
                    hops(&ip.next_hops),
                    ip.reason.clone(),
                ]);
            }
            print!("{}", align(&rows));
            if !response.endpoint_nodes.is_empty() {
                println!("\nEndpoint nodes:");
                for node in &response.endpoint_nodes {
                    println!("  {node}");
                }
            }
            for note in &response.notes {
                println!("note: {note}");
            }
            for w in &response.wire {
                println!("\n{} on the wire", w.prefix);
                if !w.error.is_empty() {
                    println!("  cannot read gobgpd: {}", w.error);
                    continue;
                }
                let wire_paths = |paths: &[pb::WirePath]| {
                    paths
                        .iter()
                        .map(|p| {
                            format!(
                                "{} (id {}{})",
                                p.next_hop,
                                p.identifier,
                                if p.herald { "" } else { ", not herald's" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("  planned:      {}", hops(&w.planned));
                println!(
                    "  gobgpd RIB:   {}",
                    if w.rib.is_empty() {
                        "nothing".to_string()
                    } else {
                        wire_paths(&w.rib)
                    }
                );
                for n in &w.neighbors {
                    let neighbor = n.neighbor.clone().unwrap_or_default();
                    let sent = if n.sent.is_empty() {
                        "nothing".to_string()
                    } else {
                        wire_paths(&n.sent)
                    };
                    println!(
                        "  sent to {} ({}): {sent}",
                        neighbor.address, neighbor.state
                    );
                    if !n.note.is_empty() {
                        println!("    ! {}", n.note);
                    }
                }
            }
        }
        Command::Nodes { node } => {
            let response = client
                .list_nodes(pb::ListNodesRequest {
                    node: node.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                return print_json(&response);
            }
            if node.is_some() {
                for n in &response.nodes {
                    let state = if n.eligible {
                        "eligible".to_string()
                    } else {
                        format!("not eligible: {}", n.reason)
                    };
                    println!("node {} ({}), {state}", n.name, n.addresses.join(", "));
                    println!(
                        "announces {} range(s), {} part(s), {} host route(s):",
                        n.ranges, n.parts, n.host_routes
                    );
                    let mut rows = vec![vec!["PREFIX".to_string(), "KIND".into()]];
                    rows.extend(
                        n.routes
                            .iter()
                            .map(|r| vec![r.prefix.clone(), route_kind(r.kind, &r.part_of)]),
                    );
                    print!("{}", align(&rows));
                    if !n.left_out_of.is_empty() {
                        println!("left out by ecmp.maxPaths of: {}", n.left_out_of.join(", "));
                    }
                }
                return Ok(());
            }
            let mut rows = vec![vec![
                "NODE".to_string(),
                "ADDRESSES".into(),
                "STATE".into(),
                "RANGES".into(),
                "PARTS".into(),
                "HOST ROUTES".into(),
                "LEFT OUT OF".into(),
            ]];
            for n in &response.nodes {
                rows.push(vec![
                    n.name.clone(),
                    n.addresses.join(", "),
                    if n.eligible {
                        "eligible".to_string()
                    } else {
                        n.reason.clone()
                    },
                    n.ranges.to_string(),
                    n.parts.to_string(),
                    n.host_routes.to_string(),
                    n.left_out_of.len().to_string(),
                ]);
            }
            print!("{}", align(&rows));
        }
        Command::Diff { all } => {
            let response = client.diff_rib(pb::DiffRibRequest {}).await?.into_inner();
            if json {
                return print_json(&response);
            }
            let mut rows = vec![vec![
                "STATE".to_string(),
                "PREFIX".into(),
                "NEXT HOP".into(),
                "NODE".into(),
                "PATH ID".into(),
            ]];
            for e in &response.entries {
                let state = pb::PathState::try_from(e.state).unwrap_or_default();
                if state == pb::PathState::InSync && !all {
                    continue;
                }
                let name = match state {
                    pb::PathState::InSync => "in sync",
                    pb::PathState::Missing => "missing",
                    pb::PathState::Unexpected => "unexpected",
                    pb::PathState::Foreign => "foreign",
                    pb::PathState::Unspecified => "?",
                };
                rows.push(vec![
                    name.to_string(),
                    e.prefix.clone(),
                    e.next_hop.clone(),
                    e.node.clone(),
                    e.identifier.to_string(),
                ]);
            }
            if rows.len() > 1 {
                print!("{}", align(&rows));
            }
            println!(
                "generation {}: {} in sync, {} missing, {} unexpected (herald's, being withdrawn), {} foreign (not herald's, never touched)",
                response.generation,
                response.in_sync,
                response.missing,
                response.unexpected,
                response.foreign
            );
        }
        Command::Watch => {
            let mut stream = client
                .watch_plan(pb::WatchPlanRequest {})
                .await?
                .into_inner();
            while let Some(message) = stream.message().await? {
                if json {
                    println!("{}", serde_json::to_string(&message)?);
                    continue;
                }
                let what = if message.snapshot {
                    "snapshot"
                } else {
                    "update"
                };
                println!("generation {} ({what})", message.generation);
                for r in &message.added {
                    println!(
                        "  + {} {} via {}",
                        r.prefix,
                        route_kind(r.kind, &r.part_of),
                        hops(&r.next_hops)
                    );
                }
                for r in &message.changed {
                    println!(
                        "  ~ {} {} via {}",
                        r.prefix,
                        route_kind(r.kind, &r.part_of),
                        hops(&r.next_hops)
                    );
                }
                for p in &message.removed {
                    println!("  - {p}");
                }
            }
        }
        Command::Status => {
            let status = client
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            if json {
                return print_json(&status);
            }
            println!("herald {}", status.version);
            if let Some(source) = &status.source {
                let state = if source.synced {
                    "synced"
                } else {
                    "not synced"
                };
                println!(
                    "source:  {} ({state}){}",
                    source.name,
                    error_suffix(&source.last_error)
                );
            }
            println!(
                "plan:    generation {}, {} routes, {} refused IPs",
                status.plan_generation, status.routes, status.refusals
            );
            match &status.gobgp {
                None => println!("gobgpd:  not configured (plan only)"),
                Some(g) => {
                    let state = if g.reachable {
                        "reachable"
                    } else if g.awaiting_first_answer {
                        "no answer yet"
                    } else {
                        "UNREACHABLE"
                    };
                    println!(
                        "gobgpd:  {} ({state}), applied generation {}, {} paths applied, {} pending{}",
                        g.address,
                        g.applied_generation,
                        g.paths_applied,
                        g.pending_operations,
                        error_suffix(&g.last_error)
                    );
                }
            }
            for n in &status.neighbors {
                let add_path = match (n.add_path_ipv4, n.add_path_ipv6) {
                    (true, true) => "ADD-PATH ipv4+ipv6",
                    (true, false) => "ADD-PATH ipv4",
                    (false, true) => "ADD-PATH ipv6",
                    (false, false) => "no ADD-PATH",
                };
                println!(
                    "peer:    {} {} ({add_path}){}",
                    n.address,
                    n.state,
                    if n.description.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", n.description)
                    }
                );
            }
            if let Some(brake) = &status.brake {
                for line in brake_lines(brake) {
                    println!("brake:   {line}");
                }
            }
            for alarm in &status.alarms {
                println!("alarm:   {alarm}");
            }
        }
        Command::Brake { action: None } => {
            let status = client
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            let brake = status.brake.unwrap_or_default();
            if json {
                return print_json(&brake);
            }
            for line in brake_lines(&brake) {
                println!("{line}");
            }
        }
        Command::Brake {
            action: Some(BrakeAction::Release),
        } => {
            let mut control = ControlServiceClient::new(client_channel);
            let response = control
                .release_brake(pb::ReleaseBrakeRequest {})
                .await?
                .into_inner();
            if json {
                return print_json(&response);
            }
            if response.was_engaged {
                println!(
                    "released: plan generation {} no longer holds the lost nodes' paths",
                    response.generation
                );
            } else {
                println!("the brake held nothing; nothing changed");
            }
            for line in brake_lines(&response.brake.unwrap_or_default()) {
                println!("{line}");
            }
        }
    }
    Ok(())
}

fn error_suffix(error: &str) -> String {
    if error.is_empty() {
        String::new()
    } else {
        format!(", last error: {error}")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("heraldctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
