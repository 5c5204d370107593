//! BGP graceful restart (RFC 4724) from herald's side: whether a restarted gobgpd got herald's
//! whole plan before it told its peers it had sent everything.
//!
//! A gobgpd started with `-r` (restarting mode) holds back its routes from every graceful-restart
//! neighbor until it has every neighbor's End-of-RIB, or until `deferral-time` seconds after a
//! session came up (gobgpd 3.10 `pkg/server/server.go`); then it sends its RIB and its own
//! End-of-RIB, and each peer drops the routes it kept from before the restart that gobgpd did not
//! send again. A router that exports nothing to gobgpd sends its End-of-RIB at once (BIRD 2.0.12:
//! 3 s after the session is up), so the deferral usually ends seconds after gobgpd's first session,
//! long before `deferral-time`: herald's plan has to be in gobgpd by then.
//!
//! herald cannot know in advance when a router's End-of-RIB will come. It judges afterwards, from
//! gobgpd's own account (`ListPeer`): a peer that gobgpd no longer holds back, whose session came up
//! with the restarted gobgpd before herald's push was through, got an End-of-RIB without herald's
//! whole plan, and dropped routes for a moment.
//!
//! The trap of upstream osrg/gobgp#2596: in restarting mode gobgpd also holds back its routes from
//! a neighbor that does not do graceful restart (BIRD `graceful restart off`), until the deferral
//! time ends (360 s by default), and sends it nothing of what it held when the deferral ends on the
//! other peers' End-of-RIB. herald asks gobgpd to send such a neighbor its RIB again (a soft reset
//! out, which leaves the session up) after each push until gobgpd leaves restarting mode.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A BGP neighbor of gobgpd, as graceful restart sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRestart {
    pub address: String,
    pub established: bool,
    /// When the session came up, in gobgpd's whole seconds since the epoch; 0 when unknown.
    pub up_since_secs: u64,
    /// Graceful restart is configured on the neighbor in gobgpd.
    pub enabled: bool,
    /// The neighbor advertised graceful restart: it keeps gobgpd's routes while gobgpd restarts.
    pub peer_capable: bool,
    /// gobgpd, started with `-r`, still holds back its routes from this neighbor.
    pub local_restarting: bool,
    /// How long the neighbor keeps gobgpd's routes after the session went (gobgpd's `restart-time`).
    pub restart_time: u32,
    /// gobgpd's `deferral-time`: the most it holds back its routes after a session came up.
    pub deferral_time: u32,
}

impl PeerRestart {
    /// Whether the session came up after `since` (gobgpd counts whole seconds).
    fn up_after(&self, since: SystemTime) -> bool {
        self.established && self.up_since_secs >= unix_secs(since)
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When a peer got gobgpd's End-of-RIB, relative to herald's push of its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// gobgpd's deferral had ended before herald began to push.
    BeforePush,
    /// It ended while herald was pushing.
    DuringPush,
}

/// How a peer fared in a restart of gobgpd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// gobgpd holds back its routes from the peer until after herald's plan is in, or has no
    /// session with it yet: the peer gets the whole plan before gobgpd's End-of-RIB.
    Fit,
    /// The peer got gobgpd's End-of-RIB before herald's whole plan: it dropped the routes gobgpd
    /// had not sent again yet, until herald's push reached it.
    Missed(Missed),
    /// Nothing to judge: no graceful restart with this peer, or its session did not restart with
    /// gobgpd (the paths were lost some other way), or herald cannot tell (it started itself).
    Unjudged,
}

