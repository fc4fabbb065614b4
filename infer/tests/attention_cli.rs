//! `zoo attention` end to end: the `.npy` files it writes are named and shaped as documented and
//! hold the references' probabilities, and the pictures it draws exist at the photos' sizes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn zoo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zoo")).args(args).env_remove("BURN_DEVICE").output().expect("zoo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "zoo {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `zoo attention` with a fixture's config and weights, then `args`.
fn attention(case: &str, args: &[&str]) -> String {
    let fixture = repo(&format!("models/tests/fixtures/{case}"));
    let (config, weights) = (fixture.join("config.toml"), fixture.join("model.safetensors"));
    let mut all = vec!["attention", "--config", config.to_str().unwrap(), "--weights", weights.to_str().unwrap()];
    all.extend(args);
    zoo(&all)
}

fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    (npy.shape().to_vec(), npy.into_vec().unwrap())
}

/// Every reference file of the fixture has its twin in `dir`, of the same shape, within 1e-5.
fn same_as_fixture(case: &str, dir: &Path) {
    let reference = repo(&format!("models/tests/fixtures/{case}/attention"));
    let mut names: Vec<_> = std::fs::read_dir(&reference).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    let written: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(written.len(), names.len(), "{case}: {written:?} against {names:?}");
    for name in names {
        let (shape, expected) = read_npy(&reference.join(&name));
        let (ours_shape, ours) = read_npy(&dir.join(&name));
        assert_eq!(ours_shape, shape, "{case} {name:?}");
        let diff = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "{case} {name:?}: {diff:e}");
    }
}

#[test]
fn classifiers_write_probabilities_and_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = repo("datasets/tests/data/grace_hopper.jpg");
    let (w, h) = image::image_dimensions(&photo).unwrap();
    for case in ["vit_tiny", "tnt_tiny"] {
        let npy_dir = tmp.path().join(case).join("npy");
        let input = repo(&format!("models/tests/fixtures/{case}/input.npy"));
        attention(case, &["--input-npy", input.to_str().unwrap(), "--npy-out", npy_dir.to_str().unwrap()]);
        same_as_fixture(case, &npy_dir);

        let out = tmp.path().join(case).join("pictures");
        let stdout = attention(case, &["--image", photo.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let mut expected = vec!["grace_hopper.rollout.png".to_string(), "grace_hopper.sheet.png".to_string()];
        let heads = if case == "vit_tiny" { 3 } else { 4 };
        expected.extend((0..heads).map(|h| format!("grace_hopper.last_layer_head_{h}.png")));
        if case == "tnt_tiny" {
            expected.push("grace_hopper.inner_attention_patch_3.png".into());
        }
        for name in &expected {
            let path = out.join(name);
            assert!(stdout.contains(name), "{case}: {name} not listed in {stdout}");
            let dims = image::image_dimensions(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !name.ends_with("sheet.png") {
                assert_eq!(dims, (w, h), "{case} {name}: the photo's size");
            }
        }
    }
}

#[test]
fn detr_writes_probabilities_and_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = repo("datasets/tests/data/grace_hopper.jpg");
    let (w, h) = image::image_dimensions(&photo).unwrap();
    let npy_dir = tmp.path().join("npy");
    let out = tmp.path().join("pictures");
    // Random weights score every class about equally: threshold 0 draws every query.
    let stdout = attention(
        "detr_tiny",
        &[
            "--image",
            photo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--npy-out",
            npy_dir.to_str().unwrap(),
            "--threshold",
            "0",
            "--points",
            "10,20",
            "100,200",
        ],
    );
    for kind in ["encoder_attn", "decoder_self_attn", "decoder_cross_attn"] {
        for i in 0..2 {
            let (shape, probs) = read_npy(&npy_dir.join(format!("{kind}_{i}.npy")));
            assert_eq!(shape.len(), 4, "{kind}_{i}");
            assert_eq!(&shape[..2], &[1, 4], "{kind}_{i}: one image, four heads");
            for row in probs.chunks(shape[3] as usize) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{kind}_{i}: a row sums to 1");
            }
        }
    }
    let queries = 10;
    let mut expected: Vec<String> = (0..queries).map(|k| format!("grace_hopper.object{k}.png")).collect();
    expected.extend(["grace_hopper.encoder_point0.png".into(), "grace_hopper.encoder_point1.png".into()]);
    for name in &expected {
        assert!(stdout.contains(name), "{name} not listed in {stdout}");
        assert_eq!(image::image_dimensions(out.join(name)).unwrap(), (w, h), "{name}: the photo's size");
    }
    assert!(out.join("grace_hopper.sheet.png").is_file());
}
