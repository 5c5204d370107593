//! Kubernetes Events for the withdrawal brake: a Warning `WithdrawalBrakeEngaged` when it engages,
//! a Normal `WithdrawalBrakeReleased` when it lets go, on the pool's Events Lease (the object that
//! stands for the pool: `kubectl describe lease herald-events-<pool>`, or
//! `kubectl get events --field-selector reason=WithdrawalBrakeEngaged`).
//!
//! Recorded by the replica that holds the Lease, like the `IPRefused` Events ([`crate::events`]);
//! each replica has a brake of its own, and the holder's speaks for the pool. One Event per
//! engagement and one per release; a replica that takes over records the engagement under way.

use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::events::v1 as events;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::events::{CONTROLLER, Reporting};
use crate::plan::PlanSnapshot;

pub const ENGAGED: &str = "WithdrawalBrakeEngaged";
pub const RELEASED: &str = "WithdrawalBrakeReleased";
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Records the brake's engagements and releases seen on `plans` while `reporting.leading`, on the
/// Lease `namespace/name`.
pub fn spawn_brake_recorder(
    client: Client,
    mut plans: watch::Receiver<PlanSnapshot>,
    mut reporting: Reporting,
    lease: (String, String),
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut engaged_told: Option<u64> = None;
        let mut released_told: Option<u64> = None;
        let mut was_leading = false;
        loop {
            let leading = *reporting.leading.borrow_and_update();
            let snapshot = plans.borrow_and_update().clone();
            let mut complete = true;
            if leading {
                if !was_leading {
                    // A release from before this replica led is old news; an engagement under way is not.
                    released_told = snapshot.brake_released.as_ref().map(|r| r.engagement);
                }
                if let Some(brake) = snapshot
                    .brake
                    .as_deref()
                    .filter(|b| engaged_told != Some(b.engagement))
                {
                    let mut nodes: Vec<&str> =
                        brake.nodes.iter().map(String::as_str).take(10).collect();
                    if brake.nodes.len() > nodes.len() {
                        nodes.push("...");
                    }
                    let note = format!(
                        "withdrawal brake engaged: {}. Holding {} path(s) of {} node(s) ({}) for {} prefix(es) until they recover, \
                         an operator runs `heraldctl brake release`, or maxHold has passed",
                        brake.reason,
                        brake.paths,
                        brake.nodes.len(),
                        nodes.join(", "),
                        brake.prefixes
                    );
                    match publish(
                        &client,
                        &reporting,
                        &lease,
                        ENGAGED,
                        "Warning",
                        brake.engagement,
                        note,
                    )
                    .await
                    {
                        Ok(()) => engaged_told = Some(brake.engagement),
                        Err(error) => {
                            warn!(%error, "cannot record the WithdrawalBrakeEngaged Event; will retry");
                            complete = false;
                        }
                    }
                }
                if let Some(released) = snapshot
                    .brake_released
                    .as_deref()
                    .filter(|r| released_told != Some(r.engagement))
                {
                    let note = format!("withdrawal brake released: {}", released.why);
                    match publish(
                        &client,
                        &reporting,
                        &lease,
                        RELEASED,
                        "Normal",
                        released.engagement,
                        note,
                    )
                    .await
                    {
                        Ok(()) => released_told = Some(released.engagement),
                        Err(error) => {
                            warn!(%error, "cannot record the WithdrawalBrakeReleased Event; will retry");
                            complete = false;
                        }
                    }
                }
            } else {
                engaged_told = None;
            }
            was_leading = leading;
            tokio::select! {
                changed = plans.changed() => if changed.is_err() { return },
                changed = reporting.leading.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY_AFTER), if !complete => {}
            }
        }
    })
}

async fn publish(
    client: &Client,
    reporting: &Reporting,
    (namespace, name): &(String, String),
    reason: &str,
    type_: &str,
    engagement: u64,
    mut note: String,
) -> Result<(), kube::Error> {
    if note.len() > 1024 {
        let mut end = 1021;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    let event = events::Event {
        metadata: ObjectMeta {
            // Unique per replica, engagement and start of the replica: a retry of one Event hits
            // "already exists", two engagements make two Events.
            name: Some(format!(
                "{name}.{:016x}",
                crate::events::fnv1a64(&[
                    &reporting.instance,
                    reason,
                    &engagement.to_string(),
                    &std::process::id().to_string()
                ])
            )),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        type_: Some(type_.to_string()),
        reason: Some(reason.to_string()),
        action: Some("Withdraw".to_string()),
        note: Some(note),
        regarding: Some(core::ObjectReference {
            api_version: Some("coordination.k8s.io/v1".to_string()),
            kind: Some("Lease".to_string()),
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        }),
        reporting_controller: Some(CONTROLLER.to_string()),
        reporting_instance: Some(reporting.instance.clone()),
        ..Default::default()
    };
    let api: Api<events::Event> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => {
            info!(reason, engagement, "withdrawal brake Event recorded");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(error) => Err(error),
    }
}
