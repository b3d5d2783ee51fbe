//! A queue of encoded messages bounded both in entries and in bytes: one entry can be many
//! MiB (a batch of large values), so a count alone does not bound memory.
//!
//! tokio's `mpsc` bounds entries only; this wraps it with a shared byte count, charged when an
//! entry goes in and released when it comes out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// The sending half: never waits, refuses what does not fit.
#[derive(Debug, Clone)]
pub struct ByteSender {
    tx: mpsc::Sender<Bytes>,
    bytes: Arc<AtomicUsize>,
    bytes_max: usize,
}

/// The receiving half.
#[derive(Debug)]
pub struct ByteReceiver {
    rx: mpsc::Receiver<Bytes>,
    bytes: Arc<AtomicUsize>,
}

/// Why an entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `entries_max` entries or `bytes_max` bytes are queued already.
    Full,
    /// The receiver is gone.
    Closed,
}

/// A queue of at most `entries_max` entries and `bytes_max` bytes (an entry larger than
/// `bytes_max` alone still fits an empty queue, so that no message is unsendable).
pub fn byte_queue(entries_max: usize, bytes_max: usize) -> (ByteSender, ByteReceiver) {
    let (tx, rx) = mpsc::channel(entries_max);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        ByteSender {
            tx,
            bytes: bytes.clone(),
            bytes_max,
        },
        ByteReceiver { rx, bytes },
    )
}

impl ByteSender {
    /// Queues `entry` if it fits.
    pub fn try_send(&self, entry: Bytes) -> Result<(), Refused> {
        let len = entry.len();
        let before = self.bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > self.bytes_max {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        self.tx.try_send(entry).map_err(|e| {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

impl ByteReceiver {
    /// The next entry; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let entry = self.rx.recv().await?;
        self.bytes.fetch_sub(entry.len(), Ordering::AcqRel);
        Some(entry)
    }

    /// Polls for the next entry (for a `Stream` built on the queue); `Ready(None)` once every
    /// sender is gone and the queue is empty.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        let entry = std::task::ready!(self.rx.poll_recv(cx));
        if let Some(entry) = &entry {
            self.bytes.fetch_sub(entry.len(), Ordering::AcqRel);
        }
        std::task::Poll::Ready(entry)
    }

    /// The next entry if one is queued.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let entry = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(entry.len(), Ordering::AcqRel);
        Some(entry)
    }

    /// Whether every sender is gone.
    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_in_entries_and_in_bytes() {
        let (tx, mut rx) = byte_queue(3, 10);
        assert_eq!(tx.try_send(Bytes::from(vec![0; 6])), Ok(()));
        assert_eq!(
            tx.try_send(Bytes::from(vec![0; 6])),
            Err(Refused::Full),
            "12 bytes > 10"
        );
        assert_eq!(tx.try_send(Bytes::from(vec![0; 4])), Ok(()));
        assert_eq!(tx.queued_bytes(), 10);
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(6));
        assert_eq!(tx.queued_bytes(), 4);
        assert_eq!(tx.try_send(Bytes::from(vec![0; 1])), Ok(()));
        assert_eq!(tx.try_send(Bytes::from(vec![0; 1])), Ok(()));
        assert_eq!(
            tx.try_send(Bytes::from(vec![0; 1])),
            Err(Refused::Full),
            "3 entries"
        );
        while rx.try_recv().is_some() {}
        assert_eq!(tx.queued_bytes(), 0);
        assert_eq!(
            tx.try_send(Bytes::from(vec![0; 50])),
            Ok(()),
            "a large entry alone fits an empty queue"
        );
        assert_eq!(rx.try_recv().map(|b| b.len()), Some(50));
        // Polled (as a stream's body polls it): an entry releases its bytes too.
        assert_eq!(tx.try_send(Bytes::from(vec![0; 7])), Ok(()));
        let polled = std::future::poll_fn(|cx| rx.poll_recv(cx)).await;
        assert_eq!(polled.map(|b| b.len()), Some(7));
        assert_eq!(tx.queued_bytes(), 0);
        drop(rx);
        assert_eq!(tx.try_send(Bytes::from(vec![0; 1])), Err(Refused::Closed));
    }
}
