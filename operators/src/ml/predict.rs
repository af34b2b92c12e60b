//! Using registered models from SQL: `predict('name' [, version], input)` as a scalar function,
//! `ml_evaluate('name' [, version], 'table' | 'SELECT ...')` and `models()` (what
//! `SHOW MODELS` runs) as table functions.

use quiver_engine::computed::{ComputeRows, ComputedTable, string_literal, table_or_query};
use quiver_engine::time::{timestamp_builder, timestamp_micros, timestamp_type};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use burn::backend::Flex;
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Builder, ListBuilder, RecordBatch, StringBuilder,
    StructArray, UInt64Builder,
};
use datafusion::arrow::compute::filter;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::catalog::{
    Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use super::MlError;
use super::conv::ConvBackend;
use super::data::{batch_dims, input_values};
use super::device::Device;
use super::evaluate::evaluate_model;
use super::model::Classifier;
use super::registry::{ModelCard, Registry};
use super::train::load_weights;
use quiver_engine::{bail, err};

/// The loaded network on its device.
#[derive(Debug, Clone)]
enum Net {
    Cpu(Classifier<Flex>),
    #[cfg(feature = "cuda")]
    Cuda(
        Classifier<burn::backend::Cuda>,
        burn::backend::cuda::CudaDevice,
    ),
}

/// A registered model loaded for inference, on the CPU or a GPU.
#[derive(Debug)]
pub struct LoadedModel {
    /// Its `model.json`.
    pub card: ModelCard,
    /// Replicas of the network (sharing their weights): forward passes on different replicas
    /// run at the same time.
    replicas: Vec<Mutex<Net>>,
    next: std::sync::atomic::AtomicUsize,
}

/// Builds the network of `card` on `device` and loads its weights.
fn build<B: ConvBackend>(
    card: &ModelCard,
    weights: Vec<u8>,
    device: &B::Device,
    what: &str,
) -> Result<Classifier<B>, MlError> {
    let model = Classifier::<B>::new(
        &card.architecture,
        &card.input,
        card.labels.labels.len(),
        device,
        0,
        Default::default(),
    )?;
    load_weights(model, weights, what)
}

/// Softmax probabilities, row-major `[rows, classes]`.
fn forward<B: ConvBackend>(
    model: &Classifier<B>,
    values: Vec<f32>,
    dims: [usize; 4],
    device: &B::Device,
) -> Result<Vec<f32>, MlError> {
    let x = Tensor::<B, 4>::from_data(TensorData::new(values, dims), device);
    softmax(model.forward(x), 1)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| err!(MlError::Training, "{e:?}"))
}

impl LoadedModel {
    /// Loads `name` at `version` (newest when `None`) from the registry, on the CPU.
    pub async fn load(
        registry: &Registry,
        name: &str,
        version: Option<u64>,
    ) -> Result<Self, MlError> {
        Self::load_on(registry, name, version, Device::Cpu, 1).await
    }

    /// Loads `name` at `version` (newest when `None`) from the registry onto `device`, as
    /// `replicas` networks that can run forward passes concurrently (at least one).
    pub async fn load_on(
        registry: &Registry,
        name: &str,
        version: Option<u64>,
        device: Device,
        replicas: usize,
    ) -> Result<Self, MlError> {
        let (card, weights) = registry.load(name, version).await?;
        let what = registry.version_url(name, card.version);
        let net = match device {
            Device::Cpu => Net::Cpu(build(&card, weights, &Default::default(), &what)?),
            #[cfg(feature = "cuda")]
            Device::Cuda(index) => {
                let gpu = burn::backend::cuda::CudaDevice::new(index);
                Net::Cuda(build(&card, weights, &gpu, &what)?, gpu)
            }
        };
        Ok(Self {
            card,
            replicas: (0..replicas.max(1))
                .map(|_| Mutex::new(net.clone()))
                .collect(),
            next: Default::default(),
        })
    }

    /// A copy of the network when it runs on the CPU (what `ml_evaluate` runs).
    fn cpu_network(&self) -> Option<Classifier<Flex>> {
        match &*self.replicas[0].lock().ok()? {
            Net::Cpu(model) => Some(model.clone()),
            #[cfg(feature = "cuda")]
            Net::Cuda(..) => None,
        }
    }

    /// Class probabilities `[rows][classes]` for an input column.
    pub fn probabilities(&self, input: &ArrayRef) -> Result<Vec<Vec<f32>>, MlError> {
        if input.is_empty() {
            return Ok(Vec::new());
        }
        self.probabilities_of(input_values(input, &self.card.input)?, input.len())
    }

