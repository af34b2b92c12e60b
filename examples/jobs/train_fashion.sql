-- The training step of fashion_nightly.toml: model, epochs are the job's parameters.
CREATE OR REPLACE MODEL ${model} OPTIONS (
  model_type = 'dnn_classifier', hidden_units = [128, 64], epochs = ${epochs},
  batch_size = 64, learning_rate = 0.002, seed = 7,
  validation_query = 'SELECT image_decode(image) AS image, label FROM test'
) AS SELECT image_decode(image) AS image, label FROM train;

SELECT accuracy, loss FROM ml_evaluate('${model}', 'SELECT image_decode(image) AS image, label FROM test')
WHERE label IS NULL;
