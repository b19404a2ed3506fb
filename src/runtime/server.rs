//! The metrics and health listener: `/metrics`, `/healthz`, `/readyz`.

use std::{net::SocketAddr, sync::Arc};

use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Frame},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

pub use crate::health::{DEFAULT_STALL_LIMIT, Health, is_stalled};
use crate::{error::Error, metrics::Metrics};

/// Binds the listener and serves it in the background; returns the bound
/// address (useful with port 0).
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        Error::Startup(format!(
            "cannot listen on {address} for metrics and health: {e}"
        ))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Startup(format!("cannot read the metrics listener's address: {e}")))?;
    info!(address = %bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: do not spin.
                    warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = respond(&req, &metrics, &health);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// A response body: one piece, or the metrics as they are rendered.
type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// The metrics text, streamed: rendered on a blocking thread in pieces of
/// [`crate::metrics::METRICS_CHUNK`] bytes, two at most waiting for
/// the scraper, so that a scrape holds a few hundred kilobytes, not the
/// whole text.
fn metrics_body(metrics: &Arc<Metrics>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let metrics = metrics.clone();
    tokio::task::spawn_blocking(move || {
        metrics.encode_in_chunks(|chunk| tx.blocking_send(Bytes::from(chunk)).is_ok());
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), rx))
    });
    StreamBody::new(frames).boxed_unsync()
}

fn respond<B>(req: &Request<B>, metrics: &Arc<Metrics>, health: &Health) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(metrics_body(metrics))
            .expect("a valid response"),
        "/healthz" if health.is_stopped() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller stopped\n".to_owned(),
        ),
        "/healthz" if health.stalled() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no progress for {} s while there is work (the Kubernetes API server does not answer?)\n",
                health.since_progress().as_secs()
            ),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => {
            let role = if health.is_leading() {
                "leader"
            } else {
                "follower"
            };
            if health.is_ready() {
                text(StatusCode::OK, format!("ready ({role})\n"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: watches not synced ({role})\n"),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn get(path: &str, metrics: &Arc<Metrics>, health: &Health) -> (StatusCode, String) {
        let req = Request::get(path).body(()).unwrap();
        // The metrics are rendered on the runtime's blocking threads.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let resp = respond(&req, metrics, health);
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        })
    }

    #[test]
    fn readiness_follows_the_sync_and_shows_the_role() {
        let metrics = Arc::new(Metrics::new());
        let health = Health::default();
        assert_eq!(
            get("/readyz", &metrics, &health).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(
            get("/readyz", &metrics, &health),
            (StatusCode::OK, "ready (follower)\n".into())
        );
        health.set_leading(true);
        assert_eq!(
            get("/readyz", &metrics, &health),
            (StatusCode::OK, "ready (leader)\n".into())
        );
    }

    #[test]
    fn liveness_fails_once_the_controller_stopped() {
        let metrics = Arc::new(Metrics::new());
        let health = Health::default();
        assert_eq!(get("/healthz", &metrics, &health).0, StatusCode::OK);
        health.set_stopped();
        assert_eq!(
            get("/healthz", &metrics, &health).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn liveness_fails_when_the_leader_makes_no_progress_with_work() {
        let limit = Duration::from_secs(180);
        let long = Duration::from_secs(181);
        assert!(is_stalled(long, true, true, limit));
        assert!(!is_stalled(long, false, true, limit), "nothing to do");
        assert!(!is_stalled(long, true, false, limit), "a follower waits");
        assert!(!is_stalled(Duration::from_secs(179), true, true, limit));
        let health = Health::default();
        health.set_leading(true);
        health.set_has_work(true);
        health.record_progress();
        assert_eq!(
            get("/healthz", &Arc::new(Metrics::new()), &health).0,
            StatusCode::OK
        );
    }

    #[test]
    fn metrics_are_served_as_text() {
        let metrics = Arc::new(Metrics::new());
        let (status, body) = get("/metrics", &metrics, &Health::default());
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("# TYPE runai_token_sync_leader gauge"),
            "{body}"
        );
        assert_eq!(
            get("/other", &metrics, &Health::default()).0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn many_series_are_streamed_whole() {
        let metrics = Arc::new(Metrics::new());
        for i in 0..3_000 {
            metrics.observe_credential(
                crate::metrics::CredentialLabels::new("ml", &format!("c{i}")),
                Some(i),
                1,
                "False",
            );
        }
        let (status, body) = get("/metrics", &metrics, &Health::default());
        assert_eq!(status, StatusCode::OK);
        assert!(body.len() > 4 * crate::metrics::METRICS_CHUNK);
        assert_eq!(body, metrics.encode());
        assert!(body.contains("name=\"c2999\",condition=\"False\"} 1"));
    }
}
