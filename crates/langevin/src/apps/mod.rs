//! Applications built on any sampler through its step callback.
pub mod classifier;
pub mod img2img;
pub mod inpaint;
pub mod superres;
