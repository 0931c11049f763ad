//! # vgg
//!
//! A toolkit to reproduce and train the VGG networks of Simonyan & Zisserman, "Very Deep
//! Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015).
//!
//! The modules follow the data flow:
//!
//! ```text
//! datasets.toml -> registry -> source (list / generate) -> prepare -> shard files + manifest
//!                                                  -> inspect / verify
//! ```
//!
//! `runtime` locates and loads ONNX Runtime for the later stages (training, evaluation).

pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod contact_sheet;
pub mod eval;
pub mod graph;
pub mod imaging;
pub mod init;
pub mod loader;
pub mod manifest;
pub mod model;
pub mod pipeline;
pub mod plot;
pub mod prepare;
pub mod registry;
pub mod rng;
pub mod runtime;
pub mod session;
pub mod shard;
pub mod source;
pub mod store;
pub mod train;
