//! JPEG decoding through libjpeg-turbo's TurboJPEG 3 API, for what the `turbojpeg` crate does
//! not expose: DCT scaling by any M/8, and decoding only a window of the image
//! (`tj3SetCroppingRegion`, libjpeg's `jpeg_crop_scanline` + `jpeg_skip_scanlines`: outside the
//! window there is no inverse DCT, upsampling or colour conversion).

use std::cell::RefCell;
use std::ffi::{CStr, c_int};
use std::thread::LocalKey;

use quiver_engine::image::Image;
use turbojpeg_sys as raw;

/// A JPEG's header, for the JPEGs this path decodes (8-bit greyscale, RGB or YCbCr).
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub(super) width: u32,
    pub(super) height: u32,
    /// 1 (greyscale) or 3 (RGB).
    pub(super) channels: u8,
    subsamp: c_int,
    /// Lossless JPEGs can be neither scaled nor cropped: they are decoded whole.
    lossless: bool,
}

/// A window of the image decoded at some scale, in that scale's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) x: u32,
    pub(super) y: u32,
    pub(super) width: u32,
    pub(super) height: u32,
}

/// The pixels of a decoded window.
#[derive(Debug)]
pub(super) struct Decoded {
    pub(super) header: Header,
    /// The scale, in eighths.
    pub(super) eighths: u32,
    pub(super) window: Window,
    /// `window.width` x `window.height` x `header.channels` bytes, rows top to bottom.
    pub(super) pixels: Vec<u8>,
}

impl Decoded {
    pub(super) fn into_image(self) -> Image {
        Image {
            width: self.window.width,
            height: self.window.height,
            channels: self.header.channels,
            data: self.pixels,
        }
    }
}

impl Header {
    /// The image's size at `eighths`/8, rounded up as libjpeg does.
    pub(super) fn scaled(&self, eighths: u32) -> (u32, u32) {
        let scale = |n: u32| (n as u64 * eighths as u64).div_ceil(8) as u32;
        (scale(self.width), scale(self.height))
    }

    /// The whole image at `eighths`/8.
    pub(super) fn whole(&self, eighths: u32) -> Window {
        let (width, height) = self.scaled(eighths);
        Window {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    /// The window of the image at `eighths`/8 that covers the columns `x0..x1` and the rows
    /// `y0..y1` (scaled pixels, clamped to the image), its left edge moved down to an iMCU
    /// boundary as libjpeg requires. The whole image where a window cannot be decoded.
    pub(super) fn window(
        &self,
        eighths: u32,
        (x0, x1): (f64, f64),
        (y0, y1): (f64, f64),
    ) -> Window {
        let whole = self.whole(eighths);
        let (width, height) = (whole.width, whole.height);
        // iMCU widths by subsampling (TurboJPEG's `tjMCUWidth`).
        const MCU_WIDTH: [u32; 7] = [8, 16, 16, 8, 8, 32, 8];
        let Some(&mcu) = usize::try_from(self.subsamp)
            .ok()
            .and_then(|s| MCU_WIDTH.get(s))
        else {
            return whole;
        };
        let mcu = (mcu * eighths).div_ceil(8);
        let clamp = |v: f64, max: u32| (v.max(0.0) as u32).min(max);
        let x = clamp(x0.floor(), width) / mcu * mcu;
        let y = clamp(y0.floor(), height);
        let right = clamp(x1.ceil(), width).max(x + 1).min(width);
        let bottom = clamp(y1.ceil(), height).max(y + 1).min(height);
        Window {
            x,
            y,
            width: right - x,
            height: bottom - y,
        }
    }
}

/// One TurboJPEG decompression instance.
struct Decoder(raw::tjhandle);

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from `tj3Init` and is destroyed once, here.
        unsafe { raw::tj3Destroy(self.0) }
    }
}

impl Decoder {
    fn new() -> Result<Self, String> {
        // SAFETY: no preconditions; a null handle is checked below.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
        let decoder = Self(handle);
        if handle.is_null() {
            return Err(decoder.error());
        }
        Ok(decoder)
    }

    /// The instance's last error message (the global one for a null handle).
    fn error(&self) -> String {
        // SAFETY: tj3GetErrorStr accepts any handle from tj3Init, null included, and returns a
        // NUL-terminated string owned by the library.
        unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .trim()
            .to_string()
    }

