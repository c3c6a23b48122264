//! The ADS state-of-the-world protocol of one stream, as a synchronous state machine: a request
//! or a new snapshot in, responses and events out. No I/O, so every rule is tested in plain unit
//! tests; the tonic service only moves messages.
//!
//! The rules (xDS protocol, "ACK/NACK and resource type instance version"):
//! - a response's version names its content (`set_version`): the same content, the same
//!   version; a change is pushed only when the version changes;
//! - a request whose nonce is not the last one sent for its type is stale and ignored;
//! - a NACK is recorded, and a version the proxy refused is never sent to it again on that
//!   stream, also after the content moved on and came back (Envoy would ACK a byte-identical
//!   resend without applying it, or refuse it again); any other change is sent as usual;
//! - a new stream's first request for a type gets the current state, unless the proxy says it
//!   already has that version (a reconnect after a controller restart causes no push storm);
//! - nothing is sent before the proxy's snapshot exists (a sidecar with no configuration
//!   serves nothing, which is what it should do);
//! - a snapshot change is pushed type by type in [`PUSH_ORDER`];
//! - once the proxy applied clusters sent after the last endpoints, the endpoints are sent
//!   again, changed or not, and routes after listeners: Envoy warms a changed cluster until an
//!   EDS response comes, and a changed listener until an RDS response comes;
//! - endpoints are sent as what the proxy lacks (EDS is not a wildcard type: Envoy keeps what
//!   a response leaves out), as Istio's incremental EDS does: a change sends the load
//!   assignments that changed since the last ones sent, a new subscription those of the names
//!   it adds, and a warm-up those of the clusters that changed (with any changed ones); a first
//!   request, the response after a NACK, and a warm-up after clusters the stream does not know
//!   to have been sent whole, send them all.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::encoding::{message, string};

use crate::snapshot::{
    CLUSTER, ENDPOINT, LISTENER, Layers, PUSH_ORDER, ROUTE, Resource, SharedSnapshot,
    is_wildcard_type, set_version, short_name as short_type,
};

/// Something the stream observed that the controller records (logs, metrics, status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The proxy applied `version` of `type_url`.
    Ack {
        /// xDS type.
        type_url: String,
        /// Version applied.
        version: String,
    },
    /// The proxy refused `version` of `type_url`.
    Nack {
        /// xDS type.
        type_url: String,
        /// Version refused.
        version: String,
        /// Envoy's reason.
        error: String,
    },
    /// A request answered a response that is no longer the latest; ignored.
    StaleNonce {
        /// xDS type.
        type_url: String,
        /// The nonce it carried.
        nonce: String,
    },
    /// The proxy asked for resources its snapshot does not hold (for secrets: another
    /// workload's certificate, which it is refused).
    Missing {
        /// xDS type.
        type_url: String,
        /// Names asked for and not served: the first [`MISSING_NAMED`] of them.
        names: Vec<String>,
        /// How many names were asked for and not served.
        count: usize,
    },
    /// A request named more resources than [`MAX_RESOURCE_NAMES`]; the stream ends.
    TooManyNames {
        /// xDS type.
        type_url: String,
        /// How many it named.
        count: usize,
    },
    /// After an ACK, the proxy has applied everything it was sent and nothing is left to send:
    /// it runs its current snapshot (for what it subscribes to). The end of a convergence.
    InSync,
}

/// A response to send: a `DiscoveryResponse` whose resources are the snapshot's own, shared,
/// and encoded straight from it (a push to thousands of proxies copies no resource before it is
/// written to the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The version of the resources.
    pub version_info: String,
    /// The resources.
    pub resources: Vec<Arc<Resource>>,
    /// Their type.
    pub type_url: String,
    /// The nonce the proxy answers with.
    pub nonce: String,
}

/// `DiscoveryResponse`'s field numbers.
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;

impl Response {
    fn strings(&self) -> [(u32, &String); 3] {
        [
            (VERSION_INFO, &self.version_info),
            (TYPE_URL, &self.type_url),
            (NONCE, &self.nonce),
        ]
    }

    /// The length of its encoding.
    pub fn encoded_len(&self) -> usize {
        let strings: usize = self
            .strings()
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(tag, value)| string::encoded_len(*tag, value))
            .sum();
        let resources: usize = self
            .resources
            .iter()
            .map(|resource| message::encoded_len(RESOURCES, &resource.body))
            .sum();
        strings + resources
    }

    /// Appends its encoding, the bytes of the `DiscoveryResponse` it stands for (fields in
    /// their numbers' order, as prost writes them).
    pub fn encode(&self, buffer: &mut Vec<u8>) {
        let field = |(tag, value): (u32, &String), buffer: &mut Vec<u8>| {
            if !value.is_empty() {
                string::encode(tag, value, buffer);
            }
        };
        let [version, type_url, nonce] = self.strings();
        field(version, buffer);
        for resource in &self.resources {
            message::encode(RESOURCES, &resource.body, buffer);
        }
        field(type_url, buffer);
        field(nonce, buffer);
    }

    /// The `DiscoveryResponse` it stands for, copied (for tests and tools).
    pub fn to_discovery_response(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| r.body.clone()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..DiscoveryResponse::default()
        }
    }
}

/// What one step produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Responses to send, in order.
    pub responses: Vec<Response>,
    /// What happened.
    pub events: Vec<Event>,
    /// Why the stream must end, when it must.
    pub end: Option<String>,
}

/// The most resource names one request may carry. Envoy names one resource per cluster it
/// discovers endpoints for, and a handful of others; a request with more is refused whole, so
/// that no proxy can make the controller sort and keep an unbounded list.
pub const MAX_RESOURCE_NAMES: usize = 10_000;

/// How many of the names a proxy asked for and was not given an event carries.
pub const MISSING_NAMED: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    version: String,
    nonce: String,
}

/// The state of one type on one stream.
#[derive(Debug, Clone, Default)]
struct TypeState {
    wildcard: bool,
    /// The names it subscribed to, shared with every stream subscribed to the same ones.
    names: Arc<BTreeSet<String>>,
    sent: Option<Sent>,
    acked: Option<String>,
    nacked: Option<(String, String)>,
    /// The nonce of the response the proxy last acknowledged.
    acked_nonce: Option<String>,
    /// Every version refused on this stream, the latest last (at most [`REFUSED_KEPT`]).
    refused: VecDeque<String>,
    /// For clusters and endpoints: the snapshot's set the last response was taken from
    /// (shared with the snapshot, so it costs pointers) and the names subscribed then, when the
    /// proxy holds what it was sent of them.
    last: Option<(Layers, Arc<BTreeSet<String>>)>,
    /// The snapshot's set of this type and the version the subscription selects of it (for
    /// the subscription as it is: a change of it forgets this).
    memo: Option<(Layers, String)>,
}

/// How many refused versions of one type a stream remembers.
const REFUSED_KEPT: usize = 64;

