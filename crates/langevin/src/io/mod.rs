//! File I/O helpers shared by every writer.
pub mod atomic;
pub mod lock;
pub mod tensors;
pub use atomic::{write_atomic, write_atomic_bytes};
pub use lock::RunLock;
