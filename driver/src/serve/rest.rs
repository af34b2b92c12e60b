//! The REST server, following TensorFlow Serving's REST API:
//! `POST /v1/models/<name>[/versions/<v>]:predict` (`instances` or `inputs`, images as
//! `{"b64": ...}`), `:classify`, `GET /v1/models/<name>[/versions/<v>]` (status),
//! `GET .../metadata`, `GET /healthz`, and Prometheus metrics at `GET /metrics`. Errors are
//! `{"error": "..."}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::convert::{self, InputTensor};
use super::grpc::signature_def;
use super::proto::tensorflow::{DataType, TensorInfo, tensor_info};
use super::{Call, Prediction, SIGNATURE, ServeError, ServerState};
use quiver_engine::{bail, err};
use quiver_sql::tls::Tls;

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) | Self::OutOfRange(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// What a `/v1/models/...` path names.
#[derive(Debug, PartialEq)]
struct Target {
    name: String,
    version: Option<u64>,
    /// `predict` or `classify` after the `:`.
    verb: Option<String>,
    /// `.../metadata`.
    metadata: bool,
}

fn parse_target(path: &str) -> Result<Target, ServeError> {
    let bad = || {
        err!(
            ServeError::NotFound,
            "no such endpoint /v1/models/{path}: use /v1/models/<name>[/versions/<version>] \
             with :predict, :classify or /metadata"
        )
    };
    let (path_part, verb) = match path.rsplit_once(':') {
        Some((p, v)) if !v.contains('/') => (p, Some(v.to_string())),
        _ => (path, None),
    };
    let mut segments: Vec<&str> = path_part.trim_end_matches('/').split('/').collect();
    let metadata = segments.len() > 1 && segments.last() == Some(&"metadata");
    if metadata {
        segments.pop();
    }
    let (name, version) = match segments[..] {
        [name] if !name.is_empty() => (name, None),
        [name, "versions", v] => (
            name,
            Some(v.parse::<u64>().map_err(|_| {
                err!(
                    ServeError::InvalidArgument,
                    "version '{v}' is not a version number"
                )
            })?),
        ),
        [_, "labels", label] => {
            bail!(
                ServeError::InvalidArgument,
                "version labels are not supported ('{label}'): use /versions/<number>"
            );
        }
        _ => return Err(bad()),
    };
    if verb.is_some() && metadata {
        return Err(bad());
    }
    Ok(Target {
        name: name.to_string(),
        version,
        verb,
        metadata,
    })
}

/// Flattens a nested JSON number array, checking that it is rectangular.
fn flatten(
    value: &Value,
    depth: usize,
    shape: &mut Vec<usize>,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    match value {
        Value::Number(n) => {
            if depth != shape.len() {
                return Err("the nested lists are not rectangular".into());
            }
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        Value::Array(items) => {
            if depth == shape.len() {
                if !out.is_empty() {
                    return Err("the nested lists are not rectangular".into());
                }
                shape.push(items.len());
            } else if shape[depth] != items.len() {
                return Err(format!(
                    "the nested lists are not rectangular (lengths {} and {} at depth {depth})",
                    shape[depth],
                    items.len()
                ));
            }
            items
                .iter()
                .try_for_each(|item| flatten(item, depth + 1, shape, out))
        }
        Value::String(_) => {
            Err("strings are not accepted: send encoded images as {\"b64\": \"...\"}".into())
        }
        other => Err(format!("{other} is not a number")),
    }
}

fn b64(value: &Value) -> Option<Result<Vec<u8>, String>> {
    let Value::Object(map) = value else {
        return None;
    };
    let text = map.get("b64")?;
    Some(match text {
        Value::String(s) if map.len() == 1 => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("bad base64: {e}")),
        _ => Err("a binary value must be {\"b64\": \"<base64 string>\"}".into()),
    })
}

/// One example's value: `{"b64": ...}` or a (nested) number list.
fn example(name: &str, i: usize, value: &Value) -> Result<InputTensor, ServeError> {
    let bad = |why: String| {
        err!(
            ServeError::InvalidArgument,
            "input '{name}' example {i}: {why}"
        )
    };
    if let Some(bytes) = b64(value) {
        return Ok(InputTensor::Encoded(vec![bytes.map_err(bad)?]));
    }
    let mut shape = vec![1];
    let mut values = Vec::new();
    flatten(value, 1, &mut shape, &mut values).map_err(bad)?;
    Ok(InputTensor::Numbers {
        values,
        shape,
        dtype: "json",
    })
}

/// A batch value: a list of examples, or one `{"b64": ...}`.
fn batch(name: &str, value: &Value) -> Result<InputTensor, ServeError> {
    match value {
        Value::Array(items) => convert::stack(
            name,
            items
                .iter()
                .enumerate()
                .map(|(i, v)| example(name, i, v))
                .collect::<Result<_, _>>()?,
        ),
        other if b64(other).is_some() => example(name, 0, other),
        _ => Err(err!(
            ServeError::InvalidArgument,
            "input '{name}' must be a list with one value per example"
        )),
    }
}

/// Whether `value` names its inputs (`{"image": ...}`) rather than being one.
fn is_named(value: &Value) -> bool {
    matches!(value, Value::Object(m) if !m.contains_key("b64"))
}

/// The inputs of row-format examples: objects naming their inputs (`[{"image": ...}, ...]`),
/// or values of the model's only input (`""`).
fn instances_inputs(rows: &[Value]) -> Result<Vec<(String, InputTensor)>, ServeError> {
    if rows.iter().all(is_named) && !rows.is_empty() {
        let mut names: Vec<String> = Vec::new();
        for row in rows {
            for key in row.as_object().expect("named").keys() {
                if !names.contains(key) {
                    names.push(key.clone());
                }
            }
        }
        names
            .into_iter()
            .map(|name| {
                let parts = rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| match row.get(&name) {
                        Some(v) => example(&name, i, v),
                        None => Err(err!(
                            ServeError::InvalidArgument,
                            "instance {i} has no input '{name}'"
                        )),
                    })
                    .collect::<Result<_, _>>()?;
                Ok((name.clone(), convert::stack(&name, parts)?))
            })
            .collect()
    } else {
        let parts = rows
            .iter()
            .enumerate()
            .map(|(i, v)| example("instances", i, v))
            .collect::<Result<_, _>>()?;
        Ok(vec![(String::new(), convert::stack("instances", parts)?)])
    }
}