/// `names` as a set shared by every stream subscribed to the same names: the proxies of a mesh
/// subscribe to the same endpoints (one name per Service), so thousands of streams hold one set
/// rather than one each. The pool only holds sets some stream holds.
fn shared_names(names: BTreeSet<String>) -> Arc<BTreeSet<String>> {
    /// Sets by the hash of their names, and the size past which dead entries are swept.
    #[derive(Default)]
    struct Pool {
        sets: HashMap<u64, Vec<Weak<BTreeSet<String>>>>,
        sweep_at: usize,
    }
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    if names.is_empty() {
        return Arc::new(names);
    }
    let key = {
        let mut hasher = std::hash::DefaultHasher::new();
        names.hash(&mut hasher);
        hasher.finish()
    };
    // A panic while holding the lock leaves the pool a cache still: sound to use.
    let mut pool = POOL
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bucket = pool.sets.entry(key).or_default();
    bucket.retain(|set| set.strong_count() > 0);
    if let Some(shared) = bucket
        .iter()
        .filter_map(Weak::upgrade)
        .find(|set| **set == names)
    {
        return shared;
    }
    let shared = Arc::new(names);
    bucket.push(Arc::downgrade(&shared));
    if pool.sets.len() >= pool.sweep_at {
        pool.sets
            .retain(|_, bucket| bucket.iter().any(|set| set.strong_count() > 0));
        pool.sweep_at = (2 * pool.sets.len()).max(1024);
    }
    shared
}

/// A process-wide memo of what streams compute from shared sets, keyed by the addresses of
/// those sets. The proxies of a mesh subscribe to the same endpoints (one name per Service) of the
/// one set every snapshot shares, so what one stream computes from them, thousands of others
/// would compute again. Each entry keeps weak references to the sets that key it, so their
/// addresses cannot be reused while it is kept (the sets themselves go when nothing else holds
/// them); entries whose sets are gone are swept.
struct SharedMemo<V> {
    entries: HashMap<Vec<usize>, Keyed<V>>,
    /// Entries added since the last sweep: a sweep comes every [`SWEEP_EVERY`], so that the
    /// entries of sets that are gone (a superseded set of endpoints) are not kept for long.
    added: usize,
}

/// How many entries a [`SharedMemo`] adds between sweeps.
const SWEEP_EVERY: usize = 256;

struct Keyed<V> {
    names: Vec<Weak<BTreeSet<String>>>,
    sets: Vec<Weak<crate::snapshot::Resources>>,
    value: V,
}

impl<V: Clone> SharedMemo<V> {
    fn new() -> Self {
        Self {
            entries: HashMap::new(),
            added: 0,
        }
    }

    /// What `compute` gives from `names` and `sets`, computed once while they are held.
    fn get(
        memo: &OnceLock<Mutex<Self>>,
        names: &[&Arc<BTreeSet<String>>],
        sets: &[&Layers],
        compute: impl FnOnce() -> V,
    ) -> V {
        let mut key: Vec<usize> = names.iter().map(|n| Arc::as_ptr(n) as usize).collect();
        for set in sets {
            // No address is zero: it separates the sets' lists.
            key.push(0);
            key.extend(set.pointers());
        }
        // A panic while holding the lock leaves the memo a memo still: sound to use.
        let mut memo = memo
            .get_or_init(|| Mutex::new(Self::new()))
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = memo.entries.get(&key) {
            return entry.value.clone();
        }
        let value = compute();
        memo.entries.insert(
            key,
            Keyed {
                names: names.iter().map(|n| Arc::downgrade(n)).collect(),
                sets: sets.iter().flat_map(|s| s.downgrade()).collect(),
                value: value.clone(),
            },
        );
        memo.added += 1;
        if memo.added >= SWEEP_EVERY {
            memo.entries.retain(|_, entry| {
                entry.names.iter().all(|n| n.strong_count() > 0)
                    && entry.sets.iter().all(|s| s.strong_count() > 0)
            });
            memo.added = 0;
        }
        value
    }
}

/// Resources, shared.
type Shared = Arc<Vec<Arc<Resource>>>;

/// What subscriptions select of shared sets, and its version ([`shared_selection`]).
static SELECTIONS: OnceLock<Mutex<SharedMemo<(String, Shared)>>> = OnceLock::new();

/// What streams lack of shared sets ([`lacking`]).
static LACKING: OnceLock<Mutex<SharedMemo<Shared>>> = OnceLock::new();

/// The version of what a subscription to `names` selects of `layers`, and those resources,
/// computed once for every stream subscribed to the same names of the same sets.
fn shared_selection(layers: &Layers, names: &Arc<BTreeSet<String>>) -> (String, Shared) {
    SharedMemo::get(&SELECTIONS, &[names], &[layers], || {
        let selected: Vec<Arc<Resource>> = names
            .iter()
            .filter_map(|name| layers.get(name))
            .cloned()
            .collect();
        let version = set_version(selected.iter().map(AsRef::as_ref));
        (version, Arc::new(selected))
    })
}

/// Of `selected`, what a proxy that was last sent `last` for `last_names` lacks: what it was
/// not sent, or sent in another version, and what it warms.
fn lacking(
    selected: &[Arc<Resource>],
    last: &Layers,
    last_names: &BTreeSet<String>,
    warming: &BTreeSet<String>,
) -> Vec<Arc<Resource>> {
    selected
        .iter()
        .filter(|r| {
            let held = last_names.contains(&r.name)
                && last
                    .get(&r.name)
                    .is_some_and(|old| old.version == r.version);
            !held || warming.contains(&r.name)
        })
        .map(Arc::clone)
        .collect()
}

/// One type's protocol state, for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStatus {
    /// xDS type.
    pub type_url: String,
    /// Last version sent.
    pub sent: Option<String>,
    /// Last version the proxy applied.
    pub acked: Option<String>,
    /// Last version the proxy refused, and why.
    pub nacked: Option<(String, String)>,
}

/// Why a type's resources are being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    /// Its content may have changed: sent if it did.
    Change,
    /// A new subscription: sent unless the proxy says it has this version.
    First,
    /// The subscription changed: sent (whole) if the version did.
    Subscribed,
    /// Endpoints after a cluster change the proxy applied, routes after a listener change:
    /// sent even when unchanged, since Envoy warms a changed cluster until an EDS response
    /// comes, and a changed listener until an RDS response comes (xDS protocol, "Resource
    /// warming"); without it the change waits for `initial_fetch_timeout` (15 s).
    Warm,
}

/// The types whose resources warm with another's: clusters with their endpoints, listeners
/// with their routes.
const WARMED_BY: [(&str, &str); 2] = [(CLUSTER, ENDPOINT), (LISTENER, ROUTE)];

/// One ADS stream.
#[derive(Debug, Default)]
pub struct Stream {
    snapshot: Option<SharedSnapshot>,
    types: BTreeMap<String, TypeState>,
    nonces: u64,
    /// The types owed to warm what was sent: clusters were sent and no endpoints since (or
    /// listeners and no routes); the proxy's ACK of them is answered with these
    /// ([`Send::Warm`]).
    owed: BTreeSet<&'static str>,
    /// The clusters sent changed since the endpoints were last sent, which the proxy warms
    /// until their endpoints come; `None` when not known (all of them are then sent).
    warming: Option<BTreeSet<String>>,
}

