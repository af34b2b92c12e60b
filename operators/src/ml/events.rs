//! TensorBoard event files (scalars): `tf.Event` protos framed as TFRecords, the format
//! TensorBoard's `EventAccumulator` reads.

use prost::Message;

use crate::tfrecord::write_record;

#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// An event file being built in memory; object stores have no append, so the whole file is
/// rewritten after each epoch.
#[derive(Debug, Clone)]
pub struct EventFile {
    bytes: Vec<u8>,
}

impl EventFile {
    /// A new file starting with the `brain.Event:2` version record.
    pub fn new(wall_time: f64) -> Self {
        let mut file = Self { bytes: Vec::new() };
        file.push(Event {
            wall_time,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        });
        file
    }

    fn push(&mut self, event: Event) {
        write_record(&mut self.bytes, &event.encode_to_vec());
    }

    /// Appends scalars (`tag`, value) at `step`.
    pub fn scalars(&mut self, wall_time: f64, step: i64, values: &[(&str, f64)]) {
        self.push(Event {
            wall_time,
            step,
            file_version: None,
            summary: Some(Summary {
                value: values
                    .iter()
                    .map(|(tag, v)| SummaryValue {
                        tag: tag.to_string(),
                        simple_value: Some(*v as f32),
                    })
                    .collect(),
            }),
        });
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
