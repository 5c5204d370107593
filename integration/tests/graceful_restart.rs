//! BGP graceful restart and the pool's second replica, with real processes: gobgpd (restarted with
//! `-r`, as the sidecar and the Compose lab restart it) and BIRD 2 with `graceful restart on`, in
//! network namespaces the tests make. host1's kernel table, polled every 50 ms, is the judge: no
//! poll may miss a route or a next hop of the plan.
//!
//! The lab's gobgpd.toml advertises a restart time of 10 s and a deferral time of 15 s; the tests of
//! a restart as deployed (no BGP listener) raise the restart time to 30 s.

use std::time::{Duration, Instant};

use herald_integration::lab::{GobgpdStart, Lab, RouteTable};
use herald_integration::lab_herald::{
    LAB_RANGES, LabHerald, Sampler, big_state, lab_final_table, lab_state, misses,
    start_with_state, write_atomically,
};
use herald_integration::process::wait_until;

/// gobgpd's `restart-time` in integration/lab/gobgpd.toml: how long host1 keeps a gone speaker's routes.
const RESTART_TIME: Duration = Duration::from_secs(10);
/// gobgpd's `deferral-time` there: the longest a restarted gobgpd holds back its routes.
const DEFERRAL_TIME: Duration = Duration::from_secs(15);
/// BIRD 2.0.12 withdraws a gone speaker's routes 3 s after the restart time ends (measured).
const BIRD_FLUSH: Duration = Duration::from_secs(3);
/// Paths of the lab's final table: two /20s over three nodes, two /32s over one.
const LAB_PATHS: usize = 8;

/// A lab with herald (`extra` config) announcing the seed lab's final table on host1.
fn lab_with_herald(extra: &str) -> (Lab, LabHerald, tempfile::TempDir) {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let (herald, _state) = start_with_state(&lab, 0, dir.path(), &lab_state(), extra).unwrap();
    herald.wait_table(
        &lab,
        &lab_final_table("198.19.0.2"),
        Duration::from_secs(15),
        "initial routes",
    );
    (lab, herald, dir)
}

/// Runs the lab's gobgpd as deployed: without a BGP listener, as the Kubernetes and Compose configs
/// have it, so that host1 cannot dial in and gobgpd's own first connection comes 5 to 9 s after it
/// starts (gobgpd's connect loop; 5 to 9 s later again if BIRD turns it down), which is when its
/// graceful-restart deferral can end at the earliest (with a listener, BIRD, retrying every second,
/// can dial in and send its End-of-RIB within a second); and with a restart time of 30 s, which
/// that covers. gobgpd starts again with it and herald's routes are back on host1.
fn as_deployed(lab: &mut Lab, herald: &LabHerald, expected: &RouteTable) {
    lab.edit_gobgpd_config(0, |config| {
        for setting in ["port = 179", "restart-time = 10"] {
            assert!(config.contains(setting), "{config}");
        }
        config
            .replace("port = 179", "port = -1")
            .replace("restart-time = 10", "restart-time = 30")
    })
    .unwrap();
    lab.restart_gobgpd().unwrap();
    herald.wait_table(
        lab,
        expected,
        Duration::from_secs(40),
        "routes with gobgpd as deployed",
    );
}

/// Times gobgpd left restarting mode after every peer's End-of-RIB ("sync finished").
fn syncs(lab: &Lab, speaker: usize) -> usize {
    lab.gobgpd_log(speaker).matches("sync finished").count()
}

fn signal(herald: &LabHerald, signal: i32) {
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(
        unsafe { libc::kill(herald.herald.pid() as i32, signal) },
        0,
        "cannot signal herald"
    );
}

/// Samples that lack a route or next hop of `expected`, of those the sampler kept.
fn missing(expected: &RouteTable, wrong: &[RouteTable]) -> usize {
    wrong.iter().filter(|t| misses(expected, t)).count()
}

/// Waits until `lab`'s gobgpd (speaker `speaker`) has sent host1 its End-of-RIB after a restart:
/// gobgpd logged its `syncs_before + 1`th "sync finished".
fn wait_sync(lab: &Lab, speaker: usize, syncs_before: usize, herald: &LabHerald) {
    // gobgpd dials 5 to 9 s after it starts, and again 5 to 9 s later if that fails.
    wait_until(
        Duration::from_secs(40),
        "gobgpd's End-of-RIB after its restart",
        || (syncs(lab, speaker) > syncs_before).then_some(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n--- herald ---\n{}",
            lab.diagnostics(),
            herald.herald.log_text()
        )
    });
}

