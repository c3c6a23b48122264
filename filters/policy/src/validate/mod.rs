//! Cross-object checks of a [`Catalog`]: everything a single document cannot tell, reported
//! all at once. Errors make a set unusable (`weft compile` refuses it, so nothing is applied
//! half-way); warnings flag what is legal but probably unintended. docs/decisions.md says why
//! each check is an error or a warning.

mod extension;

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::Catalog;
use crate::diagnostic::{Diagnostic, Severity};
use crate::matcher::Matcher;
use crate::model::{Kind, L4Protocol, Meta, TrafficSplit, TrafficTarget};

/// The methods an HTTPRouteGroup match may list.
pub const METHODS: &[&str] = &[
    "*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The only subject kind SMI defines.
pub const SERVICE_ACCOUNT: &str = "ServiceAccount";

/// What is wrong with an object in the context of the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Two objects of one kind share a namespace and name.
    #[error("another {0} with this namespace and name was already read; names must be unique")]
    Duplicate(Kind),
    /// A TrafficTarget without sources.
    #[error("at least one source is required; a TrafficTarget without sources allows nothing")]
    NoSources,
    /// A TrafficTarget without rules.
    #[error("at least one rule is required; a TrafficTarget without rules allows nothing")]
    NoRules,
    /// A subject kind other than ServiceAccount.
    #[error("kind {0} is not supported; SMI defines only ServiceAccount")]
    SubjectKind(String),
    /// The destination is in another namespace than the TrafficTarget.
    #[error(
        "destination namespace {destination} differs from the TrafficTarget's namespace {object}; create the TrafficTarget in {destination}"
    )]
    DestinationNamespace {
        /// The destination's namespace.
        destination: String,
        /// The object's namespace.
        object: String,
    },
    /// A rule kind that is not a route kind.
    #[error("kind {0} is not a rule kind; use HTTPRouteGroup, TCPRoute or UDPRoute")]
    RuleKind(String),
    /// A reference to an object that is not in the set.
    #[error("{kind} {namespace}/{name} does not exist")]
    Missing {
        /// Kind referenced.
        kind: Kind,
        /// Namespace looked in.
        namespace: String,
        /// Name referenced.
        name: String,
    },
    /// A match name the route group does not have.
    #[error("match {name} does not exist in HTTPRouteGroup {group}; it has: {available}")]
    MissingMatch {
        /// The match name.
        name: String,
        /// namespace/name of the group.
        group: String,
        /// The group's match names.
        available: String,
    },
    /// `matches` on a TCPRoute or UDPRoute rule.
    #[error("matches apply only to HTTPRouteGroup rules; ignored for a {0} rule")]
    MatchesOnPortRule(Kind),
    /// Two matches of one group share a name.
    #[error("match name {0} is used twice in this HTTPRouteGroup; names must be unique")]
    DuplicateMatch(String),
    /// An HTTPRouteGroup without matches.
    #[error("has no matches; rules that name this group allow nothing")]
    NoMatches,
    /// A regex that does not compile.
    #[error("invalid regex: {0}")]
    Regex(String),
    /// A method outside the SMI enum.
    #[error("method {0:?} is not one of {methods}", methods = METHODS.join(", "))]
    Method(String),
    /// A TrafficSplit without backends.
    #[error("at least one backend is required")]
    NoBackends,
    /// A backend listed twice.
    #[error("backend {0} is listed twice; list each backend once with its total weight")]
    DuplicateBackend(String),
    /// Every backend has weight 0.
    #[error(
        "every backend has weight 0, so the split would send nowhere; give a backend a weight above 0 (or remove the TrafficSplit to send everything to the root service)"
    )]
    AllZeroWeights,
    /// The root service listed as its own backend.
    #[error(
        "the root service {0} cannot be its own backend (TrafficSplits are not self-referential)"
    )]
    SelfBackend(String),
    /// A split `matches` reference of a kind other than HTTPRouteGroup.
    #[error("kind {0} cannot select requests; use HTTPRouteGroup")]
    SplitMatchKind(String),
    /// Two TrafficSplits for one root service.
    #[error(
        "TrafficSplit {0} already splits this root service; use one TrafficSplit per root service"
    )]
    SecondSplit(String),
    /// A Service the split names is not in the set: requests may go to a service nobody
    /// declared (a misspelt name), and its ports cannot be checked.
    #[error(
        "Service {0} is not among the manifests: requests will be sent to a service nobody declared here (check the name), and its ports cannot be checked; weft check --strict makes this an error"
    )]
    ServiceNotFound(String),
    /// A path regex that reads like exact paths but also matches longer ones.
    #[error(
        "also matches every longer path that starts with a match{example}, because SMI anchors pathRegex at the start only; to allow exactly the paths it spells, write {anchored:?}",
        example = example.as_ref().map(|e| format!(", such as {e}")).unwrap_or_default()
    )]
    OpenPathRegex {
        /// A longer path it matches, where one is easy to find.
        example: Option<String>,
        /// The pattern anchored at the end.
        anchored: String,
    },
    /// A backend Service with no port of the root Service.
    #[error(
        "Service {backend} has none of the root service's ports ({ports}), so it receives no traffic"
    )]
    NoCommonPort {
        /// The backend Service.
        backend: String,
        /// The root Service's ports.
        ports: String,
    },
}

