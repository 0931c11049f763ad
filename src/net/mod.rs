//! The networks on ONNX Runtime:
//!
//! - [`graph`]: the VGG forward, dense and training-step graphs, with their own differentiator;
//! - [`init`]: the paper's initialisation schemes; [`checkpoint`]: safetensors parameters and
//!   optimiser state (torchvision names);
//! - [`runtime`]: finding and loading the ONNX Runtime library; [`session`]: sessions on a device;
//! - [`accuracy`]: top-k hit counting on class scores, shared by the trainer and the evaluator.

pub mod accuracy;
pub mod checkpoint;
pub mod graph;
pub mod init;
pub mod runtime;
pub mod session;