/// The request's inputs: `""` stands for the model's only input when the body does not name
/// it. Returns whether the answer is in row (`instances`) format.
fn predict_inputs(
    body: &Map<String, Value>,
) -> Result<(Vec<(String, InputTensor)>, bool), ServeError> {
    match (body.get("instances"), body.get("inputs")) {
        (Some(_), Some(_)) => Err(ServeError::InvalidArgument(
            "the body has both 'instances' and 'inputs'; send one".into(),
        )),
        (Some(Value::Array(rows)), None) => Ok((instances_inputs(rows)?, true)),
        (Some(_), None) => Err(ServeError::InvalidArgument(
            "'instances' must be a list with one value per example".into(),
        )),
        (None, Some(inputs)) if is_named(inputs) => Ok((
            inputs
                .as_object()
                .expect("named")
                .iter()
                .map(|(name, v)| Ok((name.clone(), batch(name, v)?)))
                .collect::<Result<_, ServeError>>()?,
            false,
        )),
        (None, Some(inputs)) => Ok((vec![(String::new(), batch("inputs", inputs)?)], false)),
        (None, None) => Err(ServeError::InvalidArgument(
            "the body needs 'instances' (row format) or 'inputs' (columnar format)".into(),
        )),
    }
}

/// One example's answer in row format.
#[derive(serde::Serialize)]
struct RowPrediction<'a> {
    label: &'a str,
    probability: f32,
    class_id: usize,
    probabilities: &'a [f32],
}

/// The answers in columnar format.
#[derive(serde::Serialize)]
struct Outputs<'a> {
    label: Vec<&'a str>,
    probability: Vec<f32>,
    class_id: Vec<usize>,
    probabilities: &'a [Vec<f32>],
}

