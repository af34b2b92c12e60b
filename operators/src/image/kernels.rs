//! Image kernels on single images: decode (with DCT-domain downscaling for JPEG), resize, crop,
//! flip, rotate, grayscale and encode. The Arrow UDFs in [`super::udfs`] map these over
//! batches.

use std::cell::RefCell;
use std::io::Cursor;

use fast_image_resize::images::{Image as FirImage, ImageRef as FirImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::png::PngEncoder;
use image::{DynamicImage, ExtendedColorType, ImageEncoder, ImageFormat};
use quiver_engine::image::{Image, ImageRef};
use quiver_engine::{bail, err};

use super::jpeg;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not a decodable image.
    #[error("cannot decode image ({len} bytes, starts with {head:?}): {reason}")]
    Decode {
        /// Size of the input.
        len: usize,
        /// The first bytes, to recognise a text or HTML file posing as an image.
        head: String,
        /// The decoder's message.
        reason: String,
    },
    /// An argument is out of range.
    #[error("{0}")]
    Argument(String),
    /// Encoding failed.
    #[error("cannot encode image: {0}")]
    Encode(String),
}

type Result<T> = std::result::Result<T, ImageError>;

fn decode_error(bytes: &[u8], reason: impl ToString) -> ImageError {
    let head: String = bytes
        .iter()
        .take(8)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    ImageError::Decode {
        len: bytes.len(),
        head,
        reason: reason.to_string(),
    }
}

/// How to crop before resizing in [`decode_resize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// Keep the whole image.
    None,
    /// The largest centred square.
    CenterSquare,
    /// A centred window of this size in source pixels (clamped to the image).
    Center(u32, u32),
}

/// Decodes an encoded image (JPEG, PNG, BMP, GIF, WebP, TIFF) into 8-bit HWC pixels with 1 to 4
/// channels.
pub fn decode(bytes: &[u8]) -> Result<Image> {
    if is_jpeg(bytes)
        && let Some(decoded) = jpeg::decode(bytes, |header| (8, header.whole(8)))
    {
        return decoded
            .map(|d| d.into_image())
            .map_err(|e| decode_error(bytes, e));
    }
    let format = image::guess_format(bytes).map_err(|e| decode_error(bytes, e))?;
    let dynamic =
        image::load_from_memory_with_format(bytes, format).map_err(|e| decode_error(bytes, e))?;
    Ok(from_dynamic(dynamic))
}

fn is_jpeg(bytes: &[u8]) -> bool {
    image::guess_format(bytes).ok() == Some(ImageFormat::Jpeg)
}

fn from_dynamic(dynamic: DynamicImage) -> Image {
    let (width, height) = (dynamic.width(), dynamic.height());
    let (channels, data) = match dynamic {
        DynamicImage::ImageLuma8(b) => (1, b.into_raw()),
        DynamicImage::ImageLumaA8(b) => (2, b.into_raw()),
        DynamicImage::ImageRgb8(b) => (3, b.into_raw()),
        DynamicImage::ImageRgba8(b) => (4, b.into_raw()),
        other if other.color().has_alpha() && other.color().has_color() => {
            (4, other.into_rgba8().into_raw())
        }
        other if other.color().has_alpha() => (2, other.into_luma_alpha8().into_raw()),
        other if other.color().has_color() => (3, other.into_rgb8().into_raw()),
        other => (1, other.into_luma8().into_raw()),
    };
    Image {
        width,
        height,
        channels,
        data,
    }
}

thread_local! {
    // TurboJPEG handles are cheap to reuse and not `Sync`: one per worker thread.
    static COMPRESSOR: RefCell<Option<turbojpeg::Compressor>> = const { RefCell::new(None) };
}

/// DCT scales (in eighths) that JPEGs are decoded at, smallest first.
const DCT_EIGHTHS: [u32; 4] = [1, 2, 4, 8];

