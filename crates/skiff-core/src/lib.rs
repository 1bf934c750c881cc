//! The vocabulary shared by every Skiff crate. No I/O, no async.

pub mod digest;
pub mod reference;
pub mod service;
pub mod time;
pub mod units;

pub use digest::{Digest, DigestError, DigestReader, DigestWriter};
pub use reference::{ImageRef, RefError};
pub use service::{
    validate_traffic, Mode, RevisionName, RevisionStatus, ServiceName, ServiceSpec, SpecError,
    TrafficTarget,
};
pub use units::{
    parse_bytes, parse_cpus, parse_duration, parse_port_mapping, validate_container_name,
    PortMapping, UnitError,
};
