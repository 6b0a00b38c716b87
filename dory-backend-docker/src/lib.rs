//! The Docker Volume Plugin protocol for Dory, both ways.
//!
//! - [`PluginClient`] talks to any Docker volume plugin the way a tolerant,
//!   dockerd-compatible client does (see the module docs of [`client`]).
//! - [`DockerBackend`] wraps the client as a [`dory_core::VolumeBackend`]
//!   and registers it as the `docker` backend.
//! - [`PluginServer`] exposes any [`dory_core::VolumeBackend`] as a plugin,
//!   so a backend written for Dory also serves dockerd.
//! - [`PluginLocator`] resolves plugin names like dockerd: sockets, spec
//!   files and managed plugins.
//!
//! All JSON shapes live in [`wire`]; nothing outside this crate sees them.

pub mod address;
mod backend;
pub mod client;
mod error;
pub mod server;
pub mod wire;

pub use address::{ManagedPlugin, PluginAddress, PluginLocator, ResolvedPlugin};
pub use backend::{DEFAULT_PLUGIN, DockerBackend, DockerBackendSettings, keys};
pub use client::{CallPolicy, PluginClient, RetryPolicy};
pub use error::PluginError;
pub use server::{Dialect, PluginServer, ServerOptions, bind_socket};
