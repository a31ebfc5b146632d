//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and the `/status` document.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// What the endpoint serves, shared with the controller that updates it.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub health: Arc<Health>,
}

/// Liveness, readiness and the status document, written by the controller loop.
pub struct Health {
    start: Instant,
    /// Milliseconds from `start` to the loop's last heartbeat.
    last_beat_ms: AtomicU64,
    ready: AtomicBool,
    liveness: Duration,
    status: Mutex<serde_json::Value>,
}

impl Health {
    /// Creation counts as the first heartbeat, so the loop has one `liveness` bound to start.
    pub fn new(liveness: Duration) -> Self {
        Self {
            start: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            liveness,
            status: Mutex::new(serde_json::Value::Object(serde_json::Map::new())),
        }
    }

    /// Records that the controller loop is still turning.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks the first full reconcile pass as finished.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// How long ago the loop last beat.
    pub fn since_last_beat(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Whether the loop beat within the liveness bound.
    pub fn is_alive(&self) -> bool {
        self.since_last_beat() <= self.liveness
    }

    pub fn set_status(&self, status: serde_json::Value) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    pub fn status(&self) -> serde_json::Value {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The routes, for [`serve`] and for tests that call them without a server.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .fallback(not_found)
        .with_state(state)
}

/// Serves the routes on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /status");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<HttpState>) -> Response {
    if state.health.is_alive() {
        return (StatusCode::OK, "ok").into_response();
    }
    let message = format!(
        "not alive: reconcile loop last beat {}s ago, bound is {}s",
        state.health.since_last_beat().as_secs(),
        state.health.liveness.as_secs()
    );
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: first reconcile pass not finished",
        )
            .into_response()
    }
}

async fn status(State(state): State<HttpState>) -> Json<serde_json::Value> {
    Json(state.health.status())
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: try /metrics, /healthz, /readyz or /status",
    )
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::{to_bytes, Body};
    use axum::http::Request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn state(liveness: Duration) -> HttpState {
        HttpState {
            metrics: Metrics::new().expect("static metric definitions register"),
            health: Arc::new(Health::new(liveness)),
        }
    }

    /// Calls the router as a tower service, without a server. The `Service` trait comes in
    /// through `axum::ServiceExt`, its subtrait, so no tower dependency is needed.
    async fn call<S>(mut service: S, request: Request<Body>) -> Response
    where
        S: axum::ServiceExt<Request<Body>, Response = Response, Error = Infallible>,
    {
        let Ok(()) = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
        let Ok(response) = service.call(request).await;
        response
    }

    /// Status, content type and body of a GET.
    async fn get(state: &HttpState, path: &str) -> (StatusCode, String, String) {
        let request = Request::get(path)
            .body(Body::empty())
            .expect("valid request");
        let response = call(router(state.clone()), request).await;
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ascii content type").to_owned())
            .unwrap_or_default();
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body reads");
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("utf-8 body"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_once_the_last_beat_is_older_than_the_bound() {
        let state = state(Duration::from_secs(60));

        tokio::time::advance(Duration::from_secs(50)).await;
        state.health.beat();
        tokio::time::advance(Duration::from_secs(60)).await;
        let (code, _, body) = get(&state, "/healthz").await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "ok"));

        tokio::time::advance(Duration::from_secs(1)).await;
        let (code, _, body) = get(&state, "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("61s ago"), "{body}");

        state.health.beat();
        let (code, _, _) = get(&state, "/healthz").await;
        assert_eq!(code, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_counts_startup_as_a_beat() {
        let state = state(Duration::from_secs(60));
        assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);

        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            get(&state, "/healthz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn readyz_is_unavailable_until_the_first_pass_finishes() {
        let state = state(Duration::from_secs(60));
        let (code, _, body) = get(&state, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: first reconcile pass not finished");

        state.health.set_ready();
        let (code, _, _) = get(&state, "/readyz").await;
        assert_eq!(code, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let state = state(Duration::from_secs(60));
        state.metrics.set_manifest_valid(true);

        let (code, content_type, body) = get(&state, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4");
        assert!(body.contains("ecs_reconciler_manifest_valid 1"), "{body}");
    }

    #[tokio::test]
    async fn status_serves_the_document_the_controller_wrote() {
        let state = state(Duration::from_secs(60));
        let (_, _, body) = get(&state, "/status").await;
        assert_eq!(body, "{}");

        state
            .health
            .set_status(serde_json::json!({"resources": [{"resource": "prod/web"}]}));
        let (code, content_type, body) = get(&state, "/status").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        let document: serde_json::Value = serde_json::from_str(&body).expect("status is json");
        assert_eq!(document["resources"][0]["resource"], "prod/web");
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let state = state(Duration::from_secs(60));
        assert_eq!(get(&state, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serve_answers_over_tcp_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state(Duration::from_secs(60)), async {
            let _ = stopped.await;
        }));

        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the server");
        let request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("ok"), "{response}");

        stop.send(()).expect("server still waits for shutdown");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server did not stop within 5s of the shutdown signal")
            .expect("server task did not panic")
            .expect("server stopped cleanly");
    }
}