    /// Class probabilities `[rows][classes]` for model-ready values (`rows` examples laid out
    /// as [`push_model_values`](super::data::push_model_values) makes them).
    pub fn probabilities_of(
        &self,
        values: Vec<f32>,
        rows: usize,
    ) -> Result<Vec<Vec<f32>>, MlError> {
        let [c, h, w] = batch_dims(&self.card.input);
        if rows == 0 || values.len() != rows * c * h * w {
            bail!(
                MlError::Input,
                "{} input values do not make {rows} examples of {} values",
                values.len(),
                c * h * w
            );
        }
        let classes = self.card.labels.labels.len();
        // A free replica if there is one, else wait for the next in turn.
        let n = self.replicas.len();
        let first = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        let free = (0..n).find_map(|i| self.replicas[(first + i) % n].try_lock().ok());
        let net = match free {
            Some(net) => net,
            None => self.replicas[first]
                .lock()
                .map_err(|_| MlError::Training("model lock poisoned".into()))?,
        };
        let dims = [rows, c, h, w];
        let probs = match &*net {
            Net::Cpu(model) => forward(model, values, dims, &Default::default())?,
            #[cfg(feature = "cuda")]
            Net::Cuda(model, gpu) => forward(model, values, dims, gpu)?,
        };
        Ok(probs.chunks(classes).map(<[f32]>::to_vec).collect())
    }
}

/// Loaded models by (name, version), shared by a session's functions.
#[derive(Debug, Default)]
struct ModelCache {
    models: Mutex<HashMap<(String, u64), Arc<LoadedModel>>>,
}

impl ModelCache {
    /// The model, loaded once per version; `None` picks the newest version now registered.
    async fn get(
        &self,
        registry: &Registry,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<LoadedModel>, MlError> {
        let version =
            match version {
                Some(v) => v,
                None => *registry.versions(name).await?.last().ok_or_else(|| {
                    err!(MlError::NotFound, "model '{name}' is not in the registry")
                })?,
            };
        let key = (name.to_string(), version);
        if let Some(model) = self.models.lock().expect("cache lock").get(&key) {
            return Ok(Arc::clone(model));
        }
        let model = Arc::new(LoadedModel::load(registry, name, Some(version)).await?);
        self.models
            .lock()
            .expect("cache lock")
            .insert(key, Arc::clone(&model));
        Ok(model)
    }
}

/// Runs a future to completion from synchronous DataFusion code on a Tokio worker.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

/// The model name and optional version from literal arguments.
fn model_ref(what: &str, args: &[Option<ScalarValue>]) -> Result<(String, Option<u64>)> {
    let name = match args.first() {
        Some(Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        )) => s.clone(),
        _ => return plan_err!("{what}: argument 1 must be the model name as a string literal"),
    };
    let version = match args.get(1) {
        Some(Some(v)) if v.data_type().is_integer() => match v.cast_to(&DataType::UInt64)? {
            ScalarValue::UInt64(Some(v)) => Some(v),
            _ => return plan_err!("{what}: the version must be a positive integer"),
        },
        _ => None,
    };
    Ok((name, version))
}

/// `predict('name' [, version], input)` → `{label, probability, probabilities}`: the most
/// likely label, its probability, and every class's probability in the order of the model's
/// label map.
#[derive(Debug)]
pub struct PredictFunc {
    registry: Registry,
    cache: Arc<ModelCache>,
    signature: Signature,
}

impl PartialEq for PredictFunc {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.cache, &other.cache)
    }
}
impl Eq for PredictFunc {}
impl std::hash::Hash for PredictFunc {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "predict".hash(state)
    }
}

