//! The few host calls the features make, each wrapped so that a failure becomes a value the
//! caller decides on (deny, skip a count), never a panic.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{GrpcStatusCode, LogLevel, MapType, MetricType};

/// The SPIFFE ID in the URI SAN of the peer certificate of the downstream connection, if the
/// connection is TLS and the caller presented a certificate Envoy verified.
///
/// Envoy only fills this property after its own verification of the certificate chain, so a
/// listener must validate client certificates (`trusted_ca`, no `ACCEPT_UNTRUSTED`) for the
/// identity to mean anything; every configuration weft ships does.
pub fn peer_identity() -> Option<String> {
    let bytes = property(&["connection", "uri_san_peer_certificate"])?;
    let text = String::from_utf8(bytes).ok()?;
    (!text.is_empty()).then_some(text)
}

/// The port the connection was addressed to (Envoy's `destination.port`, an int64 in little
/// endian); `0` when Envoy does not say, which no port rule names.
pub fn destination_port() -> u16 {
    int_property(&["destination", "port"])
        .and_then(|port| u16::try_from(port).ok())
        .unwrap_or(0)
}

/// The plugin's `root_id` from the Envoy configuration.
pub fn plugin_root_id() -> String {
    property(&["plugin_root_id"])
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A request header as text; a header that is absent or not UTF-8 is `None` (a regex over it
/// then does not match, which can only deny).
pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The request headers a request context reads, fetched from Envoy once.
///
/// Envoy hands a value to the module by calling back into the VM to allocate room for it, and
/// that round trip costs several times a plain host call (about 8,500 instructions against
/// 1,800, counted under callgrind; docs/BENCHMARKS.md). Fetching every header in one call costs
/// about as much as fetching one, so a plugin that reads more than one header fetches them all
/// ([`RequestHeaders::fetch_all`]), and one that reads only the host fetches only that.
#[derive(Debug, Default)]
pub struct RequestHeaders {
    /// Names (lower-case, as Envoy keeps them) and values, in Envoy's order.
    pairs: Vec<(String, Vec<u8>)>,
    /// Every header of the request was fetched, so one absent here is absent from the request.
    complete: bool,
}

impl RequestHeaders {
    /// Every request header, in one host call; none if Envoy refuses.
    pub fn fetch_all() -> Self {
        // The SDK decodes names as UTF-8 and would panic otherwise; Envoy's HTTP/1 and HTTP/2
        // codecs admit only token characters in header names, so that cannot come from a client.
        match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(pairs) => Self {
                pairs,
                complete: true,
            },
            Err(_) => Self::default(),
        }
    }

    /// Only header `name`, in one host call.
    pub fn fetch_one(name: &str) -> Self {
        let pairs = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
            .map(|value| vec![(name.to_owned(), value)])
            .unwrap_or_default();
        Self {
            pairs,
            complete: false,
        }
    }

    /// The caller's SPIFFE ID in the `x-forwarded-client-cert` header ([`weft_policy::xfcc`]),
    /// read in place: `None` when the header is absent, repeated, not UTF-8 or holds no
    /// well-formed `URI`. Only trusted where the plugin configuration says the listener sets
    /// the header itself ([`weft_policy::CallerIdentity::ForwardedClientCert`]).
    pub fn forwarded_caller(&self) -> Option<&str> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(weft_policy::xfcc::HEADER));
        let (_, value) = values.next()?;
        if values.next().is_some() {
            return None;
        }
        weft_policy::xfcc::caller_uri(std::str::from_utf8(value).ok()?)
    }

    /// Whether the request certainly has no header `name`: known only when every header was
    /// fetched, so that a host call to remove it can be skipped.
    pub fn certainly_lacks(&self, name: &str) -> bool {
        self.complete
            && !self
                .pairs
                .iter()
                .any(|(key, _)| key.eq_ignore_ascii_case(name))
    }
}

impl weft_policy::engine::Headers for RequestHeaders {
    /// Every value of `name` joined with `,`, as text (see the trait); a value that is not
    /// UTF-8 makes the whole header `None`, so a regex over it does not match, which can only
    /// deny.
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        // A pseudo-header appears once (Envoy's codecs make each one; HTTP/2 forbids repeating
        // them), and Envoy puts them first: stop at it instead of scanning every header.
        if name.starts_with(':') {
            let (_, value) = self.pairs.iter().find(|(key, _)| key == name)?;
            return std::str::from_utf8(value)
                .ok()
                .map(std::borrow::Cow::Borrowed);
        }
        let values = self
            .pairs
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| std::str::from_utf8(value));
        if values.clone().any(|value| value.is_err()) {
            return None;
        }
        weft_policy::engine::join_values(values.filter_map(Result::ok))
    }
}

/// Sets request header `name` to `value`, replacing every value it had. Envoy clears the
/// stream's cached route when a filter changes request headers, so the router matches again.
/// `false` when Envoy refuses.
pub fn set_request_header(name: &str, value: &str) -> bool {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_ok()
}