/// Decodes, crops and resizes in one step. A JPEG is decoded at the smallest DCT scale at which
/// the crop still covers the output (as libjpeg's `scale_denom` and Pillow's `draft` do), and
/// only the rows and columns that the resize reads.
pub fn decode_resize(bytes: &[u8], crop: Crop, width: u32, height: u32) -> Result<Image> {
    check_size(width, height)?;
    let planned = if is_jpeg(bytes) {
        jpeg::decode(bytes, |header| plan(header, crop, width, height))
    } else {
        None
    };
    let Some(decoded) = planned else {
        let decoded = decode(bytes)?;
        let size = (decoded.width, decoded.height);
        let [left, top, w, h] = scaled_region(crop, size, size);
        return resize_region(decoded.as_ref(), left, top, w, h, width, height);
    };
    let decoded = decoded.map_err(|e| decode_error(bytes, e))?;
    let header = &decoded.header;
    let source = (header.width, header.height);
    let [left, top, w, h] = scaled_region(crop, source, header.scaled(decoded.eighths));
    let (x, y) = (decoded.window.x as f64, decoded.window.y as f64);
    let image = decoded.into_image();
    resize_region(image.as_ref(), left - x, top - y, w, h, width, height)
}

/// The smallest DCT scale at which `crop` still covers `width` x `height`, and the window that
/// the resize reads at that scale: the crop and the filter's reach around it.
fn plan(header: &jpeg::Header, crop: Crop, width: u32, height: u32) -> (u32, jpeg::Window) {
    let region =
        |eighths| scaled_region(crop, (header.width, header.height), header.scaled(eighths));
    let eighths = DCT_EIGHTHS
        .into_iter()
        .find(|&m| {
            let [_, _, w, h] = region(m);
            w >= width as f64 && h >= height as f64
        })
        .unwrap_or(8);
    let [left, top, w, h] = region(eighths);
    let reach = (w / width as f64).max(h / height as f64).ceil() + 1.0;
    let window = header.window(
        eighths,
        (left - reach, left + w + reach),
        (top - reach, top + h + reach),
    );
    (eighths, window)
}

/// The centred `crop` of a `source`-sized image, in the pixels of the same image decoded at
/// `scaled` size: left, top, width and height.
fn scaled_region(crop: Crop, source: (u32, u32), scaled: (u32, u32)) -> [f64; 4] {
    let (region_w, region_h) = crop_region(crop, source.0, source.1);
    let (w, h) = (scaled.0 as f64, scaled.1 as f64);
    let rw = (region_w as f64 * w / source.0 as f64).min(w);
    let rh = (region_h as f64 * h / source.1 as f64).min(h);
    [(w - rw) / 2.0, (h - rh) / 2.0, rw, rh]
}

fn crop_region(crop: Crop, w: u32, h: u32) -> (u32, u32) {
    match crop {
        Crop::None => (w, h),
        Crop::CenterSquare => (w.min(h), w.min(h)),
        Crop::Center(cw, ch) => (cw.min(w), ch.min(h)),
    }
}

/// Width and height from the image header, without decoding pixels.
pub fn image_dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_error(bytes, e))?;
    if reader.format().is_none() {
        return Err(decode_error(bytes, "unknown image format"));
    }
    reader.into_dimensions().map_err(|e| decode_error(bytes, e))
}

fn check_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || width > 65_535 || height > 65_535 {
        bail!(
            ImageError::Argument,
            "target size {width}x{height} must be between 1x1 and 65535x65535"
        );
    }
    Ok(())
}

fn pixel_type(channels: u8) -> PixelType {
    match channels {
        1 => PixelType::U8,
        2 => PixelType::U8x2,
        3 => PixelType::U8x3,
        _ => PixelType::U8x4,
    }
}

fn resize_region(
    src: ImageRef<'_>,
    left: f64,
    top: f64,
    region_w: f64,
    region_h: f64,
    width: u32,
    height: u32,
) -> Result<Image> {
    check_size(width, height)?;
    if src.width == 0 || src.height == 0 {
        return Err(ImageError::Argument("cannot resize an empty image".into()));
    }
    let pixel = pixel_type(src.channels);
    let source = FirImageRef::new(src.width, src.height, src.data, pixel)
        .map_err(|e| ImageError::Argument(e.to_string()))?;
    let mut dst = FirImage::new(width, height, pixel);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, region_w, region_h);
    Resizer::new()
        .resize(&source, &mut dst, &options)
        .map_err(|e| ImageError::Argument(e.to_string()))?;
    Ok(Image {
        width,
        height,
        channels: src.channels,
        data: dst.into_vec(),
    })
}

