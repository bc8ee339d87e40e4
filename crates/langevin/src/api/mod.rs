//! The public API that the command line, the web studio and the Python package all call:
//! train / resume a run folder, load a model, sample it (any sampler, guidance, diffusers'
//! own loops), inspect a schedule. Progress and stopping go through an [`Observer`]; every
//! choice is a typed enum parsed once.
pub mod apps;
pub mod classes;
pub mod metrics;
pub mod observe;
pub mod options;
pub mod run_folder;
pub mod sample;
pub mod source;
pub mod train;
mod train_images;

pub use classes::{check_class, class_range, null_label};
pub use observe::{Observer, Silent};
pub use options::{SamplerChoice, ScheduleName, ScheduleOptions, SpacingChoice};
pub use sample::{sample, SampleOptions, SampleRequest};
pub use source::DataInput;
pub use train::{train, ImageOptions, MlpOptions, TrainOptions, TrainSummary};

#[cfg(test)]
mod tests;
