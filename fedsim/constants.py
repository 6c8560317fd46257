"""Record keys, metric names and file names, in one place.

Every module that writes or reads a record, a metric or an output file uses these constants.
"""

from __future__ import annotations

# --- Flower message records -------------------------------------------------------------------
ARRAYS_KEY = "arrays"  # ArrayRecord with the model (Flower strategies' default arrayrecord_key)
CONFIG_KEY = "config"  # ConfigRecord sent with train/evaluate messages
METRICS_KEY = "metrics"  # MetricRecord in replies
NUM_EXAMPLES_KEY = "num-examples"  # weighting key of the stock strategies
SERVER_ROUND_KEY = "server-round"  # injected by the stock strategies into the config
PROXIMAL_MU_KEY = "proximal-mu"  # injected by FedProx into the config
PARTITION_ID_KEY = "partition-id"  # node_config key (simulation and `--node-config`)
NUM_PARTITIONS_KEY = "num-partitions"
RUN_CONFIG_JSON_KEY = "fedsim-config"  # run_config key holding the whole resolved config as JSON
RUN_CONFIG_OVERRIDES_KEY = "overrides"  # run_config key holding Hydra overrides (flwr run)
QUERY_PARTITION = "partition"  # query action: a node answers with its partition id

# --- client reply metrics ---------------------------------------------------------------------
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
EVAL_LOSS = "eval_loss"
EVAL_ACCURACY = "eval_accuracy"

# --- metrics.jsonl keys (one line per round) --------------------------------------------------
ROUND = "round"
CLIENTS_SAMPLED = "clients_sampled"  # list of sampled partition ids
FAILURES = "failures"  # number of failed client replies this round (summed over retries)
FAILED_CLIENTS = "failed_clients"  # partition ids whose reply failed, with the reason
RETRIES = "retries"  # times this round was run again for too few usable replies
WALL_SECONDS = "wall_seconds"  # seconds since the run started, at the end of this round
ROUND_SECONDS = "round_seconds"  # seconds this round took
TIMESTAMP = "timestamp"  # unix time at the end of the round

# --- backdoor metrics (metrics.jsonl keys, per evaluated round; fractions in [0, 1]) -----------
BACKDOOR_MA = "ma"  # main-task accuracy on the clean test split minus held-out sets
BACKDOOR_ASR = "asr"  # triggered eligible test images predicted as the target
BACKDOOR_RA = "ra"  # the same images predicted as their true label
SOURCE_ACCURACY = "source_accuracy"  # clean accuracy on the attack's source classes
MALICIOUS_SAMPLED = "malicious_sampled"  # malicious partition ids among those sampled
DEFENSE_FILE = "defense.json"  # post-training defense result (FLAIN, pruning)
INITIAL_MODEL_FILE = "initial_model.npz"  # theta_0, stored explicitly for FLAIN

# --- TensorBoard tags -------------------------------------------------------------------------
TB_TAGS = {
    TRAIN_LOSS: "train/loss",
    TRAIN_ACCURACY: "train/accuracy",
    EVAL_LOSS: "eval/loss",
    EVAL_ACCURACY: "eval/accuracy",
    FAILURES: "round/failures",
    ROUND_SECONDS: "round/seconds",
    BACKDOOR_MA: "backdoor/ma",
    BACKDOOR_ASR: "backdoor/asr",
    BACKDOOR_RA: "backdoor/ra",
}

# --- files in a run directory -----------------------------------------------------------------
CONFIG_FILE = "config.yaml"  # the resolved config
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tb"
PARTITION_CSV = "partition_histogram.csv"
PARTITION_PNG = "partition_heatmap.png"
ACCURACY_PNG = "accuracy.png"
STOPPED_FILE = "stopped.txt"  # why the server stopped a run early (absent when it completed)

# --- node_config keys (deployment: `flower-supernode --node-config`) ---------------------------
DATA_ROOT_KEY = "data-root"  # where this node's dataset files are (overrides dataset.root)
LABEL_QUALITY_CSV = (
    "label_quality.csv"  # per client: weak-label kind, local method, realised quality
)

# --- summary.json keys ------------------------------------------------------------------------
FINAL_ACCURACY = "final_accuracy"
FINAL_LOSS = "final_loss"
BEST_ACCURACY = "best_accuracy"
ROUNDS_DONE = "rounds"
TOTAL_SECONDS = "wall_seconds"
TOTAL_FAILURES = "failures"
SEED = "seed"
