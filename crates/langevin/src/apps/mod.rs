//! Applications built on any sampler through its step callback.
pub mod img2img;
pub mod inpaint;
pub mod superres;
