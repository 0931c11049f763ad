//! The one PNG writer of the report layer.
//!
//! Charts ([`crate::report::plot`]) and contact sheets ([`crate::report::contact_sheet`]) both
//! end as an [`RgbImage`] on disk. They share this writer so that every picture is written the
//! same way: encoded in memory with the `image` crate, then written atomically
//! ([`crate::util::fs::write_atomic`]: a temporary file beside `path`, synced and renamed over
//! it), so a viewer that reloads the file while a run regenerates it never sees half a PNG.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};

/// Why a PNG could not be written. Always names the destination path.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The image could not be encoded (a 0 x 0 image, for one); nothing was written.
    #[error("{path}: cannot encode PNG: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// Writing, syncing or renaming the file failed; `path` is as it was and no temporary file
    /// is left behind.
    #[error("{path}: cannot write PNG: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `img` as PNG to `path` atomically (see the module documentation).
pub fn write_png(path: &Path, img: &RgbImage) -> Result<(), PngError> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|source| PngError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    crate::util::fs::write_atomic(path, &bytes).map_err(|source| PngError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use std::ffi::OsString;
    use std::fs;

    fn names(dir: &Path) -> Vec<OsString> {
        let mut out: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn round_trips_and_overwrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let img = RgbImage::from_fn(7, 5, |x, y| Rgb([x as u8 * 30, y as u8 * 50, 200]));
        write_png(&path, &img).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8(), img);
        let other = RgbImage::from_pixel(3, 2, Rgb([1, 2, 3]));
        write_png(&path, &other).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8(), other);
        assert_eq!(names(dir.path()), vec![OsString::from("a.png")]);
    }

    #[test]
    fn errors_name_the_path_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::new(4, 4);

        let missing = dir.path().join("no-such-dir").join("a.png");
        let err = write_png(&missing, &img).unwrap_err();
        assert!(matches!(err, PngError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        assert!(names(dir.path()).is_empty());

        // The rename fails (the destination is a non-empty directory): the temp file goes.
        let taken = dir.path().join("taken.png");
        fs::create_dir(&taken).unwrap();
        fs::write(taken.join("keep"), b"x").unwrap();
        let err = write_png(&taken, &img).unwrap_err();
        assert!(matches!(err, PngError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&taken.display().to_string()),
            "{err}"
        );
        assert_eq!(names(dir.path()), vec![OsString::from("taken.png")]);

        let empty = dir.path().join("empty.png");
        let err = write_png(&empty, &RgbImage::new(0, 0)).unwrap_err();
        assert!(matches!(err, PngError::Encode { .. }), "{err:?}");
        assert!(err.to_string().contains("empty.png"), "{err}");
        assert_eq!(names(dir.path()), vec![OsString::from("taken.png")]);
    }
}
