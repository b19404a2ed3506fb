//! A layer of the Kubernetes client that notes when the API server answers
//! one of the controller's watch requests ([`WatchPulse`]), for liveness.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};

use crate::health::WatchPulse;

/// Wraps the client's service in a [`PulseService`].
#[derive(Clone, Debug)]
pub struct PulseLayer(pub WatchPulse);

impl<S> tower::Layer<S> for PulseLayer {
    type Service = PulseService<S>;

    fn layer(&self, inner: S) -> PulseService<S> {
        PulseService {
            inner,
            pulse: self.0.clone(),
        }
    }
}

/// The client's service, beating the pulse whenever a watch request of the
/// credentials or the Secrets is answered with a success status.
#[derive(Debug)]
pub struct PulseService<S> {
    inner: S,
    pulse: WatchPulse,
}

/// The resources whose watches drive the work: the credentials of both
/// kinds and the Secrets. The watches of Namespaces and of the CRDs do not
/// count: they could be answered while the controller's own are dead.
const WORK: [&str; 3] = ["runaicredentials", "clusterrunaicredentials", "secrets"];

/// Whether a request is a watch of [`WORK`]: `watch=true` (or `1`) in its
/// query, as the Kubernetes API takes it (API concepts, "Efficient
/// detection of changes"), on a collection path ending in one of them.
fn is_work_watch<B>(request: &Request<B>) -> bool {
    let uri = request.uri();
    let watch = uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    watch
        && uri
            .path()
            .rsplit('/')
            .next()
            .is_some_and(|last| WORK.contains(&last))
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for PulseService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let pulse = is_work_watch(&request).then(|| self.pulse.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            if let (Some(pulse), Ok(response)) = (pulse, &answered)
                && response.status().is_success()
            {
                pulse.beat();
            }
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    /// A service answering every request with `status`.
    #[derive(Clone)]
    struct Answers(u16);

    impl Service<Request<()>> for Answers {
        type Response = Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<()>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let mut response = Response::new(());
            *response.status_mut() = http::StatusCode::from_u16(self.0).unwrap();
            std::future::ready(Ok(response))
        }
    }

    async fn send(status: u16, uri: &str) -> WatchPulse {
        let pulse = WatchPulse::default();
        let mut service = PulseLayer(pulse.clone()).layer(Answers(status));
        let request = Request::get(uri).body(()).unwrap();
        service.call(request).await.unwrap();
        pulse
    }

    #[tokio::test]
    async fn answered_watches_beat_and_nothing_else_does() {
        let watch = "/api/v1/namespaces/a/secrets?watch=true&resourceVersion=5&timeoutSeconds=50";
        assert!(send(200, watch).await.since_last().is_some());
        assert!(
            send(200, "/api/v1/secrets?labelSelector=a&watch=1")
                .await
                .since_last()
                .is_some()
        );
        assert!(
            send(200, "/api/v1/namespaces/a/secrets?limit=500")
                .await
                .since_last()
                .is_none()
        );
        assert!(
            send(200, "/api/v1/namespaces/a/secrets?watch=false")
                .await
                .since_last()
                .is_none()
        );
        assert!(
            send(410, watch).await.since_last().is_none(),
            "an expired resourceVersion"
        );
        assert!(send(429, watch).await.since_last().is_none());
    }
}
