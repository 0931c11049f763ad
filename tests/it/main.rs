//! Integration tests: one binary, one module per capability.

mod claims;
mod cli;
mod distributed;
mod eval;
mod eval_cli;
mod fixtures;
mod gpu;
mod gradients;
mod graphs;
mod loader;
mod messages;
mod parallel;
mod prepare;
mod refusals;
mod torchvision;
mod train;
mod val_labels;
