//! Run-time choice among the backends compiled in by cargo feature, by device name:
//!
//! | name | device |
//! |---|---|
//! | `flex` | pure-Rust CPU backend |
//! | `ndarray` | ndarray CPU backend |
//! | `tch`, `tch:cpu` | libtorch on the CPU |
//! | `tch:cuda`, `tch:cuda:N` | libtorch on the N-th CUDA GPU (from 0) |
//! | `tch:mps` | libtorch on Apple's Metal |
//! | `wgpu` | wgpu's default adapter (Vulkan, Metal or DX12; a discrete GPU first) |
//! | `wgpu:N`, `wgpu:discrete:N` | the N-th discrete GPU |
//! | `wgpu:integrated:N`, `wgpu:virtual:N` | the N-th integrated / virtual GPU |
//! | `wgpu:cpu` | a CPU adapter (mesa's lavapipe) |
//!
//! Every GPU name is checked against what the machine has before it is used: a device that
//! does not exist is an error naming the ones that do, not a panic at the first tensor.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::DeviceConfig;

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

pub use zoo_models::config::Precision;

/// The device named by `--device`, else by `BURN_DEVICE`, else the best compiled-in backend,
/// computing in `precision`.
pub fn select_device(flag: Option<&str>, precision: Precision) -> Result<Device> {
    let env = std::env::var("BURN_DEVICE").ok().filter(|s| !s.is_empty());
    let (name, origin) = match (flag, env) {
        (Some(name), _) => (name.to_ascii_lowercase(), "--device"),
        (None, Some(name)) => (name.to_ascii_lowercase(), "the environment variable BURN_DEVICE"),
        (None, None) => match compiled_backends().first() {
            Some(best) => (best.to_string(), "the default device"),
            None => bail!("no backend compiled in: build with one of the features flex, ndarray, wgpu, tch"),
        },
    };
    let device = device_named(&name).context(origin)?;
    with_precision(device, &name, precision)
}

/// Sets the device's float type; it must not have made a tensor yet.
pub fn with_precision(mut device: Device, name: &str, precision: Precision) -> Result<Device> {
    // Already so (the default, or a device named twice).
    if device.settings().float_dtype == precision.dtype() {
        return Ok(device);
    }
    if !device.supports_dtype(precision.dtype()) {
        bail!(
            "device `{name}` does not compute in {}: `zoo devices` lists the float types of each device",
            precision.name()
        );
    }
    device
        .configure(DeviceConfig::default().float_dtype(precision.dtype()))
        .map_err(|e| anyhow::anyhow!("device `{name}`: cannot compute in {}: {e:?}", precision.name()))?;
    Ok(device)
}

/// The devices of a config's `train.devices` list.
pub fn devices_named(names: &[String], precision: Precision) -> Result<Vec<Device>> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name = n.to_ascii_lowercase();
            device_named(&name)
                .and_then(|d| with_precision(d, &name, precision))
                .with_context(|| format!("train.devices[{i}]"))
        })
        .collect()
}

/// A device by its name (see the module's table).
// (`index` is unused, and code after the match unreachable, in builds without tch and wgpu.)
#[allow(deprecated, unreachable_code, unused_variables)]
pub fn device_named(name: &str) -> Result<Device> {
    let (backend, rest) = name.split_once(':').unwrap_or((name, ""));
    let Some((_, feature)) = BACKENDS.iter().find(|(n, _)| *n == backend) else {
        bail!(
            "unknown device `{name}`: choose one of {} (compiled in: {}; `zoo devices` lists this machine's)",
            BACKENDS.map(|(n, _)| n).join(", "),
            compiled_backends().join(", ")
        );
    };
    if !is_compiled(backend) {
        bail!(
            "device `{name}` is not compiled into this binary: rebuild with `--features {feature}` \
             (compiled in: {})",
            compiled_backends().join(", ")
        );
    }
    let bad_name = |expected: &str| anyhow::anyhow!("device `{name}`: expected {expected}");
    let index = |text: &str, expected: &str| text.parse::<usize>().map_err(|_| bad_name(expected));
    match backend {
        #[cfg(feature = "flex")]
        "flex" if rest.is_empty() => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        "ndarray" if rest.is_empty() => Ok(Device::ndarray()),
        #[cfg(feature = "tch")]
        "tch" => {
            let expected = "tch, tch:cpu, tch:cuda:N or tch:mps";
            let device = match rest.split_once(':').unwrap_or((rest, "")) {
                ("" | "cpu", "") => return Ok(Device::libtorch()),
                ("cuda", n) => Device::libtorch_cuda(if n.is_empty() { 0 } else { index(n, expected)? }),
                ("mps", "") => {
                    if !cfg!(target_os = "macos") {
                        bail!("device `{name}`: Metal (MPS) exists on Apple machines only");
                    }
                    return Ok(Device::libtorch_mps());
                }
                _ => return Err(bad_name(expected)),
            };
            // The CUDA devices libtorch sees; a CPU-only libtorch sees none.
            let cuda = libtorch_cuda_devices();
            if !cuda.contains(&device) {
                bail!(
                    "device `{name}`: libtorch sees {} CUDA GPU{} (a CPU-only libtorch, no driver, or CUDA_VISIBLE_DEVICES hides them)",
                    cuda.len(),
                    if cuda.len() == 1 { "" } else { "s" }
                );
            }
            Ok(device)
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            use burn::tensor::DeviceKind;
            let expected = "wgpu, wgpu:N, wgpu:discrete:N, wgpu:integrated:N, wgpu:virtual:N or wgpu:cpu";
            let kind = match rest.split_once(':').unwrap_or((rest, "")) {
                ("", "") => return Ok(Device::wgpu(DeviceKind::DefaultDevice)),
                ("cpu", "") => DeviceKind::Cpu,
                ("discrete", n) => DeviceKind::DiscreteGpu(index(n, expected)?),
                ("integrated", n) => DeviceKind::IntegratedGpu(index(n, expected)?),
                ("virtual", n) => DeviceKind::VirtualGpu(index(n, expected)?),
                (n, "") => DeviceKind::DiscreteGpu(index(n, expected)?),
                _ => return Err(bad_name(expected)),
            };
            let device = Device::wgpu(kind);
            let found = wgpu_devices();
            if !found.iter().any(|(d, _)| *d == device) {
                let names: Vec<String> = found.iter().map(|(_, n)| n.clone()).collect();
                bail!(
                    "device `{name}`: this machine has no such adapter (wgpu finds: {})",
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                );
            }
            Ok(device)
        }
        _ => Err(bad_name(&format!("`{backend}` alone"))),
    }
}

