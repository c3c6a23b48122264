//! The objects of a manifest set, as one [`Catalog`]: SMI's and Kubernetes' ([`crate::model`])
//! and weft's own ([`crate::extension`]), sorted so that lookups take logarithmic time, and the
//! rules that resolve one object against the others.

use serde::Serialize;

use crate::extension::{EnvoyPatch, TrafficPolicy};
use crate::model::{
    HttpRouteGroup, L4Protocol, Meta, PortRoute, Service, TrafficSplit, TrafficTarget, Workload,
};

/// Every object read from a manifest set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Catalog {
    /// TrafficTargets.
    pub traffic_targets: Vec<TrafficTarget>,
    /// HTTPRouteGroups.
    pub http_route_groups: Vec<HttpRouteGroup>,
    /// TCPRoutes and UDPRoutes.
    pub port_routes: Vec<PortRoute>,
    /// TrafficSplits.
    pub traffic_splits: Vec<TrafficSplit>,
    /// Services.
    pub services: Vec<Service>,
    /// Deployments and Pods.
    pub workloads: Vec<Workload>,
    /// weft's TrafficPolicies.
    pub traffic_policies: Vec<TrafficPolicy>,
    /// weft's EnvoyPatches.
    pub envoy_patches: Vec<EnvoyPatch>,
    /// The lists are in [`Catalog::sort`]'s order, so lookups search them by halves (sort
    /// again after changing a list).
    #[serde(skip)]
    sorted: bool,
}

/// The object `namespace/name` of a list sorted by namespace and name (by halves), or of any
/// list (one by one): the first of that name either way.
fn find<'a, T>(
    list: &'a [T],
    sorted: bool,
    meta: impl Fn(&T) -> &Meta,
    namespace: &str,
    name: &str,
) -> Option<&'a T> {
    if !sorted {
        return list
            .iter()
            .find(|item| meta(item).namespace == namespace && meta(item).name == name);
    }
    let key = (namespace, name);
    let first = list
        .partition_point(|item| (meta(item).namespace.as_str(), meta(item).name.as_str()) < key);
    list.get(first)
        .filter(|item| meta(item).namespace == namespace && meta(item).name == name)
}

impl Catalog {
    /// How many objects the catalog holds, of every kind.
    pub fn len(&self) -> usize {
        self.traffic_targets.len()
            + self.http_route_groups.len()
            + self.port_routes.len()
            + self.traffic_splits.len()
            + self.services.len()
            + self.workloads.len()
            + self.traffic_policies.len()
            + self.envoy_patches.len()
    }

    /// Whether the catalog holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The HTTPRouteGroup `namespace/name`.
    pub fn http_route_group(&self, namespace: &str, name: &str) -> Option<&HttpRouteGroup> {
        find(
            &self.http_route_groups,
            self.sorted,
            |group| &group.meta,
            namespace,
            name,
        )
    }

    /// The TCPRoute or UDPRoute `namespace/name`.
    pub fn port_route(
        &self,
        protocol: L4Protocol,
        namespace: &str,
        name: &str,
    ) -> Option<&PortRoute> {
        if !self.sorted {
            return self.port_routes.iter().find(|route| {
                route.protocol == protocol
                    && route.meta.namespace == namespace
                    && route.meta.name == name
            });
        }
        // Sorted by kind first: TCPRoutes, then UDPRoutes.
        let udp_from = self
            .port_routes
            .partition_point(|route| route.protocol == L4Protocol::Tcp);
        let (tcp, udp) = self.port_routes.split_at(udp_from);
        let list = match protocol {
            L4Protocol::Tcp => tcp,
            L4Protocol::Udp => udp,
        };
        find(list, true, |route| &route.meta, namespace, name)
    }

    /// The Service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        find(
            &self.services,
            self.sorted,
            |service| &service.meta,
            namespace,
            name,
        )
    }

    /// Sorts every list by namespace and name, so that what is built from the catalog does not
    /// depend on the order in which objects were read, and lookups take logarithmic time.
    pub fn sort(&mut self) {
        fn key(meta: &Meta) -> (&str, &str) {
            (&meta.namespace, &meta.name)
        }
        self.traffic_targets
            .sort_by(|a, b| key(&a.meta).cmp(&key(&b.meta)));
        self.http_route_groups
            .sort_by(|a, b| key(&a.meta).cmp(&key(&b.meta)));
        self.port_routes
            .sort_by(|a, b| (a.kind(), key(&a.meta)).cmp(&(b.kind(), key(&b.meta))));
        self.traffic_splits
            .sort_by(|a, b| key(&a.meta).cmp(&key(&b.meta)));
        self.services
            .sort_by(|a, b| key(&a.meta).cmp(&key(&b.meta)));
        self.workloads
            .sort_by(|a, b| (key(&a.meta), &a.kind).cmp(&(key(&b.meta), &b.kind)));
        self.traffic_policies
            .sort_by(|a, b| key(&a.meta).cmp(&key(&b.meta)));
        self.envoy_patches
            .sort_by(|a, b| key(&a.meta).cmp(&key(&b.meta)));
        self.sorted = true;
    }
}

/// The TrafficPolicy in force for `port` of `service` (`port` `None`: its HTTP routes), by
/// the documented rule: a policy naming the port wins over one naming the whole Service;
/// among policies equally specific, the first by name wins, whole (policies do not merge).
pub fn effective_policy<'c>(
    catalog: &'c Catalog,
    service: &Service,
    port: u16,
) -> Option<&'c TrafficPolicy> {
    let candidates = catalog.traffic_policies.iter().filter(|policy| {
        policy.meta.namespace == service.meta.namespace
            && policy.target.service == service.meta.name
            && policy.target.port.is_none_or(|p| p == port)
    });
    // Port-specific first, then by name (the list is sorted by name).
    candidates.min_by_key(|policy| (policy.target.port.is_none(), policy.meta.name.as_str()))
}
