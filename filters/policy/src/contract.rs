//! Names the filter and the Envoy configuration around it must agree on: the header split
//! routing hands Envoy's router, and the `root_id`s that select weft's filters. Both sides
//! import them from here (the filter, `weft-envoy-config`), so neither retypes the other's.

/// The request header that carries the cluster split routing chose to Envoy's router (a route
/// with `cluster_header: x-weft-cluster`). Its value is the backend or root service,
/// `name.namespace`, which is the cluster's name.
pub const ROUTE_HEADER: &str = "x-weft-cluster";

/// `root_id` that selects the network (TCP) filter.
pub const TCP_ROOT_ID: &str = "weft.tcp";

/// `root_id`s that select the HTTP filter.
pub const HTTP_ROOT_IDS: [&str; 2] = ["", "weft"];
