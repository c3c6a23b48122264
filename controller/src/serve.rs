//! The controller's ports at the connection level, where nothing is known of the peer yet:
//! how many connections are held (in all, and per peer address), how long a TLS handshake may
//! take, and how long a connection may sit idle. A flood of idle or half-open connections
//! therefore costs the controller a bounded number of descriptors for a bounded time, and real
//! sidecars and `/healthz` keep being served. The xDS port (TLS, HTTP/2: ADS and the module)
//! is served here; the admin port's HTTP is in [`crate::admin`], behind the same gate.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use tonic::codegen::Service as _;
use weft_xds::server::{Admission, AdsServer, PeerCertificates};

use crate::channel::{MODULE_PATH, MODULE_SHA256_HEADER};
use crate::shared::Shared;

/// What a port lets its peers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once, in all.
    pub connections: usize,
    /// Connections held at once from one address (on the xDS port: those not yet through
    /// their TLS handshake; after it, a peer is a sidecar with a credential, and many
    /// sidecars may share a host's address).
    pub per_peer: usize,
    /// How long a TLS handshake (or, on the admin port, a request's headers) may take.
    pub handshake: Duration,
    /// How long a connection may have nothing in flight before it is closed.
    pub idle: Duration,
    /// How long a connection may live at all (`None`: as long as it is used).
    pub lifetime: Option<Duration>,
}

/// How long a peer has to complete its TLS handshake on the xDS port, or to send a request's
/// headers on the admin port: ample for a real client, short for one that only holds a
/// connection open.
pub const HANDSHAKE: Duration = Duration::from_secs(5);

impl Limits {
    /// The xDS port's: one connection per sidecar, thousands of sidecars.
    pub fn xds(descriptors: u64) -> Self {
        Self {
            connections: within(descriptors, 16_384, 3, 4),
            per_peer: 256,
            handshake: HANDSHAKE,
            idle: Duration::from_secs(60),
            lifetime: None,
        }
    }

    /// The admin port's: a few people, scrapers and probes.
    pub fn admin(descriptors: u64) -> Self {
        Self {
            connections: within(descriptors, 128, 1, 8),
            per_peer: 16,
            handshake: HANDSHAKE,
            idle: Duration::from_secs(15),
            lifetime: Some(Duration::from_secs(60)),
        }
    }
}

/// `wanted`, but at most `numerator / denominator` of the descriptors the process may open.
fn within(descriptors: u64, wanted: usize, numerator: u64, denominator: u64) -> usize {
    let share =
        usize::try_from(descriptors.saturating_mul(numerator) / denominator).unwrap_or(usize::MAX);
    wanted.min(share).max(1)
}

/// The soft limit on this process's open descriptors, raised to the hard limit first (as Go's
/// runtime does): a controller serves a connection per sidecar.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed, nothing else.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// Counts the connections a port holds, in all and per peer address.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    total: AtomicUsize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused since the last log line about them.
    refused: AtomicUsize,
}

/// One connection held: it is let go when this is dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<ConnectionGate>,
    peer: Option<IpAddr>,
}

impl ConnectionGate {
    /// A permit for a connection from `peer`, unless the port holds `limits.connections`
    /// already, or `limits.per_peer` from that address.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, limits: &Limits) -> Option<(Permit, Permit)> {
        let total = self.total.fetch_add(1, Ordering::SeqCst);
        let overall = Permit {
            gate: self.clone(),
            peer: None,
        };
        if total >= limits.connections {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut per_peer = lock(&self.per_peer);
        let held = per_peer.entry(peer).or_default();
        if *held >= limits.per_peer {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *held += 1;
        Some((
            overall,
            Permit {
                gate: self.clone(),
                peer: Some(peer),
            },
        ))
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Connections refused since the last call.
    pub fn take_refused(&self) -> usize {
        self.refused.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        match self.peer {
            None => {
                self.gate.total.fetch_sub(1, Ordering::SeqCst);
            }
            Some(peer) => {
                let mut per_peer = lock(&self.gate.per_peer);
                if let Some(held) = per_peer.get_mut(&peer) {
                    *held = held.saturating_sub(1);
                    if *held == 0 {
                        per_peer.remove(&peer);
                    }
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a connection has in flight, and since when it has had nothing.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    quiet_since: Mutex<Instant>,
}

impl Activity {
    /// A connection just opened: nothing in flight.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            quiet_since: Mutex::new(Instant::now()),
        })
    }

    /// A request starts; it ends when the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// How long the connection has had nothing in flight (zero while it has).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        lock(&self.quiet_since).elapsed()
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&self.0.quiet_since) = Instant::now();
        }
    }
}

