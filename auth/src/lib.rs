//! Authentication for Gigafactory (issue #15): who may connect to NATS, and as whom.
//!
//! - [`secrets`]: the deployment's keys and passwords, and the nats-server config that
//!   sends unknown clients to the auth callout while static users (coordinators,
//!   operators) connect directly;
//! - [`callout`]: the responder every coordinator replica runs; it verifies a
//!   factory's nkey signature over the server nonce, enrolls new factories with a
//!   token, and issues short-lived user JWTs with exactly
//!   [`gf_schemas::permissions::factory`];
//! - [`store`]: enrollment tokens and enrolled factories in KV;
//! - [`leader_copy`]: reading a KV key from the stream leader's copy (read-your-writes
//!   with R3), shared with the coordinator's job store;
//! - [`key`]: a factory's own key on its host;
//! - [`token`], [`jwt`]: the formats.

pub mod callout;
pub mod files;
pub mod jwt;
pub mod key;
pub mod kick;
pub mod leader_copy;
pub mod secrets;
pub mod store;
pub mod token;
pub mod url;

pub use callout::{serve, CalloutConfig, Outcome};
pub use key::FactoryKey;
pub use secrets::Secrets;
pub use store::{Refusal, Store, TokenSpec};
pub use token::EnrollToken;
