//! Admission of the membership calls (Join, Snapshot), which cost the event loop a walk of
//! every instance, or a whole encoded state in memory: even an authenticated peer gets them
//! only at a bounded rate, and one snapshot at a time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per peer: at most one call per `interval`.
#[derive(Debug)]
pub struct PerPeerRate {
    interval: Duration,
    /// When each peer was last admitted. A plain mutex: held for a comparison, never across
    /// an await, and not protocol state.
    last: Mutex<Vec<Option<Instant>>>,
}

impl PerPeerRate {
    pub fn new(n: usize, interval: Duration) -> PerPeerRate {
        PerPeerRate {
            interval,
            last: Mutex::new(vec![None; n]),
        }
    }

    /// Whether `peer` may call now (and if so, counts this call).
    pub fn admit(&self, peer: usize, now: Instant) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(slot) = last.get_mut(peer) else {
            return false;
        };
        if slot.is_some_and(|t| now.duration_since(t) < self.interval) {
            return false;
        }
        *slot = Some(now);
        true
    }
}

/// At most `max` snapshots taken and streamed at once.
#[derive(Debug, Clone)]
pub struct Snapshots(Arc<Semaphore>);

impl Snapshots {
    pub fn new(max: usize) -> Snapshots {
        Snapshots(Arc::new(Semaphore::new(max)))
    }

    /// A slot, held until the snapshot's stream ends; `None` when all are taken.
    pub fn try_start(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_is_admitted_once_per_interval() {
        let rate = PerPeerRate::new(3, Duration::from_millis(100));
        let t = Instant::now();
        assert!(rate.admit(1, t));
        assert!(!rate.admit(1, t + Duration::from_millis(50)), "too soon");
        assert!(rate.admit(2, t + Duration::from_millis(50)), "another peer");
        assert!(rate.admit(1, t + Duration::from_millis(100)));
        assert!(!rate.admit(7, t), "no such peer");
    }

    #[test]
    fn one_snapshot_at_a_time_until_its_stream_ends() {
        let s = Snapshots::new(1);
        let first = s.try_start().expect("free");
        assert!(s.try_start().is_none(), "one at a time");
        drop(first);
        assert!(s.try_start().is_some(), "free again once the stream ended");
    }
}

/// A budget on the bytes of client request bodies held at once, across every connection and
/// stream of the client listener. Each body's bytes take permits as they arrive and give them
/// back when the body is dropped (tonic drops it once the message is decoded, before the
/// handler runs, and the handler then takes bigChannel's budget for the command). A body that
/// would exceed the budget fails at once with RESOURCE_EXHAUSTED, so a flood of large or
/// half-sent requests costs at most the budget, not connections × streams × message size.
///
/// Written as a tower layer because tonic bounds each message's size but not the sum over
/// concurrent streams, and no tower middleware meters body bytes against a shared budget.
#[derive(Clone)]
pub struct RequestBytesLayer {
    budget: Arc<Semaphore>,
    refused: metrics::Counter,
}

impl RequestBytesLayer {
    /// `max` must fit a `u32` (checked by `RuntimeOptions::validate`).
    pub fn new(max: usize) -> RequestBytesLayer {
        RequestBytesLayer {
            budget: Arc::new(Semaphore::new(max)),
            refused: metrics::counter!("epaxos_request_bytes_refused_total"),
        }
    }
}

impl<S> tower_layer::Layer<S> for RequestBytesLayer {
    type Service = RequestBytes<S>;
    fn layer(&self, inner: S) -> RequestBytes<S> {
        RequestBytes {
            inner,
            budget: self.budget.clone(),
            refused: self.refused.clone(),
        }
    }
}

/// The service [`RequestBytesLayer`] wraps around the client listener's routes.
#[derive(Clone)]
pub struct RequestBytes<S> {
    inner: S,
    budget: Arc<Semaphore>,
    refused: metrics::Counter,
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;

impl<S: tonic::codegen::Service<HttpRequest>> tonic::codegen::Service<HttpRequest>
    for RequestBytes<S>
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let (budget, refused) = (self.budget.clone(), self.refused.clone());
        let request = request.map(|body| {
            tonic::body::Body::new(Metered {
                body,
                budget,
                held: None,
                refused,
            })
        });
        self.inner.call(request)
    }
}

/// A request body whose received bytes hold permits of the shared budget until it is dropped.
struct Metered {
    body: tonic::body::Body,
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    refused: metrics::Counter,
}

impl http_body::Body for Metered {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        use std::task::Poll;
        let frame = match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let len = frame.data_ref().map_or(0, |d| d.len());
        if len > 0 {
            let taken = u32::try_from(len)
                .ok()
                .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok());
            match (taken, self.held.as_mut()) {
                (Some(p), Some(held)) => held.merge(p),
                (Some(p), None) => self.held = Some(p),
                (None, _) => {
                    self.refused.increment(1);
                    return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(
                        "replica overloaded: too many request bytes in flight; retry later",
                    ))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
