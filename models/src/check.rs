//! Checks of config values, shared by every section of the config files; each error names the
//! field.

use std::ops::{Bound, RangeBounds};

/// `field = value` must be a finite number in `range`.
pub fn number(field: &str, value: f64, range: impl RangeBounds<f64>) -> Result<(), String> {
    if value.is_finite() && range.contains(&value) {
        return Ok(());
    }
    let low = match range.start_bound() {
        Bound::Included(x) => format!("[{x}"),
        Bound::Excluded(x) => format!("({x}"),
        Bound::Unbounded => "(-inf".into(),
    };
    let high = match range.end_bound() {
        Bound::Included(x) => format!("{x}]"),
        Bound::Excluded(x) => format!("{x})"),
        Bound::Unbounded => "inf)".into(),
    };
    Err(format!("{field} = {value} must be a finite number in {low}, {high}"))
}

/// `field = value` must be a count from 1 to `max` (the largest this code is meant for;
/// beyond it a model or an image would not fit a machine's memory).
pub fn count(field: &str, value: usize, max: usize) -> Result<(), String> {
    if (1..=max).contains(&value) {
        return Ok(());
    }
    Err(format!("{field} = {value} must be between 1 and {max}"))
}

/// The most parameters a config may describe: 4 billion (16 GB in float32).
pub const MAX_PARAMETERS: f64 = 4e9;

/// A model of about `parameters` parameters must stay under [`MAX_PARAMETERS`].
pub fn parameters(parameters: f64) -> Result<(), String> {
    if parameters <= MAX_PARAMETERS {
        return Ok(());
    }
    Err(format!(
        "the model sizes describe about {:.1e} parameters ({:.0} GB in float32), more than the {MAX_PARAMETERS:.0e} \
         this zoo builds: check the widths and depths",
        parameters,
        parameters * 4.0 / 1e9
    ))
}
