//! Seeded augmentation of decoded images: random resized crop, flips, rotation, translation
//! and colour jitter, drawn as torchvision's transforms draw them and applied at the image's
//! own size (as Keras's preprocessing layers apply them to a model's input). Training draws
//! each example's parameters from (seed, epoch, example), so the images of an epoch are the
//! same after a resume and on a cluster; `image_augment(image, options, seed)` shows them in
//! SQL.

use quiver_engine::image::{Image, ImageRef};
use quiver_engine::options::{Interval, Maybe, OneOf, OptionValue, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::kernels::luma;

quiver_engine::options! {
    /// The `augment_*` options of `CREATE MODEL`, also the JSON object of `image_augment`.
    pub struct AugmentOptions {
        /// Random flips, each direction with probability 1/2.
        augment_flip: String = "none".into(),
            OneOf(&["none", "horizontal", "vertical", "both"]);
        /// Random resized crop: the crop's area as a fraction of the image, drawn from
        /// [min, max], its aspect ratio from 3/4 to 4/3, resized back to the image's size.
        augment_crop: Option<Vec<f64>> = None,
            Maybe(Interval { lo: 0.01, hi: 1.0, around: |x| [x, 1.0], number: "x: [x, 1]" });
        /// Random rotation by an angle in degrees (counter-clockwise) from [min, max];
        /// corners outside the image are black.
        augment_rotation: Option<Vec<f64>> = None,
            Maybe(Interval { lo: -180.0, hi: 180.0, around: |x| [-x, x], number: "x: [-x, x]" });
        /// Random shift, horizontal and vertical drawn apart, as a fraction of the width and
        /// height from [min, max].
        augment_translate: Option<Vec<f64>> = None,
            Maybe(Interval { lo: -1.0, hi: 1.0, around: |x| [-x, x], number: "x: [-x, x]" });
        /// Random brightness factor from [min, max] (1 keeps the image).
        augment_brightness: Option<Vec<f64>> = None, Maybe(JITTER);
        /// Random contrast factor from [min, max], around the image's mean gray.
        augment_contrast: Option<Vec<f64>> = None, Maybe(JITTER);
        /// Random saturation factor from [min, max] (0 is gray; gray images keep theirs).
        augment_saturation: Option<Vec<f64>> = None, Maybe(JITTER);
    }
}

/// A colour jitter factor, as torchvision's `ColorJitter` reads a number.
const JITTER: Interval = Interval {
    lo: 0.0,
    hi: f64::INFINITY,
    around: |x| [(1.0 - x).max(0.0), 1.0 + x],
    number: "x: [max(0, 1 - x), 1 + x]",
};

impl AugmentOptions {
    /// Reads a JSON object of option names and values, as `CREATE MODEL` takes them.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("the options are not JSON: {e}"))?;
        let serde_json::Value::Object(fields) = value else {
            return Err(format!(
                "the options must be a JSON object such as '{{\"augment_flip\": \
                 \"horizontal\", \"augment_rotation\": 15}}', not {value}"
            ));
        };
        let mut options = Self::default();
        for (key, value) in fields {
            let value: OptionValue = serde_json::from_value(value.clone())
                .map_err(|_| format!("{key}: {value} is not a string, number or list"))?;
            options.set(&key, &value)?;
        }
        Ok(options)
    }

    /// The augmentation these options ask for; `None` when they leave images as they are.
    pub fn augment(&self) -> Option<Augment> {
        let pair = |v: &Option<Vec<f64>>| v.as_deref().map(|v| [v[0], v[1]]);
        let augment = Augment {
            flip_horizontal: matches!(self.augment_flip.as_str(), "horizontal" | "both"),
            flip_vertical: matches!(self.augment_flip.as_str(), "vertical" | "both"),
            crop: pair(&self.augment_crop),
            rotation: pair(&self.augment_rotation),
            translate: pair(&self.augment_translate),
            brightness: pair(&self.augment_brightness),
            contrast: pair(&self.augment_contrast),
            saturation: pair(&self.augment_saturation),
        };
        (augment != Augment::default()).then_some(augment)
    }
}

/// What is drawn for each image: the ranges of [`AugmentOptions`], checked. Recorded with a
/// model's training options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Mirror left-right with probability 1/2.
    pub flip_horizontal: bool,
    /// Mirror top-bottom with probability 1/2.
    pub flip_vertical: bool,
    /// Area fraction of a random resized crop.
    pub crop: Option<[f64; 2]>,
    /// Rotation in degrees, counter-clockwise.
    pub rotation: Option<[f64; 2]>,
    /// Shift as a fraction of the width and height.
    pub translate: Option<[f64; 2]>,
    /// Brightness factor.
    pub brightness: Option<[f64; 2]>,
    /// Contrast factor.
    pub contrast: Option<[f64; 2]>,
    /// Saturation factor.
    pub saturation: Option<[f64; 2]>,
}