/// A response body that keeps its request in flight until it is done with.
struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Drives `connection` until it ends: asked to finish gracefully once it has been idle for
/// `limits.idle`, has lived `limits.lifetime`, or `stop` turns true; dropped if it has not
/// finished 5 s after that. It wakes only at those deadlines (a connection with a stream in
/// flight, once per `limits.idle`), so thousands of open ADS streams cost no steady ticking.
/// The connection comes boxed: held inline, a hyper connection (about 2.7 KB) would be
/// reserved twice in this future's state, for every connection the controller holds.
pub async fn drive<C, F>(
    mut connection: Pin<Box<C>>,
    shut: F,
    activity: Arc<Activity>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    C: std::future::Future,
    F: Fn(Pin<&mut C>),
{
    /// How long a connection asked to finish may take before it is dropped.
    const FINISHING: Duration = Duration::from_secs(5);
    let born = Instant::now();
    let mut closing: Option<Instant> = None;
    loop {
        let wait = match closing {
            Some(at) => FINISHING.saturating_sub(at.elapsed()),
            None => {
                let idle_left = limits.idle.saturating_sub(activity.idle_for());
                let life_left = limits
                    .lifetime
                    .map_or(Duration::MAX, |life| life.saturating_sub(born.elapsed()));
                idle_left.min(life_left)
            }
        };
        tokio::select! {
            _ = connection.as_mut() => return,
            () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            () = stopped(&mut stop), if closing.is_none() => {}
        }
        match closing {
            Some(at) if at.elapsed() >= FINISHING => return,
            Some(_) => {}
            None => {
                let over = *stop.borrow()
                    || activity.idle_for() >= limits.idle
                    || limits.lifetime.is_some_and(|life| born.elapsed() >= life);
                if over {
                    shut(connection.as_mut());
                    closing = Some(Instant::now());
                }
            }
        }
    }
}

/// How often refused connections are logged at most.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// How long connections get to finish once their port stops, before they are dropped.
const STOPPING: Duration = Duration::from_secs(3);

/// Accepts connections on `listener` until `stop` turns true, within `limits`: a connection
/// the gate refuses is closed at once (and counted in a line logged at most every 10 s naming
/// `port`); each admitted one goes to `handle`, in a task of its own, with its two permits (in
/// all, and for its address). Once stopped, connections get a few seconds to finish.
pub async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    port: &'static str,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, (Permit, Permit)) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let gate = Arc::new(ConnectionGate::default());
    let mut connections = tokio::task::JoinSet::new();
    let mut last_log = Instant::now();
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((tcp, peer)) = accepted else {
            // Out of descriptors, most likely: give the others a moment to close.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Some(permits) = gate.admit(peer.ip(), &limits) else {
            drop(tcp);
            if last_log.elapsed() >= REFUSALS_LOGGED_EVERY {
                last_log = Instant::now();
                log::warn!(
                    "weft: {port} refused {} connection(s) in the last {REFUSALS_LOGGED_EVERY:?}: it holds {} (at most {} in all, {} from one address at once)",
                    gate.take_refused(),
                    gate.held(),
                    limits.connections,
                    limits.per_peer
                );
            }
            continue;
        };
        connections.spawn(handle(tcp, permits));
    }
    let drained = tokio::time::timeout(STOPPING, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Serves the xDS port until `stop` turns true: the control channel's TLS (its handshake
/// within `limits.handshake`, the per-address limit counting connections until they are
/// through it), then HTTP/2 with ADS and the module.
pub async fn serve_xds<A: Admission>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ads: AdsServer<A>,
    shared: Arc<Shared>,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connection_stop = stop.clone();
    accept_loop(
        listener,
        limits,
        stop,
        "the xDS port",
        move |tcp, (overall, handshaking)| {
            let acceptor = acceptor.clone();
            let ads = ads.clone();
            let shared = shared.clone();
            let stop = connection_stop.clone();
            async move {
                let _overall = overall;
                // The handshake's state, and the TLS stream it makes, are boxed: held inline
                // they would be reserved in this task, which lives as long as the connection.
                let handshake = Box::pin(async move {
                    match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => Some(Box::new(tls)),
                        _ => None,
                    }
                })
                .await;
                drop(handshaking);
                let Some(tls) = handshake else {
                    return;
                };
                serve_xds_connection(tls, ads, shared, limits, stop).await;
            }
        },
    )
    .await;
}

