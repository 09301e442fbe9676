"""Dassl's default configuration tree (``dassl/config/defaults.py``), plus vlprompt's additions.

Keys and defaults match Dassl 0.6.3 for every section the CoOp family reads. Dassl's own
DA/DG/SSL trainer nodes (MCD, FIXMATCH, ...) are left out: nothing here uses them.
vlprompt additions are marked ``# vlprompt``.
"""
from yacs.config import CfgNode as CN

_C = CN()
_C.VERSION = 1
_C.OUTPUT_DIR = "./output"
_C.RESUME = ""
_C.SEED = -1
_C.USE_CUDA = True
_C.VERBOSE = True

###########################
# Input
###########################
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
_C.INPUT.INTERPOLATION = "bilinear"
# test-time resize: "shortest" (CLIP: shorter side to SIZE, then centre crop) or "squash" (both sides to SIZE;
# some open_clip pretrained tags use it)
_C.INPUT.RESIZE_MODE = "shortest"
_C.INPUT.TRANSFORMS = ()
_C.INPUT.NO_TRANSFORM = False
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
_C.INPUT.RGS_P = 0.2
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

###########################
# Dataset
###########################
_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
_C.DATASET.NUM_LABELED = -1
_C.DATASET.NUM_SHOTS = -1
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.STL10_FOLD = -1
_C.DATASET.CIFAR_C_TYPE = ""
_C.DATASET.CIFAR_C_LEVEL = 1
_C.DATASET.ALL_AS_UNLABELED = False
_C.DATASET.SUBSAMPLE_CLASSES = "all"  # CoOp's train.py adds this: all / base / new
_C.DATASET.FOLDER = ""  # vlprompt: ImageFolder dataset, folder under ROOT holding class folders

###########################
# Dataloader
###########################
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.K_TRANSFORMS = 1
_C.DATALOADER.RETURN_IMG0 = False
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
_C.DATALOADER.TRAIN_X.N_INS = 16
_C.DATALOADER.TRAIN_U = CN()
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32

###########################
# Model
###########################
_C.MODEL = CN()
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = ""
_C.MODEL.BACKBONE.PRETRAINED = True
# vlprompt: where to find weights. PATH: a local weight file (OpenAI JIT archive, state dict or
# open_clip checkpoint). PRETRAINED_TAG: open_clip pretrained tag ("" = OpenAI weights).
# CACHE_DIR: extra folder searched for weight files. RANDOM_INIT: random weights at real size.
_C.MODEL.BACKBONE.PATH = ""
_C.MODEL.BACKBONE.PRETRAINED_TAG = ""
_C.MODEL.BACKBONE.CACHE_DIR = ""
_C.MODEL.BACKBONE.RANDOM_INIT = False
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

###########################
# Optimization
###########################
_C.OPTIM = CN()
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.RMSPROP_ALPHA = 0.99
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
_C.OPTIM.LR_SCHEDULER = "single_step"
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
_C.OPTIM.WARMUP_EPOCH = -1
_C.OPTIM.WARMUP_TYPE = "linear"
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
_C.OPTIM.WARMUP_RECOUNT = True

###########################
# Train
###########################
_C.TRAIN = CN()
_C.TRAIN.CHECKPOINT_FREQ = 0
_C.TRAIN.PRINT_FREQ = 10
_C.TRAIN.COUNT_ITER = "train_x"
# vlprompt: refuse to train into an OUTPUT_DIR that already holds a finished run (results.json)
# unless this is True.
_C.TRAIN.OVERWRITE = False

###########################
# Test
###########################
_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
_C.TEST.SPLIT = "test"
_C.TEST.FINAL_MODEL = "last_step"
# vlprompt: evaluate from the frozen-feature store wherever that is exact (trainers whose test-time
# image features are those of the frozen, unprompted image tower: FROZEN_IMAGE_FEATURES = True).
# Cached and uncached evaluation give identical logits. False: always encode the images.
_C.TEST.FEATURE_CACHE = True
# vlprompt: the split every hyper-parameter search of a feature-based method reads (Tip-Adapter's alpha/beta,
# GDA's alpha, LP++'s epoch; vlprompt.features.selection): "val" (the run's few-shot validation split) or
# "test" (the official test-set selection of some repositories; the run is marked in results.json and tables).
_C.TEST.SELECTION_SPLIT = "val"

###########################
# Feature store (vlprompt)
###########################
_C.FEATURES = CN()
# Folder of the store; "" = $VLPROMPT_FEATURE_CACHE, else ~/.cache/vlprompt/features (shared by every
# run of a sweep without any wiring). Feature-based methods (linear probe, CLIP-Adapter, Tip-Adapter)
# also keep their training features there.
_C.FEATURES.DIR = ""
# Feature-based methods train from stored features of augmented views of the training images
# (False: from images, encoding them with the frozen tower at every step).
_C.FEATURES.TRAIN_CACHE = True
# Number of distinct augmented views; epoch e uses view e % TRAIN_VIEWS. 0 = one per epoch (a fresh
# augmentation every epoch, as with the image loader).
_C.FEATURES.TRAIN_VIEWS = 0

###########################
# Trainer specifics (each trainer adds its node through a config extension)
###########################
_C.TRAINER = CN()
_C.TRAINER.NAME = ""
