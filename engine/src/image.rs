//! The Arrow data model of a decoded image:
//! `Struct{width: UInt32, height: UInt32, channels: UInt8, data: Binary}`, `data` row-major HWC
//! `u8`. Encoded images stay `Binary`.

use std::sync::Arc;

use datafusion::arrow::array::builder::NullBufferBuilder;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, StructArray, UInt8Array, UInt8Builder,
    UInt32Array, UInt32Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, UInt8Type, UInt32Type};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;

/// The fields of the image struct, in order.
pub fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("channels", DataType::UInt8, false),
        Field::new("data", DataType::Binary, false),
    ])
}

/// The Arrow type of a decoded image.
pub fn image_type() -> DataType {
    DataType::Struct(image_fields())
}

/// Whether `dt` is the image struct type.
pub fn is_image_type(dt: &DataType) -> bool {
    matches!(dt, DataType::Struct(fields) if fields == &image_fields())
}

/// A borrowed decoded image: `data.len() == width * height * channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    pub channels: u8,
    /// Row-major HWC pixels.
    pub data: &'a [u8],
}

/// An owned decoded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    pub channels: u8,
    /// Row-major HWC pixels.
    pub data: Vec<u8>,
}

impl Image {
    /// Borrows this image.
    pub fn as_ref(&self) -> ImageRef<'_> {
        ImageRef {
            width: self.width,
            height: self.height,
            channels: self.channels,
            data: &self.data,
        }
    }
}

impl ImageRef<'_> {
    /// An owned copy.
    pub fn to_image(self) -> Image {
        Image {
            width: self.width,
            height: self.height,
            channels: self.channels,
            data: self.data.to_vec(),
        }
    }
}

/// Read access to an Arrow array of images.
#[derive(Debug)]
pub struct ImageArray<'a> {
    array: &'a StructArray,
    width: &'a UInt32Array,
    height: &'a UInt32Array,
    channels: &'a UInt8Array,
    data: &'a BinaryArray,
}

impl<'a> ImageArray<'a> {
    /// Views `array` as images; fails when it is not the image struct.
    pub fn try_new(array: &'a dyn Array) -> Result<Self> {
        if !is_image_type(array.data_type()) {
            return plan_err!(
                "expected an image struct {}, got {}",
                image_type(),
                array.data_type()
            );
        }
        let array = array.as_struct();
        Ok(Self {
            array,
            width: array.column(0).as_primitive::<UInt32Type>(),
            height: array.column(1).as_primitive::<UInt32Type>(),
            channels: array.column(2).as_primitive::<UInt8Type>(),
            data: array.column(3).as_binary::<i32>(),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.array.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.array.is_empty()
    }

    /// The image at `i`, or `None` when null. Fails when the pixel buffer does not match the
    /// declared dimensions.
    pub fn get(&self, i: usize) -> Result<Option<ImageRef<'a>>> {
        if self.array.is_null(i) {
            return Ok(None);
        }
        let image = ImageRef {
            width: self.width.value(i),
            height: self.height.value(i),
            channels: self.channels.value(i),
            data: self.data.value(i),
        };
        let expected = image.width as usize * image.height as usize * image.channels as usize;
        if image.data.len() != expected || !(1..=4).contains(&image.channels) {
            return exec_err!(
                "row {i}: malformed image struct ({}x{}x{} with {} bytes of pixels)",
                image.width,
                image.height,
                image.channels,
                image.data.len()
            );
        }
        Ok(Some(image))
    }
}

/// Builds an Arrow array of images.
#[derive(Debug)]
pub struct ImageArrayBuilder {
    width: UInt32Builder,
    height: UInt32Builder,
    channels: UInt8Builder,
    data: BinaryBuilder,
    nulls: NullBufferBuilder,
}

impl ImageArrayBuilder {
    /// A builder for about `capacity` images.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            width: UInt32Builder::with_capacity(capacity),
            height: UInt32Builder::with_capacity(capacity),
            channels: UInt8Builder::with_capacity(capacity),
            data: BinaryBuilder::with_capacity(capacity, 0),
            nulls: NullBufferBuilder::new(capacity),
        }
    }

    /// Appends one image.
    pub fn append(&mut self, image: ImageRef<'_>) {
        self.width.append_value(image.width);
        self.height.append_value(image.height);
        self.channels.append_value(image.channels);
        self.data.append_value(image.data);
        self.nulls.append_non_null();
    }

    /// Appends a null row.
    pub fn append_null(&mut self) {
        self.width.append_value(0);
        self.height.append_value(0);
        self.channels.append_value(0);
        self.data.append_value([]);
        self.nulls.append_null();
    }

    /// Finishes the array.
    pub fn finish(mut self) -> ArrayRef {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.width.finish()),
            Arc::new(self.height.finish()),
            Arc::new(self.channels.finish()),
            Arc::new(self.data.finish()),
        ];
        Arc::new(StructArray::new(
            image_fields(),
            columns,
            self.nulls.finish(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_nulls() {
        let mut b = ImageArrayBuilder::with_capacity(2);
        b.append(ImageRef {
            width: 2,
            height: 1,
            channels: 3,
            data: &[1, 2, 3, 4, 5, 6],
        });
        b.append_null();
        let array = b.finish();
        let images = ImageArray::try_new(array.as_ref()).unwrap();
        assert_eq!(images.len(), 2);
        let first = images.get(0).unwrap().unwrap();
        assert_eq!((first.width, first.height, first.channels), (2, 1, 3));
        assert_eq!(first.data, &[1, 2, 3, 4, 5, 6]);
        assert!(images.get(1).unwrap().is_none());
    }

    #[test]
    fn rejects_other_types() {
        let array = UInt32Array::from(vec![1]);
        assert!(ImageArray::try_new(&array).is_err());
    }

    #[test]
    fn rejects_mismatched_pixels() {
        let mut b = ImageArrayBuilder::with_capacity(1);
        b.append(ImageRef {
            width: 2,
            height: 2,
            channels: 3,
            data: &[0; 5],
        });
        let array = b.finish();
        let images = ImageArray::try_new(array.as_ref()).unwrap();
        assert!(images.get(0).is_err());
    }
}
