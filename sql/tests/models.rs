//! CREATE MODEL, ml_evaluate, predict and SHOW MODELS on real Fashion-MNIST images (Debian's
//! dataset-fashion-mnist, read from its IDX files), with the registry in a temporary store.

use std::io::Read;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, UInt64Type};
use datafusion::datasource::MemTable;
use quiver_engine::{Session, SessionOptions};

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// The first `n` images of an IDX pair: `pixels` (784 floats in [0, 1]) and `label` (a name).
fn idx(images: &str, labels: &str, n: usize) -> RecordBatch {
    let read = |name: &str| {
        let file = std::fs::File::open(format!("{FASHION}/{name}")).unwrap_or_else(|e| {
            panic!("{FASHION}/{name}: {e} (apt-get install dataset-fashion-mnist)")
        });
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    };
    let (images, labels) = (read(images), read(labels));
    let pixels: Vec<f32> = images[16..16 + n * 784]
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect();
    let names = [
        "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
        "boot",
    ];
    let label: Vec<&str> = labels[8..8 + n]
        .iter()
        .map(|&l| names[l as usize])
        .collect();
    let field = Arc::new(Field::new_list_field(DataType::Float32, false));
    let pixels = FixedSizeListArray::new(field, 784, Arc::new(Float32Array::from(pixels)), None);
    let schema = Schema::new(vec![
        Field::new("pixels", pixels.data_type().clone(), false),
        Field::new("label", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(pixels), Arc::new(StringArray::from(label))],
    )
    .unwrap()
}

/// A session whose default store is `store`, with tables `train` (3,000 images) and `test`
/// (1,000), each in two partitions of several batches.
fn session(store: &std::path::Path) -> Session {
    let session = quiver_sql::session(SessionOptions {
        default_store: store.to_string_lossy().into_owned(),
        target_partitions: Some(2),
        ..Default::default()
    })
    .unwrap();
    for (name, images, labels, n) in [
        (
            "train",
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            3000,
        ),
        (
            "test",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            1000,
        ),
    ] {
        let batch = idx(images, labels, n);
        let parts: Vec<Vec<RecordBatch>> = (0..2)
            .map(|p| {
                (0..n / 250)
                    .filter(|b| b % 2 == p)
                    .map(|b| batch.slice(b * 250, 250))
                    .collect()
            })
            .collect();
        let table = MemTable::try_new(batch.schema(), parts).unwrap();
        session
            .context()
            .register_table(name, Arc::new(table))
            .unwrap();
    }
    session
}

async fn run(session: &Session, sql: &str) -> quiver_engine::Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for statement in quiver_sql::parse(sql)? {
        out = quiver_sql::execute(session, statement)
            .await?
            .collect()
            .await?;
    }
    Ok(out)
}

fn f64_at(batches: &[RecordBatch], column: &str, row: usize) -> f64 {
    batches[0]
        .column_by_name(column)
        .unwrap()
        .as_primitive::<Float64Type>()
        .value(row)
}

fn u64_at(batches: &[RecordBatch], column: &str, row: usize) -> u64 {
    batches[0]
        .column_by_name(column)
        .unwrap()
        .as_primitive::<UInt64Type>()
        .value(row)
}

