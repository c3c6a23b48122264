//! `weft-cli` is the `weft` command, a thin front end: [`commands`] runs `check`, `explain`,
//! `compile` and `describe` ([`describe`]) over the index the controller loads (`weft_controller::index`) and returns what to
//! print and the exit code, [`certs`] makes the mesh CA and workload certificates, and the
//! controller, local mode and sidecar commands start what weft-controller and weft-local
//! build, so `main` only parses arguments.

pub mod certs;
pub mod commands;
pub mod describe;
pub mod mesh;
