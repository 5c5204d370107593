//! The loop that makes gobgpd hold exactly herald's plan, whatever happens to gobgpd or herald.
//!
//! - At start, and whenever herald may have lost track (an error, a restarted gobgpd, the periodic
//!   anti-entropy pass), it reads herald's paths back from gobgpd (`ListPath`) and takes them as
//!   what is applied: a restarted herald keeps the paths it finds that equal the plan and fixes the
//!   others, without withdrawing anything first.
//! - It pushes the diff between plan and applied paths in batches; after every batch it knows
//!   exactly what gobgpd holds, and if a newer plan has come in the meantime it diffs against that
//!   one instead (plans coalesce: only the newest matters, and memory holds two path sets and one
//!   diff, whatever the number of plans that went by).
//! - When idle it asks gobgpd for its path counts every second: fewer paths than herald holds (or
//!   than last time) means gobgpd restarted or someone deleted paths, and herald reads back and
//!   repairs at once.
//! - Errors are retried with backoff (100 ms doubling to 2 s; every 200 ms at most while gobgpd
//!   refuses connections, so that a restarted gobgpd gets herald's plan within its graceful-restart
//!   deferral); a warning is logged when gobgpd becomes unreachable or starts failing, and an info
//!   when it is back, not once per retry.
//! - After a restart of gobgpd it follows graceful restart ([`super::restart`]): it reads gobgpd's
//!   window before pushing, judges afterwards whether every peer got the whole plan before gobgpd's
//!   End-of-RIB (alarm if not), and has gobgpd re-send its RIB to neighbors without graceful restart
//!   that gobgpd holds back from.
//! - Nothing is pushed before the first plan (generation 0 means "no plan yet"), so a herald that
//!   starts never withdraws what its predecessor announced before it knows the plan.
//!
//! The reconciler speaks to gobgpd through [`GobgpClient`]; [`super::v3::V3Client`] is the GoBGP v3
//! implementation.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::decisions::{self, Backoff, Probe, PushFailure, ReadBack, Scope};
use super::paths::{self, Desired, Op, PathAttrs, PathSet};
use super::restart::{self, PeerRestart, Verdict};
use super::{InRib, SinkStatus};
use crate::config::Origin;
use crate::plan::PlanSnapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection to gobgpd.
    Unreachable,
    /// gobgpd did not answer in time.
    Timeout,
    /// gobgpd answered with an error.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

/// What herald reads back from gobgpd.
#[derive(Debug, Clone, Default)]
pub struct RibView {
    /// herald's paths.
    pub own: PathSet,
    /// Everyone else's paths (operators', peers').
    pub others: u64,
    /// herald's paths that could not be read back.
    pub undecodable: u64,
    /// Families ([`paths::Family`] order) gobgpd has no table for (not among its global afi-safis).
    pub absent: [bool; 2],
}

/// Paths gobgpd holds per [`paths::Family`] (IPv4, IPv6); None: gobgpd has no table for the family.
pub type FamilyCounts = [Option<u64>; 2];

/// What the reconciler needs from a gobgpd API client. One implementation per API version.
pub trait GobgpClient: Clone + Send + 'static {
    /// How many paths (everyone's) gobgpd holds, per family. Cheap.
    fn path_counts(&mut self) -> impl Future<Output = Result<FamilyCounts, ClientError>> + Send;
    /// Reads every path gobgpd holds and picks out herald's.
    fn list(&mut self) -> impl Future<Output = Result<RibView, ClientError>> + Send;
    /// Applies the operations, in one call: when it returns Ok, gobgpd has applied them all.
    fn push(&mut self, ops: &[Op]) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// gobgpd's BGP neighbors as graceful restart sees them.
    fn peers(&mut self) -> impl Future<Output = Result<Vec<PeerRestart>, ClientError>> + Send;
    /// Asks gobgpd to send `peer` its RIB again (a soft reset out: the session stays up).
    fn resend(&mut self, peer: &str) -> impl Future<Output = Result<(), ClientError>> + Send;
}

/// How the reconciler behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    pub origin: Origin,
    pub local_pref: Option<u32>,
    /// Operations per [`GobgpClient::push`] call.
    pub ops_per_push: usize,
    pub anti_entropy_interval: Duration,
    pub probe_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The longest wait before trying again while gobgpd refuses connections (restarting).
    pub reconnect_max: Duration,
}

