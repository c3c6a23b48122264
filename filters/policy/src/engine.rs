//! Decisions: the engine is built once from a [`PluginConfig`] (regexes compiled, sources
//! indexed) and then answers per request without allocating on the allow path: may this
//! caller make this HTTP request or open this TCP connection, and which backend of a
//! TrafficSplit gets this request. Every answer carries its reason.

use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use crate::bundle::{AccessMode, AccessPolicy, Allows, Grant, SplitTable, StickyKey};
use crate::config::PluginConfig;
use crate::lookup::{LookupMap, host_key};
use crate::matcher::Matcher;
#[cfg(feature = "authoring")]
use crate::matcher::MatcherError;
use crate::metrics::MetricsTable;
use crate::path::{NotNormal, path_only};
use crate::wire::MatchAutomata;

/// Why a configuration cannot be turned into an engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A regex that does not compile.
    #[error("{field}: invalid regex: {reason}")]
    Regex {
        /// Path of the field.
        field: String,
        /// The regex error.
        reason: String,
    },
    /// An index pointing past the end of a list.
    #[error("{field}: index {index} is out of range; there are {len} {list}")]
    Index {
        /// Path of the field.
        field: String,
        /// The index found.
        index: u32,
        /// Length of the list.
        len: usize,
        /// Name of the list.
        list: &'static str,
    },
    /// An invalid `metrics` section.
    #[error("{0}")]
    Metrics(crate::metrics::MetricsError),
    /// Compiled automata that do not belong to the match they are given for.
    #[error("{field}: the compiled regexes do not fit the match's regexes")]
    Automata {
        /// Path of the match.
        field: String,
    },
    /// A name that cannot be what the field says it is.
    #[error(
        "{field}: {value:?} is not a valid {what} name; use letters, digits and !#$%&'*+-.^_`|~ only"
    )]
    Name {
        /// Path of the field.
        field: String,
        /// The name found.
        value: String,
        /// `header` or `cookie`.
        what: &'static str,
    },
}

impl EngineError {
    /// Path of the field at fault.
    pub fn field(&self) -> &str {
        match self {
            EngineError::Regex { field, .. }
            | EngineError::Index { field, .. }
            | EngineError::Automata { field }
            | EngineError::Name { field, .. } => field,
            EngineError::Metrics(err) => err.field(),
        }
    }

    /// What is wrong with the field, without its path.
    pub fn reason(&self) -> String {
        let message = self.to_string();
        message
            .strip_prefix(self.field())
            .and_then(|rest| rest.strip_prefix(": "))
            .unwrap_or(&message)
            .to_owned()
    }
}

/// Read access to a request's headers.
pub trait Headers {
    /// The value of header `name` (any letter case), if present. A header that appears several
    /// times reads as all its values joined with `,` in order, as Envoy's RBAC filter reads it
    /// (and as HTTP defines a repeated field): a rule cannot be passed with one value while
    /// the application also receives another.
    fn header(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// Joins the values `matching` yields with `,`, borrowing when there is only one.
pub fn join_values<'v>(mut matching: impl Iterator<Item = &'v str>) -> Option<Cow<'v, str>> {
    let first = matching.next()?;
    match matching.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for value in matching {
                joined.push(',');
                joined.push_str(value);
            }
            Some(Cow::Owned(joined))
        }
    }
}

impl Headers for [(String, String)] {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        join_values(
            self.iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str()),
        )
    }
}

impl Headers for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().header(name)
    }
}

/// The facts about an HTTP request that a decision reads.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a, H: Headers + ?Sized> {
    /// The caller's verified SPIFFE ID; `None` without a verified certificate.
    pub source: Option<&'a str>,
    /// `:method`.
    pub method: &'a str,
    /// `:path`; a query string or fragment is ignored.
    pub path: &'a str,
    /// Destination port.
    pub port: u16,
    /// Request headers.
    pub headers: &'a H,
}

