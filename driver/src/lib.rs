//! The driver role of Quiver: the model server (`quiver serve`) with TensorFlow Serving's gRPC
//! and REST protocols.

pub mod serve;
