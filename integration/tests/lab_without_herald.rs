//! Proves the lab itself, without herald: paths added to gobgpd become host1 kernel routes,
//! several paths of one prefix become one ECMP route, for IPv4 and IPv6, and withdrawing one path
//! removes exactly its next hop. Needs root and gobgpd/BIRD (scripts/install-deps.sh).
//!
//! The two tests run in parallel, which also proves that labs do not interfere.

use std::time::{Duration, Instant};

use anyhow::Result;
use herald_api::gobgp::v3::gobgp_api_client::GobgpApiClient;
use herald_api::gobgp::v3::{Family, GetBgpRequest, GetTableRequest, TableType, family};
use herald_integration::lab::{Lab, POOL_ASN, RouteTable};

const TIMEOUT: Duration = Duration::from_secs(10);

/// host1's `ip route` in the original lab once the cluster IP range and the customer service's
/// cluster IP are advertised (there with `dev eth0` too).
const LAB_ROUTES_V4: &str = "\
198.19.32.0/20 proto bird
    nexthop via 198.19.0.1 dev eth0 weight 1
    nexthop via 198.19.0.2 dev eth0 weight 1
    nexthop via 198.19.0.3 dev eth0 weight 1
198.19.38.11 via 198.19.0.2 dev eth0 proto bird
";

fn table(routes: &[(&str, &[&str])]) -> RouteTable {
    routes
        .iter()
        .map(|(prefix, hops)| {
            (
                prefix.parse().unwrap(),
                hops.iter().map(|hop| hop.parse().unwrap()).collect(),
            )
        })
        .collect()
}

/// `gobgp global rib add|del PREFIX nexthop HOP identifier ID -a FAMILY`, as in the note.
fn rib(lab: &Lab, op: &str, prefix: &str, hop: &str, id: u32, family: &str) -> Result<()> {
    lab.gobgp(&[
        "global",
        "rib",
        op,
        prefix,
        "nexthop",
        hop,
        "identifier",
        &id.to_string(),
        "-a",
        family,
    ])
    .map(drop)
}

#[test]
fn gobgp_paths_become_ecmp_routes_on_host1() -> Result<()> {
    let start = Instant::now();
    let lab = Lab::start()?;
    eprintln!("lab up, session established, in {:?}", start.elapsed());

    for n in 1..=3 {
        rib(
            &lab,
            "add",
            "198.19.32.0/20",
            &format!("198.19.0.{n}"),
            n,
            "ipv4",
        )?;
    }
    rib(&lab, "add", "198.19.38.11/32", "198.19.0.2", 2, "ipv4")?;
    for n in 1..=2 {
        rib(
            &lab,
            "add",
            "fd00:198:19:32::/64",
            &format!("fd00:198:19::{n}"),
            n,
            "ipv6",
        )?;
    }
    let added = Instant::now();
    let expected = table(&[
        (
            "198.19.32.0/20",
            &["198.19.0.1", "198.19.0.2", "198.19.0.3"],
        ),
        ("198.19.38.11/32", &["198.19.0.2"]),
        ("fd00:198:19:32::/64", &["fd00:198:19::1", "fd00:198:19::2"]),
    ]);
    lab.wait_for_table(|routes| *routes == expected, TIMEOUT)?;
    eprintln!("routes on host1 {:?} after the last add", added.elapsed());
    assert_eq!(lab.host1_routes_v4()?, LAB_ROUTES_V4);

    rib(&lab, "del", "198.19.32.0/20", "198.19.0.2", 2, "ipv4")?;
    rib(
        &lab,
        "del",
        "fd00:198:19:32::/64",
        "fd00:198:19::1",
        1,
        "ipv6",
    )?;
    let deleted = Instant::now();
    let routes = lab.wait_for_routes(
        |text| !text.contains("198.19.0.2 dev eth0 weight") && !text.contains("::1 dev"),
        TIMEOUT,
    )?;
    eprintln!(
        "withdrawals on host1 {:?} after the last del",
        deleted.elapsed()
    );
    // The only change is the two next hops: the /20 keeps its two others, the /32 still goes
    // through node1, and the IPv6 route is left with one path.
    assert_eq!(
        lab.host1_table()?,
        table(&[
            ("198.19.32.0/20", &["198.19.0.1", "198.19.0.3"]),
            ("198.19.38.11/32", &["198.19.0.2"]),
            ("fd00:198:19:32::/64", &["fd00:198:19::2"]),
        ]),
        "host1's routes:\n{routes}"
    );
    Ok(())
}

#[tokio::test]
async fn gobgpd_restarts_and_is_reachable_over_grpc() -> Result<()> {
    // Blocking lab calls are fine here: the current-thread runtime runs only this test.
    let mut lab = Lab::start()?;
    let mut gobgp = GobgpApiClient::new(lab.pool_channel(lab.gobgp_api_port()).await?);
    let global = gobgp
        .get_bgp(GetBgpRequest {})
        .await?
        .into_inner()
        .global
        .unwrap_or_default();
    assert_eq!(global.asn, POOL_ASN);

    rib(&lab, "add", "198.19.48.0/20", "198.19.0.3", 3, "ipv4")?;
    let ipv4 = Family {
        afi: family::Afi::Ip.into(),
        safi: family::Safi::Unicast.into(),
    };
    let rib_size = gobgp
        .get_table(GetTableRequest {
            table_type: TableType::Global.into(),
            family: Some(ipv4),
            name: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!((rib_size.num_destination, rib_size.num_path), (1, 1));
    lab.wait_for_table(
        |routes| *routes == table(&[("198.19.48.0/20", &["198.19.0.3"])]),
        TIMEOUT,
    )?;

    // A crashed gobgpd's routes stay on host1 (graceful restart: BIRD keeps them for gobgpd's
    // restart time)...
    lab.kill_gobgpd(libc::SIGKILL)?;
    let killed = Instant::now();
    assert_eq!(
        lab.host1_table()?,
        table(&[("198.19.48.0/20", &["198.19.0.3"])])
    );

    // ...until a restarted one comes back with an empty RIB: its End-of-RIB tells host1 to drop
    // what it kept.
    lab.start_gobgpd()?;
    lab.wait_established(TIMEOUT)?;
    eprintln!(
        "session re-established {:?} after SIGKILL",
        killed.elapsed()
    );
    lab.wait_for_table(RouteTable::is_empty, TIMEOUT)?;
    eprintln!(
        "routes gone from host1 {:?} after SIGKILL",
        killed.elapsed()
    );
    rib(&lab, "add", "198.19.48.0/20", "198.19.0.1", 1, "ipv4")?;
    lab.wait_for_table(
        |routes| *routes == table(&[("198.19.48.0/20", &["198.19.0.1"])]),
        TIMEOUT,
    )?;

    let restart = Instant::now();
    lab.restart_gobgpd()?;
    let established = lab.wait_established(TIMEOUT)?;
    eprintln!(
        "session re-established {:?} after restart_gobgpd ({established:?} waiting)",
        restart.elapsed()
    );
    lab.wait_for_table(RouteTable::is_empty, TIMEOUT)?;
    Ok(())
}