impl ValidationError {
    fn severity(&self) -> Severity {
        match self {
            ValidationError::MatchesOnPortRule(_)
            | ValidationError::OpenPathRegex { .. }
            | ValidationError::NoMatches
            | ValidationError::ServiceNotFound(_)
            | ValidationError::NoCommonPort { .. } => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

/// Every cross-object problem of `catalog`, in a stable order.
pub fn validate(catalog: &Catalog) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    duplicates(catalog, &mut out);
    extension::validate(catalog, &mut out);
    for target in &catalog.traffic_targets {
        traffic_target(catalog, target, &mut out);
    }
    for group in &catalog.http_route_groups {
        let report = |out: &mut Vec<Diagnostic>, field: String, error| {
            push(out, &group.meta, Kind::HttpRouteGroup, field, error)
        };
        if group.matches.is_empty() {
            report(
                &mut out,
                group.matches_field.clone(),
                ValidationError::NoMatches,
            );
        }
        let mut names = BTreeSet::new();
        for m in &group.matches {
            let field = format!("{}[{}]", group.matches_field, m.position);
            if !names.insert(m.name.as_str()) {
                report(
                    &mut out,
                    format!("{field}.name"),
                    ValidationError::DuplicateMatch(m.name.clone()),
                );
            }
            if let Some(pattern) = &m.path_regex {
                match Matcher::path(pattern) {
                    Err(err) => report(
                        &mut out,
                        format!("{field}.pathRegex"),
                        ValidationError::Regex(err.to_string()),
                    ),
                    Ok(compiled) => {
                        if let Some(open) = open_path_regex(pattern, &compiled) {
                            report(&mut out, format!("{field}.pathRegex"), open);
                        }
                    }
                }
            }
            for (j, method) in m.methods.iter().enumerate() {
                if !METHODS.contains(&method.as_str()) {
                    report(
                        &mut out,
                        format!("{field}.methods[{j}]"),
                        ValidationError::Method(method.clone()),
                    );
                }
            }
            for ((_, pattern), written) in m.headers.iter().zip(&m.header_fields) {
                if let Err(err) = Matcher::header(pattern) {
                    report(
                        &mut out,
                        format!("{field}.{written}"),
                        ValidationError::Regex(err.to_string()),
                    );
                }
            }
        }
    }
    let mut roots: BTreeMap<(String, String), String> = BTreeMap::new();
    for split in &catalog.traffic_splits {
        traffic_split(catalog, split, &mut roots, &mut out);
    }
    crate::diagnostic::sort(&mut out);
    out
}

fn push(out: &mut Vec<Diagnostic>, meta: &Meta, kind: Kind, field: String, error: ValidationError) {
    out.push(Diagnostic {
        severity: error.severity(),
        kind: Some(kind.to_string()),
        namespace: Some(meta.namespace.clone()),
        name: Some(meta.name.clone()),
        field,
        origin: meta.origin.clone(),
        message: error.to_string(),
    });
}

fn duplicates(catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    let metas = catalog
        .traffic_targets
        .iter()
        .map(|o| (Kind::TrafficTarget, &o.meta))
        .chain(
            catalog
                .http_route_groups
                .iter()
                .map(|o| (Kind::HttpRouteGroup, &o.meta)),
        )
        .chain(catalog.port_routes.iter().map(|o| (o.kind(), &o.meta)))
        .chain(
            catalog
                .traffic_splits
                .iter()
                .map(|o| (Kind::TrafficSplit, &o.meta)),
        )
        .chain(catalog.services.iter().map(|o| (Kind::Service, &o.meta)));
    let mut seen = BTreeSet::new();
    for (kind, meta) in metas {
        if !seen.insert((kind, meta.namespace.as_str(), meta.name.as_str())) {
            push(
                out,
                meta,
                kind,
                String::new(),
                ValidationError::Duplicate(kind),
            );
        }
    }
}

fn traffic_target(catalog: &Catalog, target: &TrafficTarget, out: &mut Vec<Diagnostic>) {
    let meta = &target.meta;
    let mut report = |field: String, error| push(out, meta, Kind::TrafficTarget, field, error);
    let body = target.written.body.as_str();
    if let Some(destination) = &target.destination {
        if destination.kind != SERVICE_ACCOUNT {
            report(
                format!("{body}destination.kind"),
                ValidationError::SubjectKind(destination.kind.clone()),
            );
        }
        if let Some(namespace) = &destination.namespace
            && namespace != &meta.namespace
        {
            report(
                format!("{body}destination.namespace"),
                ValidationError::DestinationNamespace {
                    destination: namespace.clone(),
                    object: meta.namespace.clone(),
                },
            );
        }
    }
    if target.sources.is_empty() {
        report(format!("{body}sources"), ValidationError::NoSources);
    }
    for source in &target.sources {
        if source.kind != SERVICE_ACCOUNT {
            report(
                format!("{body}sources[{}].kind", source.position),
                ValidationError::SubjectKind(source.kind.clone()),
            );
        }
    }
    if target.rules.is_empty() {
        report(target.written.rules.clone(), ValidationError::NoRules);
    }
    for rule in &target.rules {
        let field = format!("{}[{}]", target.written.rules, rule.position);
        let Some(kind) = Kind::of_rule(&rule.kind) else {
            report(
                format!("{field}.kind"),
                ValidationError::RuleKind(rule.kind.clone()),
            );
            continue;
        };
        let missing = || ValidationError::Missing {
            kind,
            namespace: meta.namespace.clone(),
            name: rule.name.clone(),
        };
        match kind {
            Kind::HttpRouteGroup => match catalog.http_route_group(&meta.namespace, &rule.name) {
                None => report(format!("{field}.name"), missing()),
                Some(group) => {
                    for (j, name) in rule.matches.iter().flatten().enumerate() {
                        if !group.matches.iter().any(|m| &m.name == name) {
                            let available: Vec<_> =
                                group.matches.iter().map(|m| m.name.as_str()).collect();
                            report(
                                format!("{field}.matches[{j}]"),
                                ValidationError::MissingMatch {
                                    name: name.clone(),
                                    group: format!("{}/{}", meta.namespace, rule.name),
                                    available: if available.is_empty() {
                                        "no matches".into()
                                    } else {
                                        available.join(", ")
                                    },
                                },
                            );
                        }
                    }
                }
            },
            Kind::TcpRoute | Kind::UdpRoute => {
                let protocol = if kind == Kind::TcpRoute {
                    L4Protocol::Tcp
                } else {
                    L4Protocol::Udp
                };
                if catalog
                    .port_route(protocol, &meta.namespace, &rule.name)
                    .is_none()
                {
                    report(format!("{field}.name"), missing());
                }
                if rule.matches.as_ref().is_some_and(|m| !m.is_empty()) {
                    report(
                        format!("{field}.matches"),
                        ValidationError::MatchesOnPortRule(kind),
                    );
                }
            }
            _ => {}
        }
    }
}

/// The short name of a root or backend service given as a short name or as an FQDN in the
/// split's namespace (`web`, `web.ns`, `web.ns.svc`, `web.ns.svc.cluster.local`).
pub fn short_service_name<'a>(service: &'a str, namespace: &str) -> &'a str {
    let service = service.trim_end_matches('.');
    match service.split_once('.') {
        Some((name, rest))
            if rest == namespace
                || rest
                    .strip_prefix(namespace)
                    .is_some_and(|tail| tail == ".svc" || tail.starts_with(".svc.")) =>
        {
            name
        }
        _ => service,
    }
}