impl Stream {
    /// A stream with no snapshot yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles a request from the proxy.
    pub fn on_request(&mut self, request: &DiscoveryRequest) -> Output {
        let mut output = Output::default();
        let type_url = request.type_url.clone();
        if request.resource_names.len() > MAX_RESOURCE_NAMES {
            let count = request.resource_names.len();
            output.events.push(Event::TooManyNames {
                type_url: type_url.clone(),
                count,
            });
            output.end = Some(format!(
                "a request for {} names {count} resources; at most {MAX_RESOURCE_NAMES} are served per request",
                short_type(&type_url)
            ));
            return output;
        }
        let first = request.response_nonce.is_empty();
        if !first {
            // Before anything of the type is kept: a stale request (or one naming a nonce never
            // sent, of a type never subscribed) changes nothing.
            let current = self
                .types
                .get(&type_url)
                .and_then(|state| state.sent.as_ref())
                .is_some_and(|sent| sent.nonce == request.response_nonce);
            if !current {
                output.events.push(Event::StaleNonce {
                    type_url,
                    nonce: request.response_nonce.clone(),
                });
                return output;
            }
        }
        let state = self.types.entry(type_url.clone()).or_default();
        // The same acknowledgement again: Envoy added a watch for resources it already has (a
        // changed cluster's endpoints, a changed listener's routes) and asks anew.
        let asked_again = !first
            && request.error_detail.is_none()
            && state.acked_nonce.as_deref() == Some(request.response_nonce.as_str());
        if !first {
            let sent_version = state
                .sent
                .as_ref()
                .map(|s| s.version.clone())
                .unwrap_or_default();
            match &request.error_detail {
                Some(status) => {
                    state.last = None;
                    state.nacked = Some((sent_version.clone(), status.message.clone()));
                    if !state.refused.contains(&sent_version) {
                        if state.refused.len() == REFUSED_KEPT {
                            state.refused.pop_front();
                        }
                        state.refused.push_back(sent_version.clone());
                    }
                    output.events.push(Event::Nack {
                        type_url: type_url.clone(),
                        version: sent_version,
                        error: status.message.clone(),
                    });
                }
                None => {
                    state.acked = Some(request.version_info.clone());
                    state.acked_nonce = Some(request.response_nonce.clone());
                    output.events.push(Event::Ack {
                        type_url: type_url.clone(),
                        version: request.version_info.clone(),
                    });
                }
            }
        }
        let wildcard = is_wildcard_type(&type_url)
            && (request.resource_names.is_empty()
                || request.resource_names.iter().any(|name| name == "*"));
        // Compared without copying the names: most requests are acknowledgements of the
        // subscription as it was.
        let mut asked: Vec<&str> = request
            .resource_names
            .iter()
            .map(String::as_str)
            .filter(|name| *name != "*")
            .collect();
        asked.sort_unstable();
        asked.dedup();
        let same_names = asked.len() == state.names.len()
            && asked.iter().zip(state.names.iter()).all(|(a, b)| *a == b);
        let subscription_changed = wildcard != state.wildcard || !same_names;
        if subscription_changed {
            // What it holds of the names it keeps is still known (`last`, by name).
            state.memo = None;
            state.names = shared_names(asked.into_iter().map(str::to_owned).collect());
        }
        state.wildcard = wildcard;
        if first {
            // The proxy's own version: after a reconnect it may already have the current one.
            // It is a version the proxy applied, so it is reported as one (a restarted
            // controller learns which proxies already serve).
            // What it says it has is all that counts: nothing, if it names no version.
            state.sent = None;
            state.last = None;
            state.acked = (!request.version_info.is_empty()).then(|| request.version_info.clone());
            if let Some(version) = &state.acked {
                output.events.push(Event::Ack {
                    type_url: type_url.clone(),
                    version: version.clone(),
                });
            }
        }
        if first || subscription_changed {
            if let Some(missing) = self.missing(&type_url) {
                output.events.push(missing);
            }
            let send = if first { Send::First } else { Send::Subscribed };
            self.respond(&type_url, send, &mut output);
        }
        // What a change the proxy applied warms on, it gets again: when it acknowledges the
        // change (a listener), or asks again for what warms it (a cluster's endpoints: Envoy
        // acknowledges clusters only once they warmed).
        let applied = !first
            && output
                .events
                .iter()
                .any(|event| matches!(event, Event::Ack { .. }));
        let warm = match WARMED_BY.iter().find(|(by, _)| *by == type_url) {
            Some((_, warmed)) if applied => Some(*warmed),
            _ => WARMED_BY
                .iter()
                .find(|(_, warmed)| *warmed == type_url && asked_again)
                .map(|(_, warmed)| *warmed),
        };
        if let Some(warmed) = warm
            && self.owed.contains(warmed)
            && self.types.contains_key(warmed)
        {
            self.respond(warmed, Send::Warm, &mut output);
        }
        let acked = output
            .events
            .iter()
            .any(|event| matches!(event, Event::Ack { .. }));
        if acked && output.responses.is_empty() && self.in_sync() {
            output.events.push(Event::InSync);
        }
        output
    }

    /// Whether every version sent has been applied (none is waiting for an answer or was
    /// refused).
    pub fn in_sync(&self) -> bool {
        self.snapshot.is_some()
            && self.types.values().all(|state| match &state.sent {
                Some(sent) => state.acked.as_deref() == Some(sent.version.as_str()),
                None => true,
            })
    }

    /// Takes a new snapshot of the proxy's resources and pushes what changed.
    pub fn on_snapshot(&mut self, snapshot: SharedSnapshot) -> Output {
        let first = self.snapshot.is_none();
        self.snapshot = Some(snapshot);
        let mut output = Output::default();
        if first {
            // What the proxy asked for before it had a snapshot is judged now.
            let subscribed: Vec<String> = self.types.keys().cloned().collect();
            for type_url in subscribed {
                if let Some(missing) = self.missing(&type_url) {
                    output.events.push(missing);
                }
            }
        }
        let mut order: Vec<String> = PUSH_ORDER.iter().map(|t| (*t).to_owned()).collect();
        order.extend(
            self.types
                .keys()
                .filter(|t| !PUSH_ORDER.contains(&t.as_str()))
                .cloned(),
        );
        for type_url in order {
            if self.types.contains_key(&type_url) {
                self.respond(&type_url, Send::Change, &mut output);
            }
        }
        // Nothing to send (the change was in what the proxy does not subscribe to, or it
        // already has it): it runs this snapshot now, and no ACK will come to say so.
        if output.responses.is_empty() && !self.types.is_empty() && self.in_sync() {
            output.events.push(Event::InSync);
        }
        output
    }

    /// Every type's protocol state.
    pub fn status(&self) -> Vec<TypeStatus> {
        self.types
            .iter()
            .map(|(type_url, state)| TypeStatus {
                type_url: type_url.clone(),
                sent: state.sent.as_ref().map(|s| s.version.clone()),
                acked: state.acked.clone(),
                nacked: state.nacked.clone(),
            })
            .collect()
    }

    /// The version of what `type_url`'s subscription selects, computed once per set of
    /// resources: snapshots share a type's set until it changes, so a change elsewhere costs a
    /// pointer comparison here.
    fn version(&mut self, type_url: &str) -> (String, Option<Shared>) {
        let current = self
            .snapshot
            .as_ref()
            .and_then(|snapshot| snapshot.resources(type_url))
            .cloned();
        if let (Some(current), Some(state)) = (&current, self.types.get(type_url))
            && let Some((set, version)) = &state.memo
            && set.same_sets(current)
        {
            return (version.clone(), None);
        }
        let (version, selected) = self.selection(type_url);
        if let (Some(current), Some(state)) = (current, self.types.get_mut(type_url)) {
            state.memo = Some((current, version.clone()));
        }
        (version, Some(selected))
    }

