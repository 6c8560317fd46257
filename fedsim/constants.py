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
FAILURES = "failures"  # number of failed client replies this round (summed over retries)
FAILED_CLIENTS = "failed_clients"  # partition ids whose reply failed, with the reason
RETRIES = "retries"  # times this round was run again for too few usable replies
WALL_SECONDS = "wall_seconds"  # seconds since the run started, at the end of this round
ROUND_SECONDS = "round_seconds"  # seconds this round took
TIMESTAMP = "timestamp"  # unix time at the end of the round

# --- backdoor metrics (metrics.jsonl keys, per evaluated round; fractions in [0, 1]) -----------
VAL_LOSS = "val_loss"  # the server's validation split (dataset.val_fraction), clean labels
VAL_ACCURACY = "val_accuracy"
VAL_ASR = "val_asr"  # ASR / RA on the validation split's eligible images (under an attack)
VAL_RA = "val_ra"
BEST_VAL_ROUND = "best_val_round"  # summary: the evaluated round of highest val_accuracy
BEST_VAL_ACCURACY = "best_val_accuracy"
TEST_AT_BEST_VAL = "test_accuracy_at_best_val"  # the test accuracy of that round
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
    VAL_LOSS: "val/loss",
    VAL_ACCURACY: "val/accuracy",
    VAL_ASR: "val/asr",
    FAILURES: "round/failures",
    ROUND_SECONDS: "round/seconds",
    BACKDOOR_MA: "backdoor/ma",
    BACKDOOR_ASR: "backdoor/asr",
    BACKDOOR_RA: "backdoor/ra",
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

# --- federated active learning (server/components/fal.py, clients/fal.py) ----------------------------------
FAL_QUERY_ACTION = "fal"  # message type "query.fal": the client side of an FAL query cycle
FAL_PHASE = "fal-phase"  # ConfigRecord key: which step of the cycle the message asks for
FAL_PHASE_SIZE = "size"  # reply: the client's pool size
FAL_PHASE_INIT = "init"  # draw the initial labeled pool
FAL_PHASE_STATS = "stats"  # FairFAL phase A: (divergence, imbalance proxy)
FAL_PHASE_SELECT = "select"  # phase B: select, ask the oracle, grow the labeled pool
FAL_LOCAL_ARRAYS = "fal-local"  # ArrayRecord key: the initial weights of the local-only model
FAL_BUDGET = "fal-budget"  # samples to label in this message
FAL_CYCLE = "fal-cycle"  # query cycle index (0-based)
FAL_RBAR = "fal-rbar"  # FairFAL's server-side mean imbalance proxy
FAL_LR_SCALE = "fal-lr-scale"  # train config: multiply the local lr (stage lr decay)
FAL_SAVE_LAST_LOCAL = "fal-save-last-local"  # train config: keep this round's local model
FAL_POOL_SIZE = "pool_size"  # reply metric: the client's pool size
FAL_LABELED = "labeled"  # reply metric / record key: labeled samples
FAL_QUERY_HIST = "query_hist"  # reply metric: true-label histogram of this cycle's picks
FAL_LABELED_HIST = "labeled_hist"  # reply metric: true-label histogram of the labeled pool
FAL_DIVERGENCE = "fairfal_divergence"  # d_k
FAL_IMBALANCE = "fairfal_imbalance"  # g_k
FAL_USE_GLOBAL_UNC = "fairfal_global_uncertainty"  # 1 if M_u = G
FAL_USE_GLOBAL_GRAD = "fairfal_global_gradient"  # 1 if M_g = G
FAL_PSEUDO_ACC = "fairfal_pseudo_label_accuracy"  # accuracy of the prototype labels on the picks
FAL_QUOTAS = "fairfal_quotas"  # per-class quotas
# Open-set FAL (spec open_set_fal.md section 7): reply metrics of the size and select phases
OSAL_KNOWN = "known_count"  # size reply: known-class samples in the pool (N^kn_k)
OSAL_PICKS = "n_picks"  # select reply: samples picked (|B_k,t|)
OSAL_KNOWN_PICKS = "n_known_picks"  # ... of them of a known class
OSAL_KNOWN_SHARE = "known_share_before"  # known share of the unlabeled pool before the query
OSAL_LABELED_KNOWN = "labeled_known"  # labeled known samples after the query (|L^kn_k|)
OSAL_LABELED_UNKNOWN = "labeled_unknown"  # labeled unknowns after the query (|L^unk_k|)
OSAL_KNOWN_UNLABELED = "known_unlabeled"  # known samples still unlabeled

# metrics.jsonl keys of FAL runs (round records carry STAGE; one stage record per stage)
STAGE = "stage"
RECORD_KIND = "kind"  # "stage" for the per-stage records (round records have none)
LABELED_RATIO = "labeled_ratio"
PER_CLASS_ACCURACY = "per_class_accuracy"
QUERY_TAIL_SHARE = "query_tail_share"  # share of the cycle's picks in the rarer half of the classes
QUERY_ENTROPY = "query_class_entropy"  # normalised entropy of the cycle's pick histogram
QUERY_MISSING = "query_classes_missing"  # classes never queried so far
LABELED_TAIL_SHARE = "labeled_tail_share"
RBAR = "fairfal_rbar"
AULC = "aulc"  # area under accuracy(labeled ratio), trapezoid, divided by the span
MEAN_STAGE_ACCURACY = "mean_stage_accuracy"
STAGE_ACCURACIES = "stage_accuracies"
LABELED_RATIOS = "labeled_ratios"
TB_FAL_TAGS = {
    EVAL_ACCURACY: "fal/test_acc",
    QUERY_TAIL_SHARE: "fal/query_tail_share",
    QUERY_ENTROPY: "fal/query_class_entropy",
    LABELED_TAIL_SHARE: "fal/labeled_tail_share",
    RBAR: "fal/rbar",
}
FAL_DIR = "fal"  # run-dir subfolder: labeled index sets per stage
