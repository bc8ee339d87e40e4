//! `UNet2DConfig`: the `config.json` of a diffusers `UNet2DModel`, read as diffusers writes it.
//!
//! Field names, defaults and accepted values follow diffusers'
//! `src/diffusers/models/unets/unet_2d.py` (`UNet2DModel.__init__`). Unknown keys (diffusers'
//! bookkeeping such as `_diffusers_version`, or options of newer releases) are ignored; missing
//! keys take diffusers' defaults. String-valued options are parsed into enums, and a value this
//! crate does not implement is an [`Error::Config`] naming the field and the accepted values.
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// diffusers' `_class_name` for this architecture.
pub const CLASS_NAME: &str = "UNet2DModel";

/// `sample_size`: an int or an `[height, width]` pair (informational only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect([usize; 2]),
}

/// Declares a string-valued diffusers option as an enum, with parsing that names the field.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s $(, alias = $alias)*)] $var),+
        }
        impl $name {
            /// diffusers' spelling.
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$var => $s),+ }
            }
            /// Parse diffusers' spelling; `field` names the config key in the error.
            pub fn parse(field: &str, s: &str) -> Result<Self> {
                match s {
                    $($s $(| $alias)* => Ok(Self::$var),)+
                    _ => Err(Error::config(field, format!(
                        "unsupported value {s:?}; accepted: {}",
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

string_enum!(
    /// `down_block_types[i]`.
    DownBlockType {
        DownBlock2D = "DownBlock2D",
        AttnDownBlock2D = "AttnDownBlock2D",
    }
);
string_enum!(
    /// `up_block_types[i]`.
    UpBlockType {
        UpBlock2D = "UpBlock2D",
        AttnUpBlock2D = "AttnUpBlock2D",
    }
);
string_enum!(
    /// `time_embedding_type`.
    TimeEmbeddingType {
        /// Sinusoidal embedding of the timestep (`Timesteps`).
        Positional = "positional",
        /// `GaussianFourierProjection` of log(t) (score-SDE VE models); the output is divided by t.
        Fourier = "fourier",
        /// A learned table with `num_train_timesteps` rows, indexed by the integer timestep.
        Learned = "learned",
    }
);
string_enum!(
    /// `act_fn` (diffusers' `get_activation`).
    Activation {
        Silu = "silu" | "swish",
        Mish = "mish",
        Gelu = "gelu",
        Relu = "relu",
    }
);
string_enum!(
    /// `resnet_time_scale_shift` (ResnetBlock2D's `time_embedding_norm`).
    TimeScaleShift {
        /// `h = norm2(h + proj(temb))`.
        Default = "default",
        /// `h = norm2(h)·(1 + scale) + shift`, `[scale, shift] = proj(temb)`.
        ScaleShift = "scale_shift",
    }
);
string_enum!(
    /// `class_embed_type` (when non-null).
    ClassEmbedType {
        /// Labels are embedded like timesteps, then through a `TimestepEmbedding` MLP.
        Timestep = "timestep",
        /// Labels are already embeddings of width `time_embed_dim` and are added as they are.
        Identity = "identity",
    }
);
string_enum!(
    /// `downsample_type`.
    DownsampleType { Conv = "conv" }
);
string_enum!(
    /// `upsample_type`.
    UpsampleType { Conv = "conv" }
);
string_enum!(
    /// `mid_block_type` (when non-null).
    MidBlockType { UNetMidBlock2D = "UNetMidBlock2D" }
);

/// The configuration of a diffusers `UNet2DModel`. Serialises to diffusers' `config.json` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct UNet2DConfig {
    pub sample_size: Option<SampleSize>,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Map the input x to 2x - 1 first.
    pub center_input_sample: bool,
    pub time_embedding_type: TimeEmbeddingType,
    /// Width of the time embedding; `None` = 4·block_out_channels[0].
    pub time_embedding_dim: Option<usize>,
    /// `downscale_freq_shift` of the sinusoidal embedding.
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<DownBlockType>,
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: DownsampleType,
    pub upsample_type: UpsampleType,
    /// Training-time dropout; ignored (inference and deterministic training use none).
    pub dropout: f64,
    pub act_fn: Activation,
    /// Channels per attention head; `None` = one head over all channels.
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    /// Groups of the mid-block attention's group norm; `None` = `norm_num_groups` with
    /// `resnet_time_scale_shift = "default"` and no group norm with `"scale_shift"` (diffusers).
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: TimeScaleShift,
    pub add_attention: bool,
    pub class_embed_type: Option<ClassEmbedType>,
    pub num_class_embeds: Option<usize>,
    pub num_train_timesteps: Option<usize>,
}

impl Default for UNet2DConfig {
    /// diffusers' defaults.
    fn default() -> Self {
        RawConfig::default().try_into().expect("defaults are valid")
    }
}

/// `config.json` with every option as diffusers spells it, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    sample_size: Option<SampleSize>,
    in_channels: usize,
    out_channels: usize,
    center_input_sample: bool,
    time_embedding_type: String,
    time_embedding_dim: Option<usize>,
    freq_shift: f64,
    flip_sin_to_cos: bool,
    down_block_types: Vec<String>,
    mid_block_type: Option<String>,
    up_block_types: Vec<String>,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    mid_block_scale_factor: f64,
    downsample_padding: usize,
    downsample_type: String,
    upsample_type: String,
    dropout: f64,
    act_fn: String,
    attention_head_dim: Option<usize>,
    norm_num_groups: usize,
    attn_norm_num_groups: Option<usize>,
    norm_eps: f64,
    resnet_time_scale_shift: String,
    add_attention: bool,
    class_embed_type: Option<String>,
    num_class_embeds: Option<usize>,
    num_train_timesteps: Option<usize>,
}

impl Default for RawConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            class_name: None,
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: s(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: s(&[
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
        }
    }
}

impl TryFrom<RawConfig> for UNet2DConfig {
    type Error = Error;

    fn try_from(r: RawConfig) -> Result<Self> {
        if let Some(c) = r.class_name.as_deref().filter(|c| *c != CLASS_NAME) {
            return Err(Error::config(
                "_class_name",
                format!("{c:?} is not supported; accepted: {CLASS_NAME}"),
            ));
        }
        let list = |field: &str, v: &[String]| -> Vec<(String, String)> {
            v.iter()
                .enumerate()
                .map(|(i, s)| (format!("{field}[{i}]"), s.clone()))
                .collect()
        };
        let cfg = Self {
            sample_size: r.sample_size,
            in_channels: r.in_channels,
            out_channels: r.out_channels,
            center_input_sample: r.center_input_sample,
            time_embedding_type: TimeEmbeddingType::parse(
                "time_embedding_type",
                &r.time_embedding_type,
            )?,
            time_embedding_dim: r.time_embedding_dim,
            freq_shift: r.freq_shift,
            flip_sin_to_cos: r.flip_sin_to_cos,
            down_block_types: list("down_block_types", &r.down_block_types)
                .iter()
                .map(|(f, s)| DownBlockType::parse(f, s))
                .collect::<Result<_>>()?,
            mid_block_type: r
                .mid_block_type
                .as_deref()
                .map(|s| MidBlockType::parse("mid_block_type", s))
                .transpose()?,
            up_block_types: list("up_block_types", &r.up_block_types)
                .iter()
                .map(|(f, s)| UpBlockType::parse(f, s))
                .collect::<Result<_>>()?,
            block_out_channels: r.block_out_channels,
            layers_per_block: r.layers_per_block,
            mid_block_scale_factor: r.mid_block_scale_factor,
            downsample_padding: r.downsample_padding,
            downsample_type: DownsampleType::parse("downsample_type", &r.downsample_type)?,
            upsample_type: UpsampleType::parse("upsample_type", &r.upsample_type)?,
            dropout: r.dropout,
            act_fn: Activation::parse("act_fn", &r.act_fn)?,
            attention_head_dim: r.attention_head_dim,
            norm_num_groups: r.norm_num_groups,
            attn_norm_num_groups: r.attn_norm_num_groups,
            norm_eps: r.norm_eps,
            resnet_time_scale_shift: TimeScaleShift::parse(
                "resnet_time_scale_shift",
                &r.resnet_time_scale_shift,
            )?,
            add_attention: r.add_attention,
            class_embed_type: r
                .class_embed_type
                .as_deref()
                .map(|s| ClassEmbedType::parse("class_embed_type", s))
                .transpose()?,
            num_class_embeds: r.num_class_embeds,
            num_train_timesteps: r.num_train_timesteps,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl UNet2DConfig {
    /// Parse diffusers' `config.json` text. Errors are [`Error::Config`] naming the field (or
    /// [`Error::Json`] with `path` for malformed JSON).
    pub fn from_json(text: &str, path: &std::path::Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        raw.try_into()
    }

    /// diffusers' `config.json` value: every field plus `_class_name` and `_diffusers_version`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        v["_class_name"] = CLASS_NAME.into();
        v["_diffusers_version"] = DIFFUSERS_VERSION.into();
        v
    }

    /// Width of the time embedding (`time_embed_dim` in diffusers).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// Width of the time projection fed to `time_embedding` (`timestep_input_dim`).
    pub fn timestep_input_dim(&self) -> usize {
        match self.time_embedding_type {
            TimeEmbeddingType::Fourier => 2 * self.block_out_channels[0],
            _ => self.block_out_channels[0],
        }
    }

    /// Check the cross-field constraints diffusers relies on.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(Error::config("block_out_channels", "must not be empty"));
        }
        if self.down_block_types.len() != n {
            return Err(Error::config(
                "down_block_types",
                format!(
                    "has {} entries but block_out_channels has {n}",
                    self.down_block_types.len()
                ),
            ));
        }
        if self.up_block_types.len() != n {
            return Err(Error::config(
                "up_block_types",
                format!(
                    "has {} entries but down_block_types has {n}",
                    self.up_block_types.len()
                ),
            ));
        }
        let g = self.norm_num_groups;
        if g == 0 {
            return Err(Error::config("norm_num_groups", "must be positive"));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || !c.is_multiple_of(g) {
                return Err(Error::config(
                    format!("block_out_channels[{i}]"),
                    format!("{c} is not a positive multiple of norm_num_groups = {g}"),
                ));
            }
        }
        // Widths that carry attention: attention down/up blocks and the mid block.
        let rev = |i: usize| self.block_out_channels[n - 1 - i];
        let attn_widths = self
            .down_block_types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == DownBlockType::AttnDownBlock2D)
            .map(|(i, _)| self.block_out_channels[i])
            .chain(
                self.up_block_types
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| **t == UpBlockType::AttnUpBlock2D)
                    .map(|(i, _)| rev(i)),
            )
            .chain(
                (self.mid_block_type.is_some() && self.add_attention)
                    .then_some(self.block_out_channels[n - 1]),
            );
        if let Some(d) = self.attention_head_dim {
            for c in attn_widths {
                if d == 0 || !c.is_multiple_of(d) {
                    return Err(Error::config(
                        "attention_head_dim",
                        format!("{d} does not divide the attention width {c}"),
                    ));
                }
            }
        }
        if let Some(ag) = self.attn_norm_num_groups {
            let c = self.block_out_channels[n - 1];
            if ag == 0 || !c.is_multiple_of(ag) {
                return Err(Error::config(
                    "attn_norm_num_groups",
                    format!("{ag} does not divide the mid-block width {c}"),
                ));
            }
        }
        if self.time_embedding_type == TimeEmbeddingType::Learned
            && self.num_train_timesteps.is_none()
        {
            return Err(Error::config(
                "num_train_timesteps",
                "required with time_embedding_type = \"learned\"",
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err(Error::config(
                "in_channels",
                "channel counts must be positive",
            ));
        }
        Ok(())
    }
}

/// The diffusers release whose `UNet2DModel` this implementation follows.
pub const DIFFUSERS_VERSION: &str = "0.36.0";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<UNet2DConfig> {
        UNet2DConfig::from_json(s, std::path::Path::new("config.json"))
    }

    #[test]
    fn missing_keys_take_diffusers_defaults_and_extra_keys_are_ignored() {
        let c = parse(r#"{"_class_name": "UNet2DModel", "_diffusers_version": "0.36.0", "something_new": [1, 2]}"#).unwrap();
        assert_eq!(c, UNet2DConfig::default());
        assert_eq!(c.attention_head_dim, Some(8));
        assert_eq!(c.block_out_channels, vec![224, 448, 672, 896]);
        let c = parse(r#"{"attention_head_dim": null, "act_fn": "swish", "sample_size": [8, 16]}"#)
            .unwrap();
        assert_eq!(c.attention_head_dim, None);
        assert_eq!(c.act_fn, Activation::Silu);
        assert_eq!(c.sample_size, Some(SampleSize::Rect([8, 16])));
        // attention_head_dim only constrains widths that carry attention.
        let plain = r#"{"block_out_channels": [4, 12], "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#;
        let e = parse(plain).unwrap_err().to_string();
        assert!(e.contains("attention width 12"), "{e}");
        let plain = plain.replace(
            "\"norm_num_groups\": 4,",
            "\"norm_num_groups\": 4, \"add_attention\": false,",
        );
        parse(&plain).unwrap();
    }

    #[test]
    fn unknown_values_name_the_field_and_the_accepted_values() {
        let e = parse(r#"{"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("down_block_types[1]"), "{e}");
        assert!(
            e.contains("CrossAttnDownBlock2D") && e.contains("AttnDownBlock2D"),
            "{e}"
        );
        let e = parse(r#"{"act_fn": "tanh"}"#).unwrap_err().to_string();
        assert!(e.starts_with("act_fn:") && e.contains("silu"), "{e}");
        let e = parse(r#"{"_class_name": "UNet2DConditionModel"}"#).unwrap_err();
        assert!(matches!(e, Error::Config { ref field, .. } if field == "_class_name"));
    }

    #[test]
    fn round_trips_through_diffusers_json() {
        let c = UNet2DConfig {
            class_embed_type: Some(ClassEmbedType::Timestep),
            resnet_time_scale_shift: TimeScaleShift::ScaleShift,
            ..Default::default()
        };
        let v = c.to_json();
        assert_eq!(v["_class_name"], "UNet2DModel");
        assert_eq!(v["resnet_time_scale_shift"], "scale_shift");
        assert_eq!(v["down_block_types"][1], "AttnDownBlock2D");
        let back = parse(&v.to_string()).unwrap();
        assert_eq!(back, c);
        let back: UNet2DConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
