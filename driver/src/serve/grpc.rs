//! The gRPC server: TensorFlow Serving's `PredictionService` (`Predict`, `Classify`,
//! `GetModelMetadata`) and `ModelService` (`GetModelStatus`).

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::{Code, Request, Response, Status};
use tower::Service;

use super::convert::{self, InputTensor};
use super::proto::tensorflow::serving::model_service_server::{ModelService, ModelServiceServer};
use super::proto::tensorflow::serving::prediction_service_server::{
    PredictionService, PredictionServiceServer,
};
use super::proto::tensorflow::serving::{
    Class, ClassificationRequest, ClassificationResponse, ClassificationResult, Classifications,
    GetModelMetadataRequest, GetModelMetadataResponse, GetModelStatusRequest,
    GetModelStatusResponse, ModelSpec, ModelVersionStatus, PredictRequest, PredictResponse,
    SignatureDefMap, StatusProto, input, model_spec, model_version_status,
};
use super::proto::tensorflow::{DataType, SignatureDef, TensorInfo, tensor_info};
use super::{Call, SIGNATURE, ServeError, ServerState};
use quiver_engine::{bail, err};
use quiver_operators::ml::ModelCard;
use quiver_operators::ml::spec::InputKind;
use quiver_operators::tfrecord::feature::Kind;
use quiver_sql::tls::Tls;

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        let message = e.to_string();
        match e {
            ServeError::NotFound(_) => Status::not_found(message),
            ServeError::InvalidArgument(_) => Status::invalid_argument(message),
            ServeError::TooLarge(_) => Status::resource_exhausted(message),
            ServeError::OutOfRange(_) => Status::out_of_range(message),
            ServeError::Unavailable(_) => Status::unavailable(message),
            ServeError::Internal(_) => Status::internal(message),
        }
    }
}

/// The model name, version and signature of a request's `ModelSpec`.
pub fn read_model_spec(
    spec: Option<&ModelSpec>,
) -> Result<(String, Option<u64>, String), ServeError> {
    let spec =
        spec.ok_or_else(|| ServeError::InvalidArgument("the request has no model_spec".into()))?;
    if spec.name.is_empty() {
        return Err(ServeError::InvalidArgument(
            "model_spec.name is empty".into(),
        ));
    }
    let version = match &spec.version_choice {
        None => None,
        Some(model_spec::VersionChoice::Version(v)) => Some(u64::try_from(*v).map_err(|_| {
            err!(
                ServeError::InvalidArgument,
                "model_spec.version {v} is not a version number"
            )
        })?),
        Some(model_spec::VersionChoice::VersionLabel(label)) => {
            bail!(
                ServeError::InvalidArgument,
                "version labels are not supported ('{label}'): ask for a version number or none \
                 for the newest"
            );
        }
    };
    Ok((spec.name.clone(), version, spec.signature_name.clone()))
}

fn answered_spec(name: &str, version: u64, signature: &str) -> ModelSpec {
    ModelSpec {
        name: name.to_string(),
        version_choice: Some(model_spec::VersionChoice::Version(version as i64)),
        signature_name: if signature.is_empty() {
            SIGNATURE.to_string()
        } else {
            signature.to_string()
        },
    }
}

/// The `serving_default` signature of a model.
pub fn signature_def(card: &ModelCard) -> SignatureDef {
    let info = |name: &str, dtype: DataType, dims: &[i64]| TensorInfo {
        encoding: Some(tensor_info::Encoding::Name(format!("{name}:0"))),
        dtype: dtype as i32,
        tensor_shape: Some(convert::tensor_shape(dims)),
    };
    let column = &card.input.column;
    let input = match card.input.kind {
        InputKind::Image => info(column, DataType::DtString, &[-1]),
        InputKind::Tensor => info(
            column,
            DataType::DtFloat,
            &convert::expected_shape(&card.input),
        ),
    };
    let outputs = convert::OUTPUTS
        .iter()
        .zip(convert::output_specs(card.labels.labels.len()))
        .map(|(name, (dtype, dims))| (name.to_string(), info(name, dtype, &dims)))
        .collect();
    SignatureDef {
        inputs: HashMap::from([(column.clone(), input)]),
        outputs,
        method_name: "tensorflow/serving/predict".into(),
    }
}

