//! Ballista's logical and physical extension codecs, extended with Quiver's tables, scans and
//! sinks so that any plan of a Quiver session can run on a cluster: `read_images` (its table, and
//! its scan with the planner's file groups), TFRecord tables, scans, writers and commits, and
//! in-memory tables (`CREATE TABLE ... AS`, sent as Arrow IPC). Functions travel by name and are looked up
//! in the executors' registries, which hold the same functions as the client's session.
//!
//! Every encoding starts with one byte: [`QUIVER`] for Quiver's nodes, [`BALLISTA`] for what is
//! handed on to Ballista's codecs.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_protobuf_file_scan_config;
use datafusion_proto::physical_plan::to_proto::serialize_file_scan_config;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use object_store::path::Path;
use prost::Message;
use quiver_operators::tfrecord::{
    TfRecordSinkExec, TfRecordSource, TfRecordWrite, TfRecordWriterExec,
};
use quiver_operators::{ReadImagesSource, ReadImagesTable, TfRecordFormatFactory, TfRecordOptions};

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};

use crate::TfRecordTable;
use datafusion::common::{internal_datafusion_err, internal_err};
use quiver_engine::err;

/// The first byte of an encoding of one of Quiver's nodes.
pub const QUIVER: u8 = b'Q';
/// The first byte of an encoding made by Ballista's codecs.
pub const BALLISTA: u8 = b'B';

#[derive(Clone, PartialEq, Message)]
struct QuiverNode {
    #[prost(oneof = "Node", tags = "1, 2, 3, 4, 6, 7, 8")]
    node: Option<Node>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Node {
    #[prost(message, tag = "1")]
    ReadImages(ReadImagesProto),
    #[prost(message, tag = "2")]
    FileScan(Box<FileScanProto>),
    #[prost(message, tag = "3")]
    TfRecordTable(TfRecordProto),
    #[prost(message, tag = "4")]
    MemTable(MemTableProto),
    #[prost(message, tag = "6")]
    TfRecordSink(TfRecordSinkProto),
    #[prost(message, tag = "7")]
    TfRecordFormat(TfRecordProto),
    #[prost(message, tag = "8")]
    TfRecordWriter(TfRecordSinkProto),
}

#[derive(Clone, PartialEq, Message)]
struct ReadImagesProto {
    #[prost(string, tag = "1")]
    location: String,
    #[prost(double, tag = "2")]
    sample_ratio: f64,
    #[prost(uint64, tag = "3")]
    seed: u64,
}

/// A TFRecord table (its location) or format (location empty), with its options.
#[derive(Clone, PartialEq, Message)]
struct TfRecordProto {
    #[prost(string, tag = "1")]
    location: String,
    #[prost(map = "string, string", tag = "2")]
    options: HashMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct MemTableProto {
    /// One Arrow IPC stream per partition.
    #[prost(bytes = "vec", repeated, tag = "1")]
    partitions: Vec<Vec<u8>>,
}

/// A scan of files by one of Quiver's file sources.
#[derive(Clone, PartialEq, Message)]
struct FileScanProto {
    /// The source's `file_type()`.
    #[prost(string, tag = "1")]
    format: String,
    #[prost(message, optional, tag = "2")]
    conf: Option<protobuf::FileScanExecConf>,
    /// Whether each partition reads its own files in order (DataFusion's protobuf drops the
    /// flag; without it an executor's streams steal files from each other).
    #[prost(bool, tag = "3")]
    preserve_order: bool,
}

/// A TFRecord writer or commit.
#[derive(Clone, PartialEq, Message)]
struct TfRecordSinkProto {
    #[prost(message, optional, tag = "1")]
    config: Option<protobuf::FileSinkConfig>,
    #[prost(map = "string, string", tag = "2")]
    options: HashMap<String, String>,
    #[prost(string, tag = "3")]
    staging: String,
}

impl TfRecordSinkProto {
    fn new(write: &TfRecordWrite) -> Result<Self> {
        Ok(Self {
            config: Some(protobuf::FileSinkConfig::try_from(&write.config)?),
            options: write.options.to_options(),
            staging: write.staging.to_string(),
        })
    }

