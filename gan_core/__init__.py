"""ganforge library: config, data, models, training, evaluation, sampling, generation, storage."""
