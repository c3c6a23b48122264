//! `weft-controller` holds the `weft` command (and, later, the controller that serves xDS,
//! certificates and the filter module). The command is a thin adapter over `weft-policy`:
//! [`manifests`] reads files and directories, [`commands`] runs `check`, `explain` and
//! `compile` and returns what to print and the exit code, and [`certs`] makes the mesh CA and
//! workload certificates, so `main` only parses arguments.

pub mod certs;
pub mod commands;
pub mod manifests;
