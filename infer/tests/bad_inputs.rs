//! Bad input, as a hostile user would give it, to the `zoo` binary: each case must end in a clear
//! error (exit status 1, `error: ...` naming the file or the field) and never in a panic, an
//! abort, a hang or a silent wrong answer.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn zoo(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zoo"));
    command.args(args).env_remove("BURN_DEVICE").envs(env.iter().copied());
    command.output().expect("zoo runs")
}

/// A config file: the tiny fixture's, with `model_lines` added to `[model]` (replacing the keys
/// they set) and `extra` sections after it.
fn config(dir: &Path, name: &str, fixture: &str, model_lines: &str, extra: &str) -> String {
    let base = std::fs::read_to_string(repo(&format!("models/tests/fixtures/{fixture}/config.toml"))).unwrap();
    let set: Vec<&str> = model_lines.lines().filter_map(|l| l.split('=').next()).map(str::trim).collect();
    let kept: Vec<&str> = base
        .lines()
        .filter(|l| !set.iter().any(|k| !k.is_empty() && l.split('=').next().unwrap().trim() == *k))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n{model_lines}\n{extra}\n", kept.join("\n"))).unwrap();
    path.display().to_string()
}

/// A float32 `.npy` file of `shape` holding `values` (or zeros).
fn npy(dir: &Path, name: &str, shape: &[usize], values: Option<Vec<f32>>) -> String {
    let path = dir.join(name);
    let values = values.unwrap_or_else(|| vec![0.0; shape.iter().product()]);
    zoo_infer::npy::write(&path, shape, &values).unwrap();
    path.display().to_string()
}

