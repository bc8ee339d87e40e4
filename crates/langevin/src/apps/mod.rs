//! Applications built on any sampler through its step callback.
pub mod inpaint;
