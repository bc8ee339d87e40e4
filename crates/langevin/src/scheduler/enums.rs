//! Typed versions of the string-valued fields of diffusers' `scheduler_config.json`; each
//! parses from and writes to exactly the name diffusers uses.
use crate::{Error, Result};

macro_rules! diffusers_enum {
    ($(#[$m:meta])* $name:ident, $field:literal { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every accepted name, in diffusers' spelling.
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            /// The config key this enum is read from.
            pub const FIELD: &'static str = $field;
            /// diffusers' name for this value.
            pub fn name(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
            /// Parse diffusers' name; the error names the field and the accepted values.
            pub fn parse(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(Error::config(
                        $field,
                        format!("unknown value {s:?}; accepted: {}", Self::NAMES.join(", ")),
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> { Self::parse(s) }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

diffusers_enum!(
    /// The scheduler class, diffusers' `_class_name`.
    SchedulerClass, "_class_name" {
        Ddpm => "DDPMScheduler",
        Ddim => "DDIMScheduler",
        EulerDiscrete => "EulerDiscreteScheduler",
        EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
        HeunDiscrete => "HeunDiscreteScheduler",
        LmsDiscrete => "LMSDiscreteScheduler",
        KDpm2Discrete => "KDPM2DiscreteScheduler",
        DpmSolverMultistep => "DPMSolverMultistepScheduler",
        UniPcMultistep => "UniPCMultistepScheduler",
    }
);

diffusers_enum!(
    /// How β is laid over the training steps.
    BetaScheduleKind, "beta_schedule" {
        Linear => "linear",
        ScaledLinear => "scaled_linear",
        SquaredcosCapV2 => "squaredcos_cap_v2",
        Sigmoid => "sigmoid",
    }
);

diffusers_enum!(
    /// How inference timesteps are picked from the training range.
    TimestepSpacing, "timestep_spacing" {
        Linspace => "linspace",
        Leading => "leading",
        Trailing => "trailing",
    }
);

diffusers_enum!(
    /// What the model predicts.
    PredictionType, "prediction_type" {
        Epsilon => "epsilon",
        Sample => "sample",
        VPrediction => "v_prediction",
    }
);

diffusers_enum!(
    /// The last σ of the inference schedule.
    FinalSigmasType, "final_sigmas_type" {
        Zero => "zero",
        SigmaMin => "sigma_min",
    }
);

diffusers_enum!(
    /// σ interpolation between training steps (Euler).
    InterpolationType, "interpolation_type" {
        Linear => "linear",
        LogLinear => "log_linear",
    }
);

diffusers_enum!(
    /// Discrete or continuous (¼·ln σ) timesteps (Euler).
    TimestepType, "timestep_type" {
        Discrete => "discrete",
        Continuous => "continuous",
    }
);

diffusers_enum!(
    /// DPM-Solver variant.
    AlgorithmType, "algorithm_type" {
        DpmSolverPlusPlus => "dpmsolver++",
        DpmSolver => "dpmsolver",
        SdeDpmSolverPlusPlus => "sde-dpmsolver++",
        SdeDpmSolver => "sde-dpmsolver",
    }
);

diffusers_enum!(
    /// Second-order update rule: DPM-Solver's midpoint/heun, UniPC's bh1/bh2.
    SolverType, "solver_type" {
        Midpoint => "midpoint",
        Heun => "heun",
        Bh1 => "bh1",
        Bh2 => "bh2",
    }
);

diffusers_enum!(
    /// DDPM's posterior variance choice.
    VarianceType, "variance_type" {
        FixedSmall => "fixed_small",
        FixedSmallLog => "fixed_small_log",
        FixedLarge => "fixed_large",
        FixedLargeLog => "fixed_large_log",
        Learned => "learned",
        LearnedRange => "learned_range",
    }
);