/// The generator of one example's augmentation in one epoch of a run seeded with `seed`.
pub fn example_rng(seed: u64, epoch: u64, example: u64) -> StdRng {
    StdRng::seed_from_u64(mix(mix(seed, epoch), example))
}

/// SplitMix64's finaliser of `a` combined with `b`.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = (a ^ b.rotate_left(32)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where an output pixel's centre samples the source: `source = m · (x, y) + t`, in pixel
/// units with pixel centres at half-integers.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Affine {
    m: [[f64; 2]; 2],
    t: [f64; 2],
}

impl Augment {
    /// Augments `image` with parameters drawn from `rng`: the same draws give the same image,
    /// of the same size.
    pub fn apply(&self, image: ImageRef<'_>, rng: &mut StdRng) -> Image {
        if image.data.is_empty() {
            return image.to_image();
        }
        let affine = self.draw_geometry(image.width, image.height, rng);
        let mut data = match affine {
            Some(affine) => warp(image, affine),
            None => image.data.to_vec(),
        };
        let draw = |range: Option<[f64; 2]>, rng: &mut StdRng| {
            range.map(|range| uniform(rng, range) as f32)
        };
        let channels = image.channels as usize;
        if let Some(f) = draw(self.brightness, rng) {
            blend_each(&mut data, channels, f, |_| 0.0);
        }
        if let Some(f) = draw(self.contrast, rng) {
            let pixels = data.len() / channels;
            let sum: u64 = data.chunks_exact(channels).map(|p| luma(p) as u64).sum();
            let mean = (sum as f64 / pixels.max(1) as f64).round() as f32;
            blend_each(&mut data, channels, f, |_| mean);
        }
        if let Some(f) = draw(self.saturation, rng)
            && channels >= 3
        {
            blend_each(&mut data, channels, f, |p| luma(p) as f32);
        }
        Image {
            width: image.width,
            height: image.height,
            channels: image.channels,
            data,
        }
    }

    /// Draws the crop, flips, rotation and shift (in that order) as one map from output to
    /// source pixels; `None` when no geometric augmentation is asked for.
    fn draw_geometry(&self, width: u32, height: u32, rng: &mut StdRng) -> Option<Affine> {
        let (w, h) = (width as f64, height as f64);
        if self.crop.is_none()
            && !self.flip_horizontal
            && !self.flip_vertical
            && self.rotation.is_none()
            && self.translate.is_none()
        {
            return None;
        }
        let [x0, y0, cw, ch] = match self.crop {
            Some(scale) => crop_box(width, height, scale, rng),
            None => [0.0, 0.0, w, h],
        };
        let flip_x = self.flip_horizontal && rng.random_bool(0.5);
        let flip_y = self.flip_vertical && rng.random_bool(0.5);
        let angle = self
            .rotation
            .map_or(0.0, |range| uniform(rng, range).to_radians());
        let (dx, dy) = match self.translate {
            Some(range) => (
                (uniform(rng, range) * w).round(),
                (uniform(rng, range) * h).round(),
            ),
            None => (0.0, 0.0),
        };
        // Undo, from the output back: the shift, the rotation about the centre, the flips,
        // then the crop's resize.
        let (sin, cos) = angle.sin_cos();
        let source = |x: f64, y: f64| {
            let (x, y) = (x - dx - w / 2.0, y - dy - h / 2.0);
            let (x, y) = (cos * x - sin * y + w / 2.0, sin * x + cos * y + h / 2.0);
            let x = if flip_x { w - x } else { x };
            let y = if flip_y { h - y } else { y };
            [x0 + x * cw / w, y0 + y * ch / h]
        };
        let origin = source(0.0, 0.0);
        let (ex, ey) = (source(1.0, 0.0), source(0.0, 1.0));
        Some(Affine {
            m: [
                [ex[0] - origin[0], ey[0] - origin[0]],
                [ex[1] - origin[1], ey[1] - origin[1]],
            ],
            t: origin,
        })
    }
}

