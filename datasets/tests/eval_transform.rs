//! The eval transform against timm's (PIL resize, torchvision crop and normalise) on real photos.

use std::path::{Path, PathBuf};

use zoo_datasets::config::DataConfig;
use zoo_datasets::{DataError, EvalTransform, load_rgb};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn timm_reference(stem: &str) -> Vec<f32> {
    let bytes = std::fs::read(data(&format!("{stem}.timm224.npy"))).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[3, 224, 224]);
    npy.into_vec().unwrap()
}

/// (max |ours - timm|, mean |ours - timm|) over the transformed tensor.
fn diff_to_timm(file: &str, stem: &str) -> (f32, f32) {
    let t = EvalTransform::new(224, &DataConfig::default());
    let ours = t.apply(&load_rgb(&data(file)).unwrap());
    let reference = timm_reference(stem);
    let diffs: Vec<f32> = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().copied().fold(0.0, f32::max);
    (max, diffs.iter().sum::<f32>() / diffs.len() as f32)
}

/// PNG decoding is lossless, so PIL's resampling reproduced in fixed point gives the same 8-bit
/// values; what remains is float rounding in the normalisation.
#[test]
fn png_matches_timm_exactly() {
    let (max, _) = diff_to_timm("chelsea.png", "chelsea");
    assert!(max <= 1e-6, "chelsea.png: max |ours - timm| = {max:e}");
}

/// JPEG decoders differ by design (IDCT and chroma upsampling are not specified bit-exactly):
/// libjpeg-turbo (PIL) and the `image` crate disagree by a few 8-bit levels on some pixels. One
/// level is 2/255 = 0.0078 after normalising with std 0.5; allow 4 levels at worst and a quarter
/// level on average.
#[test]
fn jpeg_matches_timm_within_decoder_differences() {
    let (max, mean) = diff_to_timm("grace_hopper.jpg", "grace_hopper");
    let level = 2.0 / 255.0;
    assert!(max <= 4.0 * level + 1e-6, "grace_hopper.jpg: max |ours - timm| = {max:e}");
    assert!(mean <= 0.25 * level, "grace_hopper.jpg: mean |ours - timm| = {mean:e}");
}

#[test]
fn resize_follows_torchvision_rounding() {
    let t = EvalTransform::new(224, &DataConfig::default());
    // chelsea is 451x300 (w x h): short side 300 -> 248, long side int(248 * 451 / 300) = 372.
    assert_eq!(t.resized_dims((300, 451)), (248, 372));
    assert_eq!(t.resized_dims((600, 512)), (290, 248));
}

fn write_tmp(name: &str, img: image::DynamicImage) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}_{name}", std::process::id()));
    img.save(&path).unwrap();
    path
}

#[test]
fn grayscale_rgba_and_16_bit_images_become_rgb() {
    let gray = image::GrayImage::from_fn(5, 4, |x, y| image::Luma([(x * 40 + y) as u8]));
    let rgb = load_rgb(&write_tmp("gray.png", gray.clone().into())).unwrap();
    assert_eq!(rgb.get_pixel(3, 2).0, [122, 122, 122]);

    let rgba = image::RgbaImage::from_fn(5, 4, |x, _| image::Rgba([x as u8, 10, 20, 0]));
    let rgb = load_rgb(&write_tmp("rgba.png", rgba.into())).unwrap();
    assert_eq!(rgb.get_pixel(4, 0).0, [4, 10, 20], "alpha is dropped, not composited");

    let wide = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(5, 4, |_, _| image::Rgb([65535, 0, 32896]));
    let rgb = load_rgb(&write_tmp("rgb16.png", image::DynamicImage::ImageRgb16(wide))).unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 128]);
}

#[test]
fn missing_and_corrupt_files_are_named() {
    let missing = data("no_such_image.png");
    let err = load_rgb(&missing).unwrap_err();
    assert!(matches!(err, DataError::NotFound(_)));
    assert!(err.to_string().contains("no_such_image.png"), "{err}");

    let not_image = std::env::temp_dir().join(format!("{}_not_an_image.jpg", std::process::id()));
    std::fs::write(&not_image, b"this is text, not a JPEG").unwrap();
    let err = load_rgb(&not_image).unwrap_err().to_string();
    assert!(err.contains("not_an_image.jpg") && err.contains("cannot read image"), "{err}");

    let truncated = std::env::temp_dir().join(format!("{}_truncated.png", std::process::id()));
    let png = std::fs::read(data("chelsea.png")).unwrap();
    std::fs::write(&truncated, &png[..png.len() / 3]).unwrap();
    let err = load_rgb(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.png"), "{err}");
}