async fn serve_xds_connection<A: Admission>(
    tls: Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    ads: AdsServer<A>,
    shared: Arc<Shared>,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let certificates = PeerCertificates(Arc::new(
        tls.get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
    ));
    let activity = Activity::new();
    let tracker = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = tracker.start();
        let mut ads = ads.clone();
        let shared = shared.clone();
        let certificates = certificates.clone();
        async move {
            if request.uri().path() == MODULE_PATH {
                let response = module_response(&shared).map(|body| {
                    tonic::body::Body::new(Tracked {
                        body,
                        _in_flight: in_flight,
                    })
                });
                return Ok::<_, Infallible>(response);
            }
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(certificates);
            let request = hyper::Request::from_parts(parts, tonic::body::Body::new(body));
            let Ok(response) = ads.call(request).await;
            Ok(response.map(|body| {
                tonic::body::Body::new(Tracked {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(32)
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let connection = Box::pin(builder.serve_connection(TokioIo::new(tls), service));
    drive(
        connection,
        |connection| connection.graceful_shutdown(),
        activity,
        limits,
        stop,
    )
    .await;
}

/// The module, with its SHA-256 in a header.
fn module_response(shared: &Shared) -> hyper::Response<Full<Bytes>> {
    let module = shared.module();
    let mut response = hyper::Response::new(Full::new(Bytes::from(module.bytes.as_ref().clone())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/wasm"),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(&module.sha256) {
        response.headers_mut().insert(MODULE_SHA256_HEADER, value);
    }
    response
}

/// Resolves when `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_holds_at_most_its_limits_and_lets_go_of_what_is_dropped() {
        let limits = Limits {
            connections: 3,
            per_peer: 2,
            ..Limits::admin(1 << 20)
        };
        let gate = Arc::new(ConnectionGate::default());
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = gate.admit(a, &limits).unwrap();
        let second = gate.admit(a, &limits).unwrap();
        assert!(gate.admit(a, &limits).is_none(), "two from one address");
        let third = gate.admit(b, &limits).unwrap();
        assert!(gate.admit(b, &limits).is_none(), "three in all");
        assert_eq!(gate.held(), 3);
        assert_eq!(gate.take_refused(), 2);
        drop(first);
        assert!(gate.admit(a, &limits).is_some());
        drop((second, third));
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn limits_leave_descriptors_for_the_rest_of_the_process() {
        assert_eq!(Limits::xds(1024).connections, 768);
        assert_eq!(Limits::xds(1 << 20).connections, 16_384);
        assert_eq!(Limits::admin(1024).connections, 128);
        assert_eq!(Limits::admin(256).connections, 32);
    }

    /// A stand-in for a connection: it ends once asked to finish (if `obeys`), or never.
    fn connection(
        obeys: bool,
    ) -> (
        std::pin::Pin<Box<impl std::future::Future<Output = ()>>>,
        Arc<tokio::sync::Notify>,
    ) {
        let asked = Arc::new(tokio::sync::Notify::new());
        let waiting = asked.clone();
        let connection = Box::pin(async move {
            waiting.notified().await;
            if !obeys {
                std::future::pending::<()>().await;
            }
        });
        (connection, asked)
    }

    fn short(idle: u64, lifetime: Option<u64>) -> Limits {
        Limits {
            idle: Duration::from_millis(idle),
            lifetime: lifetime.map(Duration::from_millis),
            ..Limits::admin(1 << 20)
        }
    }

    /// How long `drive` took to end `connection` (`None`: not within `within`).
    async fn ended(
        limits: Limits,
        activity: Arc<Activity>,
        obeys: bool,
        stop: watch::Receiver<bool>,
        within: Duration,
    ) -> Option<Duration> {
        let (connection, asked) = connection(obeys);
        let started = Instant::now();
        let driven = drive(
            connection,
            move |_| asked.notify_one(),
            activity,
            limits,
            stop,
        );
        tokio::time::timeout(within, driven)
            .await
            .ok()
            .map(|()| started.elapsed())
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let (_keep, stop) = watch::channel(false);
        let idle = ended(
            short(200, None),
            Activity::new(),
            true,
            stop.clone(),
            Duration::from_secs(2),
        )
        .await
        .expect("the idle connection asked to finish");
        assert!(idle >= Duration::from_millis(200), "{idle:?}");
        // A request in flight all along (an ADS stream): not idle.
        let activity = Activity::new();
        let _stream = activity.start();
        let busy = ended(
            short(200, None),
            activity,
            true,
            stop,
            Duration::from_millis(800),
        )
        .await;
        assert_eq!(busy, None, "a connection with a stream open was closed");
    }

    #[tokio::test]
    async fn a_connection_ends_at_its_lifetime_on_stop_and_if_it_does_not_finish_is_dropped() {
        let (_keep, stop) = watch::channel(false);
        let activity = Activity::new();
        let _request = activity.start();
        let lived = ended(
            short(60_000, Some(200)),
            activity,
            true,
            stop.clone(),
            Duration::from_secs(2),
        )
        .await
        .expect("ended at its lifetime");
        assert!(lived >= Duration::from_millis(200), "{lived:?}");
        // Stopping asks every connection to finish at once.
        let (stopping, stop) = watch::channel(false);
        let activity = Activity::new();
        let _request = activity.start();
        let driven = tokio::spawn(ended(
            short(60_000, None),
            activity,
            true,
            stop,
            Duration::from_secs(2),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stopping.send(true).unwrap();
        let stopped = driven.await.unwrap().expect("ended on stop");
        assert!(stopped < Duration::from_secs(1), "{stopped:?}");
        // One that does not finish when asked is dropped 5 s later.
        let (_keep, stop) = watch::channel(false);
        let deaf = ended(
            short(100, None),
            Activity::new(),
            false,
            stop,
            Duration::from_secs(8),
        )
        .await
        .expect("dropped");
        assert!(deaf >= Duration::from_secs(5), "{deaf:?}");
    }

    #[test]
    fn activity_is_idle_only_with_nothing_in_flight() {
        let activity = Activity::new();
        let request = activity.start();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        drop(request);
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(20));
    }
}
