"""A run: a config assembled into a Trainer, recorded in the store from start to finish, with
the sinks (TensorBoard, MLflow) that mirror what it logs."""