#[test]
fn gobgpd_killed_and_restarted_loses_no_route() {
    let (mut lab, herald, _dir) = lab_with_herald("");
    let expected = lab_final_table("198.19.0.2");
    as_deployed(&mut lab, &herald, &expected);
    let sampler = Sampler::start(lab.host1_ns().to_string(), expected.clone());
    for round in 1..=2 {
        let before = syncs(&lab, 0);
        lab.kill_gobgpd(libc::SIGKILL).unwrap();
        let killed = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        lab.start_gobgpd_of(0, GobgpdStart::Restarting).unwrap();
        // gobgpd dials 5 to 9 s after it starts, and again 5 to 9 s later if BIRD turned that down.
        let session = lab.wait_established(Duration::from_secs(30)).unwrap();
        wait_sync(&lab, 0, before, &herald);
        eprintln!(
            "round {round}: gobgpd back 1 s after SIGKILL; session up {session:?} after its start; End-of-RIB sent {:?} after the kill",
            killed.elapsed()
        );
        // What host1 does with the End-of-RIB (drop what gobgpd did not send again) takes a moment.
        std::thread::sleep(Duration::from_secs(1));
    }
    let (samples, wrong) = sampler.finish();
    let log = herald.herald.log_text();
    assert!(samples > 100, "{samples} samples");
    assert!(
        wrong.is_empty(),
        "{} of {samples} polls differed from the plan ({} missing a route): {:?}\n{log}",
        wrong.len(),
        missing(&expected, &wrong),
        wrong.first()
    );
    let fits = log
        .matches(
            "herald's plan is in the restarted gobgpd before its graceful-restart deferral ended",
        )
        .count();
    assert_eq!(
        fits, 2,
        "herald judged {fits} of 2 restarts as fitting:\n{log}"
    );
    assert!(
        log.contains("deferral_s=15"),
        "herald logs gobgpd's deferral time:\n{log}"
    );
    let status = herald.ctl(&["status"]);
    assert!(!status.contains("alarm"), "{status}");
    let push_ms: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("before its graceful-restart deferral"))
        .filter_map(|l| l.split("push_ms=").nth(1)?.split_whitespace().next())
        .collect();
    eprintln!(
        "{samples} polls of host1 across 2 SIGKILLs of gobgpd, none missing a route; herald's pushes into the restarted gobgpd took {push_ms:?} ms"
    );
}

#[test]
fn a_large_plan_is_in_a_restarted_gobgpd_before_its_deferral_ends() {
    let mut lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    // 3,400 Local Services with an endpoint on each node: 10,200 /32 paths, and the two ranges.
    let (herald, _state) = start_with_state(&lab, 0, dir.path(), &big_state(3400, 3), "").unwrap();
    let plan = wait_until(Duration::from_secs(30), "herald's plan", || {
        herald.planned_table().filter(|t| t.len() > 3000)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            herald.ctl(&["status"]),
            herald.herald.log_text()
        )
    });
    let paths: usize = plan.values().map(|hops| hops.len()).sum();
    herald.wait_table(&lab, &plan, Duration::from_secs(60), "the plan on host1");
    as_deployed(&mut lab, &herald, &plan);
    let sampler = Sampler::start(lab.host1_ns().to_string(), plan.clone());
    let before = syncs(&lab, 0);
    lab.kill_gobgpd(libc::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    lab.start_gobgpd_of(0, GobgpdStart::Restarting).unwrap();
    wait_until(Duration::from_secs(20), "herald's judgement", || {
        herald
            .herald
            .log_text()
            .contains("before its graceful-restart deferral ended")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.herald.log_text()));
    let plan_in = started.elapsed();
    wait_sync(&lab, 0, before, &herald);
    let end_of_rib = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (samples, wrong) = sampler.finish();
    let log = herald.herald.log_text();
    assert!(
        wrong.is_empty(),
        "{} of {samples} polls differed ({} missing a route)\n{log}",
        wrong.len(),
        missing(&plan, &wrong)
    );
    assert!(
        !log.contains("deferral ended before herald's plan was in"),
        "{log}"
    );
    let push_ms = log
        .lines()
        .find(|l| l.contains("before its graceful-restart deferral"))
        .and_then(|l| {
            l.split("push_ms=")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        });
    eprintln!(
        "{paths} paths: herald's plan in the restarted gobgpd {plan_in:?} after its start (push {push_ms:?} ms), \
         gobgpd's End-of-RIB {end_of_rib:?} after; {samples} polls of host1, none missing a route"
    );
}

