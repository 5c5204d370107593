//! The reconciler's decisions, apart from the calls to gobgpd that carry them out: pure functions of
//! what the reconciler knows, tested here without a gobgpd. [`super::reconciler`] is the thin async
//! loop that asks them what to do and does it.
//!
//! - [`Scope`]: which prefixes a piece of work (the diff, the `inRib` update) has to look at.
//! - [`Backoff`]: how long to wait before trying gobgpd again.
//! - [`probe`]: whether gobgpd's path counts say it lost paths (read back and repair).
//! - [`push_failed`]: what a failed push leaves herald knowing about gobgpd.
//! - [`read_back`]: what a read-back found, and so what to say about it.

use std::collections::BTreeSet;
use std::time::Duration;

use ipnet::IpNet;

use crate::reconciler::{ErrorKind, FamilyCounts, Settings};

/// Which prefixes a piece of work has to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every prefix: nothing narrower is known (at start, after a read-back, after a big change).
    All,
    /// Only these; the others are known to be as they were.
    Only(BTreeSet<IpNet>),
}

impl Scope {
    /// No prefix at all: everything is known to be as it was.
    pub fn nothing() -> Scope {
        Scope::Only(BTreeSet::new())
    }

    /// Adds `prefixes` to the scope (a no-op for [`Scope::All`]).
    pub fn extend(&mut self, prefixes: impl IntoIterator<Item = IpNet>) {
        if let Scope::Only(set) = self {
            set.extend(prefixes);
        }
    }

    /// Adds `prefixes`, and becomes [`Scope::All`] beyond `limit` prefixes: past that many, one walk
    /// through everything is cheaper than looking prefix by prefix.
    pub fn extend_up_to(&mut self, prefixes: impl IntoIterator<Item = IpNet>, limit: usize) {
        self.extend(prefixes);
        if matches!(self, Scope::Only(set) if set.len() > limit) {
            *self = Scope::All;
        }
    }

    /// The scope so far, leaving [`Scope::nothing`] in its place.
    pub fn take(&mut self) -> Scope {
        std::mem::replace(self, Scope::nothing())
    }
}

/// The wait between two tries while gobgpd fails: doubling from `backoff_min` to `backoff_max`, and
/// at most `reconnect_max` while gobgpd refuses connections (it is restarting, and its
/// graceful-restart deferral runs from the moment it is back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    reconnect_max: Duration,
}

impl Backoff {
    pub fn new(settings: &Settings) -> Backoff {
        Backoff {
            next: settings.backoff_min,
            min: settings.backoff_min,
            max: settings.backoff_max,
            reconnect_max: settings.reconnect_max,
        }
    }

    /// How long to wait after a failure of this kind; the next failure waits longer.
    pub fn failed(&mut self, kind: ErrorKind) -> Duration {
        let wait = match kind {
            ErrorKind::Unreachable => self.next.min(self.reconnect_max),
            ErrorKind::Timeout | ErrorKind::Rejected => self.next,
        };
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// A success: the next failure waits the least again.
    pub fn succeeded(&mut self) {
        self.next = self.min;
    }
}

/// What gobgpd's path counts say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// As expected: nothing to do.
    Steady,
    /// gobgpd holds fewer paths than herald applied, or than last time: it restarted or someone
    /// deleted paths. Read back and repair.
    LostPaths,
    /// gobgpd gained or lost an address family: read back (what can be announced changed).
    FamiliesChanged,
}

/// Judges gobgpd's path `counts` (per family, None: gobgpd has no table for it) against herald's
/// own paths per family (`own`), the counts last seen (`baseline`) and the families herald knows
/// absent.
pub fn probe(
    counts: FamilyCounts,
    own: [u64; 2],
    baseline: Option<FamilyCounts>,
    absent: [bool; 2],
) -> Probe {
    if counts.map(|c| c.is_none()) != absent {
        return Probe::FamiliesChanged;
    }
    let dropped = (0..2).any(|i| {
        let now = counts[i].unwrap_or(0);
        now < own[i] || baseline.is_some_and(|b| now < b[i].unwrap_or(0))
    });
    if dropped {
        Probe::LostPaths
    } else {
        Probe::Steady
    }
}

/// What a failed push leaves herald knowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFailure {
    /// gobgpd is there and refused part of the call; it may hold the rest. The call's additions
    /// count as unknown (re-added, or withdrawn if no longer wanted), its withdrawals stay to do:
    /// both are harmless to repeat. What herald applied otherwise stands.
    AdditionsUnknown,
    /// gobgpd may have restarted meanwhile: read its RIB back before going on.
    ReadBack,
}

/// What a push that failed with `kind` leaves herald knowing. Either way gobgpd's path counts
/// changed by an unknown part of the push, and are to be asked again.
pub fn push_failed(kind: ErrorKind) -> PushFailure {
    match kind {
        ErrorKind::Rejected => PushFailure::AdditionsUnknown,
        ErrorKind::Unreachable | ErrorKind::Timeout => PushFailure::ReadBack,
    }
}

