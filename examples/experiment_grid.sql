-- A grid search on the Fashion-MNIST TFRecords that examples/hotdog_etl.sql wrote, as in the
-- classic Spark + TensorFlow demo: learning_rate x dropout = 6 trials, two at a time (one per
-- executor slot; on 2 cores each slot trains on one core).
-- `quiver sql -f examples/experiment_grid.sql` (scripts/main.sh runs it after training).
-- Everything lands in quiver-data/experiments/fashion_grid/: experiment.json, per trial
-- params.json, log.txt, checkpoints/, metrics.jsonl, TensorBoard event files with HParams
-- (`tensorboard --logdir quiver-data/experiments/fashion_grid`) and result.json; the best
-- trial's model is registered as fashion_grid. Re-running the statement resumes the
-- experiment: finished trials are kept, interrupted ones continue from their last checkpoint.
-- Follow a trial live with `quiver experiment logs fashion_grid trial-0000 --follow`.

CREATE EXTERNAL TABLE fashion_train STORED AS TFRECORD LOCATION 'quiver-data/tfrecords/fashion/train/';
CREATE EXTERNAL TABLE fashion_test STORED AS TFRECORD LOCATION 'quiver-data/tfrecords/fashion/test/';

CREATE EXPERIMENT fashion_grid OPTIONS (
  model_type = 'cnn_classifier', conv_filters = [16, 32], dense_units = [64],
  learning_rate = [0.001, 0.005], dropout = [0.45, 0.5, 0.55],
  epochs = 2, batch_size = 32, seed = 42,
  search = 'grid', objective = 'val_accuracy', max_parallel_trials = 2,
  validation_query = 'SELECT image_decode(image) AS image, label FROM fashion_test'
) AS SELECT image_decode(image) AS image, label FROM fashion_train;

SELECT trial, learning_rate, dropout, status, val_accuracy, val_loss, seconds
FROM experiment_trials('fashion_grid')
ORDER BY val_accuracy DESC;

SHOW EXPERIMENTS;
