//! The few host calls the features make, each wrapped so that a failure becomes a value the
//! caller decides on (deny, skip a count), never a panic.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{GrpcStatusCode, LogLevel, MapType, MetricType};

use crate::edges::MetricHost;

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
///
/// The headers stay in the one buffer Envoy wrote them to, in its serialized form, and are read
/// in place: the SDK's `get_map_bytes` would copy every name and value into a `String` and a
/// `Vec` of its own, two allocations a header, a few thousand instructions a request.
#[derive(Debug, Default)]
pub struct RequestHeaders {
    /// Envoy's serialized header map, checked whole when fetched ([`SerializedPairs`]).
    pairs: SerializedPairs,
    /// Every header of the request was fetched, so one absent here is absent from the request.
    complete: bool,
}

impl RequestHeaders {
    /// Every request header, in one host call; none if Envoy refuses or the map it hands over
    /// does not read whole.
    pub fn fetch_all() -> Self {
        match header_map_pairs(MapType::HttpRequestHeaders).and_then(SerializedPairs::new) {
            Some(pairs) => Self {
                pairs,
                complete: true,
            },
            None => Self::default(),
        }
    }

    /// `pairs` as a request's headers (every one of them: `complete`), as another host than
    /// Envoy hands them over.
    pub fn of(pairs: &[(&str, &str)], complete: bool) -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(0).to_le_bytes());
        for (name, value) in pairs {
            for part in [name, value] {
                bytes.extend_from_slice(&u32::try_from(part.len()).unwrap_or(0).to_le_bytes());
            }
        }
        for (name, value) in pairs {
            for part in [name, value] {
                bytes.extend_from_slice(part.as_bytes());
                bytes.push(0);
            }
        }
        Self {
            pairs: SerializedPairs::new(bytes).unwrap_or_default(),
            complete,
        }
    }

    /// Only header `name`, in one host call.
    pub fn fetch_one(name: &str) -> Self {
        let pairs = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
            .map(|value| SerializedPairs::one(name.as_bytes(), &value))
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
        let mut values = self.values(weft_policy::xfcc::HEADER);
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        weft_policy::xfcc::caller_uri(std::str::from_utf8(value).ok()?)
    }

    /// Whether the request certainly has no header `name`: known only when every header was
    /// fetched, so that a host call to remove it can be skipped.
    pub fn certainly_lacks(&self, name: &str) -> bool {
        self.complete && self.values(name).next().is_none()
    }

    /// The values of header `name` (compared without regard to ASCII case), in Envoy's order.
    fn values<'h>(&'h self, name: &str) -> impl Iterator<Item = &'h [u8]> + Clone {
        self.pairs
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }
}

/// A header map as proxy-wasm serializes it: the number of pairs (`u32`, little endian), the
/// length of each name and value (two `u32`s a pair), then each name and each value followed
/// by a NUL byte. Only a buffer that reads whole is kept, so iterating it never stops early.
#[derive(Debug, Default)]
pub struct SerializedPairs {
    bytes: Vec<u8>,
}

impl SerializedPairs {
    /// `bytes` if they read whole as a serialized map, `None` otherwise.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        let pairs = Self { bytes };
        let (count, mut data) = pairs.layout()?;
        for index in 0..count {
            let (_, _, next) = pairs.pair_at(index, data)?;
            data = next;
        }
        (data == pairs.bytes.len()).then_some(pairs)
    }

    /// A map of one pair.
    pub fn one(name: &[u8], value: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(14 + name.len() + value.len());
        for length in [1, name.len(), value.len()] {
            bytes.extend_from_slice(&u32::try_from(length).unwrap_or(0).to_le_bytes());
        }
        for part in [name, value] {
            bytes.extend_from_slice(part);
            bytes.push(0);
        }
        Self { bytes }
    }

    /// The `(name, value)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        let (count, start) = self.layout().unwrap_or((0, 0));
        let mut data = start;
        (0..count).map_while(move |index| {
            let (name, value, next) = self.pair_at(index, data)?;
            data = next;
            Some((name, value))
        })
    }

    /// The number of pairs and where the first name starts.
    fn layout(&self) -> Option<(usize, usize)> {
        if self.bytes.is_empty() {
            return Some((0, 0));
        }
        let count = self.u32_at(0)?;
        let data = count.checked_mul(8)?.checked_add(4)?;
        (data <= self.bytes.len()).then_some((count, data))
    }

    /// Pair `index`, whose name starts at `data`, and where the next name starts.
    fn pair_at(&self, index: usize, data: usize) -> Option<(&[u8], &[u8], usize)> {
        let name_len = self.u32_at(4 + index * 8)?;
        let value_len = self.u32_at(8 + index * 8)?;
        let name_end = data.checked_add(name_len)?;
        let name = self.bytes.get(data..name_end)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let value = self.bytes.get(value_start..value_end)?;
        Some((name, value, value_end.checked_add(1)?))
    }

    fn u32_at(&self, at: usize) -> Option<usize> {
        let bytes = self.bytes.get(at..at.checked_add(4)?)?;
        let word = u32::from_le_bytes(bytes.try_into().ok()?);
        usize::try_from(word).ok()
    }
}

