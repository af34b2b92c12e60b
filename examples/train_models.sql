-- Train, evaluate and register CNN classifiers on the TFRecords that examples/hotdog_etl.sql
-- wrote: `quiver sql -f examples/train_models.sql` (scripts/main.sh runs both).
-- Checkpoints, metrics.jsonl and TensorBoard event files go to quiver-data/training/<model>/,
-- the models to the registry in quiver-data/models/<model>/<version>/.

CREATE EXTERNAL TABLE photos_train STORED AS TFRECORD LOCATION 'quiver-data/tfrecords/photos/train/';
CREATE EXTERNAL TABLE photos_test STORED AS TFRECORD LOCATION 'quiver-data/tfrecords/photos/test/';
CREATE EXTERNAL TABLE fashion_train STORED AS TFRECORD LOCATION 'quiver-data/tfrecords/fashion/train/';
CREATE EXTERNAL TABLE fashion_test STORED AS TFRECORD LOCATION 'quiver-data/tfrecords/fashion/test/';

-- The photos (the hot-dog analogue: 8 subjects): 200x200 JPEGs, trained at 64x64.
CREATE OR REPLACE MODEL photos_cnn OPTIONS (
  model_type = 'cnn_classifier', conv_filters = [16, 32, 32], dense_units = [64],
  epochs = 6, batch_size = 16, learning_rate = 0.002, dropout = 0.2, seed = 42,
  validation_query = 'SELECT image_resize(image_decode(image), 64, 64) AS image, label FROM photos_test'
) AS SELECT image_resize(image_decode(image), 64, 64) AS image, label FROM photos_train;

SELECT label, precision, recall, f1_score, support, accuracy
FROM ml_evaluate('photos_cnn', 'SELECT image_resize(image_decode(image), 64, 64) AS image, label FROM photos_test')
ORDER BY label NULLS LAST;

-- Fashion-MNIST (28x28 grey).
CREATE OR REPLACE MODEL fashion_cnn OPTIONS (
  model_type = 'cnn_classifier', conv_filters = [16, 32], dense_units = [64],
  epochs = 5, batch_size = 32, learning_rate = 0.002, dropout = 0.2, seed = 42,
  validation_query = 'SELECT image_decode(image) AS image, label FROM fashion_test'
) AS SELECT image_decode(image) AS image, label FROM fashion_train;

SELECT label, precision, recall, f1_score, support, accuracy
FROM ml_evaluate('fashion_cnn', 'SELECT image_decode(image) AS image, label FROM fashion_test')
ORDER BY label NULLS LAST;

SHOW MODELS;
