//! ControlService: what an operator may change in a running herald. Today one thing: releasing the
//! guard's withdrawal brake. The request goes to the planner thread as an input (a counter on a
//! watch channel, like the source's states); the answer is read back from the plans it publishes.

use std::time::Duration;

use herald_api::herald::v1 as pb;
use herald_api::herald::v1::control_service_server::{ControlService, ControlServiceServer};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::plan::PlanSnapshot;

/// How long a release waits for the planner to publish the plan without the held paths.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

pub struct ControlApi {
    plans: watch::Receiver<PlanSnapshot>,
    releases: watch::Sender<u64>,
}

impl ControlApi {
    pub fn new(plans: watch::Receiver<PlanSnapshot>, releases: watch::Sender<u64>) -> Self {
        ControlApi { plans, releases }
    }

    pub fn into_service(self) -> ControlServiceServer<Self> {
        ControlServiceServer::new(self)
    }
}

fn timestamp(time: std::time::SystemTime) -> herald_api::pbjson_types::Timestamp {
    let since = time
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    herald_api::pbjson_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// The brake as a plan snapshot shows it.
pub fn brake(snapshot: &PlanSnapshot) -> pb::WithdrawalBrake {
    let mut out = pb::WithdrawalBrake {
        enabled: snapshot.brake_enabled,
        ..Default::default()
    };
    if let Some(status) = &snapshot.brake {
        out.engaged = true;
        out.reason = status.reason.clone();
        out.nodes = status.nodes.iter().cloned().collect();
        out.paths = status.paths as u64;
        out.prefixes = status.prefixes as u64;
        out.engaged_at = Some(timestamp(status.engaged_at));
        out.releases_at = Some(timestamp(status.releases_at));
        out.engagement = status.engagement;
    }
    if let Some(released) = &snapshot.brake_released {
        out.last_release = format!("engagement {}: {}", released.engagement, released.why);
        out.last_release_at = Some(timestamp(released.at));
        if out.engagement == 0 {
            out.engagement = released.engagement;
        }
    }
    out
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn release_brake(
        &self,
        _request: Request<pb::ReleaseBrakeRequest>,
    ) -> Result<Response<pb::ReleaseBrakeResponse>, Status> {
        let mut plans = self.plans.clone();
        let engaged = plans
            .borrow_and_update()
            .brake
            .as_ref()
            .map(|b| b.engagement);
        if !plans.borrow().brake_enabled {
            return Err(Status::failed_precondition(
                "the withdrawal brake is off (guard.withdrawalBrake.enabled: false)",
            ));
        }
        info!(
            engaged = engaged.is_some(),
            "withdrawal brake release asked for over the API"
        );
        self.releases.send_modify(|n| *n += 1);
        if let Some(engagement) = engaged {
            let released = tokio::time::timeout(
                RELEASE_WAIT,
                plans.wait_for(|p| p.brake.as_ref().is_none_or(|b| b.engagement != engagement)),
            )
            .await;
            match released {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(Status::unavailable("the planner has stopped")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "the planner did not publish the released plan in time",
                    ));
                }
            }
        }
        let snapshot = plans.borrow().clone();
        Ok(Response::new(pb::ReleaseBrakeResponse {
            was_engaged: engaged.is_some(),
            generation: snapshot.generation,
            brake: Some(brake(&snapshot)),
        }))
    }
}
