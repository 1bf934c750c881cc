//! Skiff's image side: a content-addressed store laid out as an OCI image
//! layout, safe layer unpacking, `docker save` / OCI archive import and
//! export, and an OCI distribution (registry) client.

pub mod archive;
pub mod auth;
pub mod progress;
pub mod registry;
pub mod store;
pub mod unpack;
