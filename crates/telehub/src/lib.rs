//! The telehub product: the config tree and the [`app::App`] that wires the crates
//! together. `main.rs` only parses flags and calls into here.
//!
//! # Layout
//!
//! * [`config`]: [`config::Config`], loaded from the embedded default, a file, the
//!   environment and flags.
//! * [`app`]: [`app::App`]: bind, report, run until a signal, drain.

pub mod app;
pub mod config;
