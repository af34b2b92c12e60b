//! Quiver's statements beyond DataFusion's: `CREATE [OR REPLACE] MODEL name OPTIONS (...) AS
//! query`, `CREATE EXPERIMENT name OPTIONS (...) AS query`, `SHOW MODELS` and
//! `SHOW EXPERIMENTS`. [`parse`] splits a script into statements (ours and DataFusion's);
//! [`execute`] runs one.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use quiver_engine::{QuiverError, Result, Session, Skipped};
use quiver_operators::ml::ModelBuilder;

use crate::create_model::{CreateModel, model_type, parse_create, run_experiment};
use quiver_engine::{bail, err};

/// One statement of a script.
#[derive(Debug, Clone)]
pub enum Statement {
    /// Anything DataFusion parses (queries, DDL, COPY, ...).
    DataFusion(Box<DfStatement>),
    /// `CREATE [OR REPLACE] MODEL`.
    CreateModel(CreateModel),
    /// `CREATE EXPERIMENT` (runs it, or resumes it when it exists with the same options).
    CreateExperiment(CreateModel),
    /// `SHOW MODELS`.
    ShowModels,
    /// `SHOW EXPERIMENTS`.
    ShowExperiments,
}

impl std::fmt::Display for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DataFusion(s) => write!(f, "{s}"),
            Self::CreateModel(m) | Self::CreateExperiment(m) => {
                let options: Vec<_> = m
                    .options
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                write!(
                    f,
                    "CREATE {}{} {} OPTIONS ({}) AS {}",
                    if m.replace { "OR REPLACE " } else { "" },
                    if matches!(self, Self::CreateModel(_)) {
                        "MODEL"
                    } else {
                        "EXPERIMENT"
                    },
                    m.name,
                    options.join(", "),
                    m.query
                )
            }
            Self::ShowModels => write!(f, "SHOW MODELS"),
            Self::ShowExperiments => write!(f, "SHOW EXPERIMENTS"),
        }
    }
}