    fn write(&self) -> Result<TfRecordWrite> {
        let config = self.config.as_ref().ok_or(missing("sink configuration"))?;
        Ok(TfRecordWrite {
            config: FileSinkConfig::try_from(config)?,
            options: TfRecordOptions::default().with_options(&self.options)?,
            staging: Path::from(self.staging.as_str()),
        })
    }
}

fn encode_quiver(node: Node, buf: &mut Vec<u8>) {
    buf.push(QUIVER);
    QuiverNode { node: Some(node) }
        .encode(buf)
        .expect("Vec grows");
}

/// Splits an encoding into Quiver's node, or the bytes meant for Ballista's codec.
fn decode(buf: &[u8]) -> Result<std::result::Result<Node, &[u8]>> {
    match buf.split_first() {
        Some((&QUIVER, rest)) => QuiverNode::decode(rest)
            .map_err(|e| internal_datafusion_err!("bad Quiver plan node: {e}"))?
            .node
            .map(Ok)
            .ok_or_else(|| DataFusionError::Internal("empty Quiver plan node".into())),
        Some((&BALLISTA, rest)) => Ok(Err(rest)),
        _ => Err(DataFusionError::Internal(
            "a plan node encoded by another codec (not Quiver's)".into(),
        )),
    }
}

fn missing(what: &str) -> DataFusionError {
    internal_datafusion_err!("Quiver plan node without its {what}")
}

fn read_images_proto(table: &ReadImagesTable) -> ReadImagesProto {
    ReadImagesProto {
        location: table.location().to_string(),
        sample_ratio: table.sample_ratio(),
        seed: table.seed(),
    }
}

fn read_images_table(proto: &ReadImagesProto) -> Result<ReadImagesTable> {
    ReadImagesTable::try_new(&proto.location, proto.sample_ratio, proto.seed)
}

fn mem_table_proto(table: &MemTable) -> Result<MemTableProto> {
    let schema = table.schema();
    let partitions = table
        .batches
        .iter()
        .map(|partition| {
            let batches = partition.try_read().map_err(|_| {
                DataFusionError::Execution(
                    "an in-memory table is being written while it is sent".into(),
                )
            })?;
            let mut out = Vec::new();
            let mut writer = StreamWriter::try_new(&mut out, &schema)?;
            for batch in batches.iter() {
                writer.write(batch)?;
            }
            writer.finish()?;
            drop(writer);
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(MemTableProto { partitions })
}

fn mem_table(proto: &MemTableProto, schema: SchemaRef) -> Result<MemTable> {
    let partitions = proto
        .partitions
        .iter()
        .map(|bytes| {
            StreamReader::try_new(bytes.as_slice(), None)?
                .collect::<std::result::Result<Vec<RecordBatch>, _>>()
                .map_err(DataFusionError::from)
        })
        .collect::<Result<Vec<_>>>()?;
    MemTable::try_new(schema, partitions)
}

/// Ballista's logical codec, plus Quiver's tables and the TFRecord format.
#[derive(Debug, Default)]
pub struct QuiverLogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for QuiverLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        match decode(buf)? {
            Err(rest) => self.ballista.try_decode(rest, inputs, ctx),
            Ok(_) => Err(DataFusionError::Internal(
                "a Quiver table or format where a plan extension was expected".into(),
            )),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        buf.push(BALLISTA);
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        Ok(match decode(buf)? {
            Err(rest) => {
                return self
                    .ballista
                    .try_decode_table_provider(rest, table_ref, schema, ctx);
            }
            Ok(Node::ReadImages(proto)) => Arc::new(read_images_table(&proto)?),
            Ok(Node::TfRecordTable(proto)) => Arc::new(TfRecordTable::try_new(
                &proto.location,
                TfRecordOptions::default().with_options(&proto.options)?,
                schema,
            )?),
            Ok(Node::MemTable(proto)) => Arc::new(mem_table(&proto, schema)?),
            Ok(_) => return Err(missing("table")),
        })
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let quiver = if let Some(table) = node.downcast_ref::<ReadImagesTable>() {
            Node::ReadImages(read_images_proto(table))
        } else if let Some(table) = node.downcast_ref::<TfRecordTable>() {
            Node::TfRecordTable(TfRecordProto {
                location: table.location().to_string(),
                options: table.options().to_options(),
            })
        } else if let Some(table) = node.downcast_ref::<MemTable>() {
            Node::MemTable(mem_table_proto(table)?)
        } else {
            buf.push(BALLISTA);
            return self
                .ballista
                .try_encode_table_provider(table_ref, node, buf)
                .map_err(|e| {
                    err!(
                        DataFusionError::NotImplemented,
                        "table '{table_ref}' cannot be sent to a cluster: {e}"
                    )
                });
        };
        encode_quiver(quiver, buf);
        Ok(())
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        match decode(buf)? {
            Err(rest) => self.ballista.try_decode_file_format(rest, ctx),
            Ok(Node::TfRecordFormat(proto)) => {
                Ok(Arc::new(TfRecordFormatFactory::with_options(proto.options)))
            }
            Ok(_) => Err(missing("file format")),
        }
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        if let Some(factory) = node.downcast_ref::<TfRecordFormatFactory>() {
            encode_quiver(
                Node::TfRecordFormat(TfRecordProto {
                    location: String::new(),
                    options: factory.options().clone(),
                }),
                buf,
            );
            return Ok(());
        }
        buf.push(BALLISTA);
        self.ballista.try_encode_file_format(buf, node)
    }
}

/// Ballista's physical codec, plus Quiver's scans and sinks.
#[derive(Debug, Default)]
pub struct QuiverPhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for QuiverPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(match decode(buf)? {
            Err(rest) => return self.ballista.try_decode(rest, inputs, ctx, proto_converter),
            Ok(Node::FileScan(proto)) => {
                let conf = proto.conf.ok_or(missing("scan configuration"))?;
                let source: Arc<dyn FileSource> = match proto.format.as_str() {
                    "tfrecord" => Arc::new(TfRecordSource::new(
                        FileScanConfig::parse_table_schema_from_proto(&conf)?,
                    )),
                    "images" => Arc::new(ReadImagesSource::new(None)),
                    other => {
                        return internal_err!("unknown Quiver file source '{other}'");
                    }
                };
                let mut config = parse_protobuf_file_scan_config(
                    &conf,
                    &PhysicalPlanDecodeContext::new(ctx, self),
                    proto_converter,
                    source,
                )?;
                config.preserve_order |= proto.preserve_order;
                DataSourceExec::from_data_source(config)
            }
            Ok(node @ (Node::TfRecordSink(_) | Node::TfRecordWriter(_))) => {
                let [input] = inputs else {
                    return Err(missing("input"));
                };
                let input = Arc::clone(input);
                match node {
                    Node::TfRecordSink(proto) => {
                        Arc::new(TfRecordSinkExec::new(input, proto.write()?))
                    }
                    Node::TfRecordWriter(proto) => {
                        Arc::new(TfRecordWriterExec::new(input, proto.write()?))
                    }
                    _ => unreachable!("matched above"),
                }
            }
            Ok(_) => return Err(missing("execution plan")),
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let quiver = if let Some(conf) = quiver_file_scan(&node) {
            Node::FileScan(Box::new(FileScanProto {
                format: conf.file_source().file_type().to_string(),
                conf: Some(serialize_file_scan_config(conf, self, proto_converter)?),
                preserve_order: conf.preserve_order,
            }))
        } else if let Some(exec) = node.downcast_ref::<TfRecordSinkExec>() {
            Node::TfRecordSink(TfRecordSinkProto::new(exec.write())?)
        } else if let Some(exec) = node.downcast_ref::<TfRecordWriterExec>() {
            Node::TfRecordWriter(TfRecordSinkProto::new(exec.write())?)
        } else {
            buf.push(BALLISTA);
            return self.ballista.try_encode(node, buf, proto_converter);
        };
        encode_quiver(quiver, buf);
        Ok(())
    }
}

/// The file scan configuration of a scan by one of Quiver's file sources.
fn quiver_file_scan(node: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    let config = node
        .downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()?;
    let source = config.file_source();
    (source.is::<TfRecordSource>() || source.is::<ReadImagesSource>()).then_some(config)
}