impl PredictFunc {
    /// `predict` over the models of `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            cache: Arc::default(),
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

fn prediction_fields() -> Fields {
    Fields::from(vec![
        Field::new("label", DataType::Utf8, true),
        Field::new("probability", DataType::Float64, true),
        Field::new(
            "probabilities",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
            true,
        ),
    ])
}

impl ScalarUDFImpl for PredictFunc {
    fn name(&self) -> &str {
        "predict"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if !(2..=3).contains(&arg_types.len()) {
            return plan_err!("usage: predict('model' [, version], input)");
        }
        Ok(DataType::Struct(prediction_fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalars: Vec<Option<ScalarValue>> = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(s) => Some(s.clone()),
                ColumnarValue::Array(_) => None,
            })
            .collect();
        let (name, version) = model_ref("predict", &scalars[..scalars.len() - 1])?;
        let input = args
            .args
            .last()
            .expect("checked arity")
            .to_array(args.number_rows)?;
        let model = block_on(self.cache.get(&self.registry, &name, version))?;
        // NULL inputs (say, images that image_decode(.., 'null') skipped) predict NULL.
        let nulls = input.logical_nulls().filter(|n| n.null_count() > 0);
        let present = match &nulls {
            Some(n) => filter(&input, &BooleanArray::new(n.inner().clone(), None))?,
            None => input,
        };
        let mut probs = model
            .probabilities(&present)
            .map_err(|e| err!(MlError::Input, "predict('{name}'): {e}"))?
            .into_iter();
        let mut labels = StringBuilder::new();
        let mut best = Float64Builder::new();
        let mut every = ListBuilder::new(Float64Builder::new());
        for row in 0..args.number_rows {
            if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                labels.append_null();
                best.append_null();
                every.append_null();
                continue;
            }
            let probs = probs.next().expect("one prediction per non-NULL row");
            let (i, p) =
                probs.iter().enumerate().fold(
                    (0, f32::MIN),
                    |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
                );
            labels.append_value(&model.card.labels.labels[i]);
            best.append_value(p as f64);
            every.append_value(probs.iter().map(|&p| Some(p as f64)));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(labels.finish()),
            Arc::new(best.finish()),
            Arc::new(every.finish()),
        ];
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            prediction_fields(),
            columns,
            nulls,
        )?)))
    }
}

/// `models()` or `ml_evaluate(...)`: evaluation and listings run at execution, not planning.
#[derive(Debug)]
struct MlTable {
    schema: SchemaRef,
    compute: ComputeKind,
    registry: Registry,
    cache: Arc<ModelCache>,
}

#[derive(Debug, Clone)]
enum ComputeKind {
    Evaluate {
        name: String,
        version: Option<u64>,
        /// The evaluation query's SQL.
        sql: String,
    },
    Models,
}

#[async_trait]
impl ComputeRows for MlTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self, state: &dyn CatalogSession) -> Result<RecordBatch> {
        Ok(match &self.compute {
            ComputeKind::Models => models_batch(&self.registry, &self.schema).await?,
            ComputeKind::Evaluate { name, version, sql } => {
                let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
                    return exec_err!("ml_evaluate needs a DataFusion SessionState");
                };
                let ctx = SessionContext::new_with_state(state.clone());
                let frame: DataFrame = ctx.sql(sql).await?;
                let model = self.cache.get(&self.registry, name, *version).await?;
                let Some(inner) = model.cpu_network() else {
                    return exec_err!("ml_evaluate('{name}'): the model is not loaded on the CPU");
                };
                let evaluation = evaluate_model(
                    &inner,
                    &frame,
                    &model.card.input,
                    &model.card.labels,
                    model.card.training.batch_size,
                )
                .await
                .map_err(|e| err!(MlError::Input, "ml_evaluate('{name}'): {e}"))?;
                evaluation_batch(&evaluation, &self.schema)?
            }
        })
    }
}

fn evaluation_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("label", DataType::Utf8, true),
        Field::new("precision", DataType::Float64, false),
        Field::new("recall", DataType::Float64, false),
        Field::new("f1_score", DataType::Float64, false),
        Field::new("support", DataType::UInt64, false),
        Field::new("accuracy", DataType::Float64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new(
            "confusion",
            DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true))),
            true,
        ),
    ]))
}