/// Resizes to `width` x `height` with an antialiased bilinear filter (as Pillow's `BILINEAR`
/// and TensorFlow's `resize(..., antialias=True)`).
pub fn resize(src: ImageRef<'_>, width: u32, height: u32) -> Result<Image> {
    resize_region(
        src,
        0.0,
        0.0,
        src.width as f64,
        src.height as f64,
        width,
        height,
    )
}

/// Crops the window at (`x`, `y`) of size `w` x `h`; the window must lie inside the image.
pub fn crop(src: ImageRef<'_>, x: u32, y: u32, w: u32, h: u32) -> Result<Image> {
    if w == 0
        || h == 0
        || x as u64 + w as u64 > src.width as u64
        || y as u64 + h as u64 > src.height as u64
    {
        bail!(
            ImageError::Argument,
            "crop window {w}x{h} at ({x}, {y}) does not fit in a {}x{} image",
            src.width,
            src.height
        );
    }
    let c = src.channels as usize;
    let row = src.width as usize * c;
    let mut data = Vec::with_capacity(w as usize * h as usize * c);
    for r in y as usize..(y + h) as usize {
        let start = r * row + x as usize * c;
        data.extend_from_slice(&src.data[start..start + w as usize * c]);
    }
    Ok(Image {
        width: w,
        height: h,
        channels: src.channels,
        data,
    })
}

/// Crops a centred window (clamped to the image); `None` crops the largest centred square.
pub fn center_crop(src: ImageRef<'_>, size: Option<(u32, u32)>) -> Result<Image> {
    let crop_kind = match size {
        None => Crop::CenterSquare,
        Some((w, h)) if w > 0 && h > 0 => Crop::Center(w, h),
        Some((w, h)) => {
            bail!(
                ImageError::Argument,
                "center crop size {w}x{h} must be positive"
            );
        }
    };
    let (w, h) = crop_region(crop_kind, src.width, src.height);
    crop(src, (src.width - w) / 2, (src.height - h) / 2, w, h)
}

/// Mirrors the image left-right (`horizontal`) or top-bottom (`vertical`).
pub fn flip(src: ImageRef<'_>, horizontal: bool) -> Image {
    let c = src.channels as usize;
    let row = src.width as usize * c;
    let mut data = Vec::with_capacity(src.data.len());
    if horizontal {
        for line in src.data.chunks_exact(row) {
            for px in line.chunks_exact(c).rev() {
                data.extend_from_slice(px);
            }
        }
    } else {
        for line in src.data.chunks_exact(row).rev() {
            data.extend_from_slice(line);
        }
    }
    Image {
        width: src.width,
        height: src.height,
        channels: src.channels,
        data,
    }
}

/// Rotates counter-clockwise by a multiple of 90 degrees (negative is clockwise), like
/// `numpy.rot90` and `tf.image.rot90`.
pub fn rotate(src: ImageRef<'_>, degrees: i64) -> Result<Image> {
    if degrees % 90 != 0 {
        bail!(
            ImageError::Argument,
            "rotation by {degrees} degrees: only multiples of 90 are supported"
        );
    }
    let quarter_turns = (degrees / 90).rem_euclid(4);
    let (w, h, c) = (
        src.width as usize,
        src.height as usize,
        src.channels as usize,
    );
    if quarter_turns == 0 {
        return Ok(src.to_image());
    }
    if quarter_turns == 2 {
        let mut data = Vec::with_capacity(src.data.len());
        for px in src.data.chunks_exact(c).rev() {
            data.extend_from_slice(px);
        }
        return Ok(Image {
            width: src.width,
            height: src.height,
            channels: src.channels,
            data,
        });
    }
    // Output is h wide and w high.
    let mut data = Vec::with_capacity(src.data.len());
    for out_row in 0..w {
        for out_col in 0..h {
            let (r, col) = if quarter_turns == 1 {
                // Counter-clockwise: out[i][j] = in[j][w-1-i].
                (out_col, w - 1 - out_row)
            } else {
                // Clockwise: out[i][j] = in[h-1-j][i].
                (h - 1 - out_col, out_row)
            };
            let start = (r * w + col) * c;
            data.extend_from_slice(&src.data[start..start + c]);
        }
    }
    Ok(Image {
        width: src.height,
        height: src.width,
        channels: src.channels,
        data,
    })
}

