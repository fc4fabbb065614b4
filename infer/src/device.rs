//! Run-time choice among the backends compiled in by cargo feature.

use anyhow::{Context, Result, bail};
use burn::prelude::*;

/// Backend names, best first, with the cargo feature that compiles each in.
const BACKENDS: [(&str, &str); 4] = [("wgpu", "wgpu"), ("tch", "tch"), ("flex", "flex"), ("ndarray", "ndarray")];

/// The backends this binary was built with, best first.
pub fn compiled_backends() -> Vec<&'static str> {
    BACKENDS.iter().map(|(name, _)| *name).filter(|name| is_compiled(name)).collect()
}

fn is_compiled(name: &str) -> bool {
    match name {
        "wgpu" => cfg!(feature = "wgpu"),
        "tch" => cfg!(feature = "tch"),
        "flex" => cfg!(feature = "flex"),
        "ndarray" => cfg!(feature = "ndarray"),
        _ => false,
    }
}

/// The device named by `--device`, else by `BURN_DEVICE`, else the best compiled-in backend.
pub fn select_device(flag: Option<&str>) -> Result<Device> {
    let env = std::env::var("BURN_DEVICE").ok().filter(|s| !s.is_empty());
    match (flag, env) {
        (Some(name), _) => device_named(&name.to_ascii_lowercase()).context("--device"),
        (None, Some(name)) => device_named(&name.to_ascii_lowercase()).context("the environment variable BURN_DEVICE"),
        (None, None) => match compiled_backends().first() {
            Some(best) => device_named(best),
            None => bail!("no backend compiled in: build with one of the features flex, ndarray, wgpu, tch"),
        },
    }
}

/// The devices of a config's `train.devices` list (`wgpu:N` is the N-th discrete GPU).
pub fn devices_named(names: &[String]) -> Result<Vec<Device>> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| device_named(&n.to_ascii_lowercase()).with_context(|| format!("train.devices[{i}]")))
        .collect()
}

#[allow(deprecated, unreachable_code)]
fn device_named(name: &str) -> Result<Device> {
    #[cfg(feature = "wgpu")]
    if let Some(index) = name.strip_prefix("wgpu:") {
        let index: usize = index.parse().map_err(|_| anyhow::anyhow!("device `{name}`: expected wgpu:<GPU index>"))?;
        return Ok(Device::wgpu(DeviceKind::DiscreteGpu(index)));
    }
    let Some((_, feature)) = BACKENDS.iter().find(|(n, _)| *n == name) else {
        bail!(
            "unknown device `{name}`: choose one of {} (compiled in: {})",
            BACKENDS.map(|(n, _)| n).join(", "),
            compiled_backends().join(", ")
        );
    };
    if !is_compiled(name) {
        bail!(
            "device `{name}` is not compiled into this binary: rebuild with `--features {feature}` \
             (compiled in: {})",
            compiled_backends().join(", ")
        );
    }
    Ok(match name {
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        #[cfg(feature = "tch")]
        "tch" => Device::libtorch(),
        #[cfg(feature = "flex")]
        "flex" => Device::flex(),
        #[cfg(feature = "ndarray")]
        "ndarray" => Device::ndarray(),
        _ => unreachable!("`{name}` was checked to be compiled in"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_missing_backends_are_clear_errors() {
        let err = format!("{:#}", select_device(Some("cuda")).unwrap_err());
        assert!(err.contains("unknown device `cuda`"), "{err}");
        for (name, feature) in BACKENDS {
            if !is_compiled(name) {
                let err = format!("{:#}", select_device(Some(name)).unwrap_err());
                assert!(err.contains(&format!("--features {feature}")), "{err}");
            }
        }
    }

    #[test]
    fn flex_is_the_default_build() {
        assert!(compiled_backends().contains(&"flex"));
        assert!(select_device(Some("flex")).is_ok());
    }
}
