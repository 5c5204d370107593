//! The plan API's limits (`api.limits`): calls at once, WatchPlan streams in all and per peer,
//! message sizes. A call above a limit is refused at once with `RESOURCE_EXHAUSTED` and the reason,
//! never queued: a queue would hold the caller's memory and make the next caller wait, and the
//! refusal costs herald next to nothing. Every refusal is counted (`herald_api_refused_calls_total`,
//! by limit).

use std::collections::HashMap;
use std::future::Future as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::codegen::http;
use tracing::debug;

use crate::config::ApiLimits;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `concurrent_calls`, `watch_streams`, `watch_streams_per_peer`, `response_bytes`.
    pub limit: String,
}

/// Refused calls by limit, shared with the metrics.
pub type RefusedCalls = Family<RefusedLabels, Counter>;

/// Open WatchPlan streams by peer address.
type StreamsByPeer = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The API's limits and what is held against them.
pub struct Limits {
    pub config: ApiLimits,
    calls: Arc<Semaphore>,
    watches: Arc<Semaphore>,
    per_peer: StreamsByPeer,
    refused: RefusedCalls,
}

/// Held while a WatchPlan stream is open; dropping it frees the stream's place.
pub struct WatchPermit {
    _total: OwnedSemaphorePermit,
    peer: Option<(IpAddr, StreamsByPeer)>,
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
        self.refused
            .get_or_create(&RefusedLabels {
                limit: limit.to_string(),
            })
            .inc();
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
            return Ok(WatchPermit {
                _total: total,
                peer: None,
            });
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
        Ok(WatchPermit {
            _total: total,
            peer: Some((ip, self.per_peer.clone())),
        })
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

/// A tower layer that holds a place of `maxConcurrentCalls` for each unary call of the plan API
/// from its request until its answer has been sent (or the caller went away): the place covers
/// the answer's encoding and the time a slow reader takes, which is where a flood of ListRoutes
/// would pile up memory. Above the limit, the call gets RESOURCE_EXHAUSTED at once. WatchPlan,
/// health and reflection are not counted here (WatchPlan has limits of its own).
#[derive(Clone)]
pub struct CallLimitLayer {
    pub limits: Arc<Limits>,
}

impl<S> tower::Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;
    fn layer(&self, inner: S) -> CallLimit<S> {
        CallLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallLimit<S> {
    inner: S,
    limits: Arc<Limits>,
}

/// The unary methods of herald.v1.PlanService, by path.
fn unary_method(path: &str) -> Option<&str> {
    let method = path.strip_prefix("/herald.v1.PlanService/")?;
    (method != "WatchPlan").then_some(method)
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for CallLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(method) = unary_method(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        match self.limits.call(method) {
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            Ok(permit) => {
                let future = self.inner.call(request);
                let deadline = tokio::time::Instant::now() + self.limits.config.call_timeout.0;
                Box::pin(async move {
                    let response = future.await?;
                    Ok(response.map(|body| {
                        tonic::body::Body::new(PermitBody {
                            body,
                            pending: bytes::Bytes::new(),
                            deadline: Box::pin(tokio::time::sleep_until(deadline)),
                            _permit: permit,
                        })
                    }))
                })
            }
        }
    }
}

/// HTTP/2's default stream window: a piece goes out as soon as the reader has room for it.
const PIECE_BYTES: usize = 64 << 10;

/// An answer's body that holds its call's place until it is dropped: sent, or the caller gone,
/// or `callTimeout` after the call came (a reader too slow to take it, say one that never reads:
/// the stream is reset then, and the place freed).
///
/// The answer goes out in pieces of [`PIECE_BYTES`]: tonic hands over a message as one buffer, and
/// HTTP/2 would take all of it into its send buffer at once, whatever the reader's window: the
/// body would end, and its place be freed, while the whole answer still sat in memory for a reader
/// that never reads. In pieces, HTTP/2 takes the next only when the window allows, and the answer
/// stays counted until it is out.
struct PermitBody {
    body: tonic::body::Body,
    /// What of the current message is not out yet.
    pending: bytes::Bytes,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                "the answer was not taken within api.limits.callTimeout",
            ))));
        }
        if self.pending.is_empty() {
            match std::task::ready!(std::pin::Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.pending = data,
                    Err(frame) => return std::task::Poll::Ready(Some(Ok(frame))),
                },
                other => return std::task::Poll::Ready(other),
            }
        }
        let piece = self.pending.len().min(PIECE_BYTES);
        let piece = self.pending.split_to(piece);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.body.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(calls: usize, watches: usize, per_peer: usize) -> Arc<Limits> {
        let config = ApiLimits {
            max_concurrent_calls: calls,
            max_watch_streams: watches,
            max_watch_streams_per_peer: per_peer,
            ..ApiLimits::default()
        };
        Limits::new(config, RefusedCalls::default())
    }

    fn refused(limits: &Limits, limit: &str) -> u64 {
        limits
            .refused
            .get_or_create(&RefusedLabels {
                limit: limit.to_string(),
            })
            .get()
    }

    #[test]
    fn calls_above_the_limit_are_refused_and_counted_until_one_ends() {
        let limits = limits(2, 10, 10);
        let a = limits.call("ListRoutes").unwrap();
        let _b = limits.call("ListRoutes").unwrap();
        let status = limits.call("ListRoutes").unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("maxConcurrentCalls"),
            "{}",
            status.message()
        );
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
        assert!(
            status.message().contains("maxWatchStreamsPerPeer"),
            "{}",
            status.message()
        );
        let _c = limits.watch(Some(two)).unwrap();
        let status = limits.watch(Some(two)).err().unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("maxWatchStreams)"),
            "{}",
            status.message()
        );
        assert_eq!(
            (
                refused(&limits, "watch_streams_per_peer"),
                refused(&limits, "watch_streams")
            ),
            (1, 1)
        );
        assert_eq!(limits.open_watches(), 3);
        // A closed stream frees its place in all and its peer's.
        drop(a);
        assert!(limits.watch(Some(one)).is_ok());
        assert_eq!(
            limits.per_peer.lock().unwrap().get(&one),
            Some(&1),
            "the permit above was dropped again"
        );
    }
}
