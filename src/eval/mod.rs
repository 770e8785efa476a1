//! Benchmarks that say whether a model got better. CRUXEval is here so far; it also serves as
//! self-play's periodic validation.

pub mod cruxeval;