/// One row per class (its confusion-matrix row: counts by predicted class), then a row with a
/// NULL label holding the macro averages.
fn evaluation_batch(e: &super::Evaluation, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut label = StringBuilder::new();
    let (mut precision, mut recall, mut f1) = (
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
    );
    let mut support = UInt64Builder::new();
    let (mut accuracy, mut loss) = (Float64Builder::new(), Float64Builder::new());
    let mut confusion = ListBuilder::new(UInt64Builder::new())
        .with_field(Arc::new(Field::new_list_field(DataType::UInt64, true)));
    for (k, c) in e.classes.iter().enumerate() {
        label.append_value(&c.label);
        precision.append_value(c.precision);
        recall.append_value(c.recall);
        f1.append_value(c.f1);
        support.append_value(c.support);
        accuracy.append_value(e.accuracy);
        loss.append_value(e.loss);
        confusion.values().append_slice(&e.confusion[k]);
        confusion.append(true);
    }
    let n = e.classes.len().max(1) as f64;
    label.append_null();
    precision.append_value(e.classes.iter().map(|c| c.precision).sum::<f64>() / n);
    recall.append_value(e.classes.iter().map(|c| c.recall).sum::<f64>() / n);
    f1.append_value(e.classes.iter().map(|c| c.f1).sum::<f64>() / n);
    support.append_value(e.examples);
    accuracy.append_value(e.accuracy);
    loss.append_value(e.loss);
    confusion.append(false);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(label.finish()),
        Arc::new(precision.finish()),
        Arc::new(recall.finish()),
        Arc::new(f1.finish()),
        Arc::new(support.finish()),
        Arc::new(accuracy.finish()),
        Arc::new(loss.finish()),
        Arc::new(confusion.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

fn models_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("model_type", DataType::Utf8, false),
        Field::new("classes", DataType::UInt64, false),
        Field::new("epochs", DataType::UInt64, false),
        Field::new("accuracy", DataType::Float64, true),
        Field::new("val_accuracy", DataType::Float64, true),
        Field::new("created_at", timestamp_type(), false),
        Field::new("location", DataType::Utf8, false),
    ]))
}

async fn models_batch(registry: &Registry, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut version = UInt64Builder::new();
    let mut model_type = StringBuilder::new();
    let (mut classes, mut epochs) = (UInt64Builder::new(), UInt64Builder::new());
    let mut created = timestamp_builder();
    let (mut accuracy, mut val_accuracy) = (Float64Builder::new(), Float64Builder::new());
    let mut location = StringBuilder::new();
    for card in registry.cards().await? {
        let last = card.history.last();
        name.append_value(&card.name);
        version.append_value(card.version);
        model_type.append_value(card.architecture.model_type());
        classes.append_value(card.labels.labels.len() as u64);
        epochs.append_value(card.history.len() as u64);
        accuracy.append_option(last.map(|m| m.accuracy));
        val_accuracy.append_option(card.evaluation.as_ref().map(|e| e.accuracy));
        created.append_value(timestamp_micros(card.created_at as f64));
        location.append_value(registry.version_url(&card.name, card.version));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(name.finish()),
        Arc::new(version.finish()),
        Arc::new(model_type.finish()),
        Arc::new(classes.finish()),
        Arc::new(epochs.finish()),
        Arc::new(accuracy.finish()),
        Arc::new(val_accuracy.finish()),
        Arc::new(created.finish()),
        Arc::new(location.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// `ml_evaluate(...)` and `models()`.
#[derive(Debug)]
pub struct MlTableFunc {
    evaluate: bool,
    registry: Registry,
    cache: Arc<ModelCache>,
}

impl MlTableFunc {
    /// `ml_evaluate('name' [, version], data)`.
    pub fn evaluate(registry: Registry) -> Self {
        Self {
            evaluate: true,
            registry,
            cache: Arc::default(),
        }
    }

    /// `models()`: one row per registered model version.
    pub fn models(registry: Registry) -> Self {
        Self {
            evaluate: false,
            registry,
            cache: Arc::default(),
        }
    }
}

impl TableFunctionImpl for MlTableFunc {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let (schema, compute) = if self.evaluate {
            const USAGE: &str = "usage: ml_evaluate('model' [, version], 'table' | 'SELECT ...')";
            if !(2..=3).contains(&exprs.len()) {
                return plan_err!("ml_evaluate: expected 2 or 3 arguments; {USAGE}");
            }
            let literals: Vec<Option<ScalarValue>> = exprs
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => Some(v.clone()),
                    _ => None,
                })
                .collect();
            let (name, version) = model_ref("ml_evaluate", &literals[..exprs.len() - 1])?;
            let data = exprs.last().expect("checked arity");
            let Some(text) = string_literal(data) else {
                return plan_err!(
                    "ml_evaluate: the data argument {data} is not a table name or a query string; {USAGE}"
                );
            };
            let (_, sql) = table_or_query(text);
            (
                evaluation_schema(),
                ComputeKind::Evaluate { name, version, sql },
            )
        } else {
            if !exprs.is_empty() {
                return plan_err!("models() takes no arguments");
            }
            (models_schema(), ComputeKind::Models)
        };
        Ok(Arc::new(ComputedTable::new(MlTable {
            schema,
            compute,
            registry: self.registry.clone(),
            cache: Arc::clone(&self.cache),
        })))
    }
}
