//! The telehub product: the config tree and the [`app::App`] that wires the crates
//! together. `main.rs` only parses flags and calls into here.
//!
//! # Layout
//!
//! * [`config`]: [`config::Config`], loaded from the embedded default, a file, the
//!   environment and flags.
//! * [`app`]: [`app::App`]: bind, report, run until a signal, drain.
//! * `webhooks`: webhooks and live streams wired in (tap feed and broadcast, dispatcher,
//!   sender, the API's hooks).

pub mod app;
pub mod config;
mod webhooks;