    /// What `type_url`'s subscription selects of the snapshot, and its version.
    /// (Shared, not copied: most streams send only a part of it, or nothing.)
    fn selection(&self, type_url: &str) -> (String, Shared) {
        let (Some(snapshot), Some(state)) = (&self.snapshot, self.types.get(type_url)) else {
            return (set_version(std::iter::empty()), Shared::default());
        };
        let Some(resources) = snapshot.resources(type_url) else {
            return (set_version(std::iter::empty()), Shared::default());
        };
        if state.wildcard {
            let selected: Vec<Arc<Resource>> = resources.values().cloned().collect();
            (
                set_version(selected.iter().map(AsRef::as_ref)),
                Arc::new(selected),
            )
        } else {
            shared_selection(resources, &state.names)
        }
    }

    fn missing(&self, type_url: &str) -> Option<Event> {
        let snapshot = self.snapshot.as_ref()?;
        let state = self.types.get(type_url)?;
        let mut missing = state.names.iter().filter(|name| {
            snapshot
                .resources(type_url)
                .is_none_or(|resources| !resources.contains_key(name))
        });
        let names: Vec<String> = missing.by_ref().take(MISSING_NAMED).cloned().collect();
        let count = names.len() + missing.count();
        (count > 0).then(|| Event::Missing {
            type_url: type_url.to_owned(),
            names,
            count,
        })
    }

