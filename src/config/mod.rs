//! What a user declares, parsed and validated once at the edge, then read by the stages:
//!
//! - [`registry`]: `datasets.toml`, the named datasets, their sources and store policies;
//! - [`pipeline`]: a `pipelines/*.toml` recipe (loader, augmentation, model, optimiser);
//! - [`training`]: its `[optimizer]`, `[schedule]` and `[training]` tables;
//! - [`model`]: the paper's Table 1 configurations as data, and the parameter layout they imply.
//!
//! Nothing here reads images or runs a network; the stages below import these types, never the
//! other way round.

pub mod model;
pub mod pipeline;
pub mod registry;
pub mod training;
