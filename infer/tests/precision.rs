//! Half precision: on every compiled-in backend that computes in f16 or bf16, the tiny ViT, TNT
//! and DETR fixtures run by `zoo --precision f16|bf16` agree with their float32 references within
//! what the format keeps (relative to the largest reference value: 5e-3 for f16 with its 11-bit
//! significand, 4e-2 for bf16 with 8 bits); a backend without the type says so and stops; and
//! weights stored in f16 or bf16 load into a float32 model. Each run is its own process: a
//! device's float type is fixed for the life of a process.

use std::path::{Path, PathBuf};
use std::process::Command;

use zoo_infer::device::{Precision, compiled_backends, device_named};

mod common;
use common::{flat, read_npy, relative_diff};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

struct Case {
    name: &'static str,
    command: &'static str,
    config: PathBuf,
    weights: PathBuf,
    input: PathBuf,
    /// JSON field of the output and its reference.
    outputs: Vec<(&'static str, PathBuf)>,
}

/// The tiny fixtures; DETR is the Hub fixture (one unpadded image: `--input-npy` has no mask).
fn cases(dir: &Path) -> Vec<Case> {
    let fixture = |case: &str, file: &str| repo(&format!("models/tests/fixtures/{case}/{file}"));
    let classifier = |name: &'static str| Case {
        name,
        command: "classify",
        config: fixture(name, "config.toml"),
        weights: fixture(name, "model.safetensors"),
        input: fixture(name, "input.npy"),
        outputs: vec![("logits", fixture(name, "output.npy"))],
    };
    let hub = |file: &str| repo(&format!("infer/tests/data/hub/{file}"));
    let detr_config = dir.join("detr_hub_tiny.toml");
    std::fs::write(
        &detr_config,
        "[model]\narch = \"detr\"\nnum_classes = 91\nhidden_dim = 32\nnum_heads = 4\ndim_feedforward = 64\n\
         encoder_layers = 2\ndecoder_layers = 2\nnum_queries = 10\nbackbone_layers = [1, 1, 1, 1]\n\
         backbone_channels = [8, 16, 32, 64]\nbackbone_stem_width = 16\n",
    )
    .unwrap();
    let reference = |file: &str| hub(&format!("references/facebook--detr-resnet-50/{file}"));
    vec![
        classifier("vit_tiny"),
        classifier("tnt_tiny"),
        Case {
            name: "detr",
            command: "detect",
            config: detr_config,
            weights: hub("repos/facebook/detr-resnet-50/model.safetensors"),
            input: reference("input.npy"),
            outputs: vec![("pred_logits", reference("pred_logits.npy")), ("pred_boxes", reference("pred_boxes.npy"))],
        },
    ]
}

fn run(case: &Case, weights: &Path, device: &str, precision: &str) -> std::process::Output {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        case.command.to_string(),
        "--config".into(),
        path(&case.config),
        "--weights".into(),
        path(weights),
        "--input-npy".into(),
        path(&case.input),
        "--json".into(),
        "--device".into(),
        device.into(),
        "--precision".into(),
        precision.into(),
    ];
    Command::new(env!("CARGO_BIN_EXE_zoo"))
        .args(args)
        .env_remove("BURN_DEVICE")
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .expect("zoo runs")
}

/// Each output's relative difference to its reference.
fn differences(case: &Case, out: &std::process::Output) -> Vec<f32> {
    assert!(out.status.success(), "{}: {}", case.name, String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    case.outputs.iter().map(|(key, reference)| relative_diff(&flat(&json[*key]), &read_npy(reference))).collect()
}

#[test]
fn half_precision_agrees_with_float32_where_a_backend_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for backend in compiled_backends() {
        for (precision, tolerance) in [(Precision::F16, 5e-3), (Precision::Bf16, 4e-2)] {
            // Asking does not fix the device's float type in this process.
            let supported = device_named(backend).unwrap().supports_dtype(precision.dtype());
            for case in cases(dir.path()) {
                let out = run(&case, &case.weights, backend, precision.name());
                if !supported {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert_eq!(out.status.code(), Some(1), "{backend} {precision:?}: {stderr}");
                    assert!(stderr.contains(&format!("does not compute in {}", precision.name())), "{stderr}");
                    continue;
                }
                let diffs = differences(&case, &out);
                println!("{backend} {} {}: relative differences {diffs:?}", precision.name(), case.name);
                assert!(diffs.iter().all(|d| *d < tolerance), "{backend} {precision:?} {}: {diffs:?}", case.name);
                ran += 1;
            }
        }
    }
    // flex computes in f16 in every build.
    assert!(ran >= 3, "no backend ran a half-precision case");
}

/// A copy of a float32 safetensors file with every tensor stored as `dtype` ("F16" or "BF16").
fn narrowed_safetensors(from: &Path, to: &Path, dtype: &str) {
    let bytes = std::fs::read(from).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let data = &bytes[8 + header_len..];
    let mut out_header = serde_json::Map::new();
    let mut out_data = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            out_header.insert(name, info);
            continue;
        }
        assert_eq!(info["dtype"], "F32");
        let [start, end] = [0, 1].map(|i| info["data_offsets"][i].as_u64().unwrap() as usize);
        let begin = out_data.len();
        for chunk in data[start..end].chunks_exact(4) {
            let v = f32::from_le_bytes(chunk.try_into().unwrap());
            let half = match dtype {
                "F16" => half::f16::from_f32(v).to_bits(),
                _ => half::bf16::from_f32(v).to_bits(),
            };
            out_data.extend(half.to_le_bytes());
        }
        out_header.insert(
            name,
            serde_json::json!({ "dtype": dtype, "shape": info["shape"], "data_offsets": [begin, out_data.len()] }),
        );
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(out_header)).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(out_data);
    std::fs::write(to, file).unwrap();
}

#[test]
fn weights_stored_in_half_precision_load_into_float32() {
    let dir = tempfile::tempdir().unwrap();
    for case in cases(dir.path()) {
        for (dtype, tolerance) in [("F16", 1e-2), ("BF16", 6e-2)] {
            let weights = dir.path().join(format!("{}.{dtype}.safetensors", case.name));
            narrowed_safetensors(&case.weights, &weights, dtype);
            let diffs = differences(&case, &run(&case, &weights, "flex", "f32"));
            println!("{} weights {dtype} on flex f32: {diffs:?}", case.name);
            assert!(diffs.iter().all(|d| *d < tolerance), "{} {dtype}: {diffs:?}", case.name);
        }
    }
}

/// Training in bf16 (`train.precision`) follows float32's: the same two epochs from the same
/// seed, each epoch's training loss within bf16's tolerance of float32's.
#[test]
fn training_in_bf16_follows_float32() {
    let losses = |precision: &str| {
        let dir = tempfile::tempdir().unwrap();
        let config = common::tiny_classification_run(dir.path(), 4, 2, &format!("precision = \"{precision}\""));
        let out = Command::new(env!("CARGO_BIN_EXE_zoo"))
            .args(["train", "--config", config.to_str().unwrap(), "--device", "flex"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{precision}: {}", String::from_utf8_lossy(&out.stderr));
        let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
        metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let (f32_losses, bf16_losses) = (losses("f32"), losses("bf16"));
    assert_eq!(f32_losses.len(), 2);
    for (a, b) in f32_losses.iter().zip(&bf16_losses) {
        assert!((a - b).abs() / a < 4e-2, "f32 {f32_losses:?}, bf16 {bf16_losses:?}");
    }
    // bf16 keeps 8 significant bits: the loss is not float32's to the last digit.
    assert_ne!(f32_losses, bf16_losses);
}
