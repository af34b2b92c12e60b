#!/usr/bin/env bash
# Quiver's main job on the embedded default (local engine, local store ./quiver-data):
# assemble the sample image folders, then run the hot-dog-style ETL in SQL
# (decode → centre-crop → resize 200x200 → TFRecord shards), then train, evaluate and register
# CNN classifiers on those shards, then run a grid-search experiment (6 trials, 2 at a time)
# and print its trials and the best model; serve the Fashion-MNIST model over TensorFlow
# Serving's gRPC and REST APIs and measure its accuracy with a client; finally run the nightly
# batch job (ETL, feature statistics, retraining) once.
source "$(dirname "$0")/env.sh"
cd "$QUIVER_ROOT"
started=$SECONDS
quiver_install_packages
# The reference environment (for the sample data) downloads while cargo compiles.
quiver_start_refenv
# The dev profile optimises what runs hot (see Cargo.toml) and shares its build with the tests.
quiver_log "building quiver and the serving client (dev profile; about 20 minutes on 2 cores the first time)"
quiver_build_binary 1
quiver_install_binary
quiver_log "assembling the sample images in quiver-data/samples"
quiver_sample_data quiver-data/samples
rm -rf quiver-data/tfrecords
quiver_log "running examples/hotdog_etl.sql"
quiver sql -f examples/hotdog_etl.sql
quiver_log "running examples/train_models.sql"
quiver sql -f examples/train_models.sql
# A re-run of the same experiment would resume (and find every trial done): start it afresh.
rm -rf quiver-data/experiments/fashion_grid
quiver_log "running examples/experiment_grid.sql"
quiver sql -f examples/experiment_grid.sql
quiver_log "running examples/serve_fashion.sh (quiver serve + the Rust client)"
bash examples/serve_fashion.sh quiver "$CARGO_TARGET_DIR/debug/examples/serving_client"
quiver_log "running the batch job examples/jobs/fashion_nightly.toml once (quiver job run)"
rm -rf quiver-data/jobs-output
quiver job run examples/jobs/fashion_nightly.toml
quiver job runs fashion_nightly
quiver_log "main job done in $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s"
quiver_log "done: TFRecord shards in quiver-data/tfrecords/, models in quiver-data/models/, experiments in quiver-data/experiments/, prediction logs in quiver-data/serving/"
