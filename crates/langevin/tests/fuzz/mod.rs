//! The fuzz harness's mutator (see `tests/fuzz_loaders.rs`).
pub mod mutate;