fn traffic_split(
    catalog: &Catalog,
    split: &TrafficSplit,
    roots: &mut BTreeMap<(String, String), String>,
    out: &mut Vec<Diagnostic>,
) {
    let meta = &split.meta;
    let mut report = |field: String, error| push(out, meta, Kind::TrafficSplit, field, error);
    let root = short_service_name(&split.service, &meta.namespace);
    // A root service that could not be read was reported by the loader; the checks that need
    // it are skipped, the others still run.
    let root_service = match root {
        "" => None,
        _ => {
            let key = (meta.namespace.clone(), root.to_owned());
            match roots.get(&key) {
                Some(first) => report(
                    "spec.service".into(),
                    ValidationError::SecondSplit(first.clone()),
                ),
                None => {
                    roots.insert(key, format!("{}/{}", meta.namespace, meta.name));
                }
            }
            let service = catalog.service(&meta.namespace, root);
            if service.is_none() {
                report(
                    "spec.service".into(),
                    ValidationError::ServiceNotFound(format!("{}/{root}", meta.namespace)),
                );
            }
            service
        }
    };
    if split.backends.is_empty() {
        report("spec.backends".into(), ValidationError::NoBackends);
    } else if split.backends.iter().all(|b| b.weight == 0) {
        report("spec.backends".into(), ValidationError::AllZeroWeights);
    }
    let mut seen = BTreeSet::new();
    for backend in &split.backends {
        let field = format!("spec.backends[{}].service", backend.position);
        let name = short_service_name(&backend.service, &meta.namespace);
        if !seen.insert(name) {
            report(
                field.clone(),
                ValidationError::DuplicateBackend(name.to_owned()),
            );
        }
        if name == root {
            report(field.clone(), ValidationError::SelfBackend(root.to_owned()));
            continue;
        }
        match (catalog.service(&meta.namespace, name), root_service) {
            (None, _) => report(
                field,
                ValidationError::ServiceNotFound(format!("{}/{name}", meta.namespace)),
            ),
            (Some(service), Some(root_service))
                if !service.ports.iter().any(|p| root_service.ports.contains(p)) =>
            {
                report(
                    field,
                    ValidationError::NoCommonPort {
                        backend: format!("{}/{name}", meta.namespace),
                        ports: root_service
                            .ports
                            .iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                    },
                )
            }
            (Some(_), _) => {}
        }
    }
    for reference in &split.matches {
        let field = format!("spec.matches[{}]", reference.position);
        if reference.kind != "HTTPRouteGroup" {
            report(
                format!("{field}.kind"),
                ValidationError::SplitMatchKind(reference.kind.clone()),
            );
        } else if catalog
            .http_route_group(&meta.namespace, &reference.name)
            .is_none()
        {
            report(
                format!("{field}.name"),
                ValidationError::Missing {
                    kind: Kind::HttpRouteGroup,
                    namespace: meta.namespace.clone(),
                    name: reference.name.clone(),
                },
            );
        }
    }
}