/// Judges one peer after herald's push, from its state `before` the push (if it was listed then)
/// and `after`. `since`: when herald last saw the previous gobgpd hold its paths (a session that
/// came up later belongs to the restarted gobgpd); None when herald itself just started.
pub fn judge(
    before: Option<&PeerRestart>,
    after: &PeerRestart,
    since: Option<SystemTime>,
) -> Verdict {
    if !after.enabled {
        return Verdict::Unjudged;
    }
    if !after.established {
        // gobgpd sends its RIB, which holds the plan now, once the session is up.
        return Verdict::Fit;
    }
    if !after.peer_capable {
        return Verdict::Unjudged;
    }
    if after.local_restarting {
        return Verdict::Fit;
    }
    let Some(since) = since else {
        return Verdict::Unjudged;
    };
    if !after.up_after(since) {
        // The same session as before the paths went: gobgpd did not restart for this peer.
        return Verdict::Unjudged;
    }
    match before {
        Some(b) if b.established && !b.local_restarting => Verdict::Missed(Missed::BeforePush),
        _ => Verdict::Missed(Missed::DuringPush),
    }
}

/// Whether herald should ask gobgpd to send `peer` its RIB again: a neighbor without graceful
/// restart from which gobgpd holds back its routes, or may have (osrg/gobgp#2596).
pub fn needs_resend(
    before: Option<&PeerRestart>,
    after: &PeerRestart,
    since: Option<SystemTime>,
    resent: bool,
) -> bool {
    if !after.enabled || after.peer_capable || !after.established {
        return false;
    }
    if after.local_restarting {
        // Holding back: every push of herald's waits for the deferral time, so send again each time.
        return true;
    }
    // gobgpd left restarting mode on the other peers' End-of-RIB and skipped this one: once.
    let was_restarting = before.is_none_or(|b| b.local_restarting || !b.established);
    !resent && was_restarting && since.is_some_and(|s| after.up_after(s))
}

/// A restart of gobgpd (or herald's own start) that herald follows until gobgpd is out of
/// restarting mode.
#[derive(Debug, Clone, Default)]
pub struct Episode {
    /// When herald last saw the previous gobgpd hold its paths; None: herald itself just started.
    pub since: Option<SystemTime>,
    /// gobgpd's neighbors when herald began to push its plan.
    pub before: Option<Vec<PeerRestart>>,
    /// The push of the plan into the restarted gobgpd: paths and how long it took.
    pub pushed: Option<(u64, Duration)>,
    pub judged: bool,
    /// Neighbors herald had gobgpd send its RIB again.
    pub resent: std::collections::BTreeSet<String>,
}

impl Episode {
    pub fn new(since: Option<SystemTime>) -> Self {
        Self {
            since,
            ..Default::default()
        }
    }

    /// A neighbor as it was when herald began to push.
    pub fn before(&self, address: &str) -> Option<&PeerRestart> {
        self.before.as_ref()?.iter().find(|p| p.address == address)
    }
}

/// The window a restarted gobgpd gives herald, as its neighbors are configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Neighbors gobgpd holds its routes back from (restarting mode).
    pub deferring: usize,
    /// Established sessions.
    pub established: usize,
    /// The longest `deferral-time` of those neighbors, in seconds.
    pub deferral: Duration,
    /// The longest `restart-time`: how long the peers keep gobgpd's routes after a session went.
    pub restart_time: Duration,
}

