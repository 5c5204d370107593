//! Kubernetes Events for refused IPs: a Service whose IP herald will not announce gets a Warning
//! Event `IPRefused` (events.k8s.io/v1), visible in `kubectl describe service`.
//!
//! One Event per cause, not per plan: a cause is (Service, IP, reason), and it is recorded once
//! while it lasts, however often the plan changes around it. A cause that goes away and comes back
//! is recorded again only if the Service was re-created in between (a new uid) or it stayed away for
//! longer than [`FORGET_AFTER`]: a flapping cause does not make a storm of Events.
//!
//! The planner knows Services by name only; the Event needs the Service's uid (that is how
//! `kubectl describe` finds it), so the recorder reads the Service once per new cause.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::ObjectKey;
use crate::plan::{PlanSnapshot, Refusal};

/// The Event reason.
pub const REASON: &str = "IPRefused";
/// The Event action (what herald did not do).
pub const ACTION: &str = "Announce";
/// The reporting controller.
pub const CONTROLLER: &str = "herald";
/// A cause absent from the plan for this long is forgotten (and recorded again if it returns).
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How soon a failed read or Event is tried again (or on the next plan, if that comes first).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What identifies a refusal cause.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Cause {
    service: ObjectKey,
    ip: String,
    reason: String,
}

impl Cause {
    fn of(refusal: &Refusal) -> Self {
        Self { service: refusal.service.clone(), ip: refusal.ip.clone(), reason: refusal.reason.clone() }
    }
}

struct Recorded {
    /// The uid of the Service the Event was recorded on.
    uid: Option<String>,
    /// When the cause left the plan; `None` while it is in it.
    absent_since: Option<Instant>,
}

/// Records Events for the refusals of each plan published on `plans`, until the sender is gone.
///
/// The reporting instance is `$POD_NAME` (set it from the downward API), else the host name.
pub fn spawn_event_recorder(client: Client, plans: watch::Receiver<PlanSnapshot>) -> JoinHandle<()> {
    let instance = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(hostname);
    let reporter = Reporter { controller: CONTROLLER.to_string(), instance };
    tokio::spawn(EventRecorder::new(client, reporter).run(plans))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

struct EventRecorder {
    client: Client,
    reporter: Reporter,
    recorded: BTreeMap<Cause, Recorded>,
}

impl EventRecorder {
    fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter, recorded: BTreeMap::new() }
    }

    async fn run(mut self, mut plans: watch::Receiver<PlanSnapshot>) {
        loop {
            let snapshot = plans.borrow_and_update().clone();
            let complete = self.record(&snapshot).await;
            if complete {
                if plans.changed().await.is_err() {
                    return;
                }
            } else {
                tokio::select! {
                    changed = plans.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        }
    }

    /// Records the plan's new causes; false if some could not be recorded (to be tried again).
    async fn record(&mut self, snapshot: &PlanSnapshot) -> bool {
        let now = Instant::now();
        let current: BTreeMap<Cause, &Refusal> =
            snapshot.plan.refusals.iter().map(|r| (Cause::of(r), r)).collect();

        // Causes that left the plan start (or keep) ageing; old ones are forgotten.
        for (cause, recorded) in self.recorded.iter_mut() {
            if !current.contains_key(cause) && recorded.absent_since.is_none() {
                recorded.absent_since = Some(now);
            }
        }
        self.recorded
            .retain(|_, r| r.absent_since.is_none_or(|since| now.duration_since(since) < FORGET_AFTER));

        let mut complete = true;
        let mut uids: BTreeMap<ObjectKey, Option<core::Service>> = BTreeMap::new();
        for (cause, refusal) in current {
            if let Some(recorded) = self.recorded.get(&cause)
                && recorded.absent_since.is_none()
            {
                continue;
            }
            // New, or back after a while: read the Service (once per Service per plan).
            let service = match uids.get(&cause.service) {
                Some(service) => service.clone(),
                None => {
                    let api: Api<core::Service> = Api::namespaced(self.client.clone(), &cause.service.namespace);
                    match api.get_opt(&cause.service.name).await {
                        Ok(service) => {
                            uids.insert(cause.service.clone(), service.clone());
                            service
                        }
                        Err(error) => {
                            warn!(service = %cause.service, %error, "cannot read Service for its IPRefused Event; will retry");
                            complete = false;
                            continue;
                        }
                    }
                }
            };
            let Some(service) = service else {
                // Deleted since the plan was made: the next plan drops the cause.
                debug!(service = %cause.service, "Service gone; no Event");
                continue;
            };
            let uid = service.metadata.uid.clone();
            if let Some(recorded) = self.recorded.get_mut(&cause)
                && recorded.uid == uid
            {
                // The same Service, back within FORGET_AFTER: already told.
                recorded.absent_since = None;
                continue;
            }
            match self.publish(&service, refusal).await {
                Ok(()) => {
                    info!(service = %cause.service, ip = %cause.ip, reason = %cause.reason, "IPRefused Event recorded");
                    self.recorded.insert(cause, Recorded { uid, absent_since: None });
                }
                Err(error) => {
                    warn!(service = %cause.service, ip = %cause.ip, %error, "cannot record IPRefused Event; will retry");
                    complete = false;
                }
            }
        }
        complete
    }

    async fn publish(&self, service: &core::Service, refusal: &Refusal) -> Result<(), kube::Error> {
        let mut note = format!(
            "{} IP {} is not announced over BGP: {}",
            refusal.role.as_str(),
            refusal.ip,
            refusal.reason
        );
        truncate(&mut note, 1024);
        let event = Event {
            type_: EventType::Warning,
            reason: REASON.to_string(),
            note: Some(note),
            action: ACTION.to_string(),
            secondary: None,
        };
        // A Recorder of its own for each Event: kube's Recorder folds Events with the same reason
        // and object into one series (keeping the first note), but each cause needs its own note.
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(&event, &service.object_ref(&()))
            .await
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
}

/// The causes of a set of refusals, for tests: what one Event each is expected for.
pub fn causes<'a>(refusals: impl IntoIterator<Item = &'a Refusal>) -> BTreeSet<(ObjectKey, String, String)> {
    refusals.into_iter().map(|r| (r.service.clone(), r.ip.clone(), r.reason.clone())).collect()
}