/// A `.npy` whose header declares `shape` over no data at all.
fn npy_header_only(dir: &Path, shape: &str) -> String {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    let path = dir.join("huge.npy");
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// The tiny ViT's safetensors with its first float made NaN.
fn nan_weights(dir: &Path) -> String {
    let mut bytes = std::fs::read(repo("models/tests/fixtures/vit_tiny/model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let (_, first) =
        header.as_object().unwrap().iter().find(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32").unwrap();
    let start = 8 + header_len + first["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = dir.join("nan.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

fn png(dir: &Path, name: &str, width: u32, height: u32) -> String {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(width, height, image::Rgb([200, 100, 50])).save(&path).unwrap();
    path.display().to_string()
}

/// A case: its name, the arguments, environment variables, and what the error must mention.
type Case<'a> = (&'a str, Vec<String>, Vec<(&'a str, &'a str)>, &'a [&'a str]);

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let vit_weights = repo("models/tests/fixtures/vit_tiny/model.safetensors").display().to_string();
    let vit_input = repo("models/tests/fixtures/vit_tiny/input.npy").display().to_string();
    let detr_weights = repo("models/tests/fixtures/detr_tiny/model.safetensors").display().to_string();
    let vit = config(dir, "vit.toml", "vit_tiny", "", "");
    let detr = config(dir, "detr.toml", "detr_tiny", "", "");
    let classify = |config: &str, input: &str| {
        ["classify", "--config", config, "--weights", &vit_weights, "--input-npy", input].map(str::to_string).to_vec()
    };
    let classify_image = |image: &str| {
        ["classify", "--config", &vit, "--weights", &vit_weights, "--image", image].map(str::to_string).to_vec()
    };
    let tnt_zero_inner = dir.join("tnt.toml");
    std::fs::write(
        &tnt_zero_inner,
        "[model]\narch = \"tnt\"\nimage_size = 32\npatch_size = 8\nnum_classes = 10\nembed_dim = 48\ninner_dim = 0\n\
         depth = 2\nnum_heads_inner = 1\nnum_heads_outer = 3\n",
    )
    .unwrap();
    let tnt_zero_inner = tnt_zero_inner.display().to_string();
    let model_config = |name: &str, lines: &str| classify(&config(dir, name, "vit_tiny", lines, ""), &vit_input);
    let data_config = |name: &str, lines: &str| classify(&config(dir, name, "vit_tiny", "", lines), &vit_input);
    let train_section = format!(
        "[train]\ntrain_dir = \"{d}\"\nval_dir = \"{d}\"\noutput_dir = \"{d}/out\"\nepochs = 2\nbatch_size = 4\nlr = 1e-3\n",
        d = dir.display()
    );
    let train_config = |name: &str, lines: &str| {
        let text = format!("{train_section}{lines}");
        ["train", "--config", &config(dir, name, "vit_tiny", "", &text)].map(str::to_string).to_vec()
    };

    // Truncated and degenerate images.
    let jpeg = std::fs::read(repo("datasets/tests/data/grace_hopper.jpg")).unwrap();
    let truncated = dir.join("truncated.jpg");
    std::fs::write(&truncated, &jpeg[..1000]).unwrap();
    let truncated = truncated.display().to_string();
    let thin = png(dir, "thin.png", 200_000, 1);
    let detr_thin = png(dir, "detr_thin.png", 4000, 1);
    std::fs::write(dir.join("labels.txt"), "a\nb\nc\n").unwrap();
    let eval_data = dir.join("eval_data");
    for class in ["a", "b", "c"] {
        png(&eval_data, &format!("{class}/1.png"), 40, 40);
    }
    std::fs::write(dir.join("gt_list.json"), "[]").unwrap();
    std::fs::write(dir.join("dets.json"), "[]").unwrap();

    std::fs::write(dir.join("empty_metrics.jsonl"), "").unwrap();
    let plot_out = dir.join("plot.png").display().to_string();
    let tnt = repo("models/tests/fixtures/tnt_tiny");
    let tnt_attention = |extra: &[&str]| {
        let mut args: Vec<String> = ["attention", "--config", "config.toml", "--weights", "model.safetensors"]
            .iter()
            .map(|a| if a.contains('.') { tnt.join(a).display().to_string() } else { a.to_string() })
            .collect();
        args.extend(["--input-npy".to_string(), tnt.join("input.npy").display().to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let npy_out = dir.join("attention_npy").display().to_string();
    let cases: Vec<Case> = vec![
        (
            "attention patch out of range",
            tnt_attention(&["--npy-out", &npy_out, "--patch", "99"]),
            vec![],
            &["--patch 99", "4 patches"],
        ),
        ("attention pictures of an npy", tnt_attention(&["--out", &npy_out]), vec![], &["--out", "--image"]),
        (
            "plot of no epochs",
            ["plot", &dir.join("empty_metrics.jsonl").display().to_string(), "--out", &plot_out]
                .map(str::to_string)
                .to_vec(),
            vec![],
            &["empty_metrics.jsonl", "no epochs"],
        ),
        ("mlp_ratio too small", model_config("c1.toml", "mlp_ratio = 0.001"), vec![], &["model.mlp_ratio", "c1.toml"]),
        ("mlp_ratio inf", model_config("c2.toml", "mlp_ratio = inf"), vec![], &["model.mlp_ratio"]),
        ("embed_dim 0", model_config("c3.toml", "embed_dim = 0"), vec![], &["model.embed_dim"]),
        ("image_size 0", model_config("c4.toml", "image_size = 0"), vec![], &["model.image_size"]),
        ("in_channels 0", model_config("c5.toml", "in_channels = 0"), vec![], &["model.in_channels"]),
        ("embed_dim 1e9", model_config("c6.toml", "embed_dim = 1000000002"), vec![], &["model.embed_dim"]),
        ("depth 1e6", model_config("c7.toml", "depth = 1000000"), vec![], &["model.depth"]),
        ("image_size 800000", model_config("c8.toml", "image_size = 800000"), vec![], &["model.image_size"]),
        ("layer_norm_eps -1", model_config("c9.toml", "layer_norm_eps = -1.0"), vec![], &["model.layer_norm_eps"]),
        ("type error", model_config("c10.toml", "embed_dim = \"wide\""), vec![], &["model.embed_dim", "c10.toml"]),
        ("std nan", data_config("c11.toml", "[data]\nstd = [nan, 0.5, 0.5]"), vec![], &["data.std[0]"]),
        ("mean inf", data_config("c12.toml", "[data]\nmean = [0.5, inf, 0.5]"), vec![], &["data.mean[1]"]),
        ("crop_pct 1e-7", data_config("c13.toml", "[data]\ncrop_pct = 1e-7"), vec![], &["data.crop_pct"]),
        (
            "short labels",
            data_config("c14.toml", "[data]\nlabels = \"labels.txt\""),
            vec![],
            &["labels.txt", "3 lines"],
        ),
        ("eval batch 0", data_config("c15.toml", "[eval]\nbatch_size = 0"), vec![], &["eval.batch_size"]),
        ("tnt inner_dim 0", classify(&tnt_zero_inner, &vit_input), vec![], &["model.inner_dim"]),
        (
            "detr zero channels",
            [
                "detect",
                "--config",
                &config(dir, "c17.toml", "detr_tiny", "backbone_channels = [0, 16, 32, 64]", ""),
                "--weights",
                &detr_weights,
                "--image",
                &detr_thin,
            ]
            .map(str::to_string)
            .to_vec(),
            vec![],
            &["model.backbone_channels[0]"],
        ),
        ("min_lr nan", train_config("c18.toml", "min_lr = nan\n"), vec![], &["train.min_lr"]),
        ("weight_decay -5", train_config("c19.toml", "weight_decay = -5.0\n"), vec![], &["train.weight_decay"]),
        (
            "bogus train device",
            train_config("c20.toml", "devices = [\"bogus\"]\n"),
            vec![],
            &["train.devices[0]", "bogus"],
        ),
        ("BURN_DEVICE bogus", classify(&vit, &vit_input), vec![("BURN_DEVICE", "bogus")], &["BURN_DEVICE", "bogus"]),
        ("ZOO_WINOGRAD off", classify(&vit, &vit_input), vec![("ZOO_WINOGRAD", "off")], &["ZOO_WINOGRAD", "off"]),
        (
            "--device bogus",
            [classify(&vit, &vit_input), vec!["--device".into(), "bogus".into()]].concat(),
            vec![],
            &["--device"],
        ),
        (
            "npy with NaN",
            classify(
                &vit,
                &npy(
                    dir,
                    "nan.npy",
                    &[1, 3, 32, 32],
                    Some({
                        let mut v = vec![0.0; 3 * 32 * 32];
                        v[5] = f32::NAN;
                        v
                    }),
                ),
            ),
            vec![],
            &["nan.npy", "not finite", "[0, 0, 0, 5]"],
        ),
        ("empty batch", classify(&vit, &npy(dir, "empty.npy", &[0, 3, 32, 32], None)), vec![], &["empty.npy", "empty"]),
        (
            "npy header 2^62",
            classify(&vit, &npy_header_only(dir, "(4611686018427387904, 3, 1, 1)")),
            vec![],
            &["huge.npy", "header"],
        ),
        (
            "NaN weights",
            ["classify", "--config", &vit, "--weights", &nan_weights(dir), "--input-npy", &vit_input]
                .map(str::to_string)
                .to_vec(),
            vec![],
            &["nan.safetensors", "not finite"],
        ),
        (
            "weights of another size",
            [
                "classify",
                "--config",
                &config(dir, "c21.toml", "vit_tiny", "embed_dim = 96", ""),
                "--weights",
                &vit_weights,
                "--input-npy",
                &vit_input,
            ]
            .map(str::to_string)
            .to_vec(),
            vec![],
            &["do not fit", "c21.toml", "[model]"],
        ),
        ("truncated JPEG", classify_image(&truncated), vec![], &["truncated.jpg", "truncated"]),
        ("1x200000 image", classify_image(&thin), vec![], &["thin.png", "200000x1"]),
        (
            "DETR on a 4000x1 image",
            ["detect", "--config", &detr, "--weights", &detr_weights, "--image", &detr_thin]
                .map(str::to_string)
                .to_vec(),
            vec![],
            &["detr_thin.png", "4000x1"],
        ),
        (
            "eval with other classes",
            ["eval", "--config", &vit, "--weights", &vit_weights, "--data", &eval_data.display().to_string()]
                .map(str::to_string)
                .to_vec(),
            vec![],
            &["eval_data", "3 class folders", "model.num_classes = 10"],
        ),
        (
            "ground truth that is a list",
            [
                "coco-eval",
                "--annotations",
                &dir.join("gt_list.json").display().to_string(),
                "--detections",
                &dir.join("dets.json").display().to_string(),
            ]
            .map(str::to_string)
            .to_vec(),
            vec![],
            &["gt_list.json"],
        ),
    ];

    let mut failures = Vec::new();
    for (name, args, env, expected) in &cases {
        let out = zoo(&args.iter().map(String::as_str).collect::<Vec<_>>(), env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let clear = out.status.code() == Some(1)
            && stderr.contains("error: ")
            && !stderr.contains("panicked")
            && expected.iter().all(|e| stderr.contains(e));
        eprintln!("{name}: {:?} {}", out.status.code(), stderr.trim());
        if !clear {
            failures.push(format!("{name}: status {:?}, expected {expected:?} in: {stderr}", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases unclear:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Valid input that used to go wrong: two inputs of one name both get their picture, a BMP is
/// read, and a reader that closes the pipe ends the program quietly.
#[test]
fn odd_but_valid_inputs_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = png(dir, "a/x.png", 64, 48);
    let b = png(dir, "b/x.png", 48, 64);
    let config = repo("models/tests/fixtures/detr_tiny/config.toml").display().to_string();
    let weights = repo("models/tests/fixtures/detr_tiny/model.safetensors").display().to_string();
    let out_dir = dir.join("drawn").display().to_string();
    let out = zoo(&["detect", "--config", &config, "--weights", &weights, "--image", &a, &b, "--out", &out_dir], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["x.detections.png", "x-2.detections.png"] {
        assert!(dir.join("drawn").join(name).is_file(), "{name}");
    }

    // BMP, listed among the formats, is compiled in.
    let bmp = dir.join("x.bmp");
    image::RgbImage::from_pixel(40, 30, image::Rgb([10, 200, 90])).save(&bmp).unwrap();
    let vit = repo("models/tests/fixtures/vit_tiny");
    let out = zoo(
        &[
            "classify",
            "--config",
            &vit.join("config.toml").display().to_string(),
            "--weights",
            &vit.join("model.safetensors").display().to_string(),
            "--image",
            &bmp.display().to_string(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // `zoo classify ... | head -0`: the reader is gone before the first line is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_zoo"))
        .args(["classify", "--config", &repo("models/tests/fixtures/vit_tiny/config.toml").display().to_string()])
        .args(["--weights", &repo("models/tests/fixtures/vit_tiny/model.safetensors").display().to_string()])
        .args(["--input-npy", &repo("models/tests/fixtures/vit_tiny/input.npy").display().to_string()])
        .env_remove("BURN_DEVICE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{:?}: {stderr}", out.status);
}
