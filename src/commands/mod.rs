//! The binary's commands for the training and evaluation stages, one file each (binary only:
//! argument structs, progress display and output; the work is in the library).

pub mod eval;
pub mod export;
pub mod train;
pub mod weights;

use std::path::PathBuf;

/// The global options every command sees.
pub struct Common {
    pub datasets: PathBuf,
    pub quiet: bool,
}
