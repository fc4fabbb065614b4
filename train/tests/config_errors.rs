//! Config files: every shipped config parses; bad ones are errors naming the file and the field.

use std::path::Path;

use zoo_models::ModelConfig;
use zoo_train::ZooConfig;

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}_{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn shipped_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            ZooConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 8, "only {seen} configs found in {}", dir.display());
    let vit = ZooConfig::from_file(dir.join("vit_b16.toml")).unwrap();
    let ModelConfig::Vit(v) = vit.model else { panic!("vit_b16.toml is not a ViT") };
    assert_eq!((v.embed_dim, v.depth, v.num_heads, v.patch_size, v.layer_norm_eps), (768, 12, 12, 16, 1e-6));
}

#[test]
fn unknown_field_names_file_field_and_allowed_fields() {
    let path = write(
        "typo.toml",
        "[model]\narch = \"vit\"\nimage_size = 224\npatch_size = 16\nnum_classes = 10\nembed_dim = 64\ndepth = 2\nnum_heads = 4\nnum_head = 3\n",
    );
    let err = ZooConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("typo.toml") && err.contains("num_head") && err.contains("num_heads"), "{err}");
}

#[test]
fn missing_field_and_bad_value_are_named() {
    let path = write(
        "missing.toml",
        "[model]\narch = \"vit\"\nimage_size = 224\npatch_size = 16\nnum_classes = 10\nembed_dim = 64\nnum_heads = 4\n",
    );
    let err = ZooConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("missing.toml") && err.contains("depth"), "{err}");

    let path = write("arch.toml", "[model]\narch = \"resnet\"\n");
    let err = ZooConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("arch.toml") && err.contains("resnet") && err.contains("vit") && err.contains("detr"),
        "{err}"
    );

    let path = write(
        "pool.toml",
        "[model]\narch = \"vit\"\nimage_size = 224\npatch_size = 16\nnum_classes = 10\nembed_dim = 64\ndepth = 2\nnum_heads = 4\nglobal_pool = \"max\"\n",
    );
    let err = ZooConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("pool.toml") && err.contains("max") && err.contains("token") && err.contains("avg"), "{err}");

    let path = write(
        "heads.toml",
        "[model]\narch = \"vit\"\nimage_size = 224\npatch_size = 16\nnum_classes = 10\nembed_dim = 64\ndepth = 2\nnum_heads = 5\n",
    );
    let err = ZooConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("heads.toml") && err.contains("num_heads"), "{err}");
}
