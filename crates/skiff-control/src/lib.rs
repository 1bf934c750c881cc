//! Skiff's serving control plane.
//!
//! This crate will hold the pieces that decide how many instances of each
//! revision run: the instance manager (start, drain, replace instances), the
//! autoscaler, and the activator queue that holds requests while a revision
//! scales up from zero. Today it contains only the [`autoscaler`]: a pure,
//! I/O-free algorithm driven by an injected clock so it can be tested on
//! simulated time.

pub mod autoscaler;

pub use autoscaler::{
    Autoscaler, Clock, Decision, ManualClock, Millis, PolicyError, ScalePolicy, SystemClock,
};
