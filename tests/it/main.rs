//! Integration tests: one binary, one module per capability.

mod cli;
mod fixtures;
mod loader;
mod prepare;
mod val_labels;