/// An access decision with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision<'a> {
    /// The request or connection may pass.
    Allow {
        /// `namespace/name` of the TrafficTarget that allowed it.
        traffic_target: Cow<'a, str>,
        /// Index of its rule.
        rule: u32,
        /// `namespace/name` of the route the rule names.
        route: Cow<'a, str>,
        /// `namespace/group/match` of the HTTP match, for HTTPRouteGroup rules.
        #[serde(skip_serializing_if = "Option::is_none")]
        http_match: Option<Cow<'a, str>>,
    },
    /// A caller without a verified identity, on a port where the policy allows such callers.
    AllowUnauthenticated {
        /// The destination port.
        port: u16,
    },
    /// It may not.
    Deny {
        /// Why not.
        reason: DenyReason<'a>,
    },
}

impl Decision<'_> {
    /// Whether the decision allows.
    pub fn is_allowed(&self) -> bool {
        matches!(
            self,
            Decision::Allow { .. } | Decision::AllowUnauthenticated { .. }
        )
    }

    /// The decision with its own copy of every name (to keep it past the engine).
    pub fn into_owned(self) -> Decision<'static> {
        let owned = |text: Cow<'_, str>| Cow::Owned(text.into_owned());
        match self {
            Decision::Allow {
                traffic_target,
                rule,
                route,
                http_match,
            } => Decision::Allow {
                traffic_target: owned(traffic_target),
                rule,
                route: owned(route),
                http_match: http_match.map(owned),
            },
            Decision::AllowUnauthenticated { port } => Decision::AllowUnauthenticated { port },
            Decision::Deny { reason } => Decision::Deny {
                reason: match reason {
                    DenyReason::NoAccessPolicy => DenyReason::NoAccessPolicy,
                    DenyReason::Unauthenticated => DenyReason::Unauthenticated,
                    DenyReason::NoTrafficTarget { source } => DenyReason::NoTrafficTarget {
                        source: owned(source),
                    },
                    DenyReason::NoMatchingRule {
                        source,
                        traffic_targets,
                    } => DenyReason::NoMatchingRule {
                        source: owned(source),
                        traffic_targets: traffic_targets.into_iter().map(owned).collect(),
                    },
                    DenyReason::PathNotNormal { path, problem } => DenyReason::PathNotNormal {
                        path: owned(path),
                        problem: NotNormal {
                            problem: problem.problem,
                            part: owned(problem.part),
                        },
                    },
                },
            },
        }
    }
}

/// Why a request or connection is denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DenyReason<'a> {
    /// The configuration has no access policy (the feature is off, so nothing is allowed).
    NoAccessPolicy,
    /// The caller presented no verified identity.
    Unauthenticated,
    /// No TrafficTarget lists the caller as a source.
    NoTrafficTarget {
        /// The caller.
        source: Cow<'a, str>,
    },
    /// TrafficTargets list the caller, but none of their rules matches.
    NoMatchingRule {
        /// The caller.
        source: Cow<'a, str>,
        /// The TrafficTargets that list the caller.
        traffic_targets: Vec<Cow<'a, str>>,
    },
    /// The request's path is not in normal form, so the application could serve another path
    /// than the one the policy would judge ([`crate::path`]).
    PathNotNormal {
        /// The path, as the request gave it.
        path: Cow<'a, str>,
        /// What is not normal about it.
        #[serde(flatten)]
        problem: NotNormal<'a>,
    },
}

impl std::fmt::Display for DenyReason<'_> {
    /// The sentence a denied caller reads (in a 403 body or a gRPC message) and the log repeats.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyReason::NoAccessPolicy => {
                f.write_str("this workload has no access policy, so no TrafficTarget allows any caller")
            }
            DenyReason::Unauthenticated => f.write_str(
                "the caller presented no verified client certificate, and no TrafficTarget allows a caller without an identity",
            ),
            DenyReason::NoTrafficTarget { source } => {
                write!(f, "no TrafficTarget allows {source}: none lists it as a source")
            }
            DenyReason::NoMatchingRule {
                source,
                traffic_targets,
            } => write!(
                f,
                "no TrafficTarget allows {source} this request: {} list it as a source, but no rule matches",
                traffic_targets.join(", ")
            ),
            DenyReason::PathNotNormal { path, problem } => write!(
                f,
                "the path {path} is not in normal form, so no TrafficTarget can judge it: {problem}"
            ),
        }
    }
}