/// A warning when `pattern` (compiled as weft matches it, `compiled`) can stop matching in the
/// middle of a path segment with no `$`, so it also allows longer paths than it spells:
/// `/orders` allows `/ordersadmin`. A pattern that ends with `/` (a directory prefix) or with
/// `.*`/`.+` (any continuation, on purpose) is taken as meant.
fn open_path_regex(pattern: &str, compiled: &Matcher) -> Option<ValidationError> {
    use regex_syntax::hir::HirKind;
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    if !open_end(&hir) {
        return None;
    }
    let anchored = match hir.kind() {
        HirKind::Alternation(_) => format!("(?:{pattern})$"),
        _ => format!("{pattern}$"),
    };
    let whole = Matcher::path(&anchored).ok()?;
    let mut prefixes: Vec<String> = regex_syntax::hir::literal::Extractor::new()
        .extract(&hir)
        .literals()
        .into_iter()
        .flatten()
        .filter_map(|literal| std::str::from_utf8(literal.as_bytes()).ok())
        .map(str::to_owned)
        .collect();
    prefixes.sort_by_key(String::len);
    let example = prefixes
        .iter()
        .map(|prefix| format!("{prefix}admin"))
        .find(|longer| compiled.is_match(longer) && !whole.is_match(longer));
    Some(ValidationError::OpenPathRegex { example, anchored })
}

