//! The VGG networks as ONNX graphs that a stock ONNX Runtime can run, training included.
//!
//! Stock ONNX Runtime release builds have no training API and no gradient operators, so a
//! training step here is one ordinary ONNX graph: forward pass, backward pass and SGD update,
//! written with standard operators that both the CPU and the CUDA execution providers implement.
//!
//! - [`ir`]: a graph builder over ONNX operators, lowered to protobuf by [`onnx`] (types generated
//!   once from `onnx.proto` and checked in).
//! - [`autodiff`]: a reverse-mode differentiator over the operators the configurations use.
//! - [`vgg`]: the forward, dense-evaluation and training-step graphs of a
//!   [`VggConfig`](crate::config::model::VggConfig), and the parameter names and layout.

pub mod autodiff;
pub mod cuda_coverage;
pub mod ir;
#[allow(clippy::all, rustdoc::all, missing_docs)]
pub mod onnx;
pub mod vgg;