impl Settings {
    pub fn new(
        origin: Origin,
        local_pref: Option<u32>,
        ops_per_push: usize,
        anti_entropy_interval: Duration,
    ) -> Self {
        Self {
            origin,
            local_pref,
            ops_per_push: ops_per_push.max(1),
            anti_entropy_interval,
            probe_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            reconnect_max: Duration::from_millis(200),
        }
    }
}

/// Frees a plan that nobody else holds on the blocking pool rather than here: freeing the plan of
/// 20,000 Services takes milliseconds, which would come on top of the next plan's latency.
fn free_elsewhere(snapshot: PlanSnapshot) {
    let plan = &snapshot.plan;
    if Arc::strong_count(plan) == 1 && plan.routes.len() + plan.services.len() >= 1000 {
        tokio::task::spawn_blocking(move || drop(snapshot));
    }
}

/// Beyond this many changed prefixes, `inRib` is worked out again for all of them.
const STALE_IN_RIB_MAX: usize = 1024;

/// How often status is republished during a long push.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// How long a newer plan waits before a push in progress switches to it.
const REPLAN_AFTER: Duration = Duration::from_millis(100);

/// An anti-entropy read of gobgpd's RIB, running as a task of its own.
type RibRead = tokio::task::JoinHandle<Result<RibView, ClientError>>;

pub struct Reconciler<C> {
    client: C,
    settings: Settings,
    plans: watch::Receiver<PlanSnapshot>,
    status: watch::Sender<SinkStatus>,
    /// The plan `desired` was made from; generation 0 means no plan yet.
    plan: PlanSnapshot,
    desired: Desired,
    desired_at: Instant,
    /// herald's paths in gobgpd, as far as herald knows.
    applied: PathSet,
    /// The prefixes whose paths changed since `applied` last equalled `desired` (less the families
    /// gobgpd lacks): the diff need look at no others. All: not known to be equal, diff them all.
    dirty: Scope,
    /// The prefixes whose every desired path gobgpd holds, as last published.
    in_rib: InRib,
    /// The prefixes whose paths (desired or applied) changed since: the ones to look at again.
    in_rib_stale: Scope,
    /// Whether `applied` is known to match gobgpd; false: read back before pushing.
    known: bool,
    /// gobgpd's path counts last time they were seen.
    baseline: Option<FamilyCounts>,
    /// Families gobgpd has no table for: their paths cannot be announced.
    absent: [bool; 2],
    /// What herald last said about absent families, to say it once.
    absent_note: Option<String>,
    /// The error herald is stuck on, for logging once per state change.
    failing: Option<ClientError>,
    adopted_once: bool,
    /// An anti-entropy read running beside the pushes, and the prefixes pushed since it started
    /// (what it read of those may be older than what herald pushed).
    reading: Option<(RibRead, BTreeSet<IpNet>)>,
    pushed: u64,
    withdrawn: u64,
    /// When herald last knew gobgpd to hold the paths herald applied: the sessions of a gobgpd
    /// that restarted after it came up later.
    alive_at: Option<SystemTime>,
    /// A restart of gobgpd (or herald's own start) followed for graceful restart.
    episode: Option<restart::Episode>,
}

impl<C: GobgpClient> Reconciler<C> {
    pub fn new(
        client: C,
        settings: Settings,
        plans: watch::Receiver<PlanSnapshot>,
        status: watch::Sender<SinkStatus>,
    ) -> Self {
        Self {
            client,
            desired: Desired::empty(settings.origin, settings.local_pref),
            settings,
            plans,
            status,
            plan: PlanSnapshot::default(),
            desired_at: Instant::now(),
            applied: PathSet::new(),
            dirty: Scope::All,
            in_rib: InRib::new(),
            in_rib_stale: Scope::All,
            known: false,
            baseline: None,
            absent: [false; 2],
            absent_note: None,
            failing: None,
            adopted_once: false,
            reading: None,
            pushed: 0,
            withdrawn: 0,
            alive_at: None,
            episode: None,
        }
    }

