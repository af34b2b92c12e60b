//! Results as text tables: binary cells and images are summarised instead of dumped as hex.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::pretty::pretty_format_batches;
use quiver_engine::image::{ImageArray, is_image_type};

/// A readable stand-in for an image or binary column (`<image 200x200x3>`, `<123 bytes>`).
pub fn summarise(array: &ArrayRef) -> Option<ArrayRef> {
    let dt = array.data_type();
    if is_image_type(dt) {
        let images = ImageArray::try_new(array.as_ref()).ok()?;
        let cells: Vec<Option<String>> = (0..images.len())
            .map(|i| match images.get(i) {
                Ok(Some(img)) => Some(format!(
                    "<image {}x{}x{}>",
                    img.width, img.height, img.channels
                )),
                Ok(None) => None,
                Err(e) => Some(format!("<bad image: {e}>")),
            })
            .collect();
        return Some(Arc::new(StringArray::from(cells)));
    }
    if matches!(dt, DataType::Binary) {
        let binary = array.as_binary::<i32>();
        let cells: Vec<Option<String>> = binary
            .iter()
            .map(|v| v.map(|b| format!("<{} bytes>", b.len())))
            .collect();
        return Some(Arc::new(StringArray::from(cells)));
    }
    None
}

/// `batch` with image and binary columns replaced by their summaries.
pub fn readable(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match summarise(column) {
            Some(summary) => {
                fields.push(Field::new(field.name(), DataType::Utf8, true));
                columns.push(summary);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(Arc::clone(column));
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Formats up to `max_rows` rows of `batches` as a table, noting how many were left out.
pub fn format_batches(batches: &[RecordBatch], max_rows: usize) -> Result<String, ArrowError> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut shown = Vec::new();
    let mut left = max_rows;
    for batch in batches {
        if left == 0 {
            break;
        }
        let batch = batch.slice(0, batch.num_rows().min(left));
        left -= batch.num_rows();
        shown.push(readable(&batch)?);
    }
    let mut out = if shown.is_empty() {
        String::new()
    } else {
        pretty_format_batches(&shown)?.to_string()
    };
    if total > max_rows {
        out.push_str(&format!("\n... {} more rows", total - max_rows));
    }
    out.push_str(&format!(
        "\n{total} row{}",
        if total == 1 { "" } else { "s" }
    ));
    Ok(out)
}