    /// Sends `type_url`'s current resources unless the proxy refused them, or, but to warm
    /// clusters, has them (for a change: they are what was last sent).
    fn respond(&mut self, type_url: &str, send: Send, output: &mut Output) {
        let first = send == Send::First;
        if self.snapshot.is_none() {
            return;
        }
        let (version, selected) = self.version(type_url);
        let Some(state) = self.types.get_mut(type_url) else {
            return;
        };
        let refused = state.refused.contains(&version);
        // What the proxy has: on a first request, or when nothing was sent on this stream yet
        // (it asked before its snapshot was ready: a reconnect to a restarting controller),
        // the version it says it applied; otherwise the last one sent.
        let has = match &state.sent {
            Some(sent) if !first => Some(sent.version.as_str()),
            _ => state.acked.as_deref(),
        };
        let unchanged = has == Some(version.as_str()) && send != Send::Warm;
        if refused || unchanged {
            if unchanged && (first || state.sent.is_none()) {
                // The proxy has it; later changes compare against it.
                state.sent = Some(Sent {
                    version,
                    nonce: String::new(),
                });
            }
            return;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let current = self
            .snapshot
            .as_ref()
            .and_then(|snapshot| snapshot.resources(type_url))
            .cloned();
        // Any response of endpoints carries those of the clusters warming (a new cluster's
        // subscription may come in the same push as a changed one's warm-up).
        let warming = match type_url {
            ENDPOINT => self.warming.clone(),
            _ => None,
        };
        let base = match (send, type_url, warming) {
            (Send::Change | Send::Subscribed | Send::Warm, ENDPOINT, Some(warming)) => {
                state.last.clone().map(|(set, names)| (set, names, warming))
            }
            _ => None,
        };
        // Selected only when sent (or its version was computed): most types of a new snapshot
        // are unchanged.
        let selected = selected.unwrap_or_else(|| self.selection(type_url).1);
        // What the proxy lacks: what it was not sent, or sent in another version, and what it
        // warms.
        let changed: Vec<_> = match (&base, &current, self.types.get(type_url)) {
            // Nothing warming: the same for every stream that was sent the same and now
            // selects the same, so computed once for them.
            (Some((last, last_names, warming)), Some(current), Some(state))
                if warming.is_empty() && !state.wildcard =>
            {
                SharedMemo::get(
                    &LACKING,
                    &[&state.names, last_names],
                    &[current, last],
                    || Arc::new(lacking(&selected, last, last_names, warming)),
                )
                .as_ref()
                .clone()
            }
            (Some((last, last_names, warming)), _, _) => {
                lacking(&selected, last, last_names, warming)
            }
            _ => Vec::new(),
        };
        // A change that removed a resource and changed none is sent whole.
        let bodies: Vec<_> = if changed.is_empty() {
            Arc::unwrap_or_clone(selected)
        } else {
            changed
        };
        if type_url == CLUSTER {
            // The clusters that change: Envoy warms each until its endpoints come.
            let previous = self
                .types
                .get(type_url)
                .and_then(|state| state.last.as_ref());
            self.warming = match (self.warming.take(), previous) {
                (Some(mut warming), Some((previous, _))) => {
                    warming.extend(
                        bodies
                            .iter()
                            .filter(|r| {
                                previous
                                    .get(&r.name)
                                    .is_none_or(|old| old.version != r.version)
                            })
                            .map(|r| r.name.clone()),
                    );
                    Some(warming)
                }
                _ => None,
            };
        } else if type_url == ENDPOINT {
            self.warming = Some(BTreeSet::new());
        }
        if let Some(state) = self.types.get_mut(type_url) {
            state.sent = Some(Sent {
                version: version.clone(),
                nonce: nonce.clone(),
            });
            if type_url == ENDPOINT || type_url == CLUSTER {
                state.last = current.map(|set| (set, state.names.clone()));
            }
        }
        for (by, warmed) in WARMED_BY {
            if type_url == by {
                self.owed.insert(warmed);
            } else if type_url == warmed {
                self.owed.remove(warmed);
            }
        }
        output.responses.push(Response {
            version_info: version,
            resources: bodies,
            type_url: type_url.to_owned(),
            nonce,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;

    use super::*;
    use crate::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Snapshot};

    fn resource(name: &str, content: &str) -> Resource {
        Resource {
            name: name.to_owned(),
            version: content.to_owned(),
            body: Any {
                type_url: String::new(),
                value: content.as_bytes().to_vec(),
            },
        }
    }

    fn snapshot(entries: &[(&str, &str, &str)]) -> SharedSnapshot {
        let mut snapshot = Snapshot::new();
        for (type_url, name, content) in entries {
            snapshot.insert(type_url, resource(name, content));
        }
        Arc::new(snapshot)
    }

    fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            node: Some(Node::default()),
            ..DiscoveryRequest::default()
        }
    }

    fn nack(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "Unable to create Wasm plugin weft".to_owned(),
                details: Vec::new(),
            }),
            ..request(type_url, names, version, nonce)
        }
    }

    /// The ACK of `response` (a wildcard subscription).
    fn acking(response: &Response) -> DiscoveryRequest {
        request(
            &response.type_url,
            &[],
            &response.version_info,
            &response.nonce,
        )
    }

    /// Entries of a memo whose names no stream holds any more.
    fn dead_entries<V>(memo: &OnceLock<Mutex<SharedMemo<V>>>) -> usize {
        memo.get().map_or(0, |memo| {
            memo.lock()
                .unwrap()
                .entries
                .values()
                .filter(|entry| entry.names.iter().any(|n| n.strong_count() == 0))
                .count()
        })
    }

    #[test]
    fn a_peer_that_keeps_changing_its_subscription_leaves_the_shared_memos_bounded() {
        // Every new set of names is a new memo entry; once the stream moves on, its names are
        // gone, and a sweep comes every SWEEP_EVERY entries: what a peer leaves behind stays
        // under that, however long it goes on (other tests share the memos, and their
        // entries of live names are not counted).
        let mut stream = Stream::new();
        let names: Vec<String> = (0..200).map(|n| format!("e{n}")).collect();
        let entries: Vec<(&str, &str, &str)> = names
            .iter()
            .map(|name| (ENDPOINT, name.as_str(), "1"))
            .collect();
        stream.on_snapshot(snapshot(&entries));
        let mut last = one(&stream.on_request(&request(ENDPOINT, &["e0"], "", ""))).clone();
        let mut answered = 0;
        for round in 1..(3 * SWEEP_EVERY) {
            let asked = [format!("e{}", round % 200), format!("x{round}")];
            let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
            let output =
                stream.on_request(&request(ENDPOINT, &asked, &last.version_info, &last.nonce));
            if let Some(response) = output.responses.first() {
                answered += 1;
                last = response.clone();
            }
        }
        assert!(
            answered > 2 * SWEEP_EVERY,
            "each new subscription answered: {answered}"
        );
        for dead in [dead_entries(&SELECTIONS), dead_entries(&LACKING)] {
            assert!(
                dead < SWEEP_EVERY,
                "{dead} entries of names no stream holds"
            );
        }
    }

    #[test]
    fn a_shared_memo_computes_once_per_set_and_forgets_sets_that_are_gone() {
        static MEMO: OnceLock<Mutex<SharedMemo<usize>>> = OnceLock::new();
        let names = Arc::new(BTreeSet::from(["a".to_owned()]));
        let layers = |content: &str| {
            let snapshot = snapshot(&[(ENDPOINT, "a", content)]);
            snapshot.resources(ENDPOINT).unwrap().clone()
        };
        let (first, second) = (layers("1"), layers("2"));
        let calls = std::cell::Cell::new(0);
        let count = || {
            calls.set(calls.get() + 1);
            calls.get()
        };
        assert_eq!(SharedMemo::get(&MEMO, &[&names], &[&first], count), 1);
        assert_eq!(SharedMemo::get(&MEMO, &[&names], &[&first], count), 1);
        assert_eq!(SharedMemo::get(&MEMO, &[&names], &[&second], count), 2);
        drop(first);
        for _ in 0..SWEEP_EVERY {
            let other = layers("3");
            SharedMemo::get(&MEMO, &[&names], &[&other], || 0);
        }
        // Swept once on the way: what is left is the entry of the set still held, that of the
        // set being added when the sweep came, and those added since.
        let memo = MEMO.get().unwrap().lock().unwrap();
        let live = memo
            .entries
            .values()
            .filter(|entry| entry.sets.iter().all(|s| s.strong_count() > 0))
            .count();
        assert_eq!(live, 1);
        assert_eq!(memo.entries.len(), 2 + memo.added);
    }

    #[test]
    fn a_response_encodes_as_the_discovery_response_it_stands_for() {
        use prost::Message as _;
        let response = Response {
            version_info: "v1".to_owned(),
            resources: vec![
                Arc::new(resource("a", "a1")),
                Arc::new(Resource {
                    name: "b".to_owned(),
                    version: "b1".to_owned(),
                    body: Any {
                        type_url: CLUSTER.to_owned(),
                        value: vec![7; 300],
                    },
                }),
            ],
            type_url: CLUSTER.to_owned(),
            nonce: "12".to_owned(),
        };
        let mut encoded = Vec::new();
        response.encode(&mut encoded);
        let expected = response.to_discovery_response().encode_to_vec();
        assert_eq!(encoded, expected);
        assert_eq!(response.encoded_len(), expected.len());
        let empty = Response {
            version_info: String::new(),
            resources: Vec::new(),
            type_url: ENDPOINT.to_owned(),
            nonce: String::new(),
        };
        let mut encoded = Vec::new();
        empty.encode(&mut encoded);
        assert_eq!(encoded, empty.to_discovery_response().encode_to_vec());
        assert_eq!(empty.encoded_len(), encoded.len());
    }

    fn one(output: &Output) -> &Response {
        assert_eq!(output.responses.len(), 1, "{:?}", output.responses);
        &output.responses[0]
    }

    #[test]
    fn nothing_is_sent_before_the_proxy_has_a_snapshot() {
        let mut stream = Stream::new();
        assert!(
            stream
                .on_request(&request(LISTENER, &[], "", ""))
                .responses
                .is_empty()
        );
        let output = stream.on_snapshot(snapshot(&[(LISTENER, "inbound", "a")]));
        assert_eq!(one(&output).resources.len(), 1);
    }

    #[test]
    fn an_ack_is_recorded_and_an_unchanged_snapshot_sends_nothing() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(LISTENER, "inbound", "a")]));
        let first = stream.on_request(&request(LISTENER, &[], "", ""));
        let sent = one(&first).clone();
        let ack = stream.on_request(&request(LISTENER, &[], &sent.version_info, &sent.nonce));
        assert!(ack.responses.is_empty());
        assert_eq!(
            ack.events,
            vec![
                Event::Ack {
                    type_url: LISTENER.to_owned(),
                    version: sent.version_info.clone()
                },
                Event::InSync
            ]
        );
        // The same content rebuilt: no push.
        assert!(
            stream
                .on_snapshot(snapshot(&[(LISTENER, "inbound", "a")]))
                .responses
                .is_empty()
        );
        assert_eq!(
            stream.status()[0].acked.as_deref(),
            Some(sent.version_info.as_str())
        );
    }

    #[test]
    fn the_proxy_is_in_sync_once_every_type_sent_is_applied_and_not_after_a_refusal() {
        let in_sync = |output: &Output| output.events.contains(&Event::InSync);
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[
            (CLUSTER, "checkout", "a"),
            (LISTENER, "inbound", "a"),
        ]));
        let cluster = one(&stream.on_request(&request(CLUSTER, &[], "", ""))).clone();
        let listener = one(&stream.on_request(&request(LISTENER, &[], "", ""))).clone();
        // Clusters applied, listeners still out: not yet.
        let ack = stream.on_request(&acking(&cluster));
        assert!(!in_sync(&ack), "{:?}", ack.events);
        let ack = stream.on_request(&acking(&listener));
        assert!(in_sync(&ack), "{:?}", ack.events);
        // A change only in what it does not subscribe to: nothing to send, and in sync.
        let elsewhere = stream.on_snapshot(snapshot(&[
            (CLUSTER, "checkout", "a"),
            (LISTENER, "inbound", "a"),
            (ROUTE, "unasked", "a"),
        ]));
        assert!(elsewhere.responses.is_empty());
        assert!(in_sync(&elsewhere), "{:?}", elsewhere.events);

        // A change that is refused leaves the proxy out of sync, even after another ACK.
        let changed = stream.on_snapshot(snapshot(&[
            (CLUSTER, "checkout", "b"),
            (LISTENER, "inbound", "b"),
        ]));
        let [cluster, listener] = &changed.responses[..] else {
            panic!("{:?}", changed.responses)
        };
        let refused = stream.on_request(&nack(
            LISTENER,
            &[],
            &listener.version_info,
            &listener.nonce,
        ));
        assert!(!in_sync(&refused));
        let ack = stream.on_request(&acking(cluster));
        assert!(!in_sync(&ack), "{:?}", ack.events);
        assert!(!stream.in_sync());
    }

    #[test]
    fn a_proxy_that_reconnects_before_its_snapshot_is_ready_gets_no_push_of_what_it_has() {
        let current = snapshot(&[(CLUSTER, "checkout", "a"), (LISTENER, "inbound", "a")]);
        let mut before = Stream::new();
        before.on_snapshot(current.clone());
        let cluster = one(&before.on_request(&request(CLUSTER, &[], "", ""))).clone();
        let listener = one(&before.on_request(&request(LISTENER, &[], "", ""))).clone();
        // A restarted controller: the proxy's requests come before any snapshot is built.
        let mut after = Stream::new();
        for (type_url, sent) in [(CLUSTER, &cluster), (LISTENER, &listener)] {
            let resumed = after.on_request(&request(type_url, &[], &sent.version_info, ""));
            assert!(resumed.responses.is_empty());
        }
        let built = after.on_snapshot(current);
        assert!(built.responses.is_empty(), "{:?}", built.responses);
        assert_eq!(
            built.events,
            [Event::InSync],
            "it runs its snapshot already"
        );
        // A real change afterwards is sent.
        let changed = after.on_snapshot(snapshot(&[
            (CLUSTER, "checkout", "b"),
            (LISTENER, "inbound", "a"),
        ]));
        assert_eq!(one(&changed).type_url, CLUSTER);
    }

    #[test]
    fn a_nack_is_recorded_and_never_answered_with_the_same_version() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(LISTENER, "inbound", "good")]));
        let good = one(&stream.on_request(&request(LISTENER, &[], "", ""))).clone();
        stream.on_request(&request(LISTENER, &[], &good.version_info, &good.nonce));
        let bad = one(&stream.on_snapshot(snapshot(&[(LISTENER, "inbound", "bad")]))).clone();
        let refused = stream.on_request(&nack(LISTENER, &[], &good.version_info, &bad.nonce));
        assert!(refused.responses.is_empty(), "a NACK is not answered");
        assert_eq!(
            refused.events,
            vec![Event::Nack {
                type_url: LISTENER.to_owned(),
                version: bad.version_info.clone(),
                error: "Unable to create Wasm plugin weft".to_owned(),
            }]
        );
        // The same bad content again (a rebuild): still not sent.
        assert!(
            stream
                .on_snapshot(snapshot(&[(LISTENER, "inbound", "bad")]))
                .responses
                .is_empty()
        );
        let status = &stream.status()[0];
        assert_eq!(status.acked.as_deref(), Some(good.version_info.as_str()));
        assert_eq!(
            status.nacked.as_ref().map(|n| n.0.as_str()),
            Some(bad.version_info.as_str())
        );
        // A fix is sent.
        let fixed = stream.on_snapshot(snapshot(&[(LISTENER, "inbound", "fixed")]));
        assert_ne!(one(&fixed).version_info, bad.version_info);
    }

    #[test]
    fn a_stale_nonce_is_ignored() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(CLUSTER, "a", "1")]));
        let first = one(&stream.on_request(&request(CLUSTER, &[], "", ""))).clone();
        let second = one(&stream.on_snapshot(snapshot(&[(CLUSTER, "a", "2")]))).clone();
        // The ACK of the first response arrives after the second was sent (an update racing an
        // ACK): it is stale, changes nothing and sends nothing.
        let late = stream.on_request(&request(CLUSTER, &[], &first.version_info, &first.nonce));
        assert!(late.responses.is_empty());
        assert!(matches!(late.events[..], [Event::StaleNonce { .. }]));
        assert_eq!(stream.status()[0].acked, None);
        // Even a stale NACK is not recorded.
        let late_nack = stream.on_request(&nack(CLUSTER, &[], "", &first.nonce));
        assert!(matches!(late_nack.events[..], [Event::StaleNonce { .. }]));
        assert_eq!(stream.status()[0].nacked, None);
        let ack = stream.on_request(&request(CLUSTER, &[], &second.version_info, &second.nonce));
        assert!(matches!(ack.events[..], [Event::Ack { .. }, Event::InSync]));
    }

    #[test]
    fn a_request_naming_a_nonce_never_sent_subscribes_to_nothing() {
        // Found by the fuzz target: such a request for a type never subscribed used to leave
        // an empty subscription behind, and the next snapshot pushed an empty cluster list.
        let mut stream = Stream::new();
        let unknown = stream.on_request(&request(CLUSTER, &["*"], "", "42"));
        assert!(matches!(unknown.events[..], [Event::StaleNonce { .. }]));
        assert!(stream.status().is_empty());
        let output = stream.on_snapshot(snapshot(&[(CLUSTER, "a", "1")]));
        assert!(output.responses.is_empty(), "{:?}", output.responses);
    }

    #[test]
    fn content_the_proxy_refused_is_not_sent_again_when_it_comes_back() {
        // Found by the fuzz target: only the latest refused version was remembered.
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(CLUSTER, "a", "bad")]));
        let bad = one(&stream.on_request(&request(CLUSTER, &[], "", ""))).clone();
        stream.on_request(&nack(CLUSTER, &[], "", &bad.nonce));
        let other = one(&stream.on_snapshot(snapshot(&[(CLUSTER, "a", "also bad")]))).clone();
        stream.on_request(&nack(CLUSTER, &[], "", &other.nonce));
        let back = stream.on_snapshot(snapshot(&[(CLUSTER, "a", "bad")]));
        assert!(back.responses.is_empty(), "{:?}", back.responses);
        let good = stream.on_snapshot(snapshot(&[(CLUSTER, "a", "good")]));
        assert_eq!(one(&good).resources.len(), 1);
    }

    #[test]
    fn a_new_subscription_that_names_no_version_gets_the_current_state() {
        // Found by the fuzz target: the version the proxy ACKed earlier on the stream was
        // taken as what it has, though it had been sent another since and now named none.
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1")]));
        let all = one(&stream.on_request(&request(CLUSTER, &[], "", ""))).clone();
        let ack_and_narrow = request(CLUSTER, &["a"], &all.version_info, &all.nonce);
        assert_eq!(one(&stream.on_request(&ack_and_narrow)).resources.len(), 1);
        let again = stream.on_request(&request(CLUSTER, &[], "", ""));
        assert_eq!(one(&again).version_info, all.version_info);
    }

    #[test]
    fn a_subscription_change_sends_the_resources_now_named() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "2")]));
        let first = one(&stream.on_request(&request(ENDPOINT, &["a"], "", ""))).clone();
        assert_eq!(first.resources.len(), 1);
        let more = stream.on_request(&request(
            ENDPOINT,
            &["a", "b"],
            &first.version_info,
            &first.nonce,
        ));
        // Only what it lacks: it holds "a" as it is.
        assert_eq!(one(&more).resources, vec![Arc::new(resource("b", "2"))]);
        // The same names again with the new nonce: an ACK, nothing to send.
        let sent = one(&more).clone();
        let ack = stream.on_request(&request(
            ENDPOINT,
            &["a", "b"],
            &sent.version_info,
            &sent.nonce,
        ));
        assert!(ack.responses.is_empty());
        // A change to a resource nobody asked for sends nothing.
        let mut all = Snapshot::new();
        for (name, content) in [("a", "1"), ("b", "2"), ("c", "3")] {
            all.insert(ENDPOINT, resource(name, content));
        }
        assert!(stream.on_snapshot(Arc::new(all)).responses.is_empty());
    }

    #[test]
    fn a_request_for_a_resource_the_snapshot_lacks_is_reported_and_not_served() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(
            SECRET,
            "spiffe://cluster.local/ns/shop/sa/api",
            "cert",
        )]));
        let output = stream.on_request(&request(
            SECRET,
            &["spiffe://cluster.local/ns/shop/sa/admin"],
            "",
            "",
        ));
        assert_eq!(
            output.events,
            vec![Event::Missing {
                type_url: SECRET.to_owned(),
                names: vec!["spiffe://cluster.local/ns/shop/sa/admin".to_owned()],
                count: 1,
            }]
        );
        assert!(one(&output).resources.is_empty());
    }

    #[test]
    fn a_cluster_change_the_proxy_applies_is_followed_by_its_endpoints_even_unchanged() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(CLUSTER, "a", "1"), (ENDPOINT, "a", "e")]));
        let clusters = one(&stream.on_request(&request(CLUSTER, &[], "", ""))).clone();
        // Envoy asks for the endpoints of the clusters it got once it applied them.
        assert!(stream.on_request(&acking(&clusters)).responses.is_empty());
        let endpoints = one(&stream.on_request(&request(ENDPOINT, &["a"], "", ""))).clone();
        assert!(
            stream
                .on_request(&request(
                    ENDPOINT,
                    &["a"],
                    &endpoints.version_info,
                    &endpoints.nonce
                ))
                .responses
                .is_empty()
        );
        // The cluster changes, its endpoints do not: only the cluster is pushed...
        let changed = stream.on_snapshot(snapshot(&[(CLUSTER, "a", "2"), (ENDPOINT, "a", "e")]));
        let clusters = one(&changed).clone();
        assert_eq!(clusters.type_url, CLUSTER);
        // ...Envoy warms the new cluster and asks for its endpoints again, repeating its last
        // acknowledgement (it acknowledges the clusters only once they warmed): it gets them.
        let asked_again = request(ENDPOINT, &["a"], &endpoints.version_info, &endpoints.nonce);
        let warmed = stream.on_request(&asked_again);
        let again = one(&warmed);
        assert_eq!(again.type_url, ENDPOINT);
        assert_eq!(again.version_info, endpoints.version_info);
        assert_ne!(again.nonce, endpoints.nonce);
        // Once: the endpoints' ACK, and the clusters' ACK, send nothing more.
        let ack = request(ENDPOINT, &["a"], &again.version_info, &again.nonce);
        assert!(stream.on_request(&ack).responses.is_empty());
        assert!(stream.on_request(&acking(&clusters)).responses.is_empty());
        // A request repeated with nothing to warm is an acknowledgement like any other.
        assert!(stream.on_request(&ack).responses.is_empty());
        // Had the proxy acknowledged the clusters first, that would have brought them.
        let changed = stream.on_snapshot(snapshot(&[(CLUSTER, "a", "4"), (ENDPOINT, "a", "e")]));
        assert_eq!(
            one(&stream.on_request(&acking(one(&changed)))).type_url,
            ENDPOINT
        );
        // When the endpoints changed with the clusters, they were pushed behind them: nothing
        // more after the clusters' ACK.
        let both = stream.on_snapshot(snapshot(&[(CLUSTER, "a", "3"), (ENDPOINT, "a", "f")]));
        assert_eq!(both.responses.len(), 2);
        assert!(
            stream
                .on_request(&acking(&both.responses[0]))
                .responses
                .is_empty()
        );
    }

    #[test]
    fn a_warm_up_sends_the_endpoints_of_the_clusters_that_changed_and_of_new_names() {
        let mut stream = Stream::new();
        let mesh = |a: &'static str, b: &'static str, c: Option<&'static str>| {
            let mut entries = vec![
                (CLUSTER, "a", a),
                (CLUSTER, "b", b),
                (ENDPOINT, "a", "ea"),
                (ENDPOINT, "b", "eb"),
            ];
            if let Some(c) = c {
                entries.extend([(CLUSTER, "c", c), (ENDPOINT, "c", "ec")]);
            }
            snapshot(&entries)
        };
        stream.on_snapshot(mesh("1", "1", None));
        let clusters = one(&stream.on_request(&request(CLUSTER, &[], "", ""))).clone();
        let endpoints = one(&stream.on_request(&request(ENDPOINT, &["a", "b"], "", ""))).clone();
        assert_eq!(endpoints.resources.len(), 2);
        stream.on_request(&acking(&clusters));
        stream.on_request(&request(
            ENDPOINT,
            &["a", "b"],
            &endpoints.version_info,
            &endpoints.nonce,
        ));
        // Cluster "a" changes (its endpoints do not): its warm-up gets "a"'s endpoints only.
        let changed = one(&stream.on_snapshot(mesh("2", "1", None))).clone();
        let warmed = stream.on_request(&request(
            ENDPOINT,
            &["a", "b"],
            &endpoints.version_info,
            &endpoints.nonce,
        ));
        let warm = one(&warmed).clone();
        assert_eq!(warm.resources, vec![Arc::new(resource("a", "ea"))]);
        stream.on_request(&request(
            ENDPOINT,
            &["a", "b"],
            &warm.version_info,
            &warm.nonce,
        ));
        stream.on_request(&acking(&changed));
        // Cluster "b" changes and "c" is new, in one push: the subscription that adds "c" gets
        // "c"'s endpoints and those of the warming "b".
        let pushed = one(&stream.on_snapshot(mesh("2", "2", Some("1")))).clone();
        let subscribed = stream.on_request(&request(
            ENDPOINT,
            &["a", "b", "c"],
            &warm.version_info,
            &warm.nonce,
        ));
        let sent = one(&subscribed);
        assert_eq!(
            sent.resources,
            vec![Arc::new(resource("b", "eb")), Arc::new(resource("c", "ec"))]
        );
        // Nothing left to warm: the clusters' ACK brings nothing.
        stream.on_request(&request(
            ENDPOINT,
            &["a", "b", "c"],
            &sent.version_info,
            &sent.nonce,
        ));
        assert!(stream.on_request(&acking(&pushed)).responses.is_empty());
    }

    #[test]
    fn a_request_made_before_the_snapshot_existed_is_judged_when_it_comes() {
        let mut stream = Stream::new();
        let early = stream.on_request(&request(
            SECRET,
            &["spiffe://cluster.local/ns/shop/sa/admin"],
            "",
            "",
        ));
        assert!(early.events.is_empty() && early.responses.is_empty());
        let output = stream.on_snapshot(snapshot(&[(
            SECRET,
            "spiffe://cluster.local/ns/shop/sa/api",
            "cert",
        )]));
        assert_eq!(
            output.events[0],
            Event::Missing {
                type_url: SECRET.to_owned(),
                names: vec!["spiffe://cluster.local/ns/shop/sa/admin".to_owned()],
                count: 1,
            }
        );
        // A later snapshot does not report it again.
        let later = stream.on_snapshot(snapshot(&[(
            SECRET,
            "spiffe://cluster.local/ns/shop/sa/api",
            "cert2",
        )]));
        assert!(
            !later
                .events
                .iter()
                .any(|e| matches!(e, Event::Missing { .. })),
            "{:?}",
            later.events
        );
    }

    #[test]
    fn a_request_for_many_names_reports_a_few_and_the_count_and_too_many_end_the_stream() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(SECRET, "mine", "cert")]));
        let names: Vec<String> = (0..MAX_RESOURCE_NAMES)
            .map(|i| format!("n{i:05}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let output = stream.on_request(&request(SECRET, &refs, "", ""));
        match &output.events[0] {
            Event::Missing { names, count, .. } => {
                assert_eq!(names.len(), MISSING_NAMED);
                assert_eq!(*count, MAX_RESOURCE_NAMES);
            }
            other => panic!("{other:?}"),
        }
        assert!(output.end.is_none());
        let mut more = refs.clone();
        more.push("one-too-many");
        let output = stream.on_request(&request(SECRET, &more, "", ""));
        assert_eq!(
            output.events,
            vec![Event::TooManyNames {
                type_url: SECRET.to_owned(),
                count: MAX_RESOURCE_NAMES + 1
            }]
        );
        assert!(output.end.is_some() && output.responses.is_empty());
    }

    #[test]
    fn a_reconnecting_proxy_gets_its_current_state_and_one_that_has_it_gets_no_push() {
        let current = snapshot(&[(LISTENER, "inbound", "a")]);
        let mut before = Stream::new();
        before.on_snapshot(current.clone());
        let sent = one(&before.on_request(&request(LISTENER, &[], "", ""))).clone();
        // A new stream (controller restart, or proxy reconnect) from a proxy at that version.
        let mut after = Stream::new();
        after.on_snapshot(current.clone());
        let resumed = after.on_request(&request(LISTENER, &[], &sent.version_info, ""));
        assert!(resumed.responses.is_empty(), "no push storm on reconnect");
        assert_eq!(
            resumed.events,
            vec![
                Event::Ack {
                    type_url: LISTENER.to_owned(),
                    version: sent.version_info.clone()
                },
                Event::InSync
            ],
            "the version the proxy has is reported as applied"
        );
        // One that has an older version gets the current one.
        let mut behind = Stream::new();
        behind.on_snapshot(current);
        let caught_up = behind.on_request(&request(LISTENER, &[], "older", ""));
        assert_eq!(one(&caught_up).version_info, sent.version_info);
        // And the resumed stream still pushes later changes.
        let changed = after.on_snapshot(snapshot(&[(LISTENER, "inbound", "b")]));
        assert_ne!(one(&changed).version_info, sent.version_info);
    }

    #[test]
    fn a_change_is_pushed_clusters_first_routes_last() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[]));
        for type_url in [ROUTE, LISTENER, SECRET, ENDPOINT, CLUSTER] {
            let names: &[&str] = if is_wildcard_type(type_url) {
                &[]
            } else {
                &["x"]
            };
            let output = stream.on_request(&request(type_url, names, "", ""));
            let sent = one(&output).clone();
            stream.on_request(&request(type_url, names, &sent.version_info, &sent.nonce));
        }
        let output = stream.on_snapshot(snapshot(&[
            (ROUTE, "x", "1"),
            (LISTENER, "x", "1"),
            (SECRET, "x", "1"),
            (ENDPOINT, "x", "1"),
            (CLUSTER, "x", "1"),
        ]));
        let order: Vec<&str> = output
            .responses
            .iter()
            .map(|r| r.type_url.as_str())
            .collect();
        assert_eq!(order, vec![CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE]);
    }

    #[test]
    fn a_change_of_endpoints_sends_only_the_assignments_that_changed_and_after_a_nack_all() {
        let mut stream = Stream::new();
        let names = ["a", "b", "c"];
        let v1 = snapshot(&[
            (ENDPOINT, "a", "a1"),
            (ENDPOINT, "b", "b1"),
            (ENDPOINT, "c", "c1"),
        ]);
        stream.on_snapshot(v1);
        let first = stream.on_request(&request(ENDPOINT, &names, "", ""));
        let sent = one(&first).clone();
        assert_eq!(sent.resources.len(), 3, "a first request gets them all");
        stream.on_request(&request(ENDPOINT, &names, &sent.version_info, &sent.nonce));
        let v2 = snapshot(&[
            (ENDPOINT, "a", "a1"),
            (ENDPOINT, "b", "b2"),
            (ENDPOINT, "c", "c1"),
        ]);
        let changed = stream.on_snapshot(v2.clone());
        let delta = one(&changed).clone();
        assert_eq!(delta.resources, vec![Arc::new(resource("b", "b2"))]);
        assert_eq!(
            delta.version_info,
            set_version(v2.resources(ENDPOINT).unwrap().values().map(AsRef::as_ref)),
            "the version names the whole set"
        );
        // Refused: the next change sends everything.
        stream.on_request(&nack(ENDPOINT, &names, &sent.version_info, &delta.nonce));
        let v3 = snapshot(&[
            (ENDPOINT, "a", "a3"),
            (ENDPOINT, "b", "b2"),
            (ENDPOINT, "c", "c1"),
        ]);
        let after_nack = stream.on_snapshot(v3);
        let all = one(&after_nack).clone();
        assert_eq!(all.resources.len(), 3);
        stream.on_request(&request(ENDPOINT, &names, &all.version_info, &all.nonce));
        // A new subscription gets every resource it names.
        let subscribed = stream.on_request(&request(
            ENDPOINT,
            &["a", "b"],
            &all.version_info,
            &all.nonce,
        ));
        assert_eq!(one(&subscribed).resources.len(), 2);
    }

    #[test]
    fn other_types_are_sent_whole_on_a_change() {
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(ROUTE, "a", "a1"), (ROUTE, "b", "b1")]));
        let first = stream.on_request(&request(ROUTE, &["a", "b"], "", ""));
        let sent = one(&first).clone();
        stream.on_request(&request(
            ROUTE,
            &["a", "b"],
            &sent.version_info,
            &sent.nonce,
        ));
        let changed = stream.on_snapshot(snapshot(&[(ROUTE, "a", "a1"), (ROUTE, "b", "b2")]));
        assert_eq!(one(&changed).resources.len(), 2);
    }

    #[test]
    fn endpoints_a_new_subscription_did_not_send_are_sent_whole_with_the_next_change() {
        // Found by the fuzz target: b's only version was refused, so the proxy never applied
        // it; a later change of a alone must bring b too.
        let mut stream = Stream::new();
        stream.on_snapshot(snapshot(&[(ENDPOINT, "a", "a1"), (ENDPOINT, "b", "b1")]));
        let both = one(&stream.on_request(&request(ENDPOINT, &["a", "b"], "", ""))).clone();
        let only_a = stream.on_request(&nack(ENDPOINT, &["a"], "", &both.nonce));
        let only_a = one(&only_a).clone();
        stream.on_request(&request(
            ENDPOINT,
            &["a"],
            &only_a.version_info,
            &only_a.nonce,
        ));
        let again = stream.on_request(&request(
            ENDPOINT,
            &["a", "b"],
            &only_a.version_info,
            &only_a.nonce,
        ));
        assert!(
            again.responses.is_empty(),
            "the refused version is not sent again"
        );
        let changed = stream.on_snapshot(snapshot(&[(ENDPOINT, "a", "a2"), (ENDPOINT, "b", "b1")]));
        assert_eq!(
            one(&changed).resources,
            vec![Arc::new(resource("a", "a2")), Arc::new(resource("b", "b1"))]
        );
    }
}
