//! TensorBoard's HParams plugin data: the experiment's hyperparameters and metrics (written
//! once at the experiment's root) and each trial's hyperparameters (at the start of its event
//! files), so that TensorBoard's HParams view compares trials.

use std::collections::BTreeMap;

use prost::Message;

use crate::ml::OptionValue;
use crate::ml::events::PluginSummary;

#[derive(Clone, PartialEq, Message)]
struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    version: i32,
    #[prost(message, optional, tag = "2")]
    experiment: Option<Experiment>,
    #[prost(message, optional, tag = "3")]
    session_start_info: Option<SessionStartInfo>,
}

#[derive(Clone, PartialEq, Message)]
struct Experiment {
    #[prost(string, tag = "6")]
    name: String,
    #[prost(string, tag = "1")]
    description: String,
    #[prost(double, tag = "3")]
    time_created_secs: f64,
    #[prost(message, repeated, tag = "4")]
    hparam_infos: Vec<HParamInfo>,
    #[prost(message, repeated, tag = "5")]
    metric_infos: Vec<MetricInfo>,
}

#[derive(Clone, PartialEq, Message)]
struct HParamInfo {
    #[prost(string, tag = "1")]
    name: String,
    /// `DATA_TYPE_STRING` 1, `DATA_TYPE_BOOL` 2, `DATA_TYPE_FLOAT64` 3.
    #[prost(int32, tag = "4")]
    data_type: i32,
    #[prost(message, optional, tag = "5")]
    domain_discrete: Option<ListValue>,
    #[prost(message, optional, tag = "6")]
    domain_interval: Option<Interval>,
}

#[derive(Clone, PartialEq, Message)]
struct Interval {
    #[prost(double, tag = "1")]
    min_value: f64,
    #[prost(double, tag = "2")]
    max_value: f64,
}

#[derive(Clone, PartialEq, Message)]
struct MetricInfo {
    #[prost(message, optional, tag = "1")]
    name: Option<MetricName>,
    #[prost(string, tag = "3")]
    display_name: String,
    /// `DATASET_TRAINING` 1, `DATASET_VALIDATION` 2.
    #[prost(int32, tag = "5")]
    dataset_type: i32,
}

#[derive(Clone, PartialEq, Message)]
struct MetricName {
    #[prost(string, tag = "1")]
    group: String,
    #[prost(string, tag = "2")]
    tag: String,
}

#[derive(Clone, PartialEq, Message)]
struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    hparams: BTreeMap<String, Value>,
    #[prost(string, tag = "4")]
    group_name: String,
    #[prost(double, tag = "5")]
    start_time_secs: f64,
}

/// `google.protobuf.Value`, without null and struct.
#[derive(Clone, PartialEq, Message)]
struct Value {
    #[prost(oneof = "Kind", tags = "2, 3, 4")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    Text(String),
    #[prost(bool, tag = "4")]
    Flag(bool),
}

#[derive(Clone, PartialEq, Message)]
struct ListValue {
    #[prost(message, repeated, tag = "1")]
    values: Vec<Value>,
}

/// A hyperparameter as TensorBoard shows it: numbers, strings and booleans as they are, lists
/// as their text (`[64, 32]`).
fn value(v: &OptionValue) -> Value {
    Value {
        kind: Some(match v {
            OptionValue::Num(n) => Kind::Number(*n),
            OptionValue::Bool(b) => Kind::Flag(*b),
            OptionValue::Str(s) => Kind::Text(s.clone()),
            list @ OptionValue::List(_) => Kind::Text(list.to_string()),
        }),
    }
}

/// The domain of one searched hyperparameter, for the experiment summary.
#[derive(Debug, Clone, PartialEq)]
pub enum HParamDomain {
    /// These values.
    Discrete(Vec<OptionValue>),
    /// A real interval.
    Interval(f64, f64),
}

fn plugin_summary(tag: &str, data: HParamsPluginData) -> PluginSummary {
    PluginSummary {
        tag: tag.to_string(),
        plugin: "hparams".to_string(),
        content: data.encode_to_vec(),
    }
}

/// `_hparams_/experiment`: the searched hyperparameters with their domains, and the metrics
/// (scalar tags of the trials' event files) to compare.
pub fn experiment_summary(
    name: &str,
    description: &str,
    created: f64,
    hparams: &[(String, HParamDomain)],
    metrics: &[&str],
) -> PluginSummary {
    let hparam_infos = hparams
        .iter()
        .map(|(name, domain)| match domain {
            HParamDomain::Interval(low, high) => HParamInfo {
                name: name.clone(),
                data_type: 3,
                domain_discrete: None,
                domain_interval: Some(Interval {
                    min_value: *low,
                    max_value: *high,
                }),
            },
            HParamDomain::Discrete(values) => {
                let values: Vec<Value> = values.iter().map(value).collect();
                let data_type = match values.first().and_then(|v| v.kind.as_ref()) {
                    Some(Kind::Number(_)) => 3,
                    Some(Kind::Flag(_)) => 2,
                    _ => 1,
                };
                HParamInfo {
                    name: name.clone(),
                    data_type,
                    domain_discrete: Some(ListValue { values }),
                    domain_interval: None,
                }
            }
        })
        .collect();
    let metric_infos = metrics
        .iter()
        .map(|tag| MetricInfo {
            name: Some(MetricName {
                group: String::new(),
                tag: tag.to_string(),
            }),
            display_name: tag.to_string(),
            dataset_type: if tag.starts_with("val_") { 2 } else { 1 },
        })
        .collect();
    plugin_summary(
        "_hparams_/experiment",
        HParamsPluginData {
            version: 0,
            experiment: Some(Experiment {
                name: name.to_string(),
                description: description.to_string(),
                time_created_secs: created,
                hparam_infos,
                metric_infos,
            }),
            session_start_info: None,
        },
    )
}

/// `_hparams_/session_start_info`: one trial's hyperparameters.
pub fn session_start(
    params: &BTreeMap<String, OptionValue>,
    group: &str,
    started: f64,
) -> PluginSummary {
    plugin_summary(
        "_hparams_/session_start_info",
        HParamsPluginData {
            version: 0,
            experiment: None,
            session_start_info: Some(SessionStartInfo {
                hparams: params.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
                group_name: group.to_string(),
                start_time_secs: started,
            }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_start_round_trips() {
        let params = BTreeMap::from([
            ("learning_rate".to_string(), OptionValue::Num(0.001)),
            ("activation".to_string(), OptionValue::from("relu")),
            ("hidden_units".to_string(), OptionValue::from(vec![64, 32])),
        ]);
        let summary = session_start(&params, "trial-0001", 5.0);
        let data = HParamsPluginData::decode(summary.content.as_slice()).unwrap();
        let start = data.session_start_info.unwrap();
        assert_eq!(
            start.hparams["learning_rate"].kind,
            Some(Kind::Number(0.001))
        );
        assert_eq!(
            start.hparams["hidden_units"].kind,
            Some(Kind::Text("[64, 32]".into()))
        );
        assert_eq!(start.group_name, "trial-0001");
    }
}