/// Every pair of header map `map`, as Envoy serialized it, in the buffer Envoy had the module
/// allocate; `None` if Envoy refuses. What the SDK's `get_map_bytes` does before it copies each
/// pair out.
#[allow(unsafe_code)]
fn header_map_pairs(map: MapType) -> Option<Vec<u8>> {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: Envoy writes the address and size of a buffer it had the module allocate through
    // the SDK's `proxy_on_memory_allocate`, a `Vec<u8>` of exactly `size` bytes and capacity
    // forgotten there; taking it back as that `Vec` frees it when dropped, as the SDK does.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    if status != proxy_wasm::types::Status::Ok as u32 {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: as above; `data` is non-null and owns `size` initialised bytes.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

impl weft_policy::engine::Headers for RequestHeaders {
    /// Every value of `name` joined with `,`, as text (see the trait); a value that is not
    /// UTF-8 makes the whole header `None`, so a regex over it does not match, which can only
    /// deny.
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        // A pseudo-header appears once (Envoy's codecs make each one; HTTP/2 forbids repeating
        // them), and Envoy puts them first: stop at it instead of scanning every header.
        if name.starts_with(':') {
            let (_, value) = self.pairs.iter().find(|(key, _)| *key == name.as_bytes())?;
            return std::str::from_utf8(value)
                .ok()
                .map(std::borrow::Cow::Borrowed);
        }
        let values = self.values(name).map(std::str::from_utf8);
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

/// What the request and connection paths ask of the proxy they run in: facts about the
/// request or connection, and the few actions they take. [`Envoy`] answers through the host
/// calls above; the native tests of [`crate::http`] and [`crate::tcp`] answer with a recording
/// host, so that the deny, audit, route-header and fail-closed paths are tested without a VM.
pub trait Host: MetricHost {
    /// The SPIFFE ID the peer's verified certificate carries ([`peer_identity`]).
    fn peer_identity(&mut self) -> Option<String>;
    /// The port the connection was addressed to ([`destination_port`]).
    fn destination_port(&mut self) -> u16;
    /// The request headers a plan asks for, in at most one fetch ([`RequestHeaders`]).
    fn request_headers(&mut self, plan: crate::HeaderPlan) -> RequestHeaders;
    /// Sets a request header ([`set_request_header`]).
    fn set_request_header(&mut self, name: &str, value: &str) -> bool;
    /// Removes a request header ([`remove_request_header`]).
    fn remove_request_header(&mut self, name: &str) -> bool;
    /// Answers the request locally ([`refuse_request`]).
    fn refuse_request(
        &mut self,
        grpc: bool,
        http_status: u32,
        grpc_status: GrpcStatusCode,
        marker: (&str, &str),
        body: &str,
    );
    /// Resets the request ([`reset_request`]).
    fn reset_request(&mut self, why: &str);
    /// Closes the downstream connection ([`close_connection`]).
    fn close_connection(&mut self);
    /// The proxy's clock ([`now_nanoseconds`]).
    fn now_nanoseconds(&mut self) -> u64;
    /// The status sent downstream ([`response_code`]).
    fn response_code(&mut self) -> u32;
    /// The gRPC status of the response ([`grpc_status`]).
    fn grpc_status(&mut self) -> Option<u32>;
    /// A uniformly random roll for split routing.
    fn roll(&mut self) -> u64;
}

/// Envoy, through proxy-wasm's host calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Envoy;

impl MetricHost for Envoy {
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

impl Host for Envoy {
    fn peer_identity(&mut self) -> Option<String> {
        peer_identity()
    }

    fn destination_port(&mut self) -> u16 {
        destination_port()
    }

    fn request_headers(&mut self, plan: crate::HeaderPlan) -> RequestHeaders {
        match plan {
            crate::HeaderPlan::Nothing => RequestHeaders::default(),
            crate::HeaderPlan::HostOnly => RequestHeaders::fetch_one(":authority"),
            crate::HeaderPlan::Every => RequestHeaders::fetch_all(),
        }
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        set_request_header(name, value)
    }

    fn remove_request_header(&mut self, name: &str) -> bool {
        remove_request_header(name)
    }

    fn refuse_request(
        &mut self,
        grpc: bool,
        http_status: u32,
        grpc_status: GrpcStatusCode,
        marker: (&str, &str),
        body: &str,
    ) {
        refuse_request(grpc, http_status, grpc_status, marker, body);
    }

    fn reset_request(&mut self, why: &str) {
        reset_request(why);
    }

    fn close_connection(&mut self) {
        close_connection();
    }

    fn now_nanoseconds(&mut self) -> u64 {
        now_nanoseconds()
    }

    fn response_code(&mut self) -> u32 {
        response_code()
    }

    fn grpc_status(&mut self) -> Option<u32> {
        grpc_status()
    }

    fn roll(&mut self) -> u64 {
        fastrand::u64(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::engine::Headers;

    /// `pairs` serialized as Envoy does.
    fn serialized(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut bytes = u32::try_from(pairs.len()).unwrap().to_le_bytes().to_vec();
        for (name, value) in pairs {
            bytes.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
            bytes.extend_from_slice(&u32::try_from(value.len()).unwrap().to_le_bytes());
        }
        for (name, value) in pairs {
            for part in [name, value] {
                bytes.extend_from_slice(part.as_bytes());
                bytes.push(0);
            }
        }
        bytes
    }

    fn headers(pairs: &[(&str, &str)]) -> RequestHeaders {
        RequestHeaders {
            pairs: SerializedPairs::new(serialized(pairs)).unwrap(),
            complete: true,
        }
    }

    #[test]
    fn headers_are_read_in_place_with_repeated_ones_joined() {
        let headers = headers(&[
            (":authority", "api.shop"),
            (":path", "/orders/1"),
            ("x-user", "a"),
            ("empty", ""),
            ("X-User", "b"),
        ]);
        assert_eq!(headers.header(":path").as_deref(), Some("/orders/1"));
        assert_eq!(
            headers.header(":PATH"),
            None,
            "pseudo-headers match exactly"
        );
        assert_eq!(headers.header("x-user").as_deref(), Some("a,b"));
        assert_eq!(headers.header("empty").as_deref(), Some(""));
        assert_eq!(headers.header("absent"), None);
        assert!(headers.certainly_lacks("absent"));
        assert!(!headers.certainly_lacks("X-USER"));
    }

    #[test]
    fn one_fetched_header_reads_back_and_says_nothing_of_others() {
        let one = RequestHeaders {
            pairs: SerializedPairs::one(b":authority", b"api.shop"),
            complete: false,
        };
        assert_eq!(one.header(":authority").as_deref(), Some("api.shop"));
        assert!(!one.certainly_lacks("x-weft-cluster"));
    }

    #[test]
    fn a_map_that_does_not_read_whole_is_refused() {
        let good = serialized(&[(":path", "/"), ("a", "b")]);
        assert!(SerializedPairs::new(good.clone()).is_some());
        assert!(SerializedPairs::new(Vec::new()).is_some());
        for cut in 1..good.len() {
            assert!(
                SerializedPairs::new(good[..cut].to_vec()).is_none(),
                "{cut}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(SerializedPairs::new(longer).is_none());
        let mut huge = good;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(SerializedPairs::new(huge).is_none());
    }

    #[test]
    fn the_forwarded_caller_is_read_from_one_header_only() {
        let xfcc = "By=spiffe://td/ns/a/sa/b;Hash=ab;URI=spiffe://td/ns/shop/sa/web";
        let one = headers(&[("x-forwarded-client-cert", xfcc)]);
        assert_eq!(one.forwarded_caller(), Some("spiffe://td/ns/shop/sa/web"));
        let twice = headers(&[
            ("x-forwarded-client-cert", xfcc),
            ("x-forwarded-client-cert", xfcc),
        ]);
        assert_eq!(twice.forwarded_caller(), None);
        assert_eq!(headers(&[]).forwarded_caller(), None);
    }
}
