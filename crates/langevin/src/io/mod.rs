//! File I/O helpers shared by every writer.
pub mod atomic;
pub use atomic::{write_atomic, write_atomic_bytes};
