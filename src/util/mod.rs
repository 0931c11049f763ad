//! Small mechanisms every stage uses, kept in one place so each exists once: atomic file
//! writes, per-sample random streams, progress reporting with cancellation, and readings of the
//! machine (CPU, cores, peak memory) that benchmarks and reports print, and folder locks.

pub mod fs;
pub mod lock;
pub mod machine;
pub mod progress;
pub mod rng;
