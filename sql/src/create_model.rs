//! `CREATE [OR REPLACE] MODEL` and `CREATE EXPERIMENT`: the parsed statement (which also
//! travels to a cluster's driver as JSON), its parser, and running an experiment on this
//! process's slots or given ones. [`crate::statements`] decides where each runs.

use std::sync::Arc;

use datafusion::sql::sqlparser::tokenizer::Token;
use quiver_engine::{QuiverError, Result, Session};
use quiver_engine::{bail, err};
use quiver_operators::experiment::{ExperimentBuilder, ExperimentReport, TrialRunner};
use quiver_operators::ml::OptionValue;

/// A parsed `CREATE MODEL` or `CREATE EXPERIMENT`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CreateModel {
    /// The model's registry name, or the experiment's name.
    pub name: String,
    /// `OR REPLACE`: register a new version of an existing name.
    pub replace: bool,
    /// The options, in order.
    pub options: Vec<(String, OptionValue)>,
    /// The training query's text.
    pub query: String,
}

/// Parses `CREATE [OR REPLACE] MODEL|EXPERIMENT name [OPTIONS (...)] AS`; returns the
/// statement without its query and the index of the query's first token.
pub(crate) fn parse_create(words: &[&Token], what: &str) -> Result<(CreateModel, usize)> {
    let usage = if what == "MODEL" {
        "usage: CREATE [OR REPLACE] MODEL name OPTIONS (model_type = 'cnn_classifier', epochs = \
         5, ...) AS SELECT input, label FROM ..."
    } else {
        "usage: CREATE EXPERIMENT name OPTIONS (model_type = 'cnn_classifier', learning_rate = \
         [0.001, 0.005], max_parallel_trials = 2, ...) AS SELECT input, label FROM ..."
    };
    let replace = matches!(words[1], Token::Word(w) if w.value.eq_ignore_ascii_case("OR"));
    let mut i = if replace { 4 } else { 2 };
    let name = match words.get(i) {
        Some(Token::Word(w)) => w.value.clone(),
        Some(Token::SingleQuotedString(s)) => s.clone(),
        other => {
            bail!(
                QuiverError::plan,
                "CREATE {what}: expected a name, found {}; {usage}",
                other.map_or("the end".to_string(), |t| t.to_string())
            );
        }
    };
    i += 1;
    let is_word = |t: Option<&&Token>, k: &str| matches!(t, Some(Token::Word(w)) if w.value.eq_ignore_ascii_case(k));
    let mut options = Vec::new();
    if is_word(words.get(i), "OPTIONS") {
        i += 1;
        if words.get(i) != Some(&&Token::LParen) {
            bail!(
                QuiverError::plan,
                "CREATE {what}: expected '(' after OPTIONS; {usage}"
            );
        }
        i += 1;
        while words.get(i) != Some(&&Token::RParen) {
            let key = match words.get(i) {
                Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
                other => {
                    bail!(
                        QuiverError::plan,
                        "CREATE {what}: expected an option name, found {}; {usage}",
                        other.map_or("the end".to_string(), |t| t.to_string())
                    );
                }
            };
            i += 1;
            if words.get(i) != Some(&&Token::Eq) {
                bail!(
                    QuiverError::plan,
                    "CREATE {what}: expected '=' after option {key}"
                );
            }
            i += 1;
            let (value, next) = parse_value(words, i, &key)?;
            options.push((key, value));
            i = next;
            match words.get(i) {
                Some(Token::Comma) => i += 1,
                Some(Token::RParen) => {}
                _ => {
                    bail!(
                        QuiverError::plan,
                        "CREATE {what}: expected ',' or ')' after option {}",
                        options.last().expect("pushed").0
                    );
                }
            }
        }
        i += 1;
    }
    if !is_word(words.get(i), "AS") {
        bail!(
            QuiverError::plan,
            "CREATE {what} {name}: expected AS and the training query; {usage}"
        );
    }
    Ok((
        CreateModel {
            name,
            replace,
            options,
            query: String::new(),
        },
        i + 1,
    ))
}

fn parse_value(words: &[&Token], i: usize, key: &str) -> Result<(OptionValue, usize)> {
    let bad = |found: Option<&&Token>| {
        err!(
            QuiverError::plan,
            "option {key} needs a string, number, true/false or [list], found {}",
            found.map_or("the end".to_string(), |t| t.to_string())
        )
    };
    match words.get(i) {
        Some(Token::SingleQuotedString(s) | Token::DoubleQuotedString(s)) => {
            Ok((OptionValue::Str(s.clone()), i + 1))
        }
        Some(Token::Number(n, _)) => Ok((
            OptionValue::Num(n.parse().map_err(|_| bad(words.get(i)))?),
            i + 1,
        )),
        Some(Token::Minus) => match words.get(i + 1) {
            Some(Token::Number(n, _)) => Ok((
                OptionValue::Num(-n.parse::<f64>().map_err(|_| bad(words.get(i + 1)))?),
                i + 2,
            )),
            other => Err(bad(other)),
        },
        Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("true") => {
            Ok((OptionValue::Bool(true), i + 1))
        }
        Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("false") => {
            Ok((OptionValue::Bool(false), i + 1))
        }
        Some(Token::LBracket) => {
            let mut items = Vec::new();
            let mut j = i + 1;
            if words.get(j) == Some(&&Token::RBracket) {
                return Ok((OptionValue::List(items), j + 1));
            }
            loop {
                let (item, next) = parse_value(words, j, key)?;
                items.push(item);
                match words.get(next) {
                    Some(Token::Comma) => j = next + 1,
                    Some(Token::RBracket) => return Ok((OptionValue::List(items), next + 1)),
                    other => return Err(bad(other)),
                }
            }
        }
        other => Err(bad(other)),
    }
}

/// The `model_type` option, which every CREATE MODEL and CREATE EXPERIMENT needs.
pub fn model_type(create: &CreateModel, what: &str) -> Result<String> {
    match create.options.iter().find(|(k, _)| k == "model_type") {
        Some((_, OptionValue::Str(t))) => Ok(t.clone()),
        Some(_) => Err(QuiverError::plan("model_type must be a string")),
        None => Err(err!(
            QuiverError::plan,
            "CREATE {what} {}: OPTIONS must name a model_type ('dnn_classifier', \
             'cnn_classifier' or 'resnet_classifier')",
            create.name
        )),
    }
}

/// Runs (or resumes) the experiment on `runner`'s slots; on this process's when `None`.
pub async fn run_experiment(
    session: &Session,
    create: &CreateModel,
    runner: Option<Arc<dyn TrialRunner>>,
) -> Result<ExperimentReport> {
    let mut builder = ExperimentBuilder::new(&create.name, &model_type(create, "EXPERIMENT")?)?;
    for (key, value) in &create.options {
        builder.set(key, value.clone())?;
    }
    let report = match runner {
        Some(runner) => builder.run_on(session, &create.query, runner).await?,
        None => builder.run(session, &create.query).await?,
    };
    if let Some(model) = &report.file.model {
        session.log(&format!("best model registered at {model}"));
    }
    Ok(report)
}
