//! The floor of weft's HTTP filter: the host calls it makes per request, made on the raw
//! proxy-wasm ABI (no SDK) with nothing else around them. Inbound (access + metrics): the
//! clock, every request header in one call, the caller's URI SAN; at the end of the stream
//! the response code, the clock, a counter and a histogram. Outbound (split + metrics,
//! `--features outbound`): the same without the caller's identity, plus the route header
//! written (which makes Envoy match the route again), 90/10 between the split bench's two
//! backends. The stream's hooks are the ones weft.wasm exports. `make bench-floor` runs it in
//! `weft-bench` as a `--compare-wasm` build.

use std::ptr::null_mut;

/// Envoy's map type of the request headers.
const REQUEST_HEADERS: u32 = 0;
/// Envoy's metric types.
const COUNTER: u32 = 0;
const HISTOGRAM: u32 = 2;
/// weft's route header (weft_policy::contract::ROUTE_HEADER) and the split bench's backends.
#[cfg(feature = "outbound")]
const ROUTE_HEADER: &[u8] = b"x-weft-cluster";
#[cfg(feature = "outbound")]
const BACKENDS: [&[u8]; 2] = [b"checkout-v1.shop", b"checkout-v2.shop"];

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    #[cfg(feature = "outbound")]
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(path: *const u8, size: usize, data: *mut *mut u8, len: *mut usize)
    -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

// One VM runs one thread: plain statics are enough.
static mut REQUESTS: u32 = 0;
static mut DURATIONS: u32 = 0;
#[cfg(feature = "outbound")]
static mut STREAMS: u64 = 0;

#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer: Vec<u8> = Vec::with_capacity(size);
    let pointer = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    pointer
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(_context: u32, _root: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_context: u32, _size: usize) -> u32 {
    1
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(_context: u32, _size: usize) -> u32 {
    let counter = b"weft_floor_requests_total;.direction=.inbound;.source_namespace=.shop;";
    let histogram = b"weft_floor_request_duration_milliseconds;.direction=.inbound;";
    // SAFETY: the names outlive the calls; the ids are this module's statics.
    unsafe {
        proxy_define_metric(COUNTER, counter.as_ptr(), counter.len(), &raw mut REQUESTS);
        proxy_define_metric(
            HISTOGRAM,
            histogram.as_ptr(),
            histogram.len(),
            &raw mut DURATIONS,
        );
    }
    1
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _end: u32) -> u32 {
    now();
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: Envoy writes a buffer it allocated through proxy_on_memory_allocate.
    unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) };
    release(data, size);
    #[cfg(not(feature = "outbound"))]
    property(b"connection\0uri_san_peer_certificate");
    #[cfg(feature = "outbound")]
    // SAFETY: the statics belong to this single-threaded VM; the slices outlive the call.
    unsafe {
        STREAMS += 1;
        let backend = BACKENDS[usize::from(STREAMS.is_multiple_of(10))];
        proxy_replace_header_map_value(
            REQUEST_HEADERS,
            ROUTE_HEADER.as_ptr(),
            ROUTE_HEADER.len(),
            backend.as_ptr(),
            backend.len(),
        );
    }
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_log(_context: u32) {
    property(b"response\0code");
    now();
    // SAFETY: the ids were written by proxy_define_metric.
    unsafe {
        proxy_increment_metric(REQUESTS, 1);
        proxy_record_metric(DURATIONS, 1);
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_delete(_context: u32) {}

fn now() {
    let mut time = 0;
    // SAFETY: Envoy writes one u64.
    unsafe { proxy_get_current_time_nanoseconds(&mut time) };
}

fn property(path: &[u8]) {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: Envoy writes a buffer it allocated through proxy_on_memory_allocate.
    unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    release(data, size);
}

/// Gives back a buffer Envoy had the module allocate.
fn release(data: *mut u8, size: usize) {
    if !data.is_null() {
        // SAFETY: `data` came from proxy_on_memory_allocate with a capacity of `size`.
        drop(unsafe { Vec::from_raw_parts(data, 0, size) });
    }
}