/// torchvision's `RandomResizedCrop.get_params`: `[x, y, width, height]` of a crop whose area
/// is a fraction from `scale` of the image's and whose aspect ratio is from 3/4 to 4/3.
fn crop_box(width: u32, height: u32, scale: [f64; 2], rng: &mut StdRng) -> [f64; 4] {
    let (w, h) = (width as f64, height as f64);
    let ratios = [(3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln()];
    for _ in 0..10 {
        let area = w * h * uniform(rng, scale);
        let ratio = uniform(rng, ratios).exp();
        let (cw, ch) = ((area * ratio).sqrt().round(), (area / ratio).sqrt().round());
        if cw > 0.0 && cw <= w && ch > 0.0 && ch <= h {
            let x = rng.random_range(0..=(w - cw) as u32) as f64;
            let y = rng.random_range(0..=(h - ch) as u32) as f64;
            return [x, y, cw, ch];
        }
    }
    // As torchvision: a centre crop of the whole image clamped to the ratio range.
    let ratio = w / h;
    let (cw, ch) = if ratio < 0.75 {
        (w, (w / 0.75).round())
    } else if ratio > 4.0 / 3.0 {
        ((h * 4.0 / 3.0).round(), h)
    } else {
        (w, h)
    };
    [((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch]
}

/// A draw from `[lo, hi]` (checked finite and ordered when the options were read).
fn uniform(rng: &mut StdRng, [lo, hi]: [f64; 2]) -> f64 {
    rng.random_range(lo..=hi)
}

/// Resamples `image` through `affine` (bilinear; black outside the image).
fn warp(image: ImageRef<'_>, affine: Affine) -> Vec<u8> {
    let (w, h, c) = (
        image.width as usize,
        image.height as usize,
        image.channels as usize,
    );
    let mut out = vec![0u8; image.data.len()];
    let [[a, b], [d, e]] = affine.m;
    for (y, row) in out.chunks_exact_mut(w * c).enumerate() {
        let (py, mut acc) = (y as f64 + 0.5, [0.0f32; 4]);
        for (x, px) in row.chunks_exact_mut(c).enumerate() {
            let px_x = x as f64 + 0.5;
            let sx = a * px_x + b * py + affine.t[0];
            let sy = d * px_x + e * py + affine.t[1];
            if !(0.0..=w as f64).contains(&sx) || !(0.0..=h as f64).contains(&sy) {
                continue;
            }
            let u = (sx - 0.5).clamp(0.0, (w - 1) as f64);
            let v = (sy - 0.5).clamp(0.0, (h - 1) as f64);
            let (x0, y0) = (u as usize, v as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = ((u - x0 as f64) as f32, (v - y0 as f64) as f32);
            let at = |x: usize, y: usize| &image.data[(y * w + x) * c..][..c];
            let (p00, p01, p10, p11) = (at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1));
            for ch in 0..c {
                let top = p00[ch] as f32 + (p01[ch] as f32 - p00[ch] as f32) * fx;
                let bottom = p10[ch] as f32 + (p11[ch] as f32 - p10[ch] as f32) * fx;
                acc[ch] = top + (bottom - top) * fy;
            }
            for (o, v) in px.iter_mut().zip(acc) {
                *o = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Pillow's `ImageEnhance` (and torchvision's `_blend`): each colour value `v` of a pixel
/// becomes `base + (v - base) * f`, clipped and truncated, where `base(pixel)` is the
/// degenerate image's value; alpha is kept.
fn blend_each(data: &mut [u8], channels: usize, f: f32, base: impl Fn(&[u8]) -> f32) {
    let colours = if channels >= 3 { 3 } else { 1 };
    for px in data.chunks_exact_mut(channels) {
        let b = base(px);
        for v in &mut px[..colours] {
            *v = (b + (*v as f32 - b) * f).clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(width: u32, height: u32, channels: u8) -> Image {
        let data = (0..width * height * channels as u32)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        Image {
            width,
            height,
            channels,
            data,
        }
    }

    fn options(json: &str) -> Augment {
        AugmentOptions::from_json(json).unwrap().augment().unwrap()
    }

    #[test]
    fn options_read_numbers_and_ranges_and_name_what_is_wrong() {
        let o = AugmentOptions::from_json(
            r#"{"augment_rotation": 15, "augment_brightness": 0.4, "AUGMENT_CROP": [0.08, 1]}"#,
        )
        .unwrap();
        assert_eq!(o.augment_rotation, Some(vec![-15.0, 15.0]));
        assert_eq!(o.augment_brightness, Some(vec![0.6, 1.4]));
        assert_eq!(o.augment_crop, Some(vec![0.08, 1.0]));
        assert_eq!(AugmentOptions::default().augment(), None);
        let err = |json: &str| AugmentOptions::from_json(json).unwrap_err();
        assert!(err(r#"{"augment_zoom": 2}"#).starts_with("unknown option 'augment_zoom'"));
        assert_eq!(
            err(r#"{"augment_crop": [0.5, 2]}"#),
            "augment_crop must be a number (x: [x, 1]) or [min, max] within [0.01, 1] with min \
             <= max, not [0.5, 2]"
        );
        assert_eq!(
            err(r#"{"augment_flip": "sideways"}"#),
            "augment_flip 'sideways' is not 'none', 'horizontal', 'vertical' or 'both'"
        );
        assert!(err("[1]").starts_with("the options must be a JSON object"));
        assert_eq!(
            err(r#"{"augment_rotation": null}"#),
            "augment_rotation: null is not a string, number or list"
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_image_and_others_differ() {
        let image = sample(24, 16, 3);
        let augment = options(
            r#"{"augment_flip": "both", "augment_crop": 0.3, "augment_rotation": 20,
                "augment_translate": 0.1, "augment_brightness": 0.3, "augment_contrast": 0.3,
                "augment_saturation": 0.5}"#,
        );
        let run =
            |epoch, example| augment.apply(image.as_ref(), &mut example_rng(7, epoch, example));
        assert_eq!(run(1, 5), run(1, 5));
        assert_ne!(run(1, 5), run(2, 5));
        assert_ne!(run(1, 5), run(1, 6));
        let out = run(3, 3);
        assert_eq!((out.width, out.height, out.channels), (24, 16, 3));
    }

    #[test]
    fn flips_mirror_exactly_and_both_outcomes_occur() {
        let image = sample(9, 5, 3);
        let mirrored = crate::image::kernels::flip(image.as_ref(), true);
        let augment = options(r#"{"augment_flip": "horizontal"}"#);
        let mut seen = [false; 2];
        for example in 0..32 {
            let out = augment.apply(image.as_ref(), &mut example_rng(1, 1, example));
            assert!(out == image || out == mirrored);
            seen[(out == mirrored) as usize] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn a_shift_moves_pixels_by_whole_pixels_and_fills_black() {
        let image = sample(8, 8, 1);
        let augment = options(r#"{"augment_translate": [0.25, 0.25]}"#);
        let out = augment.apply(image.as_ref(), &mut example_rng(1, 1, 1));
        for y in 0..8 {
            for x in 0..8 {
                let expected = if x >= 2 && y >= 2 {
                    image.data[(y - 2) * 8 + x - 2]
                } else {
                    0
                };
                assert_eq!(out.data[y * 8 + x], expected, "({x}, {y})");
            }
        }
    }

    #[test]
    fn a_quarter_turn_rotates_counter_clockwise() {
        let image = sample(6, 6, 1);
        let augment = options(r#"{"augment_rotation": [90, 90]}"#);
        let out = augment.apply(image.as_ref(), &mut example_rng(1, 1, 1));
        assert_eq!(
            out,
            crate::image::kernels::rotate(image.as_ref(), 90).unwrap()
        );
    }

    #[test]
    fn crops_keep_to_the_area_and_aspect_ranges_and_whole_crops_change_nothing() {
        let mut rng = example_rng(3, 0, 0);
        for _ in 0..200 {
            let [x, y, w, h] = crop_box(64, 48, [0.2, 0.5], &mut rng);
            let area = w * h / (64.0 * 48.0);
            assert!((0.18..=0.52).contains(&area), "{area}");
            assert!((0.7..=1.4).contains(&(w / h)), "{w}x{h}");
            assert!(x + w <= 64.0 && y + h <= 48.0);
        }
        let image = sample(16, 16, 3);
        let augment = options(r#"{"augment_crop": [1, 1]}"#);
        for example in 0..8 {
            let out = augment.apply(image.as_ref(), &mut example_rng(1, 1, example));
            assert_eq!(out, image);
        }
    }

    #[test]
    fn colour_factors_follow_pillow_s_image_enhance() {
        let image = Image {
            width: 2,
            height: 1,
            channels: 3,
            data: vec![200, 100, 50, 10, 20, 30],
        };
        let apply = |json: &str| {
            options(json)
                .apply(image.as_ref(), &mut example_rng(0, 0, 0))
                .data
        };
        assert_eq!(
            apply(r#"{"augment_brightness": [1.5, 1.5]}"#),
            [255, 150, 75, 15, 30, 45]
        );
        // Gray levels 124 and 18 (Pillow's luma), mean 71.
        assert_eq!(
            apply(r#"{"augment_contrast": [0, 0]}"#),
            [71, 71, 71, 71, 71, 71]
        );
        assert_eq!(
            apply(r#"{"augment_saturation": [0, 0]}"#),
            [124, 124, 124, 18, 18, 18]
        );
    }
}
