//! One voice per pool: leader election on a `coordination.k8s.io/v1` Lease, so that one replica of
//! a pool records its Kubernetes Events while the others stand by.
//!
//! The algorithm is client-go's: every candidate reads the Lease each retry period; the holder
//! writes a new `renewTime`; a candidate takes the Lease over only when it has seen the same record
//! (the same resourceVersion) for a whole `leaseDurationSeconds` by its own clock, so clock skew
//! between nodes does not matter. Every write carries the resourceVersion it was based on: of two
//! candidates racing for an expired Lease, the API server lets one win and answers the other 409.
//! A holder that cannot renew for two thirds of the lease duration stops leading before anyone may
//! take over; on shutdown it releases the Lease (empty holder), and a candidate takes it at once.
//!
//! The one crate of this kind that builds with kube 5 (kube-lease-manager) takes locks with
//! server-side apply and clears expired locks with unconditional patches, judging expiry from the
//! holder's wall clock; this module keeps to resourceVersion preconditions and local observation.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{EventsConfig, PoolName};

/// The Lease's name unless `events.leaseName` says otherwise: one per pool, so that pools sharing
/// a namespace each have their voice.
pub fn default_name(pool: &PoolName) -> String {
    format!("herald-events-{pool}")
}

/// What a candidate needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's `holderIdentity`; unique among the candidates.
    pub identity: String,
    /// `leaseDurationSeconds`: how long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
}

impl LeaseSettings {
    /// The settings of `events:` for `pool`; the namespace is the config's, else `$POD_NAMESPACE`,
    /// else `default_namespace` (the kubeconfig's, or the ServiceAccount's in a pod).
    pub fn from_config(config: &EventsConfig, pool: &PoolName, default_namespace: &str) -> Self {
        let namespace = config
            .lease_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|ns| !ns.is_empty())
            })
            .unwrap_or_else(|| default_namespace.to_string());
        LeaseSettings {
            namespace,
            name: config
                .lease_name
                .clone()
                .unwrap_or_else(|| default_name(pool)),
            identity: identity(),
            duration: config.lease_duration.0,
        }
    }

    /// How often the holder renews and the others look: a fifth of the lease duration.
    pub fn retry_period(&self) -> Duration {
        self.duration / 5
    }

    /// A holder whose last renewal is older than this stops leading: two thirds of the duration,
    /// well before another candidate may take the Lease over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// This replica's identity: `$POD_NAME` (from the downward API), else `<host name>_<pid>` (unique
