//! herald's plan API under a flood, against a running `herald run` (this build's binary, file
//! source, 2,000 Services): 1,000 WatchPlan streams from 50 peers (one address each, 127.0.0.x)
//! and 40 clients asking ListRoutes at once that never read the answer (slow readers), while
//! another calls ListRoutes in a loop. What is above a limit is refused with
//! RESOURCE_EXHAUSTED and the limit's name (asserted, and counted in /metrics); what is within
//! is served (every accepted stream gets its snapshot); the health listener answers throughout;
//! herald's memory stays bounded (RSS figures printed; a loose bound asserted, far above what the
//! limits allow and far below what 1,000 unlimited streams of a full plan would take). How the flood
//! affects the reconciler's latency is a benchmark (service/benches/api_flood.rs), not this test.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use herald_api::herald::v1 as pb;
use herald_api::herald::v1::plan_service_client::PlanServiceClient;
use herald_integration::lab_herald::big_state;
use herald_integration::process::{Herald, free_port};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Enough that a ListRoutes answer (~1.5 MB) is well above what HTTP/2 buffers for a stream
/// that is not read (its 64 KiB window, and hyper's 400 KiB send buffer).
const SERVICES: u32 = 6000;
const PEERS: u8 = 50;
const STREAMS_PER_PEER: usize = 20;
const LIST_CLIENTS: u8 = 40;
/// ListRoutes calls of a well-behaved client while the slow readers hold their places, and after.
const LIST_CALLS: usize = 20;
const MAX_CONCURRENT_CALLS: usize = 8;
/// herald's defaults (config::ApiLimits).
const MAX_WATCH_STREAMS: usize = 128;
const MAX_WATCH_STREAMS_PER_PEER: usize = 16;

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

async fn channel(port: u16, from: Ipv4Addr) -> Channel {
    connect(port, from, None).await
}

/// A connection from `from`; with `window`, an HTTP/2 stream window that small: a reader that
/// takes its answers slowly, which makes herald hold each answer longer.
async fn connect(port: u16, from: Ipv4Addr, window: Option<u32>) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .local_address(Some(IpAddr::V4(from)))
        .initial_stream_window_size(window)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"))
}

fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: herald\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn counter(metrics: &str, limit: &str) -> u64 {
    let prefix = format!("herald_api_refused_calls_total{{limit=\"{limit}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A ListRoutes call over raw HTTP/2 whose answer is never read: herald's answer (hundreds of KB)
/// stalls on the stream's 64 KiB window. Dropping it closes the connection.
struct SlowReader {
    /// grpc-status of a trailers-only answer (a refusal); None when the answer started.
    grpc_status: Option<String>,
    message: String,
    _response: http::Response<h2::RecvStream>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for SlowReader {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

async fn slow_reader(port: u16, from: Ipv4Addr) -> SlowReader {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post(format!(
        "http://127.0.0.1:{port}/herald.v1.PlanService/ListRoutes"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    // An empty ListRoutesRequest: uncompressed, length 0.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("an answer's head")
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let grpc_status = header("grpc-status");
    let message = header("grpc-message").unwrap_or_default();
    SlowReader {
        grpc_status,
        message,
        _response: response,
        connection,
    }
}

/// Opens `count` WatchPlan streams over one connection from `from`; returns the accepted streams
/// (each has delivered its snapshot) and the refusals.
async fn open_streams(
    port: u16,
    from: Ipv4Addr,
    count: usize,
) -> (
    Vec<tonic::Streaming<pb::WatchPlanResponse>>,
    Vec<tonic::Status>,
) {
    let client =
        PlanServiceClient::new(channel(port, from).await).max_decoding_message_size(64 << 20);
    let calls = (0..count).map(|_| {
        let mut client = client.clone();
        async move {
            let mut stream = client
                .watch_plan(pb::WatchPlanRequest {})
                .await?
                .into_inner();
            let first = tokio::time::timeout(Duration::from_secs(60), stream.message()).await;
            match first {
                Ok(Ok(Some(m))) if m.snapshot => Ok(stream),
                other => panic!("an accepted stream from {from} got no snapshot: {other:?}"),
            }
        }
    });
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for result in futures::future::join_all(calls).await {
        match result {
            Ok(stream) => accepted.push(stream),
            Err(status) => refused.push(status),
        }
    }
    (accepted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_refused_past_the_limits_and_herald_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster-state.yaml");
    std::fs::write(&state, big_state(SERVICES, 2)).unwrap();
    let (api, health, metrics_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("herald.yaml");
    std::fs::write(
        &config,
        format!(
            "serviceClusterIPs: [{{cidr: 198.19.32.0/20}}]\nserviceExternalIPs: [{{cidr: 198.19.48.0/20}}]\n\
             source: {{file: {}}}\napi: {{listen: '127.0.0.1:{api}', healthListen: '127.0.0.1:{health}', limits: {{callTimeout: 10m}}}}\n\
             metrics: {{listen: '127.0.0.1:{metrics_port}'}}\n",
            state.display()
        ),
    )
    .unwrap();
    // The default limits, but for callTimeout: the slow readers must hold their places for as long
    // as the test runs, however slow the machine (a slow reader is cut off after callTimeout).
    let herald = Herald::start(&config, api, dir.path().join("herald.log"), &[]).unwrap();
    let pid = herald.pid();

    // Ready: a plan of the 2,000 Services.
    let mut probe = None;
    for _ in 0..200 {
        if let Ok(ch) = Endpoint::from_shared(format!("http://127.0.0.1:{api}"))
            .unwrap()
            .connect()
            .await
        {
            let mut client = PlanServiceClient::new(ch).max_decoding_message_size(64 << 20);
            if let Ok(r) = client.list_routes(pb::ListRoutesRequest::default()).await
                && r.get_ref().routes.len() > SERVICES as usize
            {
                probe = Some(client);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut probe =
        probe.unwrap_or_else(|| panic!("herald never served its plan\n{}", herald.log_text()));
    let routes = probe
        .list_routes(pb::ListRoutesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .routes
        .len();
    let rss_before = rss_kib(pid, "VmRSS:");

    // One peer opens 20 streams: 16 get in, 4 are refused by the per-peer limit.
    let (mut streams, refused_one) =
        open_streams(api, Ipv4Addr::new(127, 0, 0, 200), STREAMS_PER_PEER).await;
    assert_eq!(
        (streams.len(), refused_one.len()),
        (
            MAX_WATCH_STREAMS_PER_PEER,
            STREAMS_PER_PEER - MAX_WATCH_STREAMS_PER_PEER
        )
    );
    for status in &refused_one {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("maxWatchStreamsPerPeer"),
            "{}",
            status.message()
        );
    }

    // The flood: 49 more peers with 20 streams each (980; 1,000 in all), and 40 clients asking
    // ListRoutes at once that never read the answer (raw HTTP/2: the answer stalls on its window).
    let slow = (0..LIST_CLIENTS).map(|i| slow_reader(api, Ipv4Addr::new(127, 0, 1, 1 + i)));
    let watchers =
        (1..PEERS).map(|i| open_streams(api, Ipv4Addr::new(127, 0, 0, i), STREAMS_PER_PEER));
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..1200 {
            peak = peak.max(rss_kib(pid, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    let started = Instant::now();
    let (watched, slow) = tokio::join!(
        futures::future::join_all(watchers),
        futures::future::join_all(slow)
    );
    let flood = started.elapsed();

    // During the flood's aftermath (streams open): the health listener answers, SERVING.
    let mut health_client = tonic_health::pb::health_client::HealthClient::new(
        channel(health, Ipv4Addr::LOCALHOST).await,
    );
    let serving = health_client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "herald.v1.PlanService".into(),
        })
        .await
        .expect("the health listener answers")
        .into_inner()
        .status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut refused_total = Vec::new();
    for (accepted, refused) in watched {
        streams.extend(accepted);
        refused_total.extend(refused);
    }
    assert_eq!(
        streams.len(),
        MAX_WATCH_STREAMS,
        "streams accepted of 1,000"
    );
    assert_eq!(
        refused_total.len(),
        (PEERS as usize - 1) * STREAMS_PER_PEER - (MAX_WATCH_STREAMS - MAX_WATCH_STREAMS_PER_PEER)
    );
    for status in &refused_total {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("maxWatchStreams"),
            "{}",
            status.message()
        );
    }
    // ListRoutes: as many slow readers hold a place as maxConcurrentCalls allows; the others
    // are refused; while the places are held, every other ListRoutes is refused too.
    let held = slow.iter().filter(|r| r.grpc_status.is_none()).count();

    let slow_refused: Vec<&SlowReader> = slow.iter().filter(|r| r.grpc_status.is_some()).collect();
    assert_eq!(held, MAX_CONCURRENT_CALLS, "slow readers holding a place");
    for r in &slow_refused {
        assert_eq!(
            r.grpc_status.as_deref(),
            Some("8"),
            "RESOURCE_EXHAUSTED: {:?}",
            r.message
        );
        assert!(r.message.contains("maxConcurrentCalls"), "{}", r.message);
    }
    let mut list_refused = Vec::new();
    for _ in 0..LIST_CALLS {
        let status = probe
            .list_routes(pb::ListRoutesRequest::default())
            .await
            .expect_err("all places are held");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("maxConcurrentCalls"),
            "{}",
            status.message()
        );
        list_refused.push(status);
    }
    // The slow readers go: their places are free again.
    drop(slow_refused);
    drop(slow);
    let (mut listed_ok, mut refused_while_freeing) = (0, 0);
    for _ in 0..100 {
        match probe.list_routes(pb::ListRoutesRequest::default()).await {
            Ok(_) => {
                listed_ok += 1;
                if listed_ok == LIST_CALLS {
                    break;
                }
            }
            // The server may not have seen every connection close yet.
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused_while_freeing += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("ListRoutes: {status:?}"),
        }
    }
    assert_eq!(
        listed_ok, LIST_CALLS,
        "ListRoutes answered once the slow readers went"
    );
    let list_refused_total =
        list_refused.len() + refused_while_freeing + (LIST_CLIENTS as usize - MAX_CONCURRENT_CALLS);

    // Every refusal is in the metrics, by limit.
    let text = metrics(metrics_port);
    // In the flood, a peer may reach its own limit before all of them reach the total.
    let per_peer_in_flood = refused_total
        .iter()
        .filter(|s| s.message().contains("maxWatchStreamsPerPeer"))
        .count();
    assert_eq!(
        counter(&text, "watch_streams_per_peer"),
        (refused_one.len() + per_peer_in_flood) as u64,
        "{text}"
    );
    assert_eq!(
        counter(&text, "watch_streams"),
        (refused_total.len() - per_peer_in_flood) as u64,
        "{text}"
    );
    assert_eq!(
        counter(&text, "concurrent_calls"),
        list_refused_total as u64
    );

    // A request above maxRequestBytes (64 KiB): refused before it is decoded. tonic answers that
    // one itself, with OUT_OF_RANGE (not RESOURCE_EXHAUSTED: see RELIABILITY.md), and the limit.
    let huge = pb::ListRoutesRequest {
        service: "x".repeat(100 << 10),
        ..Default::default()
    };
    let status = probe
        .list_routes(huge)
        .await
        .expect_err("a 100 KiB request");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("the limit is: 65536 bytes"),
        "{}",
        status.message()
    );

    // Closed streams free their places: with all closed, a new one gets in.
    drop(streams);
    let mut reopened = None;
    for _ in 0..100 {
        let (accepted, _) = open_streams(api, Ipv4Addr::new(127, 0, 0, 201), 1).await;
        if let Some(s) = accepted.into_iter().next() {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "no stream got in after all closed");

    sampler.abort();
    let rss_peak = rss_kib(pid, "VmHWM:");
    let rss_after = rss_kib(pid, "VmRSS:");
    println!(
        "flood: {} WatchPlan streams asked, {} accepted, {} refused; ListRoutes ({routes} routes): {} slow readers, {MAX_CONCURRENT_CALLS} held a place, {list_refused_total} calls refused; {:.1} s",
        PEERS as usize * STREAMS_PER_PEER,
        MAX_WATCH_STREAMS,
        refused_one.len() + refused_total.len(),
        LIST_CLIENTS,
        flood.as_secs_f64()
    );
    println!(
        "herald RSS: {} MiB before the flood, peak {} MiB, {} MiB after",
        rss_before / 1024,
        rss_peak / 1024,
        rss_after / 1024
    );
    // Loose: far above what the limits let through, far below 1,000 streams of unbounded buffers.
    assert!(
        rss_peak < rss_before + 256 * 1024,
        "herald's RSS rose from {rss_before} KiB to {rss_peak} KiB"
    );
    assert!(
        herald.log_text().lines().all(|l| !l.contains("panicked")),
        "herald panicked:\n{}",
        herald.log_text()
    );
}
