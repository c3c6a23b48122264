//! `weft-local` runs a mesh on one machine: the controller, and for each workload replica its
//! application process and an Envoy sidecar bootstrapped against the controller, each replica
//! on its own loopback address. It supervises the processes and stops them all on the way out.