    /// Runs until the plan channel closes.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(&self.settings);
        let mut next_anti_entropy =
            tokio::time::Instant::now() + self.settings.anti_entropy_interval;
        loop {
            match self.reconcile().await {
                Ok(()) => {
                    backoff.succeeded();
                    self.recovered();
                }
                Err(e) => {
                    let wait = backoff.failed(e.kind);
                    self.failed(e);
                    let until = tokio::time::Instant::now() + wait;
                    if !self.sleep_until(until).await {
                        return;
                    }
                    continue;
                }
            }
            // Idle until something needs doing.
            loop {
                let probe = tokio::time::sleep(self.settings.probe_interval);
                tokio::select! {
                    changed = self.plans.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(next_anti_entropy) => {
                        next_anti_entropy = tokio::time::Instant::now() + self.settings.anti_entropy_interval;
                        self.start_anti_entropy();
                    }
                    read = async { (&mut self.reading.as_mut().expect("guarded").0).await }, if self.reading.is_some() => {
                        let touched = self.reading.take().map(|(_, touched)| touched).unwrap_or_default();
                        match read {
                            Ok(Ok(view)) => if self.merge_read_back(view, &touched) {
                                break;
                            },
                            Ok(Err(e)) => {
                                self.known = false;
                                self.failed(e);
                                break;
                            }
                            Err(e) => {
                                warn!(error = %e, "anti-entropy read failed; reading back before the next push");
                                self.known = false;
                                break;
                            }
                        }
                    }
                    _ = probe => {
                        match self.probe().await {
                            Ok(false) => {
                                self.alive_at = Some(SystemTime::now());
                                if let Err(e) = self.follow_restart(false).await {
                                    self.failed(e);
                                    break;
                                }
                                continue;
                            }
                            Ok(true) => {
                                self.known = false;
                                break;
                            }
                            Err(e) => {
                                self.known = false;
                                self.failed(e);
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sleeps until `until`; false if the plan channel closed meanwhile.
    async fn sleep_until(&mut self, until: tokio::time::Instant) -> bool {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                changed = self.plans.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Takes the newest plan if it is not the one `desired` was made from.
    fn refresh_plan(&mut self) -> bool {
        let latest = self.plans.borrow_and_update().clone();
        if latest.generation == self.plan.generation && Arc::ptr_eq(&latest.plan, &self.plan.plan) {
            return false;
        }
        let started = Instant::now();
        // Only the routes that changed, most of the time: a churning cluster changes a few routes
        // per plan out of thousands.
        match self.desired.update(&self.plan.plan, &latest.plan) {
            Some(changed) => {
                self.in_rib_stale
                    .extend_up_to(changed.iter().copied(), STALE_IN_RIB_MAX);
                self.dirty.extend(changed);
            }
            None => {
                self.dirty = Scope::All;
                self.in_rib_stale = Scope::All;
            }
        }
        self.desired_at = Instant::now();
        debug!(
            generation = latest.generation,
            paths = self.desired.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plan taken"
        );
        if latest.partial || self.plan.partial {
            // A partial plan's push withdraws nothing: what gobgpd holds beyond it (paths of a
            // herald before this one) is known only to a full diff.
            self.dirty = Scope::All;
            self.in_rib_stale = Scope::All;
        }
        let previous = std::mem::replace(&mut self.plan, latest);
        free_elsewhere(previous);
        true
    }

    /// The operations that turn what gobgpd holds into the plan, less those of absent families.
    /// Of a partial plan (the ranges alone, before the Services are known), the additions only.
    fn diff(&self) -> Vec<Op> {
        let mut ops = match &self.dirty {
            Scope::Only(prefixes) => {
                paths::diff_prefixes(&self.desired.paths, &self.applied, prefixes)
            }
            Scope::All => paths::diff(&self.desired.paths, &self.applied),
        };
        if self.plan.partial {
            ops.retain(|op| !op.withdraw);
        }
        if self.absent.iter().any(|&a| a) {
            ops.retain(|op| !self.absent[paths::Family::of(&op.key.prefix) as usize]);
        }
        ops
    }

    /// Says (once) that paths of the plan cannot be announced because gobgpd lacks their family.
    fn absent_families_note(&mut self) {
        if self.absent_note.is_none() && !self.absent.iter().any(|&a| a) {
            return;
        }
        let counts = paths::count_by_family(&self.desired.paths);
        let missing: Vec<String> = paths::Family::ALL
            .into_iter()
            .filter(|&f| self.absent[f as usize] && counts[f as usize] > 0)
            .map(|f| format!("{} ({} paths)", f.as_str(), counts[f as usize]))
            .collect();
        let note = (!missing.is_empty()).then(|| {
            format!(
                "gobgpd has no RIB for {} (not among its global afi-safis): not announced",
                missing.join(", ")
            )
        });
        if note != self.absent_note {
            if let Some(n) = &note {
                warn!(problem = %n, "part of the plan cannot be announced");
            }
            self.absent_note = note;
        }
    }

    fn plan_changed(&self) -> bool {
        let latest = self.plans.borrow();
        latest.generation != self.plan.generation || !Arc::ptr_eq(&latest.plan, &self.plan.plan)
    }

    /// Reads back if needed, then pushes until gobgpd holds the newest plan.
    async fn reconcile(&mut self) -> Result<(), ClientError> {
        if !self.known {
            if let Some((reading, _)) = self.reading.take() {
                reading.abort();
            }
            self.read_back().await?;
        }
        self.refresh_plan();
        if self.plan.generation == 0 {
            // No plan yet: touch nothing.
            self.publish(0, true);
            return Ok(());
        }
        let started = Instant::now();
        let mut ops = self.diff();
        self.restart_window(ops.len()).await?;
        if !ops.is_empty() {
            // Until the push is through, `applied` and `desired` differ by more than `dirty` says.
            self.dirty = Scope::All;
        }
        let (mut added, mut withdrawn) = (0u64, 0u64);
        // How many of herald's paths per family the pushes added (less those they withdrew).
        let mut own_change = [0i64; 2];
        let mut pos = 0;
        let mut published = Instant::now();
        if !ops.is_empty() {
            self.publish(ops.len() as u64, false);
        }
        // A chunk is booked as soon as its call is under way, while gobgpd takes its messages
        // (after the acknowledgment, the books of a large push held up the status by tens of
        // milliseconds: BENCHMARKS.md, push). A call that fails takes back what it cannot vouch
        // for (below). A macro, not a method: the call in flight holds `self.client`, these
        // fields are others.
        macro_rules! book {
            ($chunk:expr) => {
                for op in $chunk {
                    let family = paths::Family::of(&op.key.prefix) as usize;
                    match (op.withdraw, self.applied.contains_key(&op.key)) {
                        (true, true) => own_change[family] -= 1,
                        (false, false) => own_change[family] += 1,
                        _ => {}
                    }
                    paths::apply(&mut self.applied, op);
                    if let Some((_, touched)) = &mut self.reading {
                        touched.insert(op.key.prefix);
                    }
                    // The paths of this prefix changed in `applied` (past a bound, one walk
                    // through both sets is cheaper than looking prefix by prefix).
                    self.in_rib_stale
                        .extend_up_to([op.key.prefix], STALE_IN_RIB_MAX);
                    if op.withdraw {
                        withdrawn += 1;
                        self.withdrawn += 1;
                    } else {
                        added += 1;
                        self.pushed += 1;
                    }
                }
            };
        }
        while pos < ops.len() {
            let end = (pos + self.settings.ops_per_push).min(ops.len());
            let chunk = &ops[pos..end];
            let batch_started = Instant::now();
            let result = {
                let push = self.client.push(chunk);
                tokio::pin!(push);
                // One poll starts the call: its first messages are encoded and on their way.
                let first_poll =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(push.as_mut().poll(cx))).await;
                book!(chunk);
                match first_poll {
                    std::task::Poll::Ready(result) => result,
                    std::task::Poll::Pending => push.await,
                }
            };
            if let Err(e) = result {
                // What the books cannot vouch for: a withdrawal gobgpd may not have made is held
                // again (the next diff withdraws it again); an addition is held with attributes
                // that never equal a wanted path's (the next diff sends it again), or everything is
                // read back.
                let failure = decisions::push_failed(e.kind);
                for op in chunk {
                    if op.withdraw {
                        self.applied.insert(op.key, op.attrs.clone());
                        self.withdrawn -= 1;
                    } else {
                        if failure == PushFailure::AdditionsUnknown {
                            let unknown = PathAttrs {
                                foreign_attributes: true,
                                ..op.attrs.clone()
                            };
                            self.applied.insert(op.key, unknown);
                        }
                        self.pushed -= 1;
                    }
                }
                if failure == PushFailure::ReadBack {
                    self.known = false;
                }
                // The counts changed by an unknown part of this push: ask for them again.
                self.baseline = None;
                return Err(e);
            }
            debug!(
                paths = chunk.len(),
                elapsed_ms = batch_started.elapsed().as_millis() as u64,
                "batch applied"
            );
            pos = end;
            let replan = self.plan_changed() && self.desired_at.elapsed() >= REPLAN_AFTER;
            if replan {
                // A newer plan: what is left of this diff may be stale; diff against the new one.
                self.refresh_plan();
                ops = self.diff();
                pos = 0;
            }
            if published.elapsed() >= STATUS_EVERY {
                self.publish((ops.len() - pos) as u64, false);
                published = Instant::now();
                // A push long enough to report on: say how far it is.
                info!(
                    generation = self.plan.generation,
                    done = added + withdrawn,
                    left = ops.len() - pos,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "pushing to gobgpd"
                );
            }
        }
        let elapsed = started.elapsed();
        let partial = self.plan.partial;
        if partial {
            // gobgpd holds the ranges; what else it holds is left for the first complete plan's
            // diff (`dirty` stays `All`), and graceful restart's judgment for its push.
            info!(
                generation = self.plan.generation,
                paths = self.applied.len(),
                added,
                elapsed_ms = elapsed.as_millis() as u64,
                "gobgpd holds the ranges planned from the Nodes; the rest waits for the Services"
            );
        } else {
            // `applied` equals `desired` now (less the families gobgpd lacks).
            self.dirty = Scope::nothing();
            // One event at a level chosen here (tracing fixes an event's level where it is written).
            macro_rules! holds {
                ($level:ident) => {
                    $level!(
                        generation = self.plan.generation,
                        paths = self.applied.len(),
                        added,
                        withdrawn,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "gobgpd holds the plan"
                    )
                };
            }
            if added + withdrawn >= 1000 || elapsed >= Duration::from_secs(1) {
                holds!(info);
            } else if added + withdrawn > 0 {
                // A churning cluster changes a few paths many times a second: not for the info log.
                holds!(debug);
            }
            self.absent_families_note();
        }
        self.publish(0, true);
        if let Some(episode) = &mut self.episode
            && !partial
        {
            episode.pushed.get_or_insert((added + withdrawn, elapsed));
        }
        // gobgpd's counts after herald's changes: a later drop means gobgpd lost paths. Worked out
        // from herald's own changes when the counts before them are known (herald's pushes change
        // only herald's paths), asked otherwise: asking costs milliseconds at scale, for every plan
        // of a churning cluster, holding up the next one (BENCHMARKS.md, figures behind choices).
        match &mut self.baseline {
            Some(counts) => {
                for (count, change) in counts.iter_mut().zip(own_change) {
                    if let Some(count) = count {
                        *count = count.saturating_add_signed(change);
                    }
                }
            }
            None => self.baseline = Some(self.client.path_counts().await?),
        }
        self.alive_at = Some(SystemTime::now());
        if partial {
            return Ok(());
        }
        self.follow_restart(true).await
    }

    async fn read_back(&mut self) -> Result<(), ClientError> {
        let started = Instant::now();
        let view = self.client.list().await?;
        self.absent = view.absent;
        let previous = std::mem::replace(&mut self.applied, view.own);
        // herald has just started: follow what graceful restart makes of gobgpd's state too.
        if !self.follow_if_lost(&previous) && !self.adopted_once && self.episode.is_none() {
            self.episode = Some(restart::Episode::new(None));
        }
        self.dirty = Scope::All;
        self.in_rib_stale = Scope::All;
        self.known = true;
        self.baseline = None;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let found = decisions::read_back(
            !self.adopted_once,
            previous != self.applied,
            self.failing.is_some(),
        );
        self.adopted_once = true;
        match found {
            ReadBack::Adopted => info!(
                paths = self.applied.len(),
                others = view.others,
                elapsed_ms,
                "read herald's paths already in gobgpd"
            ),
            ReadBack::AfterError => info!(
                paths = self.applied.len(),
                others = view.others,
                elapsed_ms,
                "read gobgpd's RIB back after an error"
            ),
            ReadBack::Repair => {
                self.status.send_modify(|s| s.repairs += 1);
                warn!(
                    paths = self.applied.len(),
                    expected = previous.len(),
                    others = view.others,
                    elapsed_ms,
                    "gobgpd's RIB differs from what herald applied (gobgpd restarted, or paths changed by hand); repairing"
                );
            }
            ReadBack::AsExpected => {
                debug!(
                    paths = self.applied.len(),
                    others = view.others,
                    elapsed_ms,
                    "gobgpd's RIB as expected"
                )
            }
        }
        if view.undecodable > 0 {
            warn!(
                paths = view.undecodable,
                "some of herald's paths in gobgpd could not be read; replacing them"
            );
        }
        Ok(())
    }

    /// When gobgpd holds fewer of herald's paths than `previous` (it restarted, most likely), starts
    /// following what graceful restart makes of it (a new restart supersedes one still followed).
    fn follow_if_lost(&mut self, previous: &PathSet) -> bool {
        let lost = previous.keys().any(|key| !self.applied.contains_key(key));
        if lost {
            self.episode = Some(restart::Episode::new(self.alive_at));
        }
        lost
    }

    /// gobgpd's neighbors, for the restart followed; None when gobgpd cannot say (which ends it).
    async fn restart_peers(&mut self) -> Result<Option<Vec<PeerRestart>>, ClientError> {
        match self.client.peers().await {
            Ok(peers) => Ok(Some(peers)),
            Err(e) if e.kind == ErrorKind::Rejected => {
                debug!(error = %e, "cannot read gobgpd's neighbors; not following graceful restart");
                self.episode = None;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Before herald pushes `paths` into a restarted gobgpd: reads its neighbors (kept to judge
    /// against afterwards) and says what window graceful restart gives herald.
    async fn restart_window(&mut self, paths: usize) -> Result<(), ClientError> {
        let Some(episode) = &self.episode else {
            return Ok(());
        };
        if episode.before.is_some() {
            return Ok(());
        }
        let since = episode.since;
        let Some(peers) = self.restart_peers().await? else {
            return Ok(());
        };
        let window = restart::window(&peers);
        self.status
            .send_modify(|s| s.graceful_restart = Some(window));
        if since.is_some() || window.deferring > 0 {
            if window.deferring > 0 {
                info!(
                    deferring = window.deferring,
                    established = window.established,
                    deferral_s = window.deferral.as_secs(),
                    restart_time_s = window.restart_time.as_secs(),
                    paths,
                    "gobgpd is in graceful-restart restarting mode: it holds back its routes until every peer's \
                     End-of-RIB or deferral_s after a session comes up; herald's plan has to be in by then"
                );
            } else if peers.iter().any(|p| p.enabled) {
                info!(
                    established = window.established,
                    restart_time_s = window.restart_time.as_secs(),
                    paths,
                    "gobgpd lost herald's paths and is not in restarting mode (not started with -r): it sends \
                     its RIB and End-of-RIB as soon as a session is up"
                );
            }
        }
        if let Some(episode) = &mut self.episode {
            episode.before = Some(peers);
        }
        Ok(())
    }

    /// After a push into a restarted gobgpd (`after_push`), or while it is still in restarting mode:
    /// judges once whether each peer got the whole plan before gobgpd's End-of-RIB, has gobgpd send
    /// its RIB again to neighbors without graceful restart it holds back from, and ends the
    /// episode once gobgpd has left restarting mode.
    async fn follow_restart(&mut self, after_push: bool) -> Result<(), ClientError> {
        if self.episode.as_ref().is_none_or(|e| e.before.is_none()) {
            return Ok(());
        }
        let Some(peers) = self.restart_peers().await? else {
            return Ok(());
        };
        if self.episode.as_ref().is_some_and(|e| !e.judged) {
            self.judge_restart(&peers);
        }
        self.resend_held_back(&peers, after_push).await?;
        if !peers.iter().any(|p| p.local_restarting) {
            if self.episode.as_ref().is_some_and(|e| e.since.is_some()) {
                debug!("gobgpd is out of graceful-restart restarting mode");
            }
            self.episode = None;
        }
        Ok(())
    }

    /// Says whether every peer got herald's whole plan before the restarted gobgpd's End-of-RIB;
    /// a peer that did not raises the alarm.
    fn judge_restart(&mut self, peers: &[PeerRestart]) {
        let Some(episode) = &mut self.episode else {
            return;
        };
        episode.judged = true;
        let (paths, push) = episode.pushed.unwrap_or_default();
        let window = restart::window(peers);
        let mut fit = Vec::new();
        let mut missed = Vec::new();
        for peer in peers {
            match restart::judge(episode.before(&peer.address), peer, episode.since) {
                Verdict::Fit => fit.push(peer.address.as_str()),
                Verdict::Missed(restart::Missed::BeforePush) => {
                    missed.push(format!("{} (before herald began)", peer.address))
                }
                Verdict::Missed(restart::Missed::DuringPush) => {
                    missed.push(format!("{} (during herald's push)", peer.address))
                }
                Verdict::Unjudged => {}
            }
        }
        if !missed.is_empty() {
            let peers_text = missed.join(", ");
            warn!(
                peers = %peers_text,
                paths,
                push_ms = push.as_millis() as u64,
                deferral_s = window.deferral.as_secs(),
                "a restarted gobgpd's graceful-restart deferral ended before herald's plan was in; peers dropped routes"
            );
            let message = format!(
                "gobgpd restarted and sent End-of-RIB to {peers_text} before herald's plan of {paths} paths was in \
                 (the push took {} ms): those peers dropped routes until the push reached them",
                push.as_millis()
            );
            self.status.send_modify(|s| {
                s.restart_misses += 1;
                s.restart_miss = Some((SystemTime::now(), message));
            });
        } else if !fit.is_empty() && episode.since.is_some() {
            let what = if episode.before.iter().flatten().any(|p| p.local_restarting) {
                "herald's plan is in the restarted gobgpd before its graceful-restart deferral ended"
            } else {
                "herald's plan is in the restarted gobgpd before its sessions came up"
            };
            info!(
                peers = %fit.join(", "),
                paths,
                push_ms = push.as_millis() as u64,
                deferral_s = window.deferral.as_secs(),
                deferring = window.deferring,
                "{what}"
            );
        }
    }

    /// Has gobgpd send its RIB to the neighbors without graceful restart that it holds back from
    /// (after each push while it does: it holds back herald's changes too).
    async fn resend_held_back(
        &mut self,
        peers: &[PeerRestart],
        after_push: bool,
    ) -> Result<(), ClientError> {
        let Some(episode) = &self.episode else {
            return Ok(());
        };
        let resend: Vec<String> = peers
            .iter()
            .filter(|peer| {
                let resent = episode.resent.contains(&peer.address);
                restart::needs_resend(episode.before(&peer.address), peer, episode.since, resent)
                    && (after_push || !resent)
            })
            .map(|peer| peer.address.clone())
            .collect();
        for address in resend {
            match self.client.resend(&address).await {
                Ok(()) => {}
                // gobgpd refused (the neighbor is gone, say): not asked again until the next push.
                Err(e) if e.kind == ErrorKind::Rejected => {
                    warn!(peer = %address, error = %e, "gobgpd refused to send its routes to a neighbor again");
                    if let Some(episode) = &mut self.episode {
                        episode.resent.insert(address);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            let first = self
                .episode
                .as_mut()
                .is_some_and(|e| e.resent.insert(address.clone()));
            if first {
                warn!(
                    peer = %address,
                    "gobgpd holds back its routes from a neighbor that does not do graceful restart (its \
                     restarting mode, osrg/gobgp#2596); asked it to send them (soft reset out)"
                );
            } else {
                debug!(peer = %address, "asked gobgpd again to send its routes to a neighbor it holds back from");
            }
        }
        Ok(())
    }

    /// Anti-entropy: reads gobgpd's RIB back beside the pushes, which go on meanwhile (a read at
    /// scale takes long enough for plans to wait: BENCHMARKS.md, figures behind choices).
    fn start_anti_entropy(&mut self) {
        if self.reading.is_some() || !self.known {
            return;
        }
        debug!("anti-entropy: reading gobgpd's RIB back");
        let mut reader = self.client.clone();
        self.reading = Some((
            tokio::spawn(async move { reader.list().await }),
            BTreeSet::new(),
        ));
    }

    /// Takes an anti-entropy read: herald's paths as read, but for the prefixes pushed since the read
    /// began, which are as herald pushed them. True if gobgpd differed (a repair is due).
    fn merge_read_back(&mut self, view: RibView, touched: &BTreeSet<IpNet>) -> bool {
        let started = Instant::now();
        let mut read = view.own;
        for &prefix in touched {
            let range = paths::prefix_range(prefix);
            let stale: Vec<paths::PathKey> = read.range(range.clone()).map(|(k, _)| *k).collect();
            for key in stale {
                read.remove(&key);
            }
            read.extend(self.applied.range(range).map(|(k, v)| (*k, v.clone())));
        }
        let absent_changed = view.absent != self.absent;
        self.absent = view.absent;
        if view.undecodable > 0 {
            warn!(
                paths = view.undecodable,
                "some of herald's paths in gobgpd could not be read; replacing them"
            );
        }
        if read == self.applied && !absent_changed {
            debug!(
                paths = read.len(),
                others = view.others,
                pushed_meanwhile = touched.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "gobgpd's RIB as expected"
            );
            return false;
        }
        self.status.send_modify(|s| s.repairs += 1);
        warn!(
            paths = read.len(),
            expected = self.applied.len(),
            others = view.others,
            "gobgpd's RIB differs from what herald applied (gobgpd restarted, or paths changed by hand); repairing"
        );
        let previous = std::mem::replace(&mut self.applied, read);
        self.follow_if_lost(&previous);
        self.dirty = Scope::All;
        self.in_rib_stale = Scope::All;
        self.baseline = None;
        true
    }

    /// Whether gobgpd seems to have lost paths since last time.
    async fn probe(&mut self) -> Result<bool, ClientError> {
        let counts = self.client.path_counts().await?;
        let own = paths::count_by_family(&self.applied);
        let verdict = decisions::probe(counts, own, self.baseline, self.absent);
        self.baseline = Some(counts);
        if verdict == Probe::FamiliesChanged {
            let absent = counts.map(|c| c.is_none());
            info!(
                ipv4 = !absent[0],
                ipv6 = !absent[1],
                "gobgpd's address families changed; reading its RIB back"
            );
            return Ok(true);
        }
        let dropped = verdict == Probe::LostPaths;
        if dropped {
            info!(
                ipv4 = counts[0],
                ipv6 = counts[1],
                herald_ipv4 = own[0],
                herald_ipv6 = own[1],
                "gobgpd holds fewer paths than before; reading its RIB back"
            );
        }
        if !self.status.borrow().reachable {
            self.status.send_modify(|s| s.reachable = true);
        }
        Ok(dropped)
    }

    fn failed(&mut self, e: ClientError) {
        let changed = self.failing.as_ref().is_none_or(|f| f.kind != e.kind);
        if changed {
            match e.kind {
                ErrorKind::Unreachable => warn!(error = %e, "gobgpd unreachable; retrying"),
                ErrorKind::Timeout => warn!(error = %e, "gobgpd does not answer; retrying"),
                ErrorKind::Rejected => warn!(error = %e, "gobgpd refused a request; retrying"),
            }
        } else {
            debug!(error = %e, "gobgpd still failing");
        }
        let reachable = e.kind == ErrorKind::Rejected;
        // Pending against the newest plan, even if herald never got to take it.
        self.refresh_plan();
        let message = e.message.clone();
        let pending = if self.plan.generation == 0 {
            0
        } else {
            self.diff().len() as u64
        };
        self.status.send_modify(|s| {
            s.errors += 1;
            s.reachable = reachable;
            s.awaiting_first_answer = false;
            s.last_error = Some(message);
            s.pending_operations = pending;
        });
        self.failing = Some(e);
    }

    fn recovered(&mut self) {
        if let Some(e) = self.failing.take() {
            info!(previous_error = %e, "gobgpd reachable and up to date again");
        }
    }

    /// Publishes status; `converged`: gobgpd holds the current plan.
    fn publish(&mut self, pending: u64, converged: bool) {
        let in_rib = if self.plan.generation == 0 {
            Default::default()
        } else {
            // Only the prefixes whose paths changed since last time, unless everything may have.
            match self.in_rib_stale.take() {
                Scope::All => {
                    self.in_rib = paths::prefixes_in_rib(&self.desired.paths, &self.applied)
                        .into_iter()
                        .collect()
                }
                Scope::Only(stale) => {
                    for prefix in stale {
                        if paths::prefix_in_rib(&self.desired.paths, &self.applied, prefix) {
                            self.in_rib.insert(prefix);
                        } else {
                            self.in_rib.remove(&prefix);
                        }
                    }
                }
            }
            debug_assert_eq!(
                self.in_rib.iter().copied().collect::<HashSet<_>>(),
                paths::prefixes_in_rib(&self.desired.paths, &self.applied)
            );
            self.in_rib.clone()
        };
        let paths_applied = self.applied.len() as u64;
        let generation = self.plan.generation;
        let (pushed, withdrawn) = (self.pushed, self.withdrawn);
        let note = self.absent_note.clone();
        self.status.send_modify(|s| {
            s.reachable = true;
            s.awaiting_first_answer = false;
            s.pending_operations = pending;
            s.paths_applied = paths_applied;
            s.in_rib = in_rib;
            s.paths_added = pushed;
            s.paths_withdrawn = withdrawn;
            if converged {
                // Converged, but the plan may still hold paths gobgpd cannot take.
                s.last_error = note;
                if generation > 0 {
                    s.applied_generation = generation;
                    s.last_applied = Some(SystemTime::now());
                }
            }
        });
    }
}
