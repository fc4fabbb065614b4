//! Image files to 8-bit RGB, with errors that name the file.

use std::path::{Path, PathBuf};

use image::RgbImage;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("image {0} does not exist")]
    NotFound(PathBuf),
    #[error("cannot read image {path}: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Decodes an image file as 8-bit RGB. Grayscale is replicated to three channels, alpha is
/// dropped (as PIL's `convert("RGB")` does), 16-bit samples are scaled to 8 bits.
pub fn load_rgb(path: &Path) -> Result<RgbImage, DataError> {
    if !path.is_file() {
        return Err(DataError::NotFound(path.to_path_buf()));
    }
    let decode_err = |message: String| DataError::Decode { path: path.to_path_buf(), message };
    let reader = image::ImageReader::open(path)
        .map_err(|e| decode_err(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(decode_err("not a recognised image format (expected PNG or JPEG)".into()));
    }
    let img = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(decode_err("the image is empty".into()));
    }
    Ok(img.to_rgb8())
}