/// What a read-back of gobgpd's RIB found, for what herald says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// herald's first read: the paths a predecessor left, taken as applied.
    Adopted,
    /// After an error: gobgpd's RIB differs from what herald thought, as errors make expected.
    AfterError,
    /// gobgpd's RIB differs from what herald applied with nothing gone wrong on herald's side
    /// (gobgpd restarted, paths changed by hand): a repair, counted.
    Repair,
    /// As herald applied it.
    AsExpected,
}

/// Classifies a read-back: `first` (herald never read before), `differs` (the paths read are not
/// the ones herald applied), `failing` (herald is retrying on an error).
pub fn read_back(first: bool, differs: bool, failing: bool) -> ReadBack {
    match (first, differs, failing) {
        (true, _, _) => ReadBack::Adopted,
        (false, true, true) => ReadBack::AfterError,
        (false, true, false) => ReadBack::Repair,
        (false, false, _) => ReadBack::AsExpected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_scope_grows_until_its_limit_then_covers_everything() {
        let mut scope = Scope::nothing();
        scope.extend_up_to([net("10.0.0.1/32"), net("10.0.0.2/32")], 2);
        assert_eq!(
            scope,
            Scope::Only([net("10.0.0.1/32"), net("10.0.0.2/32")].into())
        );
        scope.extend_up_to([net("10.0.0.2/32")], 2);
        assert!(
            matches!(scope, Scope::Only(ref s) if s.len() == 2),
            "a prefix already in does not count twice"
        );
        scope.extend_up_to([net("10.0.0.3/32")], 2);
        assert_eq!(scope, Scope::All);
        scope.extend([net("10.0.0.4/32")]);
        assert_eq!(scope, Scope::All, "everything stays everything");
        assert_eq!(scope.take(), Scope::All);
        assert_eq!(scope, Scope::nothing(), "taken: nothing left to look at");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_stays_short_while_gobgpd_restarts() {
        let settings = Settings::new(Origin::Igp, None, 10, Duration::from_secs(60));
        let mut backoff = Backoff::new(&settings);
        let waits: Vec<u64> = (0..7)
            .map(|_| backoff.failed(ErrorKind::Timeout).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(
            backoff.failed(ErrorKind::Unreachable),
            Duration::from_millis(200),
            "reconnect_max while refused"
        );
        backoff.succeeded();
        assert_eq!(
            backoff.failed(ErrorKind::Unreachable),
            Duration::from_millis(100)
        );
        assert_eq!(
            backoff.failed(ErrorKind::Rejected),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn probe_tells_lost_paths_from_changed_families() {
        let both = [false, false];
        assert_eq!(probe([Some(5), Some(2)], [5, 2], None, both), Probe::Steady);
        assert_eq!(
            probe([Some(9), Some(2)], [5, 2], Some([Some(9), Some(2)]), both),
            Probe::Steady,
            "others' paths"
        );
        assert_eq!(
            probe([Some(4), Some(2)], [5, 2], None, both),
            Probe::LostPaths,
            "fewer than herald's own"
        );
        assert_eq!(
            probe([Some(8), Some(2)], [5, 2], Some([Some(9), Some(2)]), both),
            Probe::LostPaths,
            "fewer than before"
        );
        assert_eq!(
            probe([Some(5), None], [5, 0], None, both),
            Probe::FamiliesChanged,
            "IPv6 table gone"
        );
        assert_eq!(
            probe([Some(5), None], [5, 0], None, [false, true]),
            Probe::Steady,
            "known absent"
        );
        assert_eq!(
            probe([Some(5), Some(0)], [5, 0], None, [false, true]),
            Probe::FamiliesChanged,
            "IPv6 table back"
        );
    }

    #[test]
    fn a_refused_push_keeps_what_was_applied_any_other_failure_reads_back() {
        assert_eq!(
            push_failed(ErrorKind::Rejected),
            PushFailure::AdditionsUnknown
        );
        assert_eq!(push_failed(ErrorKind::Timeout), PushFailure::ReadBack);
        assert_eq!(push_failed(ErrorKind::Unreachable), PushFailure::ReadBack);
    }

    #[test]
    fn read_backs_are_told_apart() {
        assert_eq!(read_back(true, true, false), ReadBack::Adopted);
        assert_eq!(read_back(true, false, true), ReadBack::Adopted);
        assert_eq!(read_back(false, true, true), ReadBack::AfterError);
        assert_eq!(read_back(false, true, false), ReadBack::Repair);
        assert_eq!(read_back(false, false, false), ReadBack::AsExpected);
        assert_eq!(read_back(false, false, true), ReadBack::AsExpected);
    }
}
