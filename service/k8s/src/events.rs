//! Kubernetes Events for refused IPs: a Service whose IP herald will not announce gets a Warning
//! Event `IPRefused` (events.k8s.io/v1), visible in `kubectl describe service`.
//!
//! One Event per cause, not per plan nor per replica: a cause is (Service, IP, reason), and it is
//! recorded once while it lasts, however often the plan changes around it. A cause that goes away
//! and comes back is recorded again only if the Service was re-created in between (a new uid) or it
//! stayed away for longer than [`FORGET_AFTER`] and the API server has let its Event go: a flapping
//! cause does not make a storm of Events.
//!
//! Only the replica that holds the pool's Events Lease records (see [`crate::lease`]). An Event's
//! name is made from its cause (the Service's name, and a hash of its uid, the IP and the reason),
//! so a replica that takes over records again every cause it sees and the API server answers
//! "already exists" for those its predecessor recorded: nothing is told twice, nothing is lost in
//! the handover.
//!
//! The planner knows Services by name only; the Event needs the Service's uid (that is how
//! `kubectl describe` finds it), so the recorder reads the Service once per new cause.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::events::v1 as events;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::ObjectKey;
use crate::config::{Config, PoolName};
use crate::lease::{self, Candidate, LeaseSettings};
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
        Self {
            service: refusal.service.clone(),
            ip: refusal.ip.clone(),
            reason: refusal.reason.clone(),
        }
    }
}

struct Recorded {
    /// The uid of the Service the Event was recorded on.
    uid: Option<String>,
    /// When the cause left the plan; `None` while it is in it.
    absent_since: Option<Instant>,
}

/// Who records: for which pool (the refusals whose `event_pool` it is), this replica's name (the
/// Events' `reportingInstance`), and whether it holds the pool's Events Lease. Only the holder
/// records.
#[derive(Debug, Clone)]
pub struct Reporting {
    pub pool: PoolName,
    pub instance: String,
    pub leading: watch::Receiver<bool>,
}

/// Campaigns for the pool's Events Lease and records the plan's refusals that are this pool's to
/// record while holding it. Release the candidate on shutdown: another replica then takes over at
/// once.
pub fn spawn(client: Client, config: &Config, plans: watch::Receiver<PlanSnapshot>) -> Candidate {
    let settings =
        LeaseSettings::from_config(&config.events, &config.pool, client.default_namespace());
    let instance = settings.identity.clone();
    let lease = (settings.namespace.clone(), settings.name.clone());
    let candidate = lease::spawn_candidate(client.clone(), settings);
    let reporting = Reporting {
        pool: config.pool.clone(),
        instance,
        leading: candidate.leading(),
    };
    crate::brake_events::spawn_brake_recorder(
        client.clone(),
        plans.clone(),
        reporting.clone(),
        lease,
    );
    spawn_event_recorder(client, plans, reporting);
    candidate
}

/// Records Events for the refusals of each plan published on `plans` while `reporting.leading`,
/// until the plan sender is gone.
pub fn spawn_event_recorder(
    client: Client,
    plans: watch::Receiver<PlanSnapshot>,
    reporting: Reporting,
) -> JoinHandle<()> {
    tokio::spawn(EventRecorder::new(client, reporting).run(plans))
}

struct EventRecorder {
    client: Client,
    pool: PoolName,
    instance: String,
    leading: watch::Receiver<bool>,
    recorded: BTreeMap<Cause, Recorded>,
}

/// What became of an Event.
enum Published {
    Created,
    /// An Event of that name exists: an earlier holder of the Lease recorded the cause.
    Existed,
}

impl EventRecorder {
    fn new(client: Client, reporting: Reporting) -> Self {
        Self {
            client,
            pool: reporting.pool,
            instance: reporting.instance,
            leading: reporting.leading,
            recorded: BTreeMap::new(),
        }
    }

