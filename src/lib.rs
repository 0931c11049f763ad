//! # vgg
//!
//! A toolkit to reproduce and train the VGG networks of Simonyan & Zisserman, "Very Deep
//! Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015).
//!
//! The modules follow the data flow, and each layer imports only the layers above it here:
//!
//! ```text
//! util      atomic writes, per-sample random streams, progress + cancellation, machine readings
//! config    datasets.toml (registry) · pipelines/*.toml (pipeline, training) · Table 1 (model)
//! report    PNG writer, training plots, contact sheets
//! data      source (list / generate) -> prepare -> shard files + manifest -> store
//!           -> loader (augment) -> batches
//! net       graph (forward, dense, training step, differentiator) · init · checkpoint
//!           · runtime + session (ONNX Runtime) · accuracy (top-k)
//! dist      launcher variables (torchrun, Slurm) · rendezvous + host all-reduce · NCCL
//! train     batches -> step (fused, or split over replicas, processes, micro-batches)
//!           -> checkpoints, metrics.jsonl, plots
//! eval      checkpoints -> the paper's protocols (dense, multi-crop, multi-scale, fusion) -> tables
//! bench     throughput of the loader and the training step, each against a baseline
//! ```
//!
//! The `vgg` binary is a thin front over these: it parses arguments, resolves them into the
//! objects above, draws progress bars and prints tables or JSON.

pub mod util;

pub mod config;

pub mod report;

pub mod data;

pub mod net;

pub mod dist;

pub mod eval;
pub mod train;

pub mod bench;