/// Removes request header `name` (nothing happens when it is absent). `false` when Envoy
/// refuses.
pub fn remove_request_header(name: &str) -> bool {
    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_ok()
}

/// Whether a request with this `content-type` is gRPC (`application/grpc` or a subtype of it).
pub fn is_grpc(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|value| value.starts_with("application/grpc"))
}

/// Defines a counter; `None` if Envoy refuses, because metrics never block traffic.
pub fn define_counter(name: &str) -> Option<u32> {
    define_metric(MetricType::Counter, name)
}

/// Defines a histogram; `None` if Envoy refuses, because metrics never block traffic.
pub fn define_histogram(name: &str) -> Option<u32> {
    define_metric(MetricType::Histogram, name)
}

fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("could not define metric {name}: {status:?}");
            None
        }
    }
}

/// Records `value` in a histogram defined with [`define_histogram`].
pub fn record(metric: Option<u32>, value: u64) {
    if let Some(id) = metric
        && let Err(status) = hostcalls::record_metric(id, value)
    {
        log::debug!("could not record: {status:?}");
    }
}

/// Envoy's clock in nanoseconds since the Unix epoch (one host call, nothing handed back
/// through the VM's allocator); 0 if the clock is before the epoch.
pub fn now_nanoseconds() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// The HTTP status sent downstream for the current stream (Envoy's `response.code`), read when
/// the stream ends; 0 when no response was sent (the stream was reset first).
pub fn response_code() -> u32 {
    int_property(&["response", "code"])
        .and_then(|code| u32::try_from(code).ok())
        .unwrap_or(0)
}

/// The gRPC status of the current stream's response (Envoy's `response.grpc_status`, from the
/// trailers, or the headers of a trailers-only response); meaningful for gRPC requests only.
pub fn grpc_status() -> Option<u32> {
    int_property(&["response", "grpc_status"]).and_then(|status| u32::try_from(status).ok())
}

/// An integer property (Envoy encodes them as 8 bytes, little endian).
fn int_property(path: &[&str]) -> Option<i64> {
    property(path)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .map(i64::from_le_bytes)
}

/// Adds one to a counter defined with [`define_counter`].
pub fn count(metric: Option<u32>) {
    add(metric, 1);
}

/// Adds `value` to a counter defined with [`define_counter`].
pub fn add(metric: Option<u32>, value: u64) {
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    if let Some(id) = metric
        && let Err(status) = hostcalls::increment_metric(id, value)
    {
        log::debug!("could not count: {status:?}");
    }
}

/// A local reply refusing the current HTTP request: gRPC callers (`grpc`, see [`is_grpc`]) get
/// a trailers-only response with `grpc_status` (Envoy's local reply turns the message into
/// `grpc-message`), others get `http_status` with `body` as text. If Envoy cannot send the
/// reply the request is reset, so it never continues.
pub fn refuse_request(
    grpc: bool,
    http_status: u32,
    grpc_status: GrpcStatusCode,
    marker: (&str, &str),
    body: &str,
) {
    let sent = if grpc {
        hostcalls::send_grpc_response(
            grpc_status,
            Some(body.trim_end()),
            vec![(marker.0, marker.1.as_bytes())],
        )
    } else {
        hostcalls::send_http_response(
            http_status,
            vec![("content-type", "text/plain; charset=utf-8"), marker],
            Some(body.as_bytes()),
        )
    };
    if let Err(status) = sent {
        let _ = hostcalls::log(LogLevel::Error, &format!("local reply failed: {status:?}"));
        let _ = hostcalls::reset_http_request();
    }
}

/// Resets the current HTTP request after logging `why`: the last resort when a header that
/// decides routing cannot be written, so the request never reaches a cluster it chose itself.
pub fn reset_request(why: &str) {
    let _ = hostcalls::log(LogLevel::Error, &format!("{why}; resetting the request"));
    let _ = hostcalls::reset_http_request();
}

/// Closes the downstream connection of the current stream context.
pub fn close_connection() {
    if let Err(status) = hostcalls::close_downstream() {
        let _ = hostcalls::log(
            LogLevel::Error,
            &format!("could not close the connection: {status:?}"),
        );
    }
}

/// The metrics feature's host: Envoy's stats, through the calls above.
#[derive(Debug, Default)]
pub struct EnvoyStats;

impl crate::edges::MetricHost for EnvoyStats {
    fn define_counter(&mut self, name: &str) -> Option<u32> {
        define_counter(name)
    }

    fn define_histogram(&mut self, name: &str) -> Option<u32> {
        define_histogram(name)
    }

    fn add(&mut self, id: Option<u32>, value: u64) {
        add(id, value);
    }

    fn record(&mut self, id: Option<u32>, value: u64) {
        record(id, value);
    }
}
