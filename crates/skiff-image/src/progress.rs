//! Progress reporting for long transfers (pulls, pushes).
//!
//! The library only reports events; how they are shown is the caller's
//! business (the CLI draws indicatif bars on a terminal and stays quiet
//! otherwise). Every `begin` is followed by exactly one `end` with the same
//! id, with any number of `advance` calls in between.

/// Receives transfer events. Implementations must be cheap and must not
/// block: they are called from async tasks for every received chunk.
pub trait Progress: Send + Sync {
    /// A transfer starts. `id` is unique within one operation (a short
    /// digest); `label` says what it is ("layer", "config"); `total` is the
    /// expected size in bytes when known.
    fn begin(&self, id: &str, label: &str, total: Option<u64>);
    /// `bytes` more bytes were transferred (a delta, not a running total).
    fn advance(&self, id: &str, bytes: u64);
    /// The transfer finished: `outcome` is a short word such as "done",
    /// "exists" or "failed".
    fn end(&self, id: &str, outcome: &str);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _id: &str, _label: &str, _total: Option<u64>) {}
    fn advance(&self, _id: &str, _bytes: u64) {}
    fn end(&self, _id: &str, _outcome: &str) {}
}