#[test]
fn gobgpd_down_longer_than_its_restart_time_loses_its_routes_until_it_returns() {
    let (mut lab, herald, _dir) = lab_with_herald("");
    let expected = lab_final_table("198.19.0.2");
    lab.kill_gobgpd(libc::SIGKILL).unwrap();
    let killed = Instant::now();
    // Graceful restart keeps the routes for the restart time, not for ever.
    lab.wait_for_table(|t| *t == expected, Duration::from_secs(1))
        .expect("routes kept right after the kill");
    lab.wait_for_table(
        RouteTable::is_empty,
        RESTART_TIME + BIRD_FLUSH + Duration::from_secs(10),
    )
    .expect("routes withdrawn");
    let kept = killed.elapsed();
    assert!(
        kept >= RESTART_TIME,
        "host1 dropped the routes {kept:?} after the kill, before the restart time"
    );
    lab.start_gobgpd_of(0, GobgpdStart::Restarting).unwrap();
    let back = herald.wait_table(
        &lab,
        &expected,
        Duration::from_secs(20),
        "routes back with gobgpd",
    );
    eprintln!(
        "restart time {RESTART_TIME:?}: host1 kept the routes {kept:?} after the kill; back {back:?} after gobgpd's restart"
    );
}

#[test]
fn a_router_without_graceful_restart_gets_a_restarted_gobgpd_s_routes_at_once() {
    let (mut lab, herald, _dir) = lab_with_herald("");
    let expected = lab_final_table("198.19.0.2");
    // The trap of osrg/gobgp#2596: gobgpd -r holds back its routes from a neighbor without graceful
    // restart until its deferral time ends. herald has it send them.
    lab.reconfigure_bird(|c| c.replace("graceful restart on;", "graceful restart off;"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.wait_established(Duration::from_secs(15)).unwrap();
    herald.wait_table(
        &lab,
        &expected,
        Duration::from_secs(15),
        "routes after BIRD's reconfiguration",
    );
    let status = herald.ctl(&["status"]);
    assert!(
        status.contains("graceful restart configured in gobgpd but not advertised by the neighbor"),
        "{status}"
    );
    lab.kill_gobgpd(libc::SIGKILL).unwrap();
    // Without graceful restart host1 drops the routes with the session.
    lab.wait_for_table(RouteTable::is_empty, Duration::from_secs(5))
        .expect("routes dropped with the session");
    lab.start_gobgpd_of(0, GobgpdStart::Restarting).unwrap();
    let restarted = Instant::now();
    let back = herald.wait_table(
        &lab,
        &expected,
        DEFERRAL_TIME - Duration::from_secs(3),
        "routes back before gobgpd's deferral time",
    );
    // herald logs this once gobgpd has answered the call that sends the routes: they may reach
    // host1 first.
    wait_until(Duration::from_secs(5), "the warning", || {
        herald
            .herald
            .log_text()
            .contains("holds back its routes from a neighbor that does not do graceful restart")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.herald.log_text()));
    let log = herald.herald.log_text();
    let gobgpd = lab.gobgpd_log(0);
    eprintln!(
        "router without graceful restart: routes back {back:?} after gobgpd's restart with -r (its deferral time: {DEFERRAL_TIME:?}); \
         {} soft resets out asked; {:?} since the restart",
        log.matches("asked it to send them").count() + log.matches("asked gobgpd again").count(),
        restarted.elapsed()
    );
    assert!(!gobgpd.contains("deferral timer expired"), "{gobgpd}");
}

#[test]
fn a_restarted_gobgpd_that_gets_the_plan_too_late_raises_an_alarm() {
    const METRICS_PORT: u16 = 9181;
    let (mut lab, herald, _dir) = lab_with_herald(&format!(
        "metrics: {{listen: '127.0.0.1:{METRICS_PORT}'}}\n"
    ));
    let expected = lab_final_table("198.19.0.2");
    // herald hangs while gobgpd restarts, and comes back only after gobgpd's End-of-RIB.
    signal(&herald, libc::SIGSTOP);
    let before = syncs(&lab, 0);
    lab.kill_gobgpd(libc::SIGKILL).unwrap();
    lab.start_gobgpd_of(0, GobgpdStart::Restarting).unwrap();
    let started = Instant::now();
    wait_sync(&lab, 0, before, &herald);
    let sync = started.elapsed();
    lab.wait_for_table(RouteTable::is_empty, Duration::from_secs(5))
        .expect("host1 dropped what gobgpd did not send again");
    signal(&herald, libc::SIGCONT);
    let status = herald.wait_status(
        "before herald's plan of 8 paths was in",
        Duration::from_secs(10),
        "the alarm",
    );
    assert!(
        status.contains("198.19.15.254 (before herald began)"),
        "{status}"
    );
    // The metrics follow the status on a task of their own: wait for them to catch up.
    let scrape = || {
        let out = lab
            .pool_cmd("curl")
            .args(["-sf", &format!("http://127.0.0.1:{METRICS_PORT}/metrics")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let metrics = wait_until(Duration::from_secs(5), "the miss counted", || {
        let m = scrape();
        m.contains("herald_gobgp_restart_deferral_misses_total 1")
            .then_some(m)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape()));
    assert!(
        metrics.contains("herald_gobgp_restart_deferral_seconds 15"),
        "{metrics}"
    );
    assert!(
        herald
            .herald
            .log_text()
            .contains("graceful-restart deferral ended before herald's plan was in")
    );
    herald.wait_table(
        &lab,
        &expected,
        Duration::from_secs(5),
        "routes back with herald",
    );
    eprintln!(
        "gobgpd sent End-of-RIB {sync:?} after its restart with herald stopped; alarm, metric and warning raised when herald came back"
    );
}

/// Two speakers (the pool Deployment's two replicas), each with its herald, reading one cluster.
struct Pool {
    lab: Lab,
    heralds: Vec<LabHerald>,
    state: std::path::PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

impl Pool {
    fn start() -> Pool {
        let mut lab = Lab::start().expect("lab");
        assert_eq!(lab.add_speaker().expect("second speaker"), 1);
        let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let (first, state) = start_with_state(&lab, 0, dirs[0].path(), &lab_state(), "").unwrap();
        let second = LabHerald::start_on(&lab, 1, dirs[1].path(), &state, LAB_RANGES, "").unwrap();
        let pool = Pool {
            lab,
            heralds: vec![first, second],
            state,
            _dirs: dirs,
        };
        pool.heralds[0].wait_table(
            &pool.lab,
            &lab_final_table("198.19.0.2"),
            Duration::from_secs(15),
            "initial routes",
        );
        for speaker in 0..2 {
            pool.wait_routes_from(speaker, LAB_PATHS, Duration::from_secs(15));
        }
        pool
    }

    /// Waits until BIRD holds `paths` routes from speaker `speaker`.
    fn wait_routes_from(&self, speaker: usize, paths: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        wait_until(
            timeout,
            &format!("{paths} routes from speaker {speaker}"),
            || (self.lab.routes_from(speaker).ok()? == paths).then_some(()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}\n{}",
                self.lab.routes_from(speaker),
                self.lab.diagnostics()
            )
        });
        started.elapsed()
    }

    /// Stops a speaker (herald, then gobgpd) with `signal`: SIGTERM as when its pod is deleted,
    /// SIGKILL as when its node fails.
    fn stop(&mut self, speaker: usize, signal: i32) {
        self.heralds[speaker].herald.stop(signal).unwrap();
        self.lab.kill_gobgpd_of(speaker, signal).unwrap();
    }

    /// Starts a speaker again and waits until BIRD has its routes: `start` Fresh as a new pod,
    /// Restarting as containers restarted in their pod.
    fn start_again(&mut self, speaker: usize, start: GobgpdStart) -> Duration {
        let started = Instant::now();
        self.lab.start_gobgpd_of(speaker, start).unwrap();
        self.heralds[speaker].restart().unwrap();
        self.wait_routes_from(speaker, LAB_PATHS, Duration::from_secs(20));
        started.elapsed()
    }
}

#[test]
fn killing_one_of_two_speakers_loses_no_route() {
    let mut pool = Pool::start();
    let expected = lab_final_table("198.19.0.2");
    let sampler = Sampler::start(pool.lab.host1_ns().to_string(), expected.clone());
    pool.stop(0, libc::SIGKILL);
    let killed = Instant::now();
    // host1 keeps the first speaker's routes for its restart time, then has the second's alone.
    pool.wait_routes_from(0, 0, RESTART_TIME + BIRD_FLUSH + Duration::from_secs(10));
    let gone = killed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let back = pool.start_again(0, GobgpdStart::Restarting);
    std::thread::sleep(Duration::from_secs(1));
    let (samples, wrong) = sampler.finish();
    assert!(samples > 100, "{samples} samples");
    assert!(
        wrong.is_empty(),
        "{} of {samples} polls differed ({} missing a route): {:?}",
        wrong.len(),
        missing(&expected, &wrong),
        wrong.first()
    );
    assert_eq!(pool.lab.routes_from(1).unwrap(), LAB_PATHS);
    eprintln!(
        "one of two speakers SIGKILLed: its routes left host1 {gone:?} after the kill, the other speaker's stayed; \
         back {back:?} after its restart; {samples} polls, none missing a route"
    );
}

#[test]
fn a_rolling_restart_of_both_speakers_loses_no_route() {
    let mut pool = Pool::start();
    let expected = lab_final_table("198.19.0.2");
    let sampler = Sampler::start(pool.lab.host1_ns().to_string(), expected.clone());
    let mut took = Vec::new();
    for speaker in 0..2 {
        // As Kubernetes replaces a pod: SIGTERM (gobgpd's Cease makes host1 drop its routes at
        // once), a new pod (gobgpd without -r), the next pod once the new one's routes are in.
        pool.stop(speaker, libc::SIGTERM);
        pool.wait_routes_from(speaker, 0, Duration::from_secs(5));
        took.push(pool.start_again(speaker, GobgpdStart::Fresh));
    }
    let (samples, wrong) = sampler.finish();
    assert!(samples > 20, "{samples} samples");
    assert!(
        wrong.is_empty(),
        "{} of {samples} polls differed ({} missing a route): {:?}",
        wrong.len(),
        missing(&expected, &wrong),
        wrong.first()
    );
    eprintln!(
        "rolling restart of both speakers: each back at host1 {took:?} after its start; {samples} polls, none missing a route"
    );
}

#[test]
fn a_plan_change_while_one_speaker_is_down_reaches_host1_through_the_other() {
    let mut pool = Pool::start();
    let on = |node: &str| lab_state().replace("nodeName: node1", &format!("nodeName: {node}"));
    // A deleted pod: its routes leave host1 at once, the other speaker carries every change exactly.
    pool.stop(0, libc::SIGTERM);
    write_atomically(&pool.state, &on("node2")).unwrap();
    let moved = pool.heralds[1].wait_table(
        &pool.lab,
        &lab_final_table("198.19.0.3"),
        Duration::from_secs(5),
        "the move through the second speaker",
    );
    pool.start_again(0, GobgpdStart::Fresh);
    pool.heralds[0].wait_table(
        &pool.lab,
        &lab_final_table("198.19.0.3"),
        Duration::from_secs(5),
        "both speakers agree",
    );

    // A failed node: host1 keeps the speaker's last routes for its restart time (graceful restart),
    // so a next hop the plan drops meanwhile stays beside the new one until then.
    pool.stop(1, libc::SIGKILL);
    let killed = Instant::now();
    write_atomically(&pool.state, &lab_state()).unwrap();
    let back = lab_final_table("198.19.0.2");
    let added = pool
        .lab
        .wait_for_table(|t| !misses(&back, t), Duration::from_secs(5))
        .expect("the new next hop through the first speaker");
    let added_after = killed.elapsed();
    let stale = added != back;
    pool.heralds[0].wait_table(
        &pool.lab,
        &back,
        RESTART_TIME + BIRD_FLUSH + Duration::from_secs(10),
        "the stale next hop gone",
    );
    let exact_after = killed.elapsed();
    assert!(
        exact_after >= RESTART_TIME,
        "the failed speaker's routes left after {exact_after:?}, before its restart time"
    );
    pool.start_again(1, GobgpdStart::Restarting);
    pool.heralds[1].wait_table(
        &pool.lab,
        &back,
        Duration::from_secs(5),
        "both speakers agree again",
    );
    eprintln!(
        "plan change with one speaker deleted: host1 followed in {moved:?}; with one speaker failed: new next hop in {added_after:?} \
         (old one kept beside it: {stale}), exact {exact_after:?} after the failure"
    );
}