/// The reply to :predict, serialised straight from the predictions (no JSON tree of a large
/// reply is built in memory).
fn predictions_reply(p: &Prediction, rows: bool) -> Response {
    let labels = &p.servable.model.card.labels.labels;
    let best = convert::best(&p.probabilities);
    if rows {
        let predictions: Vec<RowPrediction> = best
            .iter()
            .zip(&p.probabilities)
            .map(|(&(i, score), probs)| RowPrediction {
                label: &labels[i],
                probability: score,
                class_id: i,
                probabilities: probs,
            })
            .collect();
        #[derive(serde::Serialize)]
        struct Rows<'a> {
            predictions: Vec<RowPrediction<'a>>,
        }
        axum::Json(Rows { predictions }).into_response()
    } else {
        let outputs = Outputs {
            label: best.iter().map(|&(i, _)| labels[i].as_str()).collect(),
            probability: best.iter().map(|&(_, s)| s).collect(),
            class_id: best.iter().map(|&(i, _)| i).collect(),
            probabilities: &p.probabilities,
        };
        #[derive(serde::Serialize)]
        struct Columns<'a> {
            outputs: Outputs<'a>,
        }
        axum::Json(Columns { outputs }).into_response()
    }
}

fn tensor_info_json(info: &TensorInfo) -> Value {
    let dims: Vec<Value> = info
        .tensor_shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| json!({"size": d.size.to_string(), "name": d.name}))
                .collect()
        })
        .unwrap_or_default();
    let name = match &info.encoding {
        Some(tensor_info::Encoding::Name(n)) => n.clone(),
        None => String::new(),
    };
    json!({
        "dtype": DataType::try_from(info.dtype).map_or("DT_INVALID", |d| d.as_str_name()),
        "tensor_shape": {"dim": dims, "unknown_rank": false},
        "name": name,
    })
}

async fn read_body(
    state: &ServerState,
    request: Request,
) -> Result<Map<String, Value>, ServeError> {
    let limit = state.max_request_bytes;
    let too_large = || {
        err!(
            ServeError::TooLarge,
            "the request body is larger than the server's limit of {limit} bytes \
             (--max-request-bytes)"
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| too_large())?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ServeError::InvalidArgument(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(err!(
            ServeError::InvalidArgument,
            "the body is not valid JSON: {e}"
        )),
    }
}

fn signature_of(body: &Map<String, Value>) -> Result<String, ServeError> {
    match body.get("signature_name") {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ServeError::InvalidArgument(
            "'signature_name' must be a string".into(),
        )),
    }
}

async fn post(
    State(state): State<Arc<ServerState>>,
    Path(path): Path<String>,
    request: Request,
) -> Result<Response, ServeError> {
    let target = parse_target(&path)?;
    let verb = target.verb.clone().unwrap_or_default();
    if verb != "predict" && verb != "classify" {
        bail!(
            ServeError::NotFound,
            "POST /v1/models/{path}: the method must be :predict or :classify"
        );
    }
    let started = std::time::Instant::now();
    let body = match read_body(&state, request).await {
        Ok(body) => body,
        Err(e) => {
            let call = Call {
                protocol: "rest",
                method: if verb == "predict" {
                    "predict"
                } else {
                    "classify"
                },
                model: &target.name,
                version: target.version,
                signature: "",
            };
            state.refused(call, started, &e);
            return Err(e);
        }
    };
    let signature = signature_of(&body)?;
    if verb == "predict" {
        let parsed = predict_inputs(&body);
        // The JSON tree is as large as the request: it goes before the passes run.
        drop(body);
        let rows = parsed.as_ref().map_or(true, |(_, rows)| *rows);
        let call = Call {
            protocol: "rest",
            method: "predict",
            model: &target.name,
            version: target.version,
            signature: &signature,
        };
        let prediction = state
            .predict(call, parsed.map(|(inputs, _)| inputs))
            .await?;
        return Ok(predictions_reply(&prediction, rows));
    }
    // :classify takes {"examples": [{"<input>": value}, ...]}.
    let inputs = match body.get("examples") {
        Some(Value::Array(examples)) => instances_inputs(examples),
        _ => Err(ServeError::InvalidArgument(
            "the body needs 'examples': a list of objects of features".into(),
        )),
    };
    drop(body);
    let call = Call {
        protocol: "rest",
        method: "classify",
        model: &target.name,
        version: target.version,
        signature: &signature,
    };
    let prediction = state.predict(call, inputs).await?;
    let labels = &prediction.servable.model.card.labels.labels;
    let results: Vec<Value> = prediction
        .probabilities
        .iter()
        .map(|p| {
            Value::Array(
                convert::ranked(p)
                    .into_iter()
                    .map(|(i, s)| json!([labels[i], s]))
                    .collect(),
            )
        })
        .collect();
    Ok(axum::Json(json!({ "results": results })).into_response())
}