/// Splits `sql` into statements and parses each.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| err!(QuiverError::plan, "SQL syntax error: {e}"))?;
    // Byte offset of a token's start, to cut statements out of the original text (re-rendering
    // tokens would lose quoting).
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |loc: Location| -> usize {
        let start = line_starts
            .get((loc.line.max(1) - 1) as usize)
            .copied()
            .unwrap_or(sql.len());
        sql[start..]
            .char_indices()
            .nth(loc.column.max(1) as usize - 1)
            .map_or(sql.len(), |(i, _)| start + i)
    };
    let mut statements = Vec::new();
    let mut begin = 0;
    for end in
        (0..=tokens.len()).filter(|&j| j == tokens.len() || tokens[j].token == Token::SemiColon)
    {
        let chunk = &tokens[begin..end];
        let end_offset = tokens.get(end).map_or(sql.len(), |t| offset(t.span.start));
        begin = end + 1;
        let spans: Vec<&TokenWithSpan> = chunk
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .collect();
        let Some(first) = spans.first() else {
            continue;
        };
        let words: Vec<&Token> = spans.iter().map(|t| &t.token).collect();
        let keyword = |i: usize, k: &str| matches!(words.get(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
        let replace = keyword(1, "OR") && keyword(2, "REPLACE");
        let object = if replace { 3 } else { 1 };
        if keyword(0, "CREATE") && (keyword(object, "MODEL") || keyword(object, "EXPERIMENT")) {
            let what = if keyword(object, "MODEL") {
                "MODEL"
            } else {
                "EXPERIMENT"
            };
            if what == "EXPERIMENT" && replace {
                return Err(QuiverError::plan(
                    "CREATE OR REPLACE EXPERIMENT is not supported: an experiment's trials are \
                     kept; re-running CREATE EXPERIMENT with the same options resumes it, other \
                     options need another name",
                ));
            }
            let (mut create, query_start) = parse_create(&words, what)?;
            create.query = spans
                .get(query_start)
                .map_or("", |t| sql[offset(t.span.start)..end_offset].trim())
                .to_string();
            if create.query.is_empty() {
                bail!(
                    QuiverError::plan,
                    "CREATE {what} {}: the training query after AS is empty",
                    create.name
                );
            }
            statements.push(if what == "MODEL" {
                Statement::CreateModel(create)
            } else {
                Statement::CreateExperiment(create)
            });
        } else if keyword(0, "SHOW") && keyword(1, "MODELS") && words.len() == 2 {
            statements.push(Statement::ShowModels);
        } else if keyword(0, "SHOW") && keyword(1, "EXPERIMENTS") && words.len() == 2 {
            statements.push(Statement::ShowExperiments);
        } else {
            let text = &sql[offset(first.span.start)..end_offset];
            for mut statement in DFParser::parse_sql(text)? {
                if let DfStatement::Statement(statement) = &mut statement {
                    let _ = statement.visit(&mut QueryArguments);
                }
                statements.push(Statement::DataFusion(Box::new(statement)));
            }
        }
    }
    Ok(statements)
}

/// Table functions that take a query as an argument, as text or as `(SELECT ...)`.
const QUERY_ARGUMENT_FUNCTIONS: &[&str] = &["ml_evaluate", "feature_stats"];

/// Hands a `(SELECT ...)` argument of [`QUERY_ARGUMENT_FUNCTIONS`] over as its SQL text:
/// DataFusion would plan it as a scalar subquery, which must have a single column.
struct QueryArguments;

impl VisitorMut for QueryArguments {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(args),
            ..
        } = factor
            && QUERY_ARGUMENT_FUNCTIONS
                .iter()
                .any(|f| name.to_string().eq_ignore_ascii_case(f))
        {
            for arg in &mut args.args {
                if let FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) = arg
                    && let Expr::Subquery(query) = expr
                {
                    *expr = Expr::Value(Value::SingleQuotedString(query.to_string()).into());
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// The undecodable images that statement `id` (see [`Session::begin_statement`]) skipped with
/// `image_decode(..., 'null')`: in this process and, on a cluster session, on every executor;
/// also the executors that did not answer. They are forgotten where they were kept.
pub async fn take_skipped_images(session: &Session, id: &str) -> Result<(Skipped, Vec<String>)> {
    let mut skipped = session.progress().take_skipped(id);
    let mut missing = Vec::new();
    if let Some(client) = crate::cluster::client_of(session) {
        let (remote, unanswered) = client.take_skipped_images(id).await?;
        skipped.merge(remote);
        missing = unanswered;
    }
    Ok((skipped, missing))
}

/// Runs one statement; DDL, COPY, CREATE MODEL and CREATE EXPERIMENT run at once, queries
/// when collected.
pub async fn execute(session: &Session, statement: Statement) -> Result<DataFrame> {
    match statement {
        Statement::DataFusion(statement) => {
            let state = session.context().state();
            let plan = state.statement_to_plan(*statement).await?;
            Ok(session.context().execute_logical_plan(plan).await?)
        }
        Statement::ShowModels => {
            session
                .sql("SELECT * FROM models() ORDER BY name, version")
                .await
        }
        Statement::CreateModel(create) => create_model(session, create).await,
        Statement::ShowExperiments => {
            session
                .sql("SELECT * FROM experiments() ORDER BY name")
                .await
        }
        Statement::CreateExperiment(create) => create_experiment(session, create).await,
    }
}

/// Runs (or resumes) the experiment and returns its trials, best first. A cluster session has
/// the driver's coordinator run it, one trial per executor slot.
async fn create_experiment(session: &Session, create: CreateModel) -> Result<DataFrame> {
    let maximize = match crate::cluster::client_of(session) {
        Some(client) => client.run_experiment(session, &create).await?,
        None => {
            run_experiment(session, &create, None)
                .await?
                .file
                .objective
                .maximize
        }
    };
    let order = if maximize { "DESC" } else { "ASC" };
    session
        .sql(&format!(
            "SELECT * FROM experiment_trials('{}') ORDER BY objective {order} NULLS LAST, trial",
            create.name
        ))
        .await
}

async fn create_model(session: &Session, create: CreateModel) -> Result<DataFrame> {
    let model_type = model_type(&create, "MODEL")?;
    let mut builder = ModelBuilder::new(&create.name, &model_type)?.replace(create.replace);
    for (key, value) in &create.options {
        builder.set(key, value)?;
    }
    // A data-parallel model trains on a gang of the cluster's executors; elsewhere `fit`
    // explains that it needs a cluster.
    let card = match crate::cluster::client_of(session) {
        Some(client) if builder.workers() > 1 => client.train_model(session, &create).await?,
        _ => {
            let frame = session.sql(&create.query).await?;
            builder.train(session, frame, &create.query).await?
        }
    };
    let last = card.history.last();
    let schema = Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("epochs", DataType::UInt64, false),
        Field::new("loss", DataType::Float64, true),
        Field::new("accuracy", DataType::Float64, true),
        Field::new("val_accuracy", DataType::Float64, true),
        Field::new("location", DataType::Utf8, false),
    ]));
    let registry = quiver_operators::ml::registry(session)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![card.name.clone()])),
        Arc::new(UInt64Array::from(vec![card.version])),
        Arc::new(UInt64Array::from(vec![card.history.len() as u64])),
        Arc::new(Float64Array::from(vec![last.map(|m| m.loss)])),
        Arc::new(Float64Array::from(vec![last.map(|m| m.accuracy)])),
        Arc::new(Float64Array::from(vec![
            card.evaluation.as_ref().map(|e| e.accuracy),
        ])),
        Arc::new(StringArray::from(vec![
            registry.version_url(&card.name, card.version),
        ])),
    ];
    let batch = RecordBatch::try_new(schema, columns).map_err(DataFusionError::from)?;
    Ok(session.context().read_batch(batch)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_operators::ml::OptionValue;

    #[test]
    fn splits_scripts_and_parses_create_model() {
        let script = "SELECT 1; -- a comment\nCREATE OR REPLACE MODEL m OPTIONS (model_type = 'dnn_classifier', hidden_units = [64, 32], learning_rate = 0.01, seed = -1) AS SELECT x, label FROM t WHERE a = ';' AND b = 'it''s';\nSHOW MODELS";
        let statements = parse(script).unwrap();
        assert_eq!(statements.len(), 3);
        let Statement::CreateModel(m) = &statements[1] else {
            panic!("{:?}", statements[1])
        };
        assert_eq!(m.name, "m");
        assert!(m.replace);
        assert_eq!(
            m.options[1],
            (
                "hidden_units".into(),
                OptionValue::List(vec![OptionValue::Num(64.0), OptionValue::Num(32.0)])
            )
        );
        assert_eq!(m.options[3].1, OptionValue::Num(-1.0));
        assert!(m.query.ends_with("b = 'it''s'"), "{}", m.query);
        assert!(matches!(statements[2], Statement::ShowModels));
        let statements = parse(
            "create experiment e options (model_type = 'dnn_classifier', learning_rate = [0.001, 0.005]) as select x, label from t; show experiments",
        )
        .unwrap();
        let Statement::CreateExperiment(e) = &statements[0] else {
            panic!("{:?}", statements[0])
        };
        assert_eq!(e.name, "e");
        assert_eq!(e.query, "select x, label from t");
        assert!(matches!(statements[1], Statement::ShowExperiments));
        let err = parse("CREATE OR REPLACE EXPERIMENT e AS SELECT 1").unwrap_err();
        assert!(err.to_string().contains("resumes it"), "{err}");
        let err = parse("CREATE EXPERIMENT e OPTIONS (x = ) AS SELECT 1").unwrap_err();
        assert!(err.to_string().contains("option x needs"), "{err}");
    }

    #[test]
    fn query_arguments_become_text() {
        let statements = parse(
            "SELECT * FROM ml_evaluate('m', 2, (SELECT image, label FROM t WHERE label <> 'x'))",
        )
        .unwrap();
        let Statement::DataFusion(statement) = &statements[0] else {
            panic!("{:?}", statements[0])
        };
        assert!(
            statement
                .to_string()
                .contains("ml_evaluate('m', 2, 'SELECT image, label FROM t WHERE label <> ''x''')"),
            "{statement}"
        );
    }

    #[test]
    fn create_model_syntax_errors_name_the_problem() {
        let err = parse("CREATE MODEL m OPTIONS (epochs 3) AS SELECT 1").unwrap_err();
        assert!(
            err.to_string().contains("expected '=' after option epochs"),
            "{err}"
        );
        let err = parse("CREATE MODEL m OPTIONS (epochs = 3)").unwrap_err();
        assert!(err.to_string().contains("expected AS"), "{err}");
    }
}