/// Where a request for a split's root service goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "routing", rename_all = "snake_case")]
pub enum Routing<'a> {
    /// The host is not the root service of any TrafficSplit.
    NotSplit,
    /// A backend was chosen.
    Backend {
        /// `namespace/name` of the TrafficSplit.
        traffic_split: &'a str,
        /// The backend service, `name.namespace`.
        service: &'a str,
    },
    /// The request goes to the root service itself.
    Root {
        /// `namespace/name` of the TrafficSplit.
        traffic_split: &'a str,
        /// The root service, `name.namespace`.
        service: &'a str,
        /// Why no backend was chosen.
        why: RootReason,
    },
}

/// Why a split request goes to its root service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootReason {
    /// The TrafficSplit has `matches` and the request matches none of them.
    NotMatched,
    /// No backend has a weight above 0 and a port of the root service.
    NoEligibleBackend,
}

impl std::fmt::Display for RootReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RootReason::NotMatched => "the request matches none of the TrafficSplit's matches",
            RootReason::NoEligibleBackend => {
                "no backend has a weight above 0 and a port of the root service"
            }
        })
    }
}

struct CompiledMatch {
    name: String,
    path: Option<Matcher>,
    methods: Vec<String>,
    headers: Vec<(String, Matcher)>,
}

impl CompiledMatch {
    /// Whether `request`, whose path without its query is `path`, matches.
    fn matches<H: Headers + ?Sized>(&self, request: &HttpRequest<'_, H>, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == request.method))
            && self.path.as_ref().is_none_or(|regex| regex.is_match(path))
            && self.headers.iter().all(|(name, value)| {
                request
                    .headers
                    .header(name)
                    .is_some_and(|actual| value.is_match(&actual))
            })
    }
}

struct CompiledAccess {
    mode: AccessMode,
    /// Whether any decision depends on the destination port.
    reads_port: bool,
    unauthenticated_ports: Vec<u16>,
    /// Lower-case names of the headers that access matches read.
    header_names: Vec<String>,
    grants: Vec<Grant>,
    /// SPIFFE ID to indexes into `grants`.
    sources: LookupMap<Vec<u32>>,
}

struct CompiledSplit {
    table: SplitTable,
    cumulative: Vec<u128>,
    /// Lower-case names of the request headers this split's decision reads.
    header_names: Vec<String>,
    /// The sticky key, with a header name in lower case.
    sticky: Option<StickyKey>,
}

/// The decision engine of one plugin configuration.
pub struct Engine {
    matches: Vec<CompiledMatch>,
    access: Option<CompiledAccess>,
    splits: Vec<CompiledSplit>,
    hosts: LookupMap<usize>,
    metrics: Option<MetricsTable>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("matches", &self.matches.len())
            .field(
                "access",
                &self.access.as_ref().map(|access| access.grants.len()),
            )
            .field("splits", &self.splits.len())
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

#[cfg(feature = "authoring")]
fn regex_error(field: String) -> impl FnOnce(MatcherError) -> EngineError {
    move |err| EngineError::Regex {
        field,
        reason: err.to_string(),
    }
}

fn check_index(
    field: impl Fn() -> String,
    index: u32,
    len: usize,
    list: &'static str,
) -> Result<(), EngineError> {
    if (index as usize) < len {
        Ok(())
    } else {
        Err(EngineError::Index {
            field: field(),
            index,
            len,
            list,
        })
    }
}

impl Engine {
    #[cfg(feature = "authoring")]
    /// Builds the engine: compiles every regex once (paths anchored at the start, header
    /// values matched whole) and indexes sources and hosts.
    ///
    /// # Errors
    /// An [`EngineError`] naming the field of the first invalid regex or index.
    pub fn new(config: &PluginConfig) -> Result<Self, EngineError> {
        let mut automata = Vec::with_capacity(config.http_matches.len());
        for (i, spec) in config.http_matches.iter().enumerate() {
            let path = match &spec.path_regex {
                Some(pattern) => Some(
                    Matcher::path(pattern)
                        .map_err(regex_error(format!("http_matches[{i}].path_regex")))?,
                ),
                None => None,
            };
            let mut headers = Vec::with_capacity(spec.headers.len());
            for (name, pattern) in &spec.headers {
                headers.push(
                    Matcher::header(pattern)
                        .map_err(regex_error(format!("http_matches[{i}].headers.{name}")))?,
                );
            }
            automata.push(MatchAutomata { path, headers });
        }
        Self::with_automata(config, automata)
    }

