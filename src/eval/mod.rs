//! The paper's test protocols (Section 3.2 and 4): dense, multi-crop, multi-scale, flips and
//! fusion, reported as top-1 and top-5 error.

pub mod protocol;
