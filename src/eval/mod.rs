//! The paper's test protocols (Section 3.2 and 4): dense, multi-crop, multi-scale, flips and
//! fusion, reported as top-1 and top-5 error.
//!
//! [`protocol`] holds the arithmetic (crop grid, test scales, averaging, tables), free of
//! ONNX Runtime; [`run`] feeds prepared images through the networks with it.

pub mod protocol;
pub mod run;
