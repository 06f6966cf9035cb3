"""Multi-process and multi-device training on the engines Keras 3 really supports.

- Across processes (and machines): the JAX backend with Keras's distribution API,
  `keras.distribution.initialize(...)` then `DataParallel`; on CPUs JAX's collectives go
  through gloo. Each process decodes only its own shard of the videos (the dataset is
  split by video before decoding, not by batch after it), and `batch_size` is per
  process. TensorFlow's `MultiWorkerMirroredStrategy` is not offered: Keras 3's
  `model.fit` fails under it (keras-team/keras#20585).
- Within one machine with several devices: `tf.distribute.MirroredStrategy` on the
  TensorFlow backend, or `DataParallel` over the local devices on JAX.

Settings come from arguments or the environment (`KERAS_R21D_COORDINATOR`,
`KERAS_R21D_NUM_PROCESSES`, `KERAS_R21D_PROCESS_ID`).
"""

import contextlib
import os

import keras

ENVIRONMENT = {
    "coordinator": "KERAS_R21D_COORDINATOR",
    "num_processes": "KERAS_R21D_NUM_PROCESSES",
    "process_id": "KERAS_R21D_PROCESS_ID",
}


class Cluster:
    """Where this process stands: `num_processes`, `process_id`, `is_chief`, and the
    strategy scope to build and compile the model in (TensorFlow multi-device)."""

    def __init__(self, num_processes=1, process_id=0, strategy=None):
        self.num_processes, self.process_id, self.strategy = num_processes, process_id, strategy

    @property
    def is_chief(self):
        return self.process_id == 0

    @property
    def shard(self):
        return (self.num_processes, self.process_id) if self.num_processes > 1 else None

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def _setting(value, name, cast=str):
    if value is None:
        value = os.environ.get(ENVIRONMENT[name])
    return None if value is None else cast(value)


def setup(coordinator=None, num_processes=None, process_id=None):
    """Initialises distributed training for this process; returns a `Cluster`.

    Args:
        coordinator: "host:port" of process 0 (multi-process only).
        num_processes: number of processes (default 1).
        process_id: this process's index, 0 .. num_processes - 1.
    """
    coordinator = _setting(coordinator, "coordinator")
    num_processes = _setting(num_processes, "num_processes", int) or 1
    process_id = _setting(process_id, "process_id", int) or 0
    backend = keras.backend.backend()
    if num_processes > 1:
        if backend != "jax":
            raise ValueError(
                f"Training over {num_processes} processes needs the JAX backend (KERAS_BACKEND=jax); "
                f"received the {backend} backend. Keras 3's model.fit fails under TensorFlow's "
                "MultiWorkerMirroredStrategy (keras-team/keras#20585)."
            )
        if not coordinator or not 0 <= process_id < num_processes:
            raise ValueError(
                f"Multi-process training needs a coordinator address (host:port of process 0) and a "
                f"process id in [0, {num_processes}); received coordinator={coordinator!r}, "
                f"process_id={process_id}. Set --coordinator/--process-id or "
                f"{ENVIRONMENT['coordinator']}/{ENVIRONMENT['process_id']}."
            )
    if backend == "jax":
        import jax

        if num_processes > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            keras.distribution.initialize(job_addresses=coordinator, num_processes=num_processes,
                                          process_id=process_id)
        devices = jax.devices()
        if len(devices) > 1:
            # Sharded by video in clip_dataset, so Keras must not shard the batches again.
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
        return Cluster(num_processes, process_id)
    if backend == "tensorflow":
        import tensorflow as tf

        local = tf.config.list_logical_devices("GPU")
        if len(local) > 1:
            return Cluster(1, 0, tf.distribute.MirroredStrategy())
    return Cluster()
