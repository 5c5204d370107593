//! The plan API's limits (`api.limits`): calls at once, WatchPlan streams in all and per peer,
//! message sizes. A call above a limit is refused at once with `RESOURCE_EXHAUSTED` and the reason,
//! never queued: a queue would hold the caller's memory and make the next caller wait, and the
//! refusal costs herald next to nothing. Every refusal is counted (`herald_api_refused_calls_total`,
//! by limit).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tracing::debug;

use crate::config::ApiLimits;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `concurrent_calls`, `watch_streams`, `watch_streams_per_peer`, `response_bytes`,
    /// `request_bytes`.
    pub limit: String,
}

/// Refused calls by limit, shared with the metrics.
pub type RefusedCalls = Family<RefusedLabels, Counter>;

/// The API's limits and what is held against them.
pub struct Limits {
    pub config: ApiLimits,
    calls: Arc<Semaphore>,
    watches: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    refused: RefusedCalls,
}

/// Held while a WatchPlan stream is open; dropping it frees the stream's place.
pub struct WatchPermit {
    _total: OwnedSemaphorePermit,
    peer: Option<(IpAddr, Arc<Mutex<HashMap<IpAddr, usize>>>)>,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        if let Some((ip, per_peer)) = &self.peer {
            let mut map = per_peer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = map.get_mut(ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(ip);
                }
            }
        }
    }
}

impl Limits {
    pub fn new(config: ApiLimits, refused: RefusedCalls) -> Arc<Limits> {
        Arc::new(Limits {
            calls: Arc::new(Semaphore::new(config.max_concurrent_calls)),
            watches: Arc::new(Semaphore::new(config.max_watch_streams)),
            per_peer: Arc::default(),
            refused,
            config,
        })
    }

    /// Counts a refusal under `limit` and makes its status.
    pub fn refuse(&self, limit: &str, reason: String) -> Status {
        self.refused.get_or_create(&RefusedLabels { limit: limit.to_string() }).inc();
        debug!(limit, %reason, "API call refused");
        Status::resource_exhausted(reason)
    }

    /// A place for one unary call, held until it has its answer.
    pub fn call(&self, method: &str) -> Result<OwnedSemaphorePermit, Status> {
        self.calls.clone().try_acquire_owned().map_err(|_| {
            self.refuse(
                "concurrent_calls",
                format!(
                    "{method} refused: herald is answering {} calls already (api.limits.maxConcurrentCalls); retry in a moment",
                    self.config.max_concurrent_calls
                ),
            )
        })
    }

    /// A place for one WatchPlan stream from `peer`, held while the stream is open.
    pub fn watch(&self, peer: Option<IpAddr>) -> Result<WatchPermit, Status> {
        let total = self.watches.clone().try_acquire_owned().map_err(|_| {
            self.refuse(
                "watch_streams",
                format!(
                    "WatchPlan refused: {} streams are open already, the most herald serves (api.limits.maxWatchStreams)",
                    self.config.max_watch_streams
                ),
            )
        })?;
        let Some(ip) = peer else {
            return Ok(WatchPermit { _total: total, peer: None });
        };
        let mut map = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_default();
        if *count >= self.config.max_watch_streams_per_peer {
            let max = self.config.max_watch_streams_per_peer;
            drop(map);
            return Err(self.refuse(
                "watch_streams_per_peer",
                format!("WatchPlan refused: {ip} has {max} streams open already, the most one peer may (api.limits.maxWatchStreamsPerPeer)"),
            ));
        }
        *count += 1;
        Ok(WatchPermit { _total: total, peer: Some((ip, self.per_peer.clone())) })
    }

    /// Refuses an answer of `bytes` above `maxResponseBytes`.
    pub fn check_response(&self, method: &str, bytes: usize, hint: &str) -> Result<(), Status> {
        if bytes > self.config.max_response_bytes {
            return Err(self.refuse(
                "response_bytes",
                format!(
                    "{method} refused: the answer is {bytes} bytes, more than api.limits.maxResponseBytes ({}){hint}",
                    self.config.max_response_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Open WatchPlan streams, for tests and status.
    pub fn open_watches(&self) -> usize {
        self.config.max_watch_streams - self.watches.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(calls: usize, watches: usize, per_peer: usize) -> Arc<Limits> {
        let config = ApiLimits { max_concurrent_calls: calls, max_watch_streams: watches, max_watch_streams_per_peer: per_peer, ..ApiLimits::default() };
        Limits::new(config, RefusedCalls::default())
    }

    fn refused(limits: &Limits, limit: &str) -> u64 {
        limits.refused.get_or_create(&RefusedLabels { limit: limit.to_string() }).get()
    }

    #[test]
    fn calls_above_the_limit_are_refused_and_counted_until_one_ends() {
        let limits = limits(2, 10, 10);
        let a = limits.call("ListRoutes").unwrap();
        let _b = limits.call("ListRoutes").unwrap();
        let status = limits.call("ListRoutes").unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("maxConcurrentCalls"), "{}", status.message());
        assert_eq!(refused(&limits, "concurrent_calls"), 1);
        drop(a);
        assert!(limits.call("ListRoutes").is_ok());
    }

    #[test]
    fn watch_streams_per_peer_and_in_all() {
        let limits = limits(1, 3, 2);
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let two: IpAddr = "127.0.0.2".parse().unwrap();
        let a = limits.watch(Some(one)).unwrap();
        let _b = limits.watch(Some(one)).unwrap();
        let status = limits.watch(Some(one)).err().unwrap();
        assert!(status.message().contains("maxWatchStreamsPerPeer"), "{}", status.message());
        let _c = limits.watch(Some(two)).unwrap();
        let status = limits.watch(Some(two)).err().unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("maxWatchStreams)"), "{}", status.message());
        assert_eq!((refused(&limits, "watch_streams_per_peer"), refused(&limits, "watch_streams")), (1, 1));
        assert_eq!(limits.open_watches(), 3);
        // A closed stream frees its place in all and its peer's.
        drop(a);
        assert!(limits.watch(Some(one)).is_ok());
        assert_eq!(limits.per_peer.lock().unwrap().get(&one), Some(&1), "the permit above was dropped again");
    }
}
