//! Hyperparameter experiments: search spaces and the algorithms that propose trials.

pub mod space;

pub use space::{DifferentialEvolution, Domain, Params, SearchSpace};