    /// Builds the engine of a compiled bundle ([`crate::wire`]), whose regexes come compiled:
    /// `automata[i]` holds the automata of `config.http_matches[i]`, in the spec's order.
    ///
    /// # Errors
    /// An [`EngineError`] naming the field of the first invalid index, or of a match whose
    /// automata do not fit its regexes.
    pub fn with_automata(
        config: &PluginConfig,
        automata: Vec<MatchAutomata>,
    ) -> Result<Self, EngineError> {
        if automata.len() != config.http_matches.len() {
            return Err(EngineError::Automata {
                field: "http_matches".to_owned(),
            });
        }
        let matches = compile_matches(config, automata)?;
        let access = config
            .access
            .as_ref()
            .map(|policy| compile_access(policy, &matches))
            .transpose()?;
        let (splits, hosts) = compile_splits(config, &matches)?;
        let metrics = config
            .metrics
            .as_ref()
            .map(|metrics| MetricsTable::new(metrics, config.identity.as_ref()))
            .transpose()
            .map_err(EngineError::Metrics)?;
        Ok(Self {
            matches,
            access,
            splits,
            hosts,
            metrics,
        })
    }

    /// Whether the configuration enables access control.
    pub fn has_access_policy(&self) -> bool {
        self.access.is_some()
    }

    /// The access mode, or `None` when the configuration has no access policy.
    pub fn access_mode(&self) -> Option<AccessMode> {
        self.access.as_ref().map(|access| access.mode)
    }

    /// Whether access decisions depend on the destination port, so that an adapter asks its
    /// proxy for the port only when it matters (any port passes otherwise).
    pub fn access_reads_port(&self) -> bool {
        self.access.as_ref().is_some_and(|access| access.reads_port)
    }

    /// Lower-case names of the request headers that access decisions read, so that an adapter
    /// fetches only those from its proxy.
    pub fn access_header_names(&self) -> &[String] {
        self.access
            .as_ref()
            .map_or(&[], |access| access.header_names.as_slice())
    }

