"""The wire protocol between the server (server/) and the sites (client/): the names of the records and values
they exchange, defined once. Plain names, no Flower: both sides import them.

A federated run, as messages:

1. Query (the `shared` and `full` schemes, and every resumed run): server -> every connected site
   `config{ASK: ASK_LABELS}`; site -> `site{SITE_NAME, JOINT, LABELS_JSON}` (no data).
2. Stage 1 of `full`, per prior round (train): server -> `arrays` (the shape auto-encoder),
   `config{STAGE: STAGE_PRIOR, UNION_OFFSETS_JSON, UNION_CLASSES, SERVER_ROUND}`; site -> `arrays`,
   `metrics{NUM_EXAMPLES, ...}`.
3. Each round r (train): server -> `arrays` (the global shared weights), `config{SERVER_ROUND, NUM_ROUNDS,
   FEDERATION_RUN, EVALUATE_FIRST, SHARE_HEAD, [UNION_*], [PROXIMAL_MU], [MESSAGE_DTYPE]}`, [`prior`],
   [`prototypes` of every joint], [`joint-arrays`: this joint's pooled head]; site -> `arrays` (its shared
   weights after training; under MESSAGE_DTYPE fp16 the arrays and the prior travel down in fp16 and the reply's
   `arrays` is its fp16 update, marked by the site record's ARRAYS_ENCODING: `pedseg_core.message_dtype`),
   `metrics{NUM_EXAMPLES, TRAIN_LOSS, ...}`, `site{SITE_NAME, JOINT, [RESULT_JSON]: its evaluation of round
   r-1's global weights when EVALUATE_FIRST}`, [`prototypes`: its joint's, with PROTOTYPE_SLICES],
   [`joint-arrays`: its head, when SHARE_HEAD], and the site record's [REFUSALS_JSON] when its policy refused a
   request.
4. After the last round (evaluate): server -> `arrays`, `config{SERVER_ROUND, FEDERATION_RUN, [UNION_*]}`;
   site -> `metrics{NUM_EXAMPLES, MEAN_DICE}`, `site{SITE_NAME, JOINT, RESULT_JSON}`.
"""

# records of a message's content
ARRAYS = "arrays"  # the shared weights (Flower's default ArrayRecord key)
CONFIG = "config"  # Flower's default ConfigRecord key
METRICS = "metrics"
SITE = "site"  # who answers, and what it reports beyond metrics
PROTOTYPES = "prototypes"  # "<joint>|<scale>" -> mean projected embedding [D]
HEAD = "joint-arrays"  # a joint's head, pooled over the sites that hold the joint
PRIOR = "prior"  # the frozen shape auto-encoder of the `full` scheme
PROTOTYPE_SEP = "|"

# config values, server -> site
SERVER_ROUND = "server-round"  # set by Flower's strategies
NUM_ROUNDS = "num-rounds"
FEDERATION_RUN = "federation-run"  # the run id under which sites keep their private layers (a resumed run's
# is that of the run it continues)
EVALUATE_FIRST = "evaluate-first"
SHARE_HEAD = "share-head"
UNION_OFFSETS_JSON = "union-offsets-json"
UNION_CLASSES = "union-classes"
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx
MESSAGE_DTYPE = "message-dtype"  # fp16: the shared weights travel in fp16 (pedseg_core.message_dtype)
STAGE = "stage"
STAGE_PRIOR = "prior"
ASK = "ask"
ASK_LABELS = "labels"

# site record values, site -> server
SITE_NAME = "site"
JOINT = "joint"
LABELS_JSON = "labels-json"
RESULT_JSON = "result-json"
ARRAYS_ENCODING = "arrays-encoding"  # message_dtype.FP16_UPDATE: `arrays` holds the update, not the weights
PACKED_JSON = "packed-json"  # also in config, server -> site: {record: index} of the records packed into one
# Array each (flower_common.array_records)
REFUSALS_JSON = "refusals-json"  # what this site's policy refused of the run's requests (a JSON list of lines)

# metrics, site -> server
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
PROTOTYPE_SLICES = "prototype-slices"
MEAN_DICE = "mean-dice"
EPSILON = "epsilon"  # a DP site: the epsilon spent so far (it sends no training losses then)
