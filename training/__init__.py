"""DiT training: configs (`config`), the single-stream model (`model`), text encoders (`text`), iREPA teachers
(`teacher`), the shard loader (`data`), optional latent space (`latent`), the trainer (`trainer`) and the sampler
(`sampler`). Imports neither dagster nor ray; `orchestration.ray_train` runs the trainer on Ray Train."""
