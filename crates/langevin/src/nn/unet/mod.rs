//! A diffusers-compatible `UNet2DModel`: reads and writes diffusers model folders, and its
//! forward pass matches diffusers' (see `tests/unet_parity.rs`).
//!
//! Files: [`config`] (config.json), [`model`] (the network), [`blocks`], [`resnet`],
//! [`attention`], [`sampling`], [`time`] (time and class embeddings), [`ops`], [`folder`]
//! (loading and saving).
pub mod attention;
pub mod blocks;
pub mod config;
pub mod folder;
pub mod model;
pub mod ops;
pub mod resnet;
pub mod sampling;
pub mod time;

pub use config::{
    Activation, ClassEmbedType, DownBlockType, TimeEmbeddingType, TimeScaleShift, UNet2DConfig,
    UpBlockType,
};
pub use folder::{
    load_unet, load_unet_as, read_unet_weights, save_unet, unet_from_tensors, unet_from_tensors_as,
    varmap_tensors,
};
pub use model::UNet2DModel;