#[cfg(feature = "tch")]
#[allow(deprecated)]
fn libtorch_cuda_devices() -> Vec<Device> {
    use burn::tensor::DeviceType;
    let cpu = Device::libtorch();
    Device::enumerate(DeviceType::LibTorch).into_vec().into_iter().filter(|d| *d != cpu).collect()
}

/// wgpu's adapters, each with its zoo name.
#[cfg(feature = "wgpu")]
fn wgpu_devices() -> Vec<(Device, String)> {
    use burn::tensor::{DeviceKind, DeviceType};
    let kinds = |n: usize| {
        [DeviceKind::Cpu].into_iter().chain(
            (0..n).flat_map(|i| [DeviceKind::DiscreteGpu(i), DeviceKind::IntegratedGpu(i), DeviceKind::VirtualGpu(i)]),
        )
    };
    let found = Device::enumerate(DeviceType::Wgpu).into_vec();
    kinds(found.len())
        .filter_map(|kind| {
            let device = Device::wgpu(kind.clone());
            found.contains(&device).then(|| {
                let name = match kind {
                    DeviceKind::Cpu => "wgpu:cpu".to_string(),
                    DeviceKind::DiscreteGpu(i) => format!("wgpu:{i}"),
                    DeviceKind::IntegratedGpu(i) => format!("wgpu:integrated:{i}"),
                    DeviceKind::VirtualGpu(i) => format!("wgpu:virtual:{i}"),
                    _ => unreachable!("only these kinds are listed"),
                };
                (device, name)
            })
        })
        .collect()
}

/// `zoo devices`: every device this binary can use on this machine, probed, with what it is
/// and the float types it computes in.
// (Rows are pushed one backend feature at a time.)
#[allow(deprecated, clippy::vec_init_then_push)]
pub fn list_devices() -> String {
    let mut rows: Vec<(String, String, Device)> = Vec::new();
    #[cfg(feature = "flex")]
    rows.push(("flex".into(), "CPU, pure Rust (gemm, rayon)".into(), Device::flex()));
    #[cfg(feature = "ndarray")]
    rows.push(("ndarray".into(), "CPU, ndarray".into(), Device::ndarray()));
    #[cfg(feature = "tch")]
    {
        rows.push(("tch".into(), "CPU, libtorch".into(), Device::libtorch()));
        for (i, device) in libtorch_cuda_devices().into_iter().enumerate() {
            rows.push((format!("tch:cuda:{i}"), "CUDA GPU, libtorch".into(), device));
        }
    }
    #[cfg(feature = "wgpu")]
    for (device, name) in wgpu_devices() {
        let what = device.identity().map_or_else(|| "wgpu adapter".to_string(), |id| format!("{} (wgpu)", id.name));
        rows.push((name, what, device));
    }
    let mut text = format!("compiled in: {}\n", compiled_backends().join(", "));
    for (name, what, device) in rows {
        let precisions: Vec<&str> = [Precision::F32, Precision::F16, Precision::Bf16]
            .into_iter()
            .filter(|p| device.supports_dtype(p.dtype()))
            .map(Precision::name)
            .collect();
        text.push_str(&format!("{name:<20} {what:<50} {}\n", precisions.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_missing_backends_are_clear_errors() {
        let err = format!("{:#}", select_device(Some("cuda"), Precision::F32).unwrap_err());
        assert!(err.contains("unknown device `cuda`"), "{err}");
        for (name, feature) in BACKENDS {
            if !is_compiled(name) {
                let err = format!("{:#}", select_device(Some(name), Precision::F32).unwrap_err());
                assert!(err.contains(&format!("--features {feature}")), "{err}");
            }
        }
        let err = format!("{:#}", select_device(Some("flex:2"), Precision::F32).unwrap_err());
        assert!(err.contains("expected `flex` alone"), "{err}");
    }

    #[test]
    fn flex_is_the_default_build() {
        assert!(compiled_backends().contains(&"flex"));
        assert!(select_device(Some("flex"), Precision::F32).is_ok());
    }
}
