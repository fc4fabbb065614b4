//! Weight import: reads a checkpoint (`.safetensors`, PyTorch `.pth`/`.pt`/`.bin`, or the zoo's
//! own burnpack `.bpk`), lets the model translate the reference's names and layouts into its own,
//! and applies every tensor strictly: a missing or unexpected key or a wrong shape is an error
//! that lists the keys, never a silent partial load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use burn::store::{
    BurnpackStore, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
    bridge,
};
use burn::tensor::{Bytes, DType};

/// Checkpoint tensors by name, in the reference's (PyTorch) layout.
pub type Tensors = BTreeMap<String, TensorData>;

/// A module that can take the tensors of its reference implementation's checkpoints.
pub trait Checkpoint: Module + Sized {
    /// Renames, splits or resamples the checkpoint's tensors so that each key is this module's
    /// parameter path, still in PyTorch layout (`Linear` weights `[out, in]`, norms `weight`/`bias`).
    fn adapt_checkpoint(&self, tensors: Tensors) -> Result<Tensors, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("weights file {0} does not exist")]
    NotFound(PathBuf),
    #[error("unsupported weights file {0}: expected .safetensors, .pth, .pt, .bin or .bpk")]
    Format(PathBuf),
    #[error("cannot read weights {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("weights {path} do not fit this model: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error("weights {path} are not finite: {message}")]
    NotFinite { path: PathBuf, message: String },
    #[error("cannot write weights {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Top-level entries under which training scripts nest the state dict, tried in this order.
const STATE_DICT_WRAPPERS: [&str; 4] = ["model", "state_dict", "model_state_dict", "module"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    Pytorch,
    Burnpack,
}

fn format_of(path: &Path) -> Result<Format, ImportError> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("safetensors") => Ok(Format::Safetensors),
        Some("pth" | "pt" | "bin" | "ckpt") => Ok(Format::Pytorch),
        Some("bpk") => Ok(Format::Burnpack),
        _ => Err(ImportError::Format(path.to_path_buf())),
    }
}

/// Loads weights from any supported file into `model`, strictly.
pub fn load_weights<M: Checkpoint>(model: M, path: &Path) -> Result<M, ImportError> {
    load_weights_with_head(model, path, None)
}

/// Loads a checkpoint for fine-tuning: when the checkpoint's classifier (`<head>.weight`, PyTorch
/// layout `[classes, dim]`) has another number of classes than `num_classes`, its head tensors are
/// left out and the model keeps its freshly initialised head; everything else loads strictly.
pub fn load_weights_for_finetuning<M: Checkpoint>(
    model: M,
    path: &Path,
    head: &str,
    num_classes: usize,
) -> Result<M, ImportError> {
    load_weights_with_head(model, path, Some((head, num_classes)))
}

fn load_weights_with_head<M: Checkpoint>(
    mut model: M,
    path: &Path,
    new_head: Option<(&str, usize)>,
) -> Result<M, ImportError> {
    if !path.is_file() {
        return Err(ImportError::NotFound(path.to_path_buf()));
    }
    let read_err = |message: String| ImportError::Read { path: path.to_path_buf(), message };
    let mut skipped_head: Option<String> = None;
    let mut result = match format_of(path)? {
        Format::Burnpack => {
            // Read the whole file now: a file-backed store would read each tensor lazily on first
            // use, from whatever the path holds by then.
            let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
            let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)));
            model.load_from(&mut store).map_err(|e| read_err(e.to_string()))?
        }
        format => {
            let tensors = read_checkpoint(path, format)?;
            let mut tensors = model
                .adapt_checkpoint(tensors)
                .map_err(|message| ImportError::Mismatch { path: path.to_path_buf(), message })?;
            if let Some((head, classes)) = new_head {
                let prefix = format!("{head}.");
                let ckpt_classes = tensors.get(&format!("{head}.weight")).map(|w| w.shape()[0]);
                if ckpt_classes.is_some_and(|c| c != classes) {
                    tensors.retain(|k, _| !k.starts_with(&prefix));
                    skipped_head = Some(prefix);
                }
            }
            let packs = tensors.into_iter().map(|(k, d)| bridge::from_data(d, k, None)).collect();
            let adapter: Box<dyn ModuleAdapter> = Box::new(PyTorchToBurnAdapter);
            model.apply(packs, None, Some(adapter), false)
        }
    };
    if let Some(prefix) = skipped_head {
        result.missing.retain(|(k, _)| !k.starts_with(&prefix));
    }
    check_applied(&result, path)?;
    check_finite(&model, path)?;
    Ok(in_device_precision(model))
}