/// Converts to one channel with ITU-R 601-2 luma (as Pillow's `convert("L")`); alpha is dropped.
pub fn to_grayscale(src: ImageRef<'_>) -> Image {
    let data = match src.channels {
        1 => src.data.to_vec(),
        2 => src.data.chunks_exact(2).map(|p| p[0]).collect(),
        c => src.data.chunks_exact(c as usize).map(luma).collect(),
    };
    Image {
        width: src.width,
        height: src.height,
        channels: 1,
        data,
    }
}

/// Tiles images of one size and channel count into a grid `columns` wide (rows as needed),
/// `gap` black pixels apart.
pub fn grid(images: &[ImageRef<'_>], columns: usize, gap: u32) -> Result<Image> {
    let Some(first) = images.first() else {
        return Err(ImageError::Argument(
            "a grid needs at least one image".into(),
        ));
    };
    if images
        .iter()
        .any(|i| (i.width, i.height, i.channels) != (first.width, first.height, first.channels))
    {
        return Err(ImageError::Argument(
            "the images of a grid must share their size and channels".into(),
        ));
    }
    let (w, h, c, gap) = (
        first.width as usize,
        first.height as usize,
        first.channels as usize,
        gap as usize,
    );
    let columns = columns.clamp(1, images.len());
    let rows = images.len().div_ceil(columns);
    let (width, height) = (columns * (w + gap) - gap, rows * (h + gap) - gap);
    let mut data = vec![0u8; width * height * c];
    for (i, image) in images.iter().enumerate() {
        let (x0, y0) = ((i % columns) * (w + gap), (i / columns) * (h + gap));
        for (y, line) in image.data.chunks_exact(w * c).enumerate() {
            let start = ((y0 + y) * width + x0) * c;
            data[start..start + w * c].copy_from_slice(line);
        }
    }
    Ok(Image {
        width: width as u32,
        height: height as u32,
        channels: first.channels,
        data,
    })
}

/// A pixel's ITU-R 601-2 luma, as Pillow's `convert("L")`; a gray pixel's own value.
pub fn luma(p: &[u8]) -> u8 {
    if p.len() < 3 {
        return p[0];
    }
    ((299 * p[0] as u32 + 587 * p[1] as u32 + 114 * p[2] as u32 + 500) / 1000) as u8
}

/// Output formats of [`encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeFormat {
    /// JPEG at the given quality (1-100); images with alpha are rejected.
    Jpeg(u8),
    /// Lossless PNG.
    Png,
}

impl EncodeFormat {
    /// Parses `jpeg`, `jpg` or `png` (case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "jpeg" | "jpg" => Ok(Self::Jpeg(90)),
            "png" => Ok(Self::Png),
            other => Err(err!(
                ImageError::Argument,
                "unknown image format '{other}' (expected 'jpeg' or 'png')"
            )),
        }
    }
}

