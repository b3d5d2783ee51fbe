//! A cap on the client connections a listener holds at once: each accepted connection takes a
//! slot until it closes, and one accepted while every slot is taken is closed at once (and
//! counted), so a flood of connections costs bounded memory.
//!
//! tonic bounds requests per connection (`concurrency_limit_per_connection`) but not the
//! number of connections; this wraps the accepted sockets to do that.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpIncoming};

/// Accepted connections, at most `max` open at once.
pub struct Capped {
    inner: TcpIncoming,
    slots: Arc<Semaphore>,
    refused: metrics::Counter,
}

impl Capped {
    pub fn new(inner: TcpIncoming, max: usize, listener: &'static str) -> Capped {
        Capped {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            refused: metrics::counter!("epaxos_connections_refused_total", "listener" => listener),
        }
    }
}

impl Stream for Capped {
    type Item = io::Result<Slotted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        return Poll::Ready(Some(Ok(Slotted {
                            stream,
                            _slot: slot,
                        })))
                    }
                    // Dropping the socket closes it: the caller sees the connection reset.
                    Err(_) => self.refused.increment(1),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// An accepted connection holding its slot until it is dropped.
pub struct Slotted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Slotted {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
