"""Every choice list and default of the commands, in one place.

The click options, :class:`triage.train.config.TrainConfig`,
:class:`triage.model.network.HeadConfig` and :class:`triage.scan.folder.ScanOptions`
read these, so a default or a choice is written once. The training defaults
reproduce the thesis's recipe.
"""

from __future__ import annotations

# Choices, the first of each being the default.
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
REDUCED_PRECISIONS = ("bf16", "fp16", "int8")  # checked by the fp32 safety net (engine.safety)
EXPLAIN = ("flagged", "all", "none")
ENGINES = ("local", "ray")
GROUP_BY = ("auto", "file")
AGGREGATES = ("max", "topk")
SPLITS = ("grouped", "keras")  # grouped: copies of one scan on one side; keras: the thesis's split

# Training (the thesis's recipe; the L2 factor is cut off there, Keras's l2() default is 0.01).
EPOCHS = 30
IMAGE_SIZE = 256
MIN_IMAGE_SIZE = 32
TRAIN_BATCH_SIZE = 32
VAL_SPLIT = 0.2
SEED = 1337
LEARNING_RATE = 1e-3
L2 = 0.01
DROPOUT = 0.35
DENSE_UNITS = (128, 64)
THRESHOLD = 0.5  # on the network's raw output, as the thesis; the card also holds it calibrated
CONFIDENCE = 0.9  # of a certified sensitivity (--target-sensitivity S --confidence C)
POSITIVE_CLASS = "yes"
BACKBONE_WEIGHTS = "imagenet"

# Scanning and evaluation.
SCAN_BATCH_SIZE = 16
TOP_K = 3
MAX_REPORT_CASES = 200
MODALITIES = ("MR",)  # DICOM modalities scored by default
NO_MODALITY = "NONE"  # among the modalities: DICOM images whose header names no Modality
WORKERS = 1

# The fp32 safety net of the reduced precisions (triage precisions, engine.safety): a row is
# scored again in fp32 when its fast logit lies within SAFETY_FACTOR x the largest logit
# difference measured on the validation part. The largest of n (~50) differences lies about
# 2.3 standard deviations out; twice it is over 4.5, where fewer than 1 in 100,000 lie.
SAFETY_FACTOR = 2.0
CALIBRATION_IMAGES = 300  # training images NNCF calibrates INT8 on, at most
# DICOM results (--dicom-out) and sending them (--send).
CALLING_AE = "TRIAGE"  # this tool's AE title when it sends
DICOM_TIMEOUT = 30.0  # seconds: to connect, for each association step, for each C-STORE reply
