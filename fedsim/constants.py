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

# --- semi-supervised FL (clients' train metrics; pooled by the SSFL workflow) -----------------
PSEUDO_LABEL_ACCURACY = "pseudo_label_accuracy"  # used pseudo-labels equal to the hidden truth
PSEUDO_LABEL_COUNT = "pseudo_label_count"  # pseudo-labels used (passing the threshold)
PSEUDO_LABEL_CORRECT = "pseudo_label_correct"  # of those, equal to the hidden true label
PSEUDO_LABEL_SEEN = "pseudo_label_seen"  # unlabeled sample views pseudo-labelled
PSEUDO_LABEL_RATE = "pseudo_label_rate"  # count / seen (metrics.jsonl)
SERVER_TRAIN_LOSS = "server_train_loss"  # the SSFL server step on its labeled set
SERVER_TRAIN_ACCURACY = "server_train_accuracy"

# --- metrics.jsonl keys (one line per round) --------------------------------------------------
ROUND = "round"
CLIENTS_SAMPLED = "clients_sampled"  # list of sampled partition ids
FAILURES = "failures"  # number of failed client replies this round
WALL_SECONDS = "wall_seconds"  # seconds since the run started, at the end of this round
ROUND_SECONDS = "round_seconds"  # seconds this round took
TIMESTAMP = "timestamp"  # unix time at the end of the round

# --- TensorBoard tags -------------------------------------------------------------------------
TB_TAGS = {
    TRAIN_LOSS: "train/loss",
    TRAIN_ACCURACY: "train/accuracy",
    EVAL_LOSS: "eval/loss",
    EVAL_ACCURACY: "eval/accuracy",
    FAILURES: "round/failures",
    ROUND_SECONDS: "round/seconds",
    PSEUDO_LABEL_ACCURACY: "ssfl/pseudo_label_accuracy",
    PSEUDO_LABEL_RATE: "ssfl/pseudo_label_rate",
    SERVER_TRAIN_LOSS: "ssfl/server_train_loss",
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