/// The gRPC services over the shared server state.
#[derive(Debug, Clone)]
struct Grpc(Arc<ServerState>);

#[tonic::async_trait]
impl PredictionService for Grpc {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let request = request.into_inner();
        let (name, version, signature) = read_model_spec(request.model_spec.as_ref())?;
        let filter = if request.output_filter.is_empty() {
            convert::OUTPUTS.iter().map(|s| s.to_string()).collect()
        } else {
            request.output_filter.clone()
        };
        if let Some(bad) = filter
            .iter()
            .find(|f| !convert::OUTPUTS.contains(&f.as_str()))
        {
            return Err(err!(
                ServeError::InvalidArgument,
                "output_filter '{bad}' is not an output of model '{name}' (outputs: {})",
                convert::OUTPUTS.join(", ")
            )
            .into());
        }
        let inputs = request
            .inputs
            .iter()
            .map(|(k, t)| Ok((k.clone(), convert::from_tensor_proto(k, t)?)))
            .collect();
        let call = Call {
            protocol: "grpc",
            method: "predict",
            model: &name,
            version,
            signature: &signature,
        };
        let prediction = self.0.predict(call, inputs).await?;
        let labels = &prediction.servable.model.card.labels.labels;
        let outputs = filter
            .iter()
            .map(|f| {
                let t = convert::output_tensor(f, &prediction.probabilities, labels)
                    .expect("checked output name");
                (f.clone(), t)
            })
            .collect();
        Ok(Response::new(PredictResponse {
            model_spec: Some(answered_spec(
                &name,
                prediction.servable.version,
                &signature,
            )),
            outputs,
        }))
    }

    async fn classify(
        &self,
        request: Request<ClassificationRequest>,
    ) -> Result<Response<ClassificationResponse>, Status> {
        let request = request.into_inner();
        let (name, version, signature) = read_model_spec(request.model_spec.as_ref())?;
        let examples = match request.input.and_then(|i| i.kind) {
            Some(input::Kind::ExampleList(list)) => list.examples,
            Some(input::Kind::ExampleListWithContext(list)) => list.examples,
            None => Vec::new(),
        };
        // The feature named like the model's input, in each example.
        let servable = self.0.models.get(&name, version).await?;
        let column = servable.model.card.input.column.clone();
        let inputs = examples
            .iter()
            .enumerate()
            .map(|(i, example)| {
                let feature = example
                    .features
                    .as_ref()
                    .and_then(|f| f.feature.get(&column))
                    .and_then(|f| f.kind.as_ref())
                    .ok_or_else(|| {
                        err!(
                            ServeError::InvalidArgument,
                            "example {i} has no feature '{column}'"
                        )
                    })?;
                Ok(match feature {
                    Kind::BytesList(b) => InputTensor::Encoded(b.value.clone()),
                    Kind::FloatList(f) => InputTensor::Numbers {
                        shape: vec![1, f.value.len()],
                        values: f.value.clone(),
                        dtype: "float32",
                    },
                    Kind::Int64List(v) => InputTensor::Numbers {
                        shape: vec![1, v.value.len()],
                        values: v.value.iter().map(|&x| x as f32).collect(),
                        dtype: "int64",
                    },
                })
            })
            .collect::<Result<Vec<_>, ServeError>>()
            .and_then(|parts| Ok(vec![(column.clone(), convert::stack(&column, parts)?)]));
        let call = Call {
            protocol: "grpc",
            method: "classify",
            model: &name,
            version: Some(servable.version),
            signature: &signature,
        };
        let prediction = self.0.predict(call, inputs).await?;
        let labels = &prediction.servable.model.card.labels.labels;
        let classifications = prediction
            .probabilities
            .iter()
            .map(|p| Classifications {
                classes: convert::ranked(p)
                    .into_iter()
                    .map(|(i, score)| Class {
                        label: labels[i].clone(),
                        score,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ClassificationResponse {
            model_spec: Some(answered_spec(
                &name,
                prediction.servable.version,
                &signature,
            )),
            result: Some(ClassificationResult { classifications }),
        }))
    }

    async fn get_model_metadata(
        &self,
        request: Request<GetModelMetadataRequest>,
    ) -> Result<Response<GetModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let (name, version, _) = read_model_spec(request.model_spec.as_ref())?;
        if request.metadata_field.is_empty() {
            return Err(ServeError::InvalidArgument(
                "GetModelMetadataRequest must name at least one metadata_field ('signature_def')"
                    .into(),
            )
            .into());
        }
        if let Some(bad) = request
            .metadata_field
            .iter()
            .find(|f| *f != "signature_def")
        {
            return Err(err!(
                ServeError::InvalidArgument,
                "metadata field '{bad}' is not supported (supported: signature_def)"
            )
            .into());
        }
        let servable = self.0.models.get(&name, version).await?;
        let map = SignatureDefMap {
            signature_def: HashMap::from([(
                SIGNATURE.to_string(),
                signature_def(&servable.model.card),
            )]),
        };
        let any = prost_types::Any {
            type_url: "type.googleapis.com/tensorflow.serving.SignatureDefMap".into(),
            value: map.encode_to_vec(),
        };
        Ok(Response::new(GetModelMetadataResponse {
            model_spec: Some(answered_spec(&name, servable.version, "")),
            metadata: HashMap::from([("signature_def".to_string(), any)]),
        }))
    }
}