/// Whether a match of `hir`, as the last part of a pattern, can end where one more character
/// would also match: not at an end anchor, a `/`, or a repetition of any character.
fn open_end(hir: &regex_syntax::hir::Hir) -> bool {
    use regex_syntax::hir::{Class, HirKind, Look};
    match hir.kind() {
        HirKind::Empty => false,
        HirKind::Literal(literal) => literal.0.last() != Some(&b'/'),
        HirKind::Class(class) => match class {
            Class::Unicode(c) => !c
                .ranges()
                .iter()
                .all(|r| r.start() == '/' && r.end() == '/'),
            Class::Bytes(c) => !c
                .ranges()
                .iter()
                .all(|r| r.start() == b'/' && r.end() == b'/'),
        },
        HirKind::Look(look) => !matches!(look, Look::End | Look::EndLF | Look::EndCRLF),
        HirKind::Repetition(repetition) => {
            !(repetition.max.is_none() && matches_any(&repetition.sub)) && open_end(&repetition.sub)
        }
        HirKind::Capture(capture) => open_end(&capture.sub),
        HirKind::Concat(items) => {
            for item in items.iter().rev() {
                if open_end(item) {
                    return true;
                }
                if matches!(
                    item.kind(),
                    HirKind::Look(Look::End | Look::EndLF | Look::EndCRLF)
                ) {
                    return false;
                }
                // An item that can match nothing leaves the end to the one before it, unless it
                // absorbs any continuation itself.
                let absorbs = matches!(item.kind(), HirKind::Repetition(r) if r.max.is_none() && matches_any(&r.sub));
                if absorbs || item.properties().minimum_len() != Some(0) {
                    return false;
                }
            }
            false
        }
        HirKind::Alternation(branches) => branches.iter().any(open_end),
    }
}

/// Whether `hir` is a class of every character (but perhaps `\n`): `.`.
fn matches_any(hir: &regex_syntax::hir::Hir) -> bool {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => {
            let covered: u32 = c
                .ranges()
                .iter()
                .map(|r| u32::from(r.end()) - u32::from(r.start()) + 1)
                .sum();
            // Every scalar value but the surrogates, less perhaps `\n`.
            covered >= 0x10_F7FF
        }
        HirKind::Class(Class::Bytes(c)) => {
            let covered: u32 = c
                .ranges()
                .iter()
                .map(|r| u32::from(r.end()) - u32::from(r.start()) + 1)
                .sum();
            covered >= 255
        }
        HirKind::Capture(capture) => matches_any(&capture.sub),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(pattern: &str) -> Option<String> {
        let compiled = Matcher::path(pattern).unwrap();
        open_path_regex(pattern, &compiled).map(|w| w.to_string())
    }

    #[test]
    fn a_path_regex_that_reads_like_an_exact_path_is_warned_with_its_anchored_form() {
        let w = warning("/orders").unwrap();
        assert!(w.contains("such as /ordersadmin"), "{w}");
        assert!(w.contains("write \"/orders$\""), "{w}");
        let w = warning("/orders(/[0-9]+)?").unwrap();
        assert!(w.contains("such as /ordersadmin"), "{w}");
        assert!(w.contains("\"/orders(/[0-9]+)?$\""), "{w}");
        assert!(
            warning("/orders/[0-9]+")
                .unwrap()
                .contains("/orders/[0-9]+$")
        );
        assert!(warning("/a|/b").unwrap().contains("(?:/a|/b)$"));
        assert!(warning("/metrics\\b").is_some());
    }

    #[test]
    fn anchored_prefixes_and_catch_alls_are_taken_as_meant() {
        for pattern in [
            "/orders$",
            "/orders(/[0-9]+)?$",
            "/api/",
            "/api/.*",
            ".*",
            "/files/.+",
            "(?s)/x.*",
            "",
            "/echo.Echo/",
            "/a$|/b/",
        ] {
            assert_eq!(warning(pattern), None, "{pattern}");
        }
    }
}
