//! Sample-quality metrics.
