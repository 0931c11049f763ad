//! Integration tests: one binary, one module per capability.

mod cli;
mod fixtures;
mod prepare;
mod val_labels;