    /// The access decision for an HTTP request. A request whose path is not in normal form
    /// ([`crate::path::check`]) is denied whoever sends it: the application might serve it as
    /// another path than the one a rule would allow.
    pub fn decide_http<'e, H: Headers + ?Sized>(
        &'e self,
        request: &HttpRequest<'e, H>,
    ) -> Decision<'e> {
        if self.access.is_some()
            && let Err(problem) = crate::path::check(request.path)
        {
            return Decision::Deny {
                reason: DenyReason::PathNotNormal {
                    path: Cow::Borrowed(request.path),
                    problem,
                },
            };
        }
        let path = path_only(request.path);
        self.decide(request.source, request.port, |grant| match &grant.allows {
            Allows::Http {
                route_group,
                matches,
            } => matches
                .iter()
                .filter_map(|i| self.matches.get(*i as usize))
                .find(|m| m.matches(request, path))
                .map(|m| (route_group.as_str(), Some(m.name.as_str()))),
            Allows::Tcp { route, ports } => (ports.is_empty() || ports.contains(&request.port))
                .then_some((route.as_str(), None)),
            Allows::Udp { .. } => None,
        })
    }

    /// The access decision for a TCP connection to `port`.
    pub fn decide_tcp<'e>(&'e self, source: Option<&'e str>, port: u16) -> Decision<'e> {
        self.decide(source, port, |grant| match &grant.allows {
            Allows::Tcp { route, ports } => {
                (ports.is_empty() || ports.contains(&port)).then_some((route.as_str(), None))
            }
            Allows::Http { .. } | Allows::Udp { .. } => None,
        })
    }

    fn decide<'e>(
        &'e self,
        source: Option<&'e str>,
        port: u16,
        allows: impl Fn(&'e Grant) -> Option<(&'e str, Option<&'e str>)>,
    ) -> Decision<'e> {
        let Some(CompiledAccess {
            grants,
            sources,
            unauthenticated_ports,
            ..
        }) = &self.access
        else {
            return Decision::Deny {
                reason: DenyReason::NoAccessPolicy,
            };
        };
        let Some(source) = source else {
            if unauthenticated_ports.contains(&port) {
                return Decision::AllowUnauthenticated { port };
            }
            return Decision::Deny {
                reason: DenyReason::Unauthenticated,
            };
        };
        let Some(indexes) = sources.get(source) else {
            return Decision::Deny {
                reason: DenyReason::NoTrafficTarget {
                    source: Cow::Borrowed(source),
                },
            };
        };
        for grant in indexes.iter().filter_map(|i| grants.get(*i as usize)) {
            if grant.port.is_some_and(|only| only != port) {
                continue;
            }
            if let Some((route, http_match)) = allows(grant) {
                return Decision::Allow {
                    traffic_target: Cow::Borrowed(&grant.traffic_target),
                    rule: grant.rule,
                    route: Cow::Borrowed(route),
                    http_match: http_match.map(Cow::Borrowed),
                };
            }
        }
        let mut traffic_targets: Vec<Cow<'_, str>> = indexes
            .iter()
            .filter_map(|i| grants.get(*i as usize))
            .map(|g| Cow::Borrowed(g.traffic_target.as_str()))
            .collect();
        traffic_targets.dedup();
        Decision::Deny {
            reason: DenyReason::NoMatchingRule {
                source: Cow::Borrowed(source),
                traffic_targets,
            },
        }
    }

    /// An engine with no feature: every access decision denies, nothing is split or measured.
    pub fn empty() -> Self {
        Self {
            matches: Vec::new(),
            access: None,
            splits: Vec::new(),
            hosts: LookupMap::default(),
            metrics: None,
        }
    }

    /// The metrics feature's table, when the configuration enables it.
    pub fn metrics(&self) -> Option<&MetricsTable> {
        self.metrics.as_ref()
    }

    /// Whether the configuration has split routing.
    pub fn has_splits(&self) -> bool {
        !self.splits.is_empty()
    }

    /// Whether some split decision reads more of a request than its host: the method and path
    /// (the split has `matches`) or a header (of `matches`, or the sticky key). When none does,
    /// an adapter needs only the host to route every request.
    pub fn splits_read_request(&self) -> bool {
        self.splits
            .iter()
            .any(|split| !split.table.matches.is_empty() || !split.header_names.is_empty())
    }

    /// TrafficSplits that can only send to their root service (no backend has a weight above
    /// 0), as `(traffic_split, root service)`, so an adapter can say so once when it loads.
    pub fn splits_without_backends(&self) -> impl Iterator<Item = (&str, &str)> {
        self.splits
            .iter()
            .filter(|split| split.total() == 0)
            .map(|split| {
                (
                    split.table.traffic_split.as_str(),
                    split.table.service.as_str(),
                )
            })
    }

    /// The split whose root service `host` names (any form: short, `name.ns`, `.svc`, the full
    /// cluster domain, with or without a trailing dot or a port), if any.
    pub fn split_for_host(&self, host: &str) -> Option<Split<'_>> {
        let index = *self.hosts.get(host_key(host).as_ref())?;
        let split = self.splits.get(index)?;
        Some(Split {
            engine: self,
            split,
        })
    }

    /// Where a request for `host` goes; `random` is a uniformly random number, used unless the
    /// split is sticky and the request carries its key. See [`Split::route`].
    pub fn route<'e, H: Headers + ?Sized>(
        &'e self,
        host: &str,
        request: &HttpRequest<'_, H>,
        random: u64,
    ) -> Routing<'e> {
        self.split_for_host(host)
            .map_or(Routing::NotSplit, |split| split.route(request, random))
    }
}