/// Encodes the image as JPEG or PNG.
pub fn encode(src: ImageRef<'_>, format: EncodeFormat) -> Result<Vec<u8>> {
    match format {
        EncodeFormat::Jpeg(quality) => {
            if src.channels == 2 || src.channels == 4 {
                return Err(ImageError::Encode(
                    "JPEG has no alpha channel: encode as 'png' or convert with image_to_grayscale"
                        .into(),
                ));
            }
            let (format, subsamp) = if src.channels == 1 {
                (turbojpeg::PixelFormat::GRAY, turbojpeg::Subsamp::Gray)
            } else {
                // 4:2:0, as Pillow and TensorFlow's encode_jpeg use by default.
                (turbojpeg::PixelFormat::RGB, turbojpeg::Subsamp::Sub2x2)
            };
            let image = turbojpeg::Image {
                pixels: src.data,
                width: src.width as usize,
                pitch: src.width as usize * src.channels as usize,
                height: src.height as usize,
                format,
            };
            jpeg::with_handle(&COMPRESSOR, turbojpeg::Compressor::new, |compressor| {
                compressor.set_quality(quality as i32)?;
                compressor.set_subsamp(subsamp)?;
                compressor.compress_to_vec(image)
            })
            .and_then(|encoded| encoded)
            .map_err(|e| ImageError::Encode(e.to_string()))
        }
        EncodeFormat::Png => {
            let color = match src.channels {
                1 => ExtendedColorType::L8,
                2 => ExtendedColorType::La8,
                3 => ExtendedColorType::Rgb8,
                _ => ExtendedColorType::Rgba8,
            };
            let mut out = Vec::with_capacity(src.data.len() / 2 + 1024);
            PngEncoder::new(&mut out)
                .write_image(src.data, src.width, src.height, color)
                .map_err(|e| ImageError::Encode(e.to_string()))?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32, c: u8) -> Image {
        let data = (0..w * h * c as u32).map(|i| (i * 7 % 251) as u8).collect();
        Image {
            width: w,
            height: h,
            channels: c,
            data,
        }
    }

    fn gray(width: u32, height: u32, data: Vec<u8>) -> Image {
        Image {
            width,
            height,
            channels: 1,
            data,
        }
    }

    #[test]
    fn png_round_trip_is_exact() {
        for c in [1, 2, 3, 4] {
            let img = gradient(13, 7, c);
            let bytes = encode(img.as_ref(), EncodeFormat::Png).unwrap();
            assert_eq!(decode(&bytes).unwrap(), img, "{c} channels");
        }
    }

    #[test]
    fn jpeg_rejects_alpha_and_round_trips_closely() {
        assert!(encode(gradient(4, 4, 4).as_ref(), EncodeFormat::Jpeg(90)).is_err());
        let flat = Image {
            width: 32,
            height: 16,
            channels: 3,
            data: [200, 100, 50].repeat(32 * 16),
        };
        let bytes = encode(flat.as_ref(), EncodeFormat::Jpeg(95)).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!((back.width, back.height, back.channels), (32, 16, 3));
        let max_diff = back
            .data
            .iter()
            .zip(&flat.data)
            .map(|(a, b)| a.abs_diff(*b))
            .max();
        assert!(max_diff.unwrap() <= 3);
    }

    #[test]
    fn rotate_matches_quarter_turns() {
        // 2x3 single channel: rows [0 1], [2 3], [4 5].
        let img = gray(2, 3, vec![0, 1, 2, 3, 4, 5]);
        let ccw = rotate(img.as_ref(), 90).unwrap();
        assert_eq!((ccw.width, ccw.height), (3, 2));
        assert_eq!(ccw.data, vec![1, 3, 5, 0, 2, 4]);
        let cw = rotate(img.as_ref(), -90).unwrap();
        assert_eq!(cw.data, vec![4, 2, 0, 5, 3, 1]);
        assert_eq!(
            rotate(img.as_ref(), 180).unwrap().data,
            vec![5, 4, 3, 2, 1, 0]
        );
        assert_eq!(rotate(ccw.as_ref(), 270).unwrap(), img);
        assert!(rotate(img.as_ref(), 45).is_err());
    }

    #[test]
    fn flips_crops_and_grayscale() {
        let img = gray(3, 2, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(flip(img.as_ref(), true).data, vec![2, 1, 0, 5, 4, 3]);
        assert_eq!(flip(img.as_ref(), false).data, vec![3, 4, 5, 0, 1, 2]);
        assert_eq!(
            crop(img.as_ref(), 1, 0, 2, 2).unwrap().data,
            vec![1, 2, 4, 5]
        );
        assert!(crop(img.as_ref(), 2, 0, 2, 2).is_err());
        let sq = center_crop(img.as_ref(), None).unwrap();
        assert_eq!((sq.width, sq.height), (2, 2));
        let rgb = Image {
            width: 1,
            height: 1,
            channels: 3,
            data: vec![255, 0, 0],
        };
        assert_eq!(to_grayscale(rgb.as_ref()).data, vec![76]);
    }

    #[test]
    fn scaled_jpeg_decode_matches_full_decode_then_resize() {
        let img = gradient(800, 600, 3);
        let bytes = encode(img.as_ref(), EncodeFormat::Jpeg(95)).unwrap();
        let fused = decode_resize(&bytes, Crop::CenterSquare, 100, 100).unwrap();
        let full = decode(&bytes).unwrap();
        let sq = center_crop(full.as_ref(), None).unwrap();
        let reference = resize(sq.as_ref(), 100, 100).unwrap();
        assert_eq!((fused.width, fused.height, fused.channels), (100, 100, 3));
        let mean: f64 = fused
            .data
            .iter()
            .zip(&reference.data)
            .map(|(a, b)| a.abs_diff(*b) as f64)
            .sum::<f64>()
            / fused.data.len() as f64;
        assert!(mean < 12.0, "mean abs difference {mean}");
    }

    #[test]
    fn windowed_jpeg_decode_gives_the_pixels_of_the_whole_scaled_image() {
        // Smooth content with detail, so that chroma upsampling at the window's edges matters.
        let photo = |w: u32, h: u32, c: u8| Image {
            width: w,
            height: h,
            channels: c,
            data: (0..h)
                .flat_map(|y| {
                    (0..w).flat_map(move |x| {
                        (0..c).map(move |k| {
                            let v = (x as f64 / 9.0 + k as f64).sin() * (y as f64 / 7.0).cos();
                            (128.0 + 100.0 * v + ((x * 3 + y * 5) % 17) as f64) as u8
                        })
                    })
                })
                .collect(),
        };
        let cases = [
            (801, 603, 3, Crop::CenterSquare, 200, 200),
            (603, 801, 3, Crop::CenterSquare, 90, 90),
            (640, 480, 1, Crop::Center(300, 200), 64, 48),
            (1000, 700, 3, Crop::None, 250, 175),
        ];
        for (w, h, c, crop, out_w, out_h) in cases {
            let bytes = encode(photo(w, h, c).as_ref(), EncodeFormat::Jpeg(95)).unwrap();
            let windowed = decode_resize(&bytes, crop, out_w, out_h).unwrap();
            let whole = jpeg::decode(&bytes, |header| {
                let (eighths, window) = plan(header, crop, out_w, out_h);
                assert!(eighths < 8, "{w}x{h}: the case must scale");
                if crop != Crop::None {
                    assert_ne!(window, header.whole(eighths), "{w}x{h}: the case must crop");
                }
                (eighths, header.whole(eighths))
            })
            .unwrap()
            .unwrap();
            let [left, top, rw, rh] =
                scaled_region(crop, (w, h), whole.header.scaled(whole.eighths));
            let image = whole.into_image();
            let reference = resize_region(image.as_ref(), left, top, rw, rh, out_w, out_h).unwrap();
            assert_eq!(
                (windowed.width, windowed.height, windowed.channels),
                (out_w, out_h, c)
            );
            let max = windowed
                .data
                .iter()
                .zip(&reference.data)
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            assert_eq!(max, Some(0), "{w}x{h} {crop:?}");
        }
    }

    #[test]
    fn garbage_is_a_decode_error_naming_its_head() {
        let err = decode(b"hello world, not an image")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hello wo"), "{err}");
        let img = gradient(64, 64, 3);
        let bytes = encode(img.as_ref(), EncodeFormat::Jpeg(90)).unwrap();
        assert!(
            decode(&bytes[..bytes.len() / 3]).is_err(),
            "truncated JPEG must fail"
        );
    }
}
