//! TensorBoard event files (scalars, images, plugin data): `tf.Event` protos framed as
//! TFRecords, the format TensorBoard's `EventAccumulator` reads.

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
    #[prost(message, optional, tag = "4")]
    image: Option<SummaryImage>,
    #[prost(message, optional, tag = "8")]
    tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

/// `tensorflow.Summary.Image`: an encoded image.
#[derive(Clone, PartialEq, Message)]
struct SummaryImage {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    /// 1 gray, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

/// `tensorflow.TensorProto`, only as far as an empty float tensor needs.
#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<TensorDim>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorDim {
    #[prost(int64, tag = "1")]
    size: i64,
}

/// A summary a TensorBoard plugin reads: its name, the tag, and the plugin's own serialised
/// data (the hparams plugin's `HParamsPluginData`, for example).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSummary {
    /// The summary's tag, e.g. `_hparams_/session_start_info`.
    pub tag: String,
    /// The plugin, e.g. `hparams`.
    pub plugin: String,
    /// The plugin's serialised data.
    pub content: Vec<u8>,
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
                        ..Default::default()
                    })
                    .collect(),
            }),
        });
    }

    /// Appends images at `step`, each `(tag, width, height, channels, PNG or JPEG bytes)`.
    pub fn images(
        &mut self,
        wall_time: f64,
        step: i64,
        images: &[(String, u32, u32, u8, Vec<u8>)],
    ) {
        self.push(Event {
            wall_time,
            step,
            file_version: None,
            summary: Some(Summary {
                value: images
                    .iter()
                    .map(|(tag, width, height, channels, encoded)| SummaryValue {
                        tag: tag.clone(),
                        image: Some(SummaryImage {
                            height: *height as i32,
                            width: *width as i32,
                            colorspace: *channels as i32,
                            encoded_image_string: encoded.clone(),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            }),
        });
    }

    /// Appends a plugin's summary at `step`, with the empty float tensor TensorFlow's summary
    /// writers put beside plugin data.
    pub fn plugin_summary(&mut self, wall_time: f64, step: i64, summary: &PluginSummary) {
        self.push(Event {
            wall_time,
            step,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: summary.tag.clone(),
                    tensor: Some(TensorProto {
                        dtype: 1,
                        tensor_shape: Some(TensorShape {
                            dim: vec![TensorDim { size: 0 }],
                        }),
                    }),
                    metadata: Some(SummaryMetadata {
                        plugin_data: Some(PluginData {
                            plugin_name: summary.plugin.clone(),
                            content: summary.content.clone(),
                        }),
                    }),
                    ..Default::default()
                }],
            }),
        });
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