/// among the processes of one host too).
pub fn identity() -> String {
    match std::env::var("POD_NAME") {
        Ok(name) if !name.is_empty() => name,
        _ => format!(
            "{}_{}",
            hostname().unwrap_or_else(|| "herald".to_string()),
            std::process::id()
        ),
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// A running candidate: whether it leads, and a way to step down.
pub struct Candidate {
    leading: watch::Receiver<bool>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    /// True while this replica holds the Lease.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops campaigning and, if this replica holds the Lease, releases it (bounded by `within`) so
    /// that another replica takes over without waiting for it to expire.
    pub async fn release(mut self, within: Duration) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        if tokio::time::timeout(within, &mut self.task).await.is_err() {
            warn!("the Lease was not released in time; it expires by itself");
            self.task.abort();
        }
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts campaigning for the Lease.
pub fn spawn_candidate(client: Client, settings: LeaseSettings) -> Candidate {
    let (leading_tx, leading) = watch::channel(false);
    let (release, released) = tokio::sync::oneshot::channel();
    let elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings,
        observed: None,
    };
    let task = tokio::spawn(elector.run(leading_tx, released));
    Candidate {
        leading,
        release: Some(release),
        task,
    }
}

/// The outcome of one look at the Lease.
#[derive(Debug)]
enum Attempt {
    /// We hold it (acquired or renewed).
    Holding,
    /// Someone else holds it (`None`: another replica wrote it first, holder not read).
    Standby(Option<String>),
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The Lease record last seen (its resourceVersion) and when it was first seen, by our clock.
    observed: Option<(String, Instant)>,
}

impl Elector {
    async fn run(
        mut self,
        leading: watch::Sender<bool>,
        mut released: tokio::sync::oneshot::Receiver<()>,
    ) {
        let lease = format!("{}/{}", self.settings.namespace, self.settings.name);
        let identity = self.settings.identity.clone();
        let retry = self.settings.retry_period();
        let deadline = self.settings.renew_deadline();
        info!(%lease, %identity, duration_s = self.settings.duration.as_secs(), "campaigning for the Events Lease");
        // When the last renewal started: a write that succeeds proves the Lease ours from then on.
        let mut renewed: Option<Instant> = None;
        let mut holder: Option<String> = None;
        loop {
            let started = Instant::now();
            // A holder must stop leading at its deadline even when the API server does not answer.
            let budget = match renewed {
                Some(at) => (at + deadline).saturating_duration_since(started),
                None => deadline,
            };
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(budget, self.attempt()) => outcome,
                _ = &mut released => break,
            };
            match outcome {
                Ok(Ok(Attempt::Holding)) => {
                    renewed = Some(started);
                    if !*leading.borrow() {
                        info!(%lease, %identity, "leading: this replica records the pool's Events");
                        leading.send_replace(true);
                    }
                    holder = Some(identity.clone());
                }
                Ok(Ok(Attempt::Standby(other))) => {
                    renewed = None;
                    let shown = other.as_deref().unwrap_or("another replica");
                    if leading.send_replace(false) {
                        info!(%lease, %identity, holder = shown, "lost the Events Lease; standing by");
                    } else if other.is_some() && holder != other {
                        info!(%lease, %identity, holder = shown, "the Events Lease is held by another replica");
                    }
                    if other.is_some() {
                        holder = other;
                    }
                }
                Ok(Err(error)) => {
                    warn!(%lease, %identity, %error, "cannot read or write the Events Lease")
                }
                Err(_) => {
                    warn!(%lease, %identity, "the API server did not answer about the Events Lease in time")
                }
            }
            if let Some(at) = renewed
                && at.elapsed() >= deadline
            {
                renewed = None;
                holder = None;
                leading.send_replace(false);
                warn!(%lease, %identity, deadline_ms = deadline.as_millis() as u64,
                      "could not renew the Events Lease in time; standing by");
            }
            tokio::select! {
                () = tokio::time::sleep_until(started + jittered(retry, renewed.is_none())) => {}
                _ = &mut released => break,
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            match tokio::time::timeout(deadline, self.release()).await {
                Ok(Ok(true)) => info!(%lease, %identity, "released the Events Lease"),
                Ok(Ok(false)) => {
                    debug!(%lease, %identity, "the Events Lease was no longer ours to release")
                }
                Ok(Err(error)) => {
                    warn!(%lease, %identity, %error, "cannot release the Events Lease; it expires by itself")
                }
                Err(_) => {
                    warn!(%lease, %identity, "releasing the Events Lease timed out; it expires by itself")
                }
            }
        }
    }

    /// Reads the Lease and acquires, renews or leaves it.
    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.record(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Holding)
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    Ok(Attempt::Standby(None))
                }
                Err(error) => Err(error),
            };
        };
        // Seen now, not when the read was sent: a write that landed meanwhile must get its full
        // lease duration from us.
        let now = self.observe(&lease);
        let spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if let Some(holder) = &holder
            && *holder != self.settings.identity
        {
            // The holder's own duration counts: it is the promise the holder made.
            let duration = spec
                .lease_duration_seconds
                .filter(|d| *d > 0)
                .map_or(self.settings.duration, |d| Duration::from_secs(d as u64));
            let seen_since = self.observed.as_ref().map_or(now, |(_, at)| *at);
            if now.duration_since(seen_since) < duration {
                return Ok(Attempt::Standby(Some(holder.clone())));
            }
            info!(lease = %self.settings.name, expired = %holder, "the Events Lease expired; taking it over");
        }
        lease.spec = Some(self.record(Some(spec)));
        // `replace` sends the resourceVersion read above: if anyone wrote since, the API server
        // answers 409 and the other writer has won.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(replaced) => {
                self.observe(&replaced);
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                debug!(lease = %self.settings.name, "another replica wrote the Events Lease first");
                Ok(Attempt::Standby(None))
            }
            Err(error) => Err(error),
        }
    }

    /// The spec that makes us the holder now, from the current one (`None`: a new Lease).
    fn record(&self, current: Option<LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let new = current.is_none();
        let current = current.unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.settings.identity.as_str());
        let transitions = current.lease_transitions.unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration_seconds()),
            acquire_time: if ours {
                current.acquire_time.or_else(|| Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            // Counts the changes of holder, as client-go does: 0 for the first.
            lease_transitions: Some(if ours || new {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..current
        }
    }

    /// Remembers when the Lease's record was first seen as it is, by our clock; returns now.
    fn observe(&mut self, lease: &Lease) -> Instant {
        let now = Instant::now();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != version)
        {
            self.observed = Some((version, now));
        }
        now
    }

    /// Gives the Lease up if it is still ours: an empty holder, which any candidate may take.
    async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// The retry period, a little shorter or longer for candidates (up to a tenth) so that replicas
/// started together do not keep racing in step. The holder renews on time.
fn jittered(period: Duration, candidate: bool) -> Duration {
    if !candidate {
        return period;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let spread = period / 10;
    period - spread + spread.mul_f64(2.0 * f64::from(nanos % 1000) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn settings_from_the_config_and_their_defaults() {
        let config =
            Config::parse("pool: pool-a\nevents: {leaseNamespace: herald-pool-a}\n").unwrap();
        let settings = LeaseSettings::from_config(&config.events, &config.pool, "default");
        assert_eq!(settings.name, "herald-events-pool-a");
        assert_eq!(settings.namespace, "herald-pool-a");
        assert_eq!(settings.duration, Duration::from_secs(15));
        assert_eq!(
            (settings.retry_period(), settings.renew_deadline()),
            (Duration::from_secs(3), Duration::from_secs(10))
        );
        assert_eq!(settings.duration_seconds(), 15);

        let config =
            Config::parse("events: {leaseDuration: 4s, leaseName: voice, leaseNamespace: ns}\n")
                .unwrap();
        let settings = LeaseSettings::from_config(&config.events, &config.pool, "default");
        assert_eq!(
            (settings.name.as_str(), settings.namespace.as_str()),
            ("voice", "ns")
        );
        assert_eq!(settings.duration, Duration::from_secs(4));
        assert_eq!(default_name(&config.pool), "herald-events-default");
    }

    #[test]
    fn candidates_jitter_and_the_holder_does_not() {
        let period = Duration::from_millis(3000);
        assert_eq!(jittered(period, false), period);
        for _ in 0..100 {
            let d = jittered(period, true);
            assert!(
                d >= Duration::from_millis(2700) && d <= Duration::from_millis(3300),
                "{d:?}"
            );
        }
    }
}
