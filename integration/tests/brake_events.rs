//! The withdrawal brake's Kubernetes Events, against the fake API server: one Warning
//! `WithdrawalBrakeEngaged` per engagement and one Normal `WithdrawalBrakeReleased` per release, on
//! the pool's Events Lease, from the replica that leads; nothing from one that does not.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use herald_core::brake::{BrakeRelease, BrakeStatus};
use herald_core::config::KubernetesSourceConfig;
use herald_core::plan::PlanSnapshot;
use herald_integration::fake_apiserver::FakeApiServer;
use herald_k8s::source::kubernetes::client;
use tokio::sync::watch;

const LEASE: (&str, &str) = ("herald", "herald-events-default");

fn engaged(engagement: u64) -> Arc<BrakeStatus> {
    Arc::new(BrakeStatus {
        engagement,
        engaged_at: SystemTime::now(),
        releases_at: SystemTime::now() + Duration::from_secs(900),
        reason: "3 of the pool's 3 eligible nodes lost within 30s (Ready lost or Node deleted)"
            .to_string(),
        nodes: BTreeSet::from([
            "control".to_string(),
            "node1".to_string(),
            "node2".to_string(),
        ]),
        paths: 8,
        prefixes: 4,
    })
}

async fn wait_events(
    server: &FakeApiServer,
    count: usize,
) -> Vec<herald_integration::fake_apiserver::RecordedEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = server.events();
        if events.len() >= count || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_event_per_engagement_and_per_release_on_the_lease_from_the_leader_only() {
    let server = FakeApiServer::start().await.unwrap();
    let client = client(&KubernetesSourceConfig {
        kubeconfig: Some(server.kubeconfig_path()),
    })
    .await
    .unwrap();
    let (plans, plans_rx) = watch::channel(PlanSnapshot {
        generation: 1,
        brake_enabled: true,
        ..Default::default()
    });
    let (leading, leading_rx) = watch::channel(false);
    let reporting = herald_k8s::events::Reporting {
        pool: Default::default(),
        instance: "replica-a".to_string(),
        leading: leading_rx,
    };
    let _recorder = herald_k8s::brake_events::spawn_brake_recorder(
        client,
        plans_rx,
        reporting,
        (LEASE.0.to_string(), LEASE.1.to_string()),
    );

    // Not leading: engaged, but another replica speaks.
    plans.send_modify(|p| {
        p.generation += 1;
        p.brake = Some(engaged(1));
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.events().is_empty(),
        "a standby replica recorded an Event"
    );

    // Leading: the engagement under way is told, once, however many plans follow.
    leading.send_replace(true);
    let events = wait_events(&server, 1).await;
    assert_eq!(events.len(), 1);
    for _ in 0..3 {
        plans.send_modify(|p| p.generation += 1);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = server.events();
    assert_eq!(
        events.len(),
        1,
        "told once: {:?}",
        events
            .iter()
            .map(|e| e.note().to_string())
            .collect::<Vec<_>>()
    );
    let event = &events[0];
    assert_eq!(event.reason(), "WithdrawalBrakeEngaged");
    assert_eq!(event.type_(), "Warning");
    assert_eq!(event.namespace, LEASE.0);
    assert_eq!(event.regarding()["kind"], "Lease");
    assert_eq!(event.regarding()["name"], LEASE.1);
    assert!(
        event
            .note()
            .contains("3 of the pool's 3 eligible nodes lost")
            && event.note().contains("control, node1, node2"),
        "{}",
        event.note()
    );

    // Released: one Normal Event.
    plans.send_modify(|p| {
        p.generation += 1;
        p.brake = None;
        p.brake_released = Some(Arc::new(BrakeRelease {
            engagement: 1,
            at: SystemTime::now(),
            why: "released by an operator".to_string(),
        }));
    });
    let events = wait_events(&server, 2).await;
    assert_eq!(events.len(), 2);
    let released = events
        .iter()
        .find(|e| e.reason() == "WithdrawalBrakeReleased")
        .expect("the release told");
    assert_eq!(released.type_(), "Normal");
    assert!(
        released.note().contains("released by an operator"),
        "{}",
        released.note()
    );

    // A second engagement is a second Event.
    plans.send_modify(|p| {
        p.generation += 1;
        p.brake = Some(engaged(2));
    });
    let events = wait_events(&server, 3).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason() == "WithdrawalBrakeEngaged")
            .count(),
        2
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.events().len(), 3);
}