// The three steps of `Engine::with_automata` stay functions of their own (`inline(never)`):
// V8 compiles each wasm function whole, and the memory it takes for the largest one stays in
// Envoy's heap afterwards (docs/decisions.md, "Small functions for V8").
/// The bundle's HTTP matches, each with its automata, which must fit its spec.
#[inline(never)]
fn compile_matches(
    config: &PluginConfig,
    automata: Vec<MatchAutomata>,
) -> Result<Vec<CompiledMatch>, EngineError> {
    let mut matches = Vec::with_capacity(config.http_matches.len());
    for (i, (spec, compiled)) in config.http_matches.iter().zip(automata).enumerate() {
        if spec.path_regex.is_some() != compiled.path.is_some()
            || spec.headers.len() != compiled.headers.len()
        {
            return Err(EngineError::Automata {
                field: format!("http_matches[{i}]"),
            });
        }
        matches.push(CompiledMatch {
            name: spec.name.clone(),
            path: compiled.path,
            methods: spec.methods.clone(),
            headers: spec
                .headers
                .iter()
                .map(|(name, _)| name.to_ascii_lowercase())
                .zip(compiled.headers)
                .collect(),
        });
    }
    Ok(matches)
}

/// The access policy, its indexes checked, with the headers its decisions read and whether they
/// read the port.
#[inline(never)]
fn compile_access(
    policy: &AccessPolicy,
    matches: &[CompiledMatch],
) -> Result<CompiledAccess, EngineError> {
    for (g, grant) in policy.grants.iter().enumerate() {
        if let Allows::Http {
            matches: indexes, ..
        } = &grant.allows
        {
            for (m, index) in indexes.iter().enumerate() {
                check_index(
                    || format!("access.grants[{g}].allows.http.matches[{m}]"),
                    *index,
                    matches.len(),
                    "http_matches",
                )?;
            }
        }
    }
    for (source, grants) in &policy.sources {
        for index in grants {
            check_index(
                || format!("access.sources.{source}"),
                *index,
                policy.grants.len(),
                "grants",
            )?;
        }
    }
    let sources = policy
        .sources
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut header_names: Vec<String> = policy
        .grants
        .iter()
        .filter_map(|grant| match &grant.allows {
            Allows::Http { matches: m, .. } => Some(m),
            Allows::Tcp { .. } | Allows::Udp { .. } => None,
        })
        .flatten()
        .filter_map(|index| matches.get(*index as usize))
        .flat_map(|m| m.headers.iter().map(|(name, _)| name.clone()))
        .collect();
    header_names.sort();
    header_names.dedup();
    let reads_port = !policy.unauthenticated_ports.is_empty()
        || policy.grants.iter().any(|grant| {
            grant.port.is_some()
                || matches!(&grant.allows, Allows::Tcp { ports, .. } if !ports.is_empty())
        });
    Ok(CompiledAccess {
        mode: policy.mode,
        reads_port,
        unauthenticated_ports: policy.unauthenticated_ports.clone(),
        header_names,
        grants: policy.grants.clone(),
        sources,
    })
}

/// The TrafficSplits, their indexes and sticky keys checked, and the table from host to split.
#[inline(never)]
fn compile_splits(
    config: &PluginConfig,
    matches: &[CompiledMatch],
) -> Result<(Vec<CompiledSplit>, LookupMap<usize>), EngineError> {
    let mut splits = Vec::with_capacity(config.splits.len());
    let mut hosts = LookupMap::default();
    for (s, table) in config.splits.iter().enumerate() {
        let mut header_names = Vec::new();
        for (m, index) in table.matches.iter().enumerate() {
            check_index(
                || format!("splits[{s}].matches[{m}]"),
                *index,
                matches.len(),
                "http_matches",
            )?;
            if let Some(spec) = matches.get(*index as usize) {
                header_names.extend(spec.headers.iter().map(|(name, _)| name.clone()));
            }
        }
        let sticky = match &table.sticky {
            None => None,
            Some(StickyKey::Header(name)) => {
                let name = name.to_ascii_lowercase();
                check_token(|| format!("splits[{s}].sticky.header"), &name, "header")?;
                header_names.push(name.clone());
                Some(StickyKey::Header(name))
            }
            Some(StickyKey::Cookie(name)) => {
                check_token(|| format!("splits[{s}].sticky.cookie"), name, "cookie")?;
                header_names.push("cookie".to_owned());
                Some(StickyKey::Cookie(name.clone()))
            }
        };
        header_names.sort();
        header_names.dedup();
        for host in &table.hosts {
            hosts.entry(host_key(host).into_owned()).or_insert(s);
        }
        let mut total = 0u128;
        let cumulative = table
            .backends
            .iter()
            .map(|b| {
                total += u128::from(b.weight);
                total
            })
            .collect();
        splits.push(CompiledSplit {
            table: table.clone(),
            cumulative,
            header_names,
            sticky,
        });
    }
    Ok((splits, hosts))
}