const DNN: &str = "OPTIONS (model_type = 'dnn_classifier', hidden_units = [128, 64], \
                   epochs = 3, batch_size = 32, learning_rate = 0.001, \
                   validation_query = 'SELECT pixels, label FROM test') \
                   AS SELECT pixels, label FROM train";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnn_trains_evaluates_predicts_and_registers() {
    let dir = tempfile::tempdir().unwrap();
    let session = session(dir.path());
    let created = run(&session, &format!("CREATE MODEL fashion_dnn {DNN}"))
        .await
        .unwrap();
    assert_eq!(u64_at(&created, "version", 0), 1);
    assert_eq!(u64_at(&created, "epochs", 0), 3);

    // Evaluation on the 1,000 test images: well above chance (10%) after 3 short epochs.
    let eval = run(
        &session,
        "SELECT * FROM ml_evaluate('fashion_dnn', 'test') ORDER BY label NULLS LAST",
    )
    .await
    .unwrap();
    let accuracy = f64_at(&eval, "accuracy", 0);
    assert!(accuracy > 0.70, "test accuracy {accuracy}");
    assert_eq!(
        eval[0].num_rows(),
        11,
        "10 classes and the macro-average row"
    );
    assert_eq!(u64_at(&eval, "support", 10), 1000);
    // The same accuracy from predict(), row by row.
    let predicted = run(
        &session,
        "SELECT avg(CASE WHEN predict('fashion_dnn', pixels)['label'] = label THEN 1.0 ELSE 0.0 \
         END) AS accuracy, min(predict('fashion_dnn', pixels)['probability']) AS p FROM test",
    )
    .await
    .unwrap();
    assert!((f64_at(&predicted, "accuracy", 0) - accuracy).abs() < 1e-9);
    assert!(
        f64_at(&predicted, "p", 0) >= 0.1,
        "the top class has at least 1/10"
    );
    // A NULL input predicts NULL; the rows around it are predicted as before.
    let mixed = run(
        &session,
        "SELECT arrow_cast(count(*), 'UInt64') AS n, \
         arrow_cast(count(p['label']), 'UInt64') AS labelled, \
         arrow_cast(sum(CASE WHEN p['label'] = label THEN 1 ELSE 0 END), 'UInt64') AS correct FROM \
         (SELECT label, predict('fashion_dnn', CASE WHEN k % 2 = 0 THEN pixels END) AS p FROM \
         (SELECT *, row_number() OVER () AS k FROM test))",
    )
    .await
    .unwrap();
    assert_eq!(u64_at(&mixed, "n", 0), 1000);
    assert_eq!(u64_at(&mixed, "labelled", 0), 500);
    assert!(u64_at(&mixed, "correct", 0) > 300, "{mixed:?}");

    // The registry and the run folder.
    let version = dir.path().join("models/fashion_dnn/1");
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["architecture"]["type"], "dnn_classifier");
    assert_eq!(card["labels"]["labels"].as_array().unwrap().len(), 10);
    assert_eq!(card["input"]["shape"][0], 784);
    assert!(version.join("model.safetensors").metadata().unwrap().len() > 100_000);
    let run_dir = dir.path().join("training/fashion_dnn/v1");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    for epoch in 1..=3 {
        let checkpoint = run_dir.join(format!("checkpoints/epoch-{epoch:04}"));
        for file in ["model.bin", "optimizer.bin", "state.json"] {
            assert!(checkpoint.join(file).exists(), "{checkpoint:?}/{file}");
        }
    }
    assert!(std::fs::read_dir(&run_dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
    }));

    // A taken name is an error; OR REPLACE adds version 2 and keeps version 1.
    let err = run(&session, &format!("CREATE MODEL fashion_dnn {DNN}"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("model 'fashion_dnn' exists"),
        "{err}"
    );
    let shown = run(&session, "SHOW MODELS").await.unwrap();
    assert_eq!(shown[0].num_rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cnn_trains_on_a_shaped_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let session = session(dir.path());
    run(
        &session,
        "CREATE MODEL fashion_cnn OPTIONS (model_type = 'cnn_classifier', conv_filters = [8, 16], \
         dense_units = [32], input_shape = [28, 28, 1], epochs = 1, batch_size = 32, \
         dropout = 0.1) AS SELECT pixels, label FROM train",
    )
    .await
    .unwrap();
    let eval = run(
        &session,
        "SELECT accuracy FROM ml_evaluate('fashion_cnn', 1, 'SELECT pixels, label FROM test') \
         WHERE label IS NULL",
    )
    .await
    .unwrap();
    let accuracy = f64_at(&eval, "accuracy", 0);
    assert!(
        accuracy > 0.5,
        "CNN test accuracy after one epoch: {accuracy}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let session = session(dir.path());
    for (sql, expected) in [
        (
            "CREATE MODEL m OPTIONS (model_type = 'dnn_classifier', epochz = 3) AS SELECT pixels, label FROM train",
            "unknown option 'epochz'",
        ),
        (
            "CREATE MODEL m OPTIONS (model_type = 'dnn_classifier', device = 'cuda') AS SELECT pixels, label FROM train",
            "device 'cuda' is not available",
        ),
        (
            "CREATE MODEL m OPTIONS (model_type = 'dnn_classifier') AS SELECT pixels, CASE WHEN label = 'bag' THEN NULL ELSE label END AS label FROM train",
            "label column 'label' has NULL values",
        ),
        (
            "CREATE MODEL m OPTIONS (model_type = 'dnn_classifier') AS SELECT pixels, label AS class FROM train",
            "column 'label' is not in the query",
        ),
        (
            "CREATE MODEL m OPTIONS (model_type = 'cnn_classifier') AS SELECT pixels, label FROM train",
            "cnn_classifier needs an image or a [height, width, channels] tensor",
        ),
        (
            "CREATE MODEL m OPTIONS (model_type = 'dnn_classifier') AS SELECT CASE WHEN label = 'bag' THEN array_slice(pixels, 1, 10) ELSE pixels END AS pixels, label FROM train",
            "values but the model takes 784",
        ),
        (
            "SELECT * FROM ml_evaluate('nope', 'test')",
            "model 'nope' is not in the registry",
        ),
    ] {
        let err = run(&session, sql).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{sql}\n  gave: {err}");
    }
    assert!(!dir.path().join("models/m").exists(), "nothing registered");
}
