//! Integration tests: one binary, one module per capability.

mod cli;
mod fixtures;
mod gradients;
mod graphs;
mod loader;
mod prepare;
mod val_labels;