impl CompiledSplit {
    fn total(&self) -> u128 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

/// The split routing of one root service, found by [`Engine::split_for_host`].
#[derive(Clone, Copy)]
pub struct Split<'e> {
    engine: &'e Engine,
    split: &'e CompiledSplit,
}

impl std::fmt::Debug for Split<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split")
            .field("traffic_split", &self.split.table.traffic_split)
            .finish_non_exhaustive()
    }
}

impl<'e> Split<'e> {
    /// `namespace/name` of the TrafficSplit.
    pub fn traffic_split(&self) -> &'e str {
        &self.split.table.traffic_split
    }

    /// Whether the decision reads the method and path (the split has `matches`), so that an
    /// adapter asks its proxy for them only then.
    pub fn reads_request_line(&self) -> bool {
        !self.split.table.matches.is_empty()
    }

    /// Lower-case names of the request headers the decision reads (those of `matches`, and the
    /// sticky header or `cookie`), so that an adapter fetches only those.
    pub fn header_names(&self) -> &'e [String] {
        &self.split.header_names
    }

    /// Where the request goes. A request that matches none of the split's `matches` goes to
    /// the root service, as does every request when no backend has a weight above 0. Otherwise
    /// a backend is chosen by weight, with `random` as the roll, or with [`sticky_roll`] of the
    /// sticky key when the split has one and the request carries it.
    pub fn route<H: Headers + ?Sized>(
        &self,
        request: &HttpRequest<'_, H>,
        random: u64,
    ) -> Routing<'e> {
        let split = self.split;
        let table = &split.table;
        let root = |why| Routing::Root {
            traffic_split: &table.traffic_split,
            service: &table.service,
            why,
        };
        let path = path_only(request.path);
        if !table.matches.is_empty()
            && !table
                .matches
                .iter()
                .filter_map(|i| self.engine.matches.get(*i as usize))
                .any(|m| m.matches(request, path))
        {
            return root(RootReason::NotMatched);
        }
        let total = split.total();
        if total == 0 {
            return root(RootReason::NoEligibleBackend);
        }
        let roll = sticky_key_roll(split.sticky.as_ref(), request.headers).unwrap_or(random);
        let point = u128::from(roll) % total;
        let chosen = split.cumulative.partition_point(|edge| *edge <= point);
        match table.backends.get(chosen) {
            Some(backend) => Routing::Backend {
                traffic_split: &table.traffic_split,
                service: &backend.service,
            },
            None => root(RootReason::NoEligibleBackend),
        }
    }
}

/// The roll of the sticky key in `headers`, if the split is sticky and the request has it.
fn sticky_key_roll<H: Headers + ?Sized>(sticky: Option<&StickyKey>, headers: &H) -> Option<u64> {
    let roll = |value: &str| (!value.is_empty()).then(|| sticky_roll(value.as_bytes()));
    match sticky? {
        StickyKey::Header(name) => roll(&headers.header(name)?),
        StickyKey::Cookie(name) => roll(cookie(&headers.header("cookie")?, name)?),
    }
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`), without surrounding quotes;
/// several `cookie` headers joined with `,` are read as one (a cookie value never holds `,`).
pub fn cookie<'c>(header: &'c str, name: &str) -> Option<&'c str> {
    header.split([';', ',']).find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
    })
}

/// An HTTP token (RFC 9110), the rule for header and cookie names.
fn check_token(
    field: impl Fn() -> String,
    name: &str,
    what: &'static str,
) -> Result<(), EngineError> {
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.is_empty() && name.bytes().all(token_char) {
        Ok(())
    } else {
        Err(EngineError::Name {
            field: field(),
            value: name.to_owned(),
            what,
        })
    }
}

/// A stable 64-bit roll from a sticky key (FNV-1a), so the same key keeps choosing the same
/// backend while the weights stay the same.
pub fn sticky_roll(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits are weak for small moduli; fold the high half in.
    hash ^ (hash >> 32)
}