#[tonic::async_trait]
impl ModelService for Grpc {
    async fn get_model_status(
        &self,
        request: Request<GetModelStatusRequest>,
    ) -> Result<Response<GetModelStatusResponse>, Status> {
        let request = request.into_inner();
        let (name, version, _) = read_model_spec(request.model_spec.as_ref())?;
        let versions = self.0.models.status(&name, version).await?;
        Ok(Response::new(GetModelStatusResponse {
            model_version_status: versions
                .into_iter()
                .map(|v| ModelVersionStatus {
                    version: v as i64,
                    state: model_version_status::State::Available as i32,
                    status: Some(StatusProto {
                        error_code: 0,
                        error_message: String::new(),
                    }),
                })
                .collect(),
        }))
    }
}

/// The method of a call the prediction log records, from its gRPC path.
fn logged_method(path: &str) -> Option<&'static str> {
    match path {
        "/tensorflow.serving.PredictionService/Predict" => Some("predict"),
        "/tensorflow.serving.PredictionService/Classify" => Some("classify"),
        _ => None,
    }
}

/// Logs the calls that tonic refuses before they reach the service: a message larger than
/// `--max-request-bytes` gets OUT_OF_RANGE while it is decoded (so its model is not known).
#[derive(Clone)]
struct LogRefused<S> {
    inner: S,
    state: Arc<ServerState>,
}

impl<S, B, R> Service<http::Request<B>> for LogRefused<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = logged_method(request.uri().path());
        let state = Arc::clone(&self.state);
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let refused = Status::from_header_map(response.headers())
                .filter(|status| status.code() == Code::OutOfRange);
            if let (Some(method), Some(status)) = (method, refused) {
                let call = Call {
                    protocol: "grpc",
                    method,
                    model: "",
                    version: None,
                    signature: "",
                };
                let error = ServeError::OutOfRange(status.message().to_string());
                state.refused(call, started, &error);
            }
            Ok(response)
        })
    }
}

/// Serves gRPC on `listener` until `stop` turns true; in-flight calls finish first.
pub async fn run(
    state: Arc<ServerState>,
    listener: TcpListener,
    tls: Option<Tls>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let limit = state.max_request_bytes;
    let logged = Arc::clone(&state);
    let service = Grpc(state);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(
                tls.tonic_server()
                    .map_err(|e| ServeError::InvalidArgument(e.to_string()))?,
            )
            .map_err(|e| err!(ServeError::InvalidArgument, "gRPC TLS: {e}"))?;
    }
    builder
        .layer(tower::layer::layer_fn(move |inner| LogRefused {
            inner,
            state: Arc::clone(&logged),
        }))
        .add_service(
            PredictionServiceServer::new(service.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(ModelServiceServer::new(service).max_decoding_message_size(limit))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await
        .map_err(|e| err!(ServeError::Internal, "gRPC server: {e}"))
}