    fn check(&self, status: c_int) -> Result<(), String> {
        if status == 0 {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn get(&self, param: raw::TJPARAM) -> c_int {
        // SAFETY: a valid handle and a parameter TurboJPEG defines.
        unsafe { raw::tj3Get(self.0, param as c_int) }
    }

    fn header(&mut self, bytes: &[u8]) -> Result<Option<Header>, String> {
        // SAFETY: the pointer and length describe `bytes`, which outlives the call.
        self.check(unsafe { raw::tj3DecompressHeader(self.0, bytes.as_ptr(), bytes.len() as _) })?;
        let channels = match self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS {
            raw::TJCS_TJCS_GRAY => 1,
            raw::TJCS_TJCS_RGB | raw::TJCS_TJCS_YCbCr => 3,
            // CMYK and YCCK are rare: the general decoder converts them.
            _ => return Ok(None),
        };
        if self.get(raw::TJPARAM_TJPARAM_PRECISION) != 8 {
            return Ok(None);
        }
        Ok(Some(Header {
            width: self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH) as u32,
            height: self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT) as u32,
            channels,
            subsamp: self.get(raw::TJPARAM_TJPARAM_SUBSAMP),
            lossless: self.get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0,
        }))
    }

    fn decode(
        &mut self,
        bytes: &[u8],
        header: Header,
        eighths: u32,
        window: Window,
    ) -> Result<Vec<u8>, String> {
        let region = if window == header.whole(eighths) {
            // TurboJPEG's TJUNCROPPED: the handle may still hold the last image's window.
            raw::tjregion {
                x: 0,
                y: 0,
                w: 0,
                h: 0,
            }
        } else {
            raw::tjregion {
                x: window.x as c_int,
                y: window.y as c_int,
                w: window.width as c_int,
                h: window.height as c_int,
            }
        };
        // TurboJPEG lists its factors in lowest terms (1/2, not 4/8).
        let common = [8, 4, 2, 1]
            .into_iter()
            .find(|&d| eighths.is_multiple_of(d))
            .unwrap_or(1);
        let factor = raw::tjscalingfactor {
            num: (eighths / common) as c_int,
            denom: (8 / common) as c_int,
        };
        // SAFETY: a valid handle; the header of these bytes was read by `header` just before.
        self.check(unsafe { raw::tj3SetScalingFactor(self.0, factor) })?;
        self.check(unsafe { raw::tj3SetCroppingRegion(self.0, region) })?;
        let pitch = window.width as usize * header.channels as usize;
        let mut pixels = vec![0u8; pitch * window.height as usize];
        let format = if header.channels == 1 {
            raw::TJPF_TJPF_GRAY
        } else {
            raw::TJPF_TJPF_RGB
        };
        // SAFETY: `pixels` holds `pitch` bytes for each of the window's rows, which is what
        // TurboJPEG writes for this scale, window and pixel format.
        self.check(unsafe {
            raw::tj3Decompress8(
                self.0,
                bytes.as_ptr(),
                bytes.len() as _,
                pixels.as_mut_ptr(),
                pitch as c_int,
                format,
            )
        })?;
        Ok(pixels)
    }
}

thread_local! {
    // Handles are cheap to reuse and not `Sync`: one per worker thread.
    static DECODER: RefCell<Option<Decoder>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's TurboJPEG handle in `cell`, creating it on first use.
pub(super) fn with_handle<H, T, E>(
    cell: &'static LocalKey<RefCell<Option<H>>>,
    create: fn() -> Result<H, E>,
    f: impl FnOnce(&mut H) -> T,
) -> Result<T, E> {
    cell.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(create()?);
        }
        Ok(f(slot.as_mut().expect("handle was just created")))
    })
}

/// Decodes a JPEG at the scale and window that `plan` picks from its header; `None` when the
/// JPEG is one this path leaves to the general decoder (CMYK, YCCK, 12-bit). Like libjpeg and
/// Pillow, it rejects truncated data instead of filling the missing rows with grey.
pub(super) fn decode(
    bytes: &[u8],
    plan: impl FnOnce(&Header) -> (u32, Window),
) -> Option<Result<Decoded, String>> {
    let decoded = with_handle(&DECODER, Decoder::new, |decoder| {
        let header = match decoder.header(bytes) {
            Ok(Some(header)) => header,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let (eighths, window) = if header.lossless {
            (8, header.whole(8))
        } else {
            plan(&header)
        };
        Some(
            decoder
                .decode(bytes, header, eighths, window)
                .map(|pixels| Decoded {
                    header,
                    eighths,
                    window,
                    pixels,
                }),
        )
    });
    decoded.unwrap_or_else(|e| Some(Err(e)))
}