pub fn window(peers: &[PeerRestart]) -> Window {
    let graceful = || peers.iter().filter(|p| p.enabled);
    Window {
        deferring: peers.iter().filter(|p| p.local_restarting).count(),
        established: peers.iter().filter(|p| p.established).count(),
        deferral: Duration::from_secs(
            graceful()
                .map(|p| u64::from(p.deferral_time))
                .max()
                .unwrap_or(0),
        ),
        restart_time: Duration::from_secs(
            graceful()
                .map(|p| u64::from(p.restart_time))
                .max()
                .unwrap_or(0),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINCE: u64 = 1_800_000_000;

    fn since() -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(SINCE) + Duration::from_millis(400))
    }

    fn peer(established: bool, up: u64, capable: bool, restarting: bool) -> PeerRestart {
        PeerRestart {
            address: "198.19.15.254".into(),
            established,
            up_since_secs: if established { up } else { 0 },
            enabled: true,
            peer_capable: capable,
            local_restarting: restarting,
            restart_time: 60,
            deferral_time: 30,
        }
    }

    #[test]
    fn a_peer_still_held_back_or_not_up_yet_gets_the_whole_plan() {
        let before = peer(true, SINCE + 1, true, true);
        assert_eq!(
            judge(Some(&before), &peer(true, SINCE + 1, true, true), since()),
            Verdict::Fit
        );
        assert_eq!(
            judge(None, &peer(false, 0, true, true), since()),
            Verdict::Fit
        );
        // Not up at all, gobgpd not restarting (no -r): it sends everything once the session is up.
        assert_eq!(
            judge(None, &peer(false, 0, true, false), since()),
            Verdict::Fit
        );
    }

    #[test]
    fn a_deferral_that_ended_before_or_during_the_push_is_missed() {
        let after = peer(true, SINCE + 2, true, false);
        let held = peer(true, SINCE + 2, true, true);
        let released = peer(true, SINCE + 2, true, false);
        assert_eq!(
            judge(Some(&held), &after, since()),
            Verdict::Missed(Missed::DuringPush)
        );
        assert_eq!(
            judge(Some(&released), &after, since()),
            Verdict::Missed(Missed::BeforePush)
        );
        // Came up during the push, gobgpd not in restarting mode: its End-of-RIB went with part of the plan.
        assert_eq!(
            judge(Some(&peer(false, 0, true, false)), &after, since()),
            Verdict::Missed(Missed::DuringPush)
        );
        // In the same second as herald last saw the old gobgpd: still after it.
        assert_eq!(
            judge(Some(&released), &peer(true, SINCE, true, false), since()),
            Verdict::Missed(Missed::BeforePush)
        );
    }

    #[test]
    fn sessions_older_than_the_loss_or_without_graceful_restart_are_not_judged() {
        // Paths deleted by hand: the session is the one from before.
        let old = peer(true, SINCE - 3600, true, false);
        assert_eq!(judge(Some(&old), &old, since()), Verdict::Unjudged);
        // The neighbor does not do graceful restart: it dropped everything with the session anyway.
        assert_eq!(
            judge(None, &peer(true, SINCE + 2, false, false), since()),
            Verdict::Unjudged
        );
        let mut disabled = peer(true, SINCE + 2, true, false);
        disabled.enabled = false;
        assert_eq!(judge(None, &disabled, since()), Verdict::Unjudged);
        // herald started itself: no earlier gobgpd to compare with.
        assert_eq!(
            judge(None, &peer(true, SINCE + 2, true, false), None),
            Verdict::Unjudged
        );
    }

    #[test]
    fn a_neighbor_without_graceful_restart_is_sent_the_rib_while_gobgpd_holds_it_back() {
        let held = peer(true, SINCE + 2, false, true);
        assert!(needs_resend(Some(&held), &held, since(), false));
        assert!(
            needs_resend(Some(&held), &held, since(), true),
            "every push, while held back"
        );
        // Released on the other peers' End-of-RIB without being sent anything: once.
        let released = peer(true, SINCE + 2, false, false);
        assert!(needs_resend(Some(&held), &released, since(), false));
        assert!(!needs_resend(Some(&held), &released, since(), true));
        // Never held back (gobgpd without -r), an old session, a capable peer, no session: no.
        assert!(!needs_resend(Some(&released), &released, since(), false));
        assert!(!needs_resend(
            None,
            &peer(true, SINCE - 60, false, false),
            since(),
            false
        ));
        assert!(!needs_resend(
            None,
            &peer(true, SINCE + 2, true, true),
            since(),
            false
        ));
        assert!(!needs_resend(
            None,
            &peer(false, 0, false, true),
            since(),
            false
        ));
    }

    #[test]
    fn the_window_is_the_longest_configured_one() {
        let mut a = peer(true, SINCE, true, true);
        let mut b = peer(false, 0, true, false);
        a.deferral_time = 10;
        b.deferral_time = 30;
        b.restart_time = 120;
        let w = window(&[a, b]);
        assert_eq!(
            w,
            Window {
                deferring: 1,
                established: 1,
                deferral: Duration::from_secs(30),
                restart_time: Duration::from_secs(120)
            }
        );
    }
}
