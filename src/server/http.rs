//! The metrics port: `GET /metrics` (Prometheus text), `GET /health` (200 when the replica can
//! serve, 503 with the reason otherwise), 404 for any other path. Plain HTTP/1.1 on hyper (the
//! exporter's own listener answers every path with metrics and `/health` with a constant "OK").

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::server::health::Health;

/// Connections served at once (scrapers, health checkers, curl); one more waits in the
/// kernel's accept queue until one closes.
const CONNECTIONS_MAX: usize = 64;
/// A client must send its request head within this (a stalled one holds no slot for long).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, kept alive or not (scrapers reconnect).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// The text exposition format `promtool` and Prometheus expect.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the metrics port on `listener` forever.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: watch::Receiver<Health>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (metrics, health) = (metrics.clone(), health.clone());
                async move { Ok::<_, Infallible>(answer(&req, &metrics, &health, started).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A client that goes away or times out is no event worth a log line.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

async fn answer(
    req: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &watch::Receiver<Health>,
    started: f64,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let handle = metrics.clone();
            // Rendering walks every series: off the async workers.
            let render = move || {
                crate::server::metrics::HIGH_WATER.export();
                let mut text = handle.render();
                text.push_str(&crate::server::metrics::process_text(started));
                text
            };
            match tokio::task::spawn_blocking(render).await {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot render metrics: {e}\n"),
                ),
            }
        }
        "/health" => {
            let h = *health.borrow();
            if h.can_serve() {
                text(StatusCode::OK, "OK: serving\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{h}\n"))
            }
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("no such path: {other} (try /metrics or /health)\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