    async fn run(mut self, mut plans: watch::Receiver<PlanSnapshot>) {
        loop {
            let leading = *self.leading.borrow_and_update();
            let snapshot = plans.borrow_and_update().clone();
            let complete = if snapshot.partial {
                // The ranges alone, before the Services are planned: no refusal is known yet.
                true
            } else if leading {
                self.record(&snapshot).await
            } else {
                // Whoever leads next starts from what the API server holds, not from this memory.
                self.recorded.clear();
                true
            };
            tokio::select! {
                changed = plans.changed() => if changed.is_err() { return },
                // Lost: stop recording. Gained: record what the plan refuses now.
                changed = self.leading.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY_AFTER), if !complete => {}
            }
        }
    }

    /// Records the plan's new causes; false if some could not be recorded (to be tried again).
    async fn record(&mut self, snapshot: &PlanSnapshot) -> bool {
        let now = Instant::now();
        // Every pool refuses an IP that no pool may announce; one of them records it.
        let current: BTreeMap<Cause, &Refusal> = snapshot
            .plan
            .refusals
            .iter()
            .filter(|r| r.event_pool == self.pool)
            .map(|r| (Cause::of(r), r))
            .collect();

        // Causes that left the plan start (or keep) ageing; old ones are forgotten.
        for (cause, recorded) in self.recorded.iter_mut() {
            if !current.contains_key(cause) && recorded.absent_since.is_none() {
                recorded.absent_since = Some(now);
            }
        }
        self.recorded.retain(|_, r| {
            r.absent_since
                .is_none_or(|since| now.duration_since(since) < FORGET_AFTER)
        });

        let mut complete = true;
        let mut uids: BTreeMap<ObjectKey, Option<core::Service>> = BTreeMap::new();
        for (cause, refusal) in current {
            if let Some(recorded) = self.recorded.get(&cause)
                && recorded.absent_since.is_none()
            {
                continue;
            }
            if !*self.leading.borrow() {
                // The Lease was lost meanwhile: the new holder records the rest.
                return true;
            }
            // New, or back after a while: read the Service (once per Service per plan).
            let service = match uids.get(&cause.service) {
                Some(service) => service.clone(),
                None => {
                    let api: Api<core::Service> =
                        Api::namespaced(self.client.clone(), &cause.service.namespace);
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
                Ok(published) => {
                    match published {
                        Published::Created => {
                            info!(service = %cause.service, ip = %cause.ip, reason = %cause.reason, "IPRefused Event recorded")
                        }
                        Published::Existed => {
                            debug!(service = %cause.service, ip = %cause.ip, "IPRefused Event already recorded")
                        }
                    }
                    self.recorded.insert(
                        cause,
                        Recorded {
                            uid,
                            absent_since: None,
                        },
                    );
                }
                Err(error) => {
                    warn!(service = %cause.service, ip = %cause.ip, %error, "cannot record IPRefused Event; will retry");
                    complete = false;
                }
            }
        }
        complete
    }

    async fn publish(
        &self,
        service: &core::Service,
        refusal: &Refusal,
    ) -> Result<Published, kube::Error> {
        let mut note = format!(
            "{} IP {} is not announced over BGP: {}",
            refusal.role.as_str(),
            refusal.ip,
            refusal.reason
        );
        truncate(&mut note, 1024);
        let regarding = service.object_ref(&());
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let event = events::Event {
            metadata: ObjectMeta {
                name: Some(event_name(service, refusal)),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            type_: Some("Warning".to_string()),
            reason: Some(REASON.to_string()),
            action: Some(ACTION.to_string()),
            note: Some(note),
            regarding: Some(regarding),
            reporting_controller: Some(CONTROLLER.to_string()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let api: Api<events::Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => Ok(Published::Created),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Published::Existed),
            Err(error) => Err(error),
        }
    }
}

/// The Event's name: the Service's name and a hash of the cause on this very Service (its uid),
/// the same in every replica and every version of herald.
fn event_name(service: &core::Service, refusal: &Refusal) -> String {
    let uid = service.metadata.uid.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or(CONTROLLER);
    format!(
        "{name}.{:016x}",
        fnv1a64(&[uid, &refusal.ip, &refusal.reason])
    )
}

/// FNV-1a (64 bits) of the parts, each ended by a NUL: stable, unlike std's hashers.
pub(crate) fn fnv1a64(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
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
pub fn causes<'a>(
    refusals: impl IntoIterator<Item = &'a Refusal>,
) -> BTreeSet<(ObjectKey, String, String)> {
    refusals
        .into_iter()
        .map(|r| (r.service.clone(), r.ip.clone(), r.reason.clone()))
        .collect()
}
