//! The class rule, in one place: how many real classes a model has, which labels are valid,
//! and the null label (the last class-embedding row, trained by label dropout) that
//! classifier-free guidance uses.
use crate::model::{NetworkConfig, Run};
use crate::{Error, Result};

/// (number of real classes, their names) of a class-conditional model; 0 otherwise.
pub fn class_range(run: &Run) -> (usize, &[String]) {
    let names = &run.config.data.class_names;
    match &run.config.network {
        NetworkConfig::Unet(c) => match c.num_class_embeds {
            Some(_) if !names.is_empty() => (names.len(), names),
            Some(n) => (n, names),
            None => (0, names),
        },
        NetworkConfig::Mlp(_) => (0, names),
    }
}

/// `class` must name one of the model's classes (the null class is not one).
pub fn check_class(run: &Run, class: Option<u32>) -> Result<Option<u32>> {
    let Some(k) = class else { return Ok(None) };
    if !run.config.network.is_class_conditional() {
        return Err(Error::config(
            format!("--class {k}"),
            format!(
                "{} is not class-conditional (train with --class-cond)",
                run.dir.display()
            ),
        ));
    }
    let (n, names) = class_range(run);
    if k as usize >= n {
        let list = if names.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                names
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{i} {s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(Error::config(
            format!("--class {k}"),
            format!("out of range; the model has {n} classes, 0..{n}{list}"),
        ));
    }
    Ok(Some(k))
}

/// The null label of a class-conditional UNet trained with label dropout.
pub fn null_label(run: &Run) -> Result<u32> {
    match &run.config.network {
        NetworkConfig::Unet(c) => match c.num_class_embeds {
            Some(n) if n > run.config.data.class_names.len() => Ok((n - 1) as u32),
            _ => Err(Error::config(
                run.dir.display().to_string(),
                "guidance needs a class-conditional model trained with label dropout (langevin train --class-cond)",
            )),
        },
        NetworkConfig::Mlp(_) => Err(Error::config(
            "guidance",
            "guidance needs a class-conditional image model",
        )),
    }
}

/// The null label of a model being trained on a set with `num_classes` classes.
pub fn training_null_label(num_classes: usize) -> u32 {
    num_classes as u32
}