/// The checkpoint's tensors keep the file's float type (float32 after conversion); a model on a
/// device configured for f16 or bf16 gets them cast to it, so that every operand of an op has
/// the device's type.
fn in_device_precision<M: Module>(model: M) -> M {
    struct Cast(burn::tensor::FloatDType);
    impl burn::module::ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            if param.val().dtype() == dtype.into() { param } else { param.map(|t| t.cast(dtype)) }
        }
    }
    let Some(device) = model.devices().into_iter().next() else { return model };
    let dtype = device.settings().float_dtype;
    if dtype == burn::tensor::FloatDType::F32 { model } else { model.map(&mut Cast(dtype)) }
}

/// Every float parameter must be finite: one NaN or infinity in the weights turns every output
/// into NaN, which a classifier would otherwise report as "class 0" without an error.
fn check_finite<M: ModuleSnapshot>(model: &M, path: &Path) -> Result<(), ImportError> {
    let bad = non_finite_parameters(model);
    if bad.is_empty() {
        return Ok(());
    }
    let message = format!("{} parameters hold NaN or infinite values: {}", bad.len(), list(&bad));
    Err(ImportError::NotFinite { path: path.to_path_buf(), message })
}

/// The float parameters of `model` that hold NaN or infinite values, as `name (count values)`.
pub fn non_finite_parameters<M: ModuleSnapshot>(model: &M) -> Vec<String> {
    let mut bad = Vec::new();
    for pack in model.collect(None, None, false) {
        let name = pack.name.clone();
        let count = match bridge::into_data(pack) {
            Ok(data) if data.dtype().is_float() => data.iter::<f32>().filter(|v| !v.is_finite()).count(),
            Ok(_) => 0,
            Err(e) => {
                bad.push(format!("{name} (unreadable: {e})"));
                continue;
            }
        };
        if count > 0 {
            bad.push(format!("{name} ({count} values)"));
        }
    }
    bad
}

fn read_checkpoint(path: &Path, format: Format) -> Result<Tensors, ImportError> {
    let read_err = |message: String| ImportError::Read { path: path.to_path_buf(), message };
    let packs = match format {
        Format::Safetensors => {
            let mut store = SafetensorsStore::from_file(path);
            store.get_all_tensors().map_err(|e| read_err(e.to_string()))?.clone()
        }
        Format::Pytorch => {
            // A state dict nested under a wrapper key (`{"model": {...}}`) is read from there;
            // a flat state dict has no such entry and is read whole.
            let nested = STATE_DICT_WRAPPERS.iter().find_map(|key| {
                let mut store = PytorchStore::from_file(path).with_top_level_key(*key).map_indices_contiguous(false);
                store.get_all_tensors().ok().filter(|t| !t.is_empty()).cloned()
            });
            match nested {
                Some(t) => t,
                None => {
                    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
                    store.get_all_tensors().map_err(|e| read_err(e.to_string()))?.clone()
                }
            }
        }
        Format::Burnpack => unreachable!("burnpack files are applied directly"),
    };
    if packs.is_empty() {
        return Err(read_err("the file holds no tensors".into()));
    }
    packs
        .into_iter()
        .map(|(name, pack)| {
            let data = bridge::into_data(pack).map_err(|e| read_err(format!("tensor {name}: {e}")))?;
            let data = match data.dtype() {
                DType::F64 | DType::F16 | DType::BF16 => data.convert::<f32>(),
                _ => data,
            };
            Ok((name, data))
        })
        .collect()
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(", ... ({} in all)", items.len()));
    }
    s
}

fn check_applied(result: &burn::store::ApplyResult, path: &Path) -> Result<(), ImportError> {
    let mut problems = Vec::new();
    if !result.errors.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        problems.push(format!("{} tensors do not fit: {}", errors.len(), list(&errors)));
    }
    if !result.missing.is_empty() {
        let missing: Vec<String> = result.missing.iter().map(|(k, _)| k.clone()).collect();
        problems.push(format!("{} model keys missing from the file: {}", missing.len(), list(&missing)));
    }
    if !result.unused.is_empty() {
        problems.push(format!("{} unexpected keys in the file: {}", result.unused.len(), list(&result.unused)));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ImportError::Mismatch { path: path.to_path_buf(), message: problems.join("; ") })
    }
}

/// Writes the model's weights as burnpack, atomically (a temporary file renamed into place).
pub fn save_burnpack<M: Module>(model: &M, path: &Path) -> Result<(), ImportError> {
    let write_err = |message: String| ImportError::Write { path: path.to_path_buf(), message };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| write_err(e.to_string()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("weights"),
        std::process::id()
    ));
    let mut store = BurnpackStore::from_file(&tmp).auto_extension(false).overwrite(true);
    if let Err(e) = model.save_into(&mut store) {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e.to_string()));
    }
    std::fs::rename(&tmp, path).map_err(|e| write_err(e.to_string()))
}