async fn get_model(
    State(state): State<Arc<ServerState>>,
    Path(path): Path<String>,
) -> Result<Response, ServeError> {
    let target = parse_target(&path)?;
    if target.verb.is_some() {
        bail!(
            ServeError::NotFound,
            "GET /v1/models/{path}: :predict and :classify take POST"
        );
    }
    if target.metadata {
        let servable = state.models.get(&target.name, target.version).await?;
        let card = &servable.model.card;
        let signature = signature_def(card);
        let section = |map: &std::collections::HashMap<String, TensorInfo>| {
            map.iter()
                .map(|(k, v)| (k.clone(), tensor_info_json(v)))
                .collect::<Map<String, Value>>()
        };
        return Ok(axum::Json(json!({
            "model_spec": {"name": target.name, "signature_name": "", "version": servable.version.to_string()},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: {
                "inputs": section(&signature.inputs),
                "outputs": section(&signature.outputs),
                "method_name": signature.method_name,
            }}}},
            "quiver": {
                "model_type": card.architecture.model_type(),
                "labels": card.labels.labels,
                "input": card.input,
                "evaluation": card.evaluation,
                "created_at": card.created_at,
            },
        }))
        .into_response());
    }
    let versions = state.models.status(&target.name, target.version).await?;
    let statuses: Vec<Value> = versions
        .iter()
        .rev()
        .map(|v| json!({"version": v.to_string(), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}))
        .collect();
    Ok(axum::Json(json!({ "model_version_status": statuses })).into_response())
}

async fn health(State(state): State<Arc<ServerState>>) -> Response {
    let models: Map<String, Value> = state
        .models
        .names()
        .into_iter()
        .map(|name| {
            let versions = state.models.versions(&name).unwrap_or_default();
            (name, json!(versions))
        })
        .collect();
    let ready = models
        .values()
        .all(|v| v.as_array().is_some_and(|a| !a.is_empty()));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"status": if ready { "ok" } else { "loading" }, "models": models})),
    )
        .into_response()
}

async fn unknown(request: Request) -> ServeError {
    err!(
        ServeError::NotFound,
        "no such endpoint {} {}",
        request.method(),
        request.uri().path()
    )
}

/// The REST routes over the shared server state, with `pages` (the console's) beside them.
pub fn router(state: Arc<ServerState>, pages: Router) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(quiver_engine::metrics::page))
        .route("/v1/models/{*path}", get(get_model).post(post))
        .fallback(unknown)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
        .merge(pages)
}

/// Serves REST on `listener` until `stop` turns true; in-flight requests get `grace` to finish.
pub async fn run(
    (state, pages): (Arc<ServerState>, Router),
    listener: TcpListener,
    tls: Option<Tls>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), ServeError> {
    crate::http::serve_router(router(state, pages), listener, tls, stop, grace)
        .await
        .map_err(|e| err!(ServeError::Internal, "REST server: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        let t = parse_target("fashion/versions/2:predict").unwrap();
        assert_eq!(
            (t.name.as_str(), t.version, t.verb.as_deref()),
            ("fashion", Some(2), Some("predict"))
        );
        let t = parse_target("fashion/metadata").unwrap();
        assert!(t.metadata && t.version.is_none());
        assert!(
            parse_target("fashion/versions/x")
                .unwrap_err()
                .to_string()
                .contains("'x'")
        );
        assert!(parse_target("a/b/c/d").is_err());
    }

    #[test]
    fn reads_rows_and_columns() {
        let body = json!({"instances": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]});
        let (inputs, rows) = predict_inputs(body.as_object().unwrap()).unwrap();
        assert!(rows);
        match &inputs[0].1 {
            InputTensor::Numbers { values, shape, .. } => {
                assert_eq!(shape, &vec![2, 2, 2]);
                assert_eq!(values[7], 8.0);
            }
            other => panic!("{other:?}"),
        }
        let body = json!({"inputs": {"image": [{"b64": "aGk="}, {"b64": "aGk="}]}});
        let (inputs, rows) = predict_inputs(body.as_object().unwrap()).unwrap();
        assert!(!rows);
        assert_eq!(inputs[0].0, "image");
        assert!(matches!(&inputs[0].1, InputTensor::Encoded(v) if v.len() == 2 && v[0] == b"hi"));
        let ragged = json!({"instances": [[1, 2], [3]]});
        let e = predict_inputs(ragged.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("example 1 has shape [1] but example 0 has [2]"),
            "{e}"
        );
    }
}
