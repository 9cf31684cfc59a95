//! Gigafactory's fault-injection and load suites.
//!
//! - [`cluster`]: the interface the suites drive (start parts, inject faults), with the
//!   [`process`] backend (every part an OS process on loopback) and a TCP [`proxy`]
//!   that can cut a worker off NATS, and the [`compose`] backend (the docker-compose
//!   deployment, with real network partitions, secured: [`tls`] is how the suite on
//!   the host checks its NATS' certificate).
//! - [`audit`]: the audit log a run records and the invariants checked against it.
//! - [`harness`] and [`scenarios`]: one function per fault scenario.
//! - [`monitor`]: Alertmanager's alerts and Prometheus queries during a compose run.
//! - [`load`]: throughput, latency, scale-out, and the raw JetStream ceiling.

pub mod audit;
pub mod cluster;
pub mod compose;
pub mod compose_load;
pub mod harness;
pub mod load;
pub mod monitor;
pub mod process;
pub mod proxy;
pub mod scenarios;
pub mod tls;
