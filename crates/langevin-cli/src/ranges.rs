//! Parse-time checks for numeric arguments: each parser names the allowed range, so clap reports
//! `invalid value '-1' for '--lr <LR>': must be a finite number > 0` before any work starts.

fn float(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !v.is_finite() {
        return Err(format!("must be a finite number (got {s})"));
    }
    Ok(v)
}

fn int<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("'{s}' is not {what}"))
}

/// A seed or step interval: a whole number ≥ 0.
pub fn whole(s: &str) -> Result<u64, String> {
    int(s, "a whole number ≥ 0")
}

/// A count: an integer ≥ 1.
pub fn count(s: &str) -> Result<usize, String> {
    let v: usize = int(s, "a whole number")?;
    if v == 0 {
        return Err("must be an integer ≥ 1".into());
    }
    Ok(v)
}

/// An image side in pixels: an integer ≥ 1.
pub fn pixels(s: &str) -> Result<u32, String> {
    let v: u32 = int(s, "a whole number of pixels")?;
    if v == 0 {
        return Err("must be an integer ≥ 1".into());
    }
    Ok(v)
}

/// Sampler steps (noise levels, Langevin updates): an integer in 1..=100000.
pub fn levels(s: &str) -> Result<usize, String> {
    let v: usize = int(s, "a whole number")?;
    if !(1..=100_000).contains(&v) {
        return Err("must be an integer in 1..=100000".into());
    }
    Ok(v)
}

/// A step count: an integer ≥ 1.
pub fn steps(s: &str) -> Result<u64, String> {
    let v: u64 = int(s, "a whole number")?;
    if v == 0 {
        return Err("must be an integer ≥ 1".into());
    }
    Ok(v)
}

/// A sample count for statistics that need a spread: an integer ≥ 2.
pub fn count2(s: &str) -> Result<usize, String> {
    let v: usize = int(s, "a whole number")?;
    if v < 2 {
        return Err("must be an integer ≥ 2 (a spread needs two samples)".into());
    }
    Ok(v)
}

/// A class label: a non-negative integer (checked against the model's classes later).
pub fn label(s: &str) -> Result<u32, String> {
    int(s, "a class number (0, 1, …)")
}

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if v <= 0.0 {
        return Err("must be a finite number > 0".into());
    }
    Ok(v)
}

/// A finite number ≥ 0.
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if v < 0.0 {
        return Err("must be a finite number ≥ 0".into());
    }
    Ok(v)
}

/// A probability in [0, 1].
pub fn unit(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if !(0.0..=1.0).contains(&v) {
        return Err("must be in [0, 1]".into());
    }
    Ok(v)
}

/// A decay rate in [0, 1).
pub fn decay(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if !(0.0..1.0).contains(&v) {
        return Err("must be in [0, 1)".into());
    }
    Ok(v)
}

/// A number strictly between 0 and 1.
pub fn open_unit(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if v <= 0.0 || v >= 1.0 {
        return Err("must be in (0, 1)".into());
    }
    Ok(v)
}

/// An integer factor ≥ 2.
pub fn factor(s: &str) -> Result<usize, String> {
    let v: usize = int(s, "a whole number")?;
    if v < 2 {
        return Err("must be an integer ≥ 2".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parser_rejects_its_boundary_and_names_the_range() {
        assert_eq!(count("3"), Ok(3));
        assert!(count("0").unwrap_err().contains("≥ 1"));
        assert!(count("-1").unwrap_err().contains("not a whole number"));
        assert!(count2("1").unwrap_err().contains("≥ 2"));
        assert!(steps("0").is_err());
        assert!(positive("0").unwrap_err().contains("> 0"));
        assert!(positive("nan").unwrap_err().contains("finite"));
        assert!(positive("inf").is_err());
        assert_eq!(positive("1e-3"), Ok(1e-3));
        assert!(non_negative("-0.5").unwrap_err().contains("≥ 0"));
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(unit("1.5").unwrap_err().contains("[0, 1]"));
        assert_eq!(unit("1"), Ok(1.0));
        assert!(decay("1").unwrap_err().contains("[0, 1)"));
        assert!(decay("2").is_err());
        assert!(open_unit("0").unwrap_err().contains("(0, 1)"));
        assert!(factor("1").unwrap_err().contains("≥ 2"));
        assert!(label("x").is_err());
    }
}
