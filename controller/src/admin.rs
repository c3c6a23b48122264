//! The controller's admin HTTP server: `/status` (JSON: every pod, its proxy's protocol state,
//! the last refused change), `/metrics` (Prometheus), `/healthz` (liveness: the rebuild loop
//! goes round) and `/readyz` (readiness: proxies are being served). It shows, and changes
//! nothing; the module is served on the authenticated control channel only
//! ([`crate::channel`]). Behind the connection gate of [`crate::serve`].

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use crate::patch::PatchError;
use crate::report::{
    Generations, PatchOutcome, PatchState, PodReport, RefusedObject, StatusReport, TrustReport,
};
use crate::serve::{Activity, Limits, accept_loop, drive};
use crate::shared::Shared;

/// What `/status` answers.
pub fn status_report(shared: &Shared) -> StatusReport {
    let proxies = shared.status.all();
    let pods = shared
        .pods()
        .iter()
        .map(|pod| {
            let node = pod.node_id();
            let proxy = proxies.get(&node).cloned();
            PodReport {
                workload: format!("{}/{}", pod.namespace, pod.workload),
                service_account: pod.service_account.clone(),
                pod_ip: pod.pod_ip.to_string(),
                app_ip: pod.app_ip.to_string(),
                ready: shared.is_ready(&node),
                in_sync: proxy.as_ref().is_some_and(|p| p.connected)
                    && !shared.metrics.is_pending(&node),
                proxy,
                pod: node,
            }
        })
        .collect();
    let refused = shared.refused();
    let (catalog, built) = shared.generations();
    let trust = {
        let pki = shared.pki();
        TrustReport {
            issuer: Some(pki.issuer_root().clone()),
            roots: pki.served().iter().cloned().collect(),
            rotation: pki.phase().clone(),
            problem: shared.ca_problem(),
        }
    };
    let patches = shared
        .patch_reports()
        .iter()
        .flat_map(|(node, reports)| {
            reports.iter().map(move |report| PatchState {
                pod: node.clone(),
                patch: report.key.patch.clone(),
                field: format!("spec.patches[{}]", report.key.index),
                resource: report.resource.clone(),
                state: match &report.problem {
                    None => PatchOutcome::Applied,
                    Some(PatchError::Refused(_)) => PatchOutcome::Withdrawn,
                    Some(PatchError::Disabled) => PatchOutcome::Off,
                    Some(_) => PatchOutcome::Refused,
                },
                reason: report.problem.as_ref().map(ToString::to_string),
            })
        })
        .collect();
    StatusReport {
        generation: Generations { catalog, built },
        patches,
        module_sha256: shared.module().sha256,
        refused: refused
            .objects
            .iter()
            .map(|(key, refusal)| RefusedObject::new(key, refusal))
            .collect(),
        problems: refused.problems.iter().map(ToString::to_string).collect(),
        pods,
        trust,
    }
}

/// [`status_report`] as JSON.
pub fn status_json(shared: &Shared) -> serde_json::Value {
    serde_json::to_value(status_report(shared)).unwrap_or_default()
}

/// How long the rebuild loop may go without turning before the controller is not live (it
/// turns at least every second; one rebuild of thousands of proxies takes a few).
const LIVENESS: std::time::Duration = std::time::Duration::from_secs(60);

/// The OpenMetrics text `/metrics` answers: the gauges read off the current state, then
/// every metric.
pub fn metrics_text(shared: &Shared) -> String {
    let metrics = &shared.metrics;
    let connected = shared.status.all().values().filter(|p| p.connected).count();
    metrics.proxies_connected.set(count(connected));
    metrics.pods.set(count(shared.pod_count()));
    let catalog = shared.catalog();
    for (kind, objects) in [
        ("TrafficTarget", catalog.traffic_targets.len()),
        ("HTTPRouteGroup", catalog.http_route_groups.len()),
        ("TCPRoute", catalog.port_routes.len()),
        ("TrafficSplit", catalog.traffic_splits.len()),
        ("Service", catalog.services.len()),
        ("Workload", catalog.workloads.len()),
    ] {
        metrics
            .index_objects
            .get_or_create(&crate::metrics::KindLabels {
                kind: kind.to_owned(),
            })
            .set(count(objects));
    }
    metrics.encode()
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn respond(shared: &Shared, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/status" => (
            StatusCode::OK,
            "application/json",
            Bytes::from(serde_json::to_vec(&status_report(shared)).unwrap_or_default()),
        ),
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Bytes::from(metrics_text(shared)),
        ),
        "/healthz" if shared.is_live(LIVENESS) => {
            (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
        }
        "/healthz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"the rebuild loop has stopped turning\n"),
        ),
        "/readyz" if shared.is_serving() => {
            (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(
                b"not serving configuration yet (waiting for sidecars to reconnect)\n",
            ),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"weft controller: /status, /metrics, /healthz, /readyz\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves `listener` until `stop` turns true, within `limits`: at most so many connections
/// (in all and per address), a request's headers within the handshake time, at most
/// `MAX_REQUEST_HEAD` bytes of them, a connection closed when idle or old; only `GET` and
/// `HEAD`, and no request body is read.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let connection_stop = stop.clone();
    accept_loop(
        listener,
        limits,
        stop,
        "the admin port",
        move |stream, permits| {
            let shared = shared.clone();
            let stop = connection_stop.clone();
            async move {
                let _permits = permits;
                let activity = Activity::new();
                let tracker = activity.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let _in_flight = tracker.start();
                    let response = match *request.method() {
                        hyper::Method::GET | hyper::Method::HEAD => {
                            respond(&shared, request.uri().path())
                        }
                        _ => text(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "the weft controller's admin port answers GET and HEAD only\n",
                        ),
                    };
                    async move { Ok::<_, Infallible>(response) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.handshake)
                    .max_buf_size(MAX_REQUEST_HEAD);
                let connection = Box::pin(builder.serve_connection(TokioIo::new(stream), service));
                drive(
                    connection,
                    |connection| connection.graceful_shutdown(),
                    activity,
                    limits,
                    stop,
                )
                .await;
            }
        },
    )
    .await;
}

/// The most bytes of a request's head the admin port reads (hyper's smallest buffer).
const MAX_REQUEST_HEAD: usize = 8 * 1024;

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}
