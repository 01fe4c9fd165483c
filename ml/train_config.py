"""``TrainConfig``: the optimisation recipe of one training run (kept free of torch so configs are cheap to build).

Each field's description is declared here once (``dataclasses.field`` metadata ``"description"``); the Dagster
config of ``hashing_model`` is built from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OPTIMIZERS = ("adamw", "adam", "rmsprop", "sgd")
SCHEDULES = ("cosine", "constant")
INSTANCE_LOSSES = ("nt-xent", "bank", "memory", "moco")  # built by ml.losses.instance.build_instance
LOSS_NAMES = "dsh | hashnet | greedyhash | idhn | csq | dpn | dch | transhash | hybridhash | xhashnet"


@dataclass
class TrainConfig:
    """Optimisation recipe. The defaults are neutral starting values (no auxiliary classifier, no instance term, no
    EMA, no clean epochs), not a profile: runs take their recipe from a profile (``ml.recipes.PROFILES``, README
    "Profiles")."""

    loss: str = field(default="csq", metadata={"description": f"hashing loss: {LOSS_NAMES}"})
    epochs: int = field(default=4, metadata={"description": "epochs of the (augmented) schedule"})
    batch_size: int = field(default=128, metadata={"description": "training images per step"})
    optimizer: str = field(default="adamw", metadata={"description": "optimizer: " + " | ".join(OPTIMIZERS)})
    lr: float = field(default=2e-3, metadata={"description": "peak learning rate"})
    weight_decay: float = field(
        default=0.05, metadata={"description": "weight decay of the weight matrices (not biases or norms)"}
    )
    momentum: float = field(default=0.9, metadata={"description": "Nesterov momentum of sgd"})
    schedule: str = field(
        default="cosine", metadata={"description": "learning-rate schedule: " + " | ".join(SCHEDULES)}
    )
    warmup_steps: int = field(
        default=200,
        metadata={
            "description": "steps of linear learning-rate warm-up (at most a tenth of the main schedule)"
        },
    )
    grad_clip: float = field(default=1.0, metadata={"description": "gradient-norm clip (0 = off)"})
    augment: bool = field(
        default=True, metadata={"description": "random shift (2 px) and horizontal flip of training images"}
    )
    amp: bool = field(
        default=True,
        metadata={
            "description": "bf16 autocast where it is native (CUDA; CPUs with AVX512-BF16 or AMX); false = fp32"
        },
    )
    seed: int = field(
        default=0, metadata={"description": "seed of the weights, batches, augmentation and validation pick"}
    )
    eval_batch_size: int = field(default=512, metadata={"description": "images per step of validation"})
    loss_params: dict = field(
        default_factory=dict, metadata={"description": "loss hyper-parameters, e.g. {alpha: 0.2}"}
    )
    classifier: float = field(
        default=0.0, metadata={"description": "weight of the auxiliary label classifier on tanh(u) (0 = off)"}
    )
    label_smoothing: float = field(
        default=0.0, metadata={"description": "label smoothing of the auxiliary classifier's cross-entropy"}
    )
    instance: float = field(
        default=0.0,
        metadata={
            "description": "weight of the instance term: NT-Xent pulling the tanh codes of each image and of a "
            "copy-style view of it together, the batch's other images apart (one extra view per step; 0 = off)"
        },
    )
    instance_temperature: float = field(
        default=0.3, metadata={"description": "temperature of the instance term's softmax"}
    )
    instance_loss: str = field(
        default="nt-xent",
        metadata={
            "description": "the instance term's negatives: nt-xent = the batch's other images; bank = every "
            "training image, through a memory bank of their codes; memory = the batch's plus the last 8,192 "
            "training views; moco = the batch's and the last 8,192 images' codes from a momentum encoder"
        },
    )
    instance_koleo: float = field(
        default=0.0,
        metadata={
            "description": "weight, within the instance term, of the KoLeo spreading term: minus the mean log "
            "distance from each training view's unit code to its nearest other in the batch (0 = off)"
        },
    )
    instance_bits: int = field(
        default=0,
        metadata={
            "description": "the code's last bits left to the instance term alone: the hashing loss and the "
            "classifier see the others (0 = every loss on every bit)"
        },
    )
    erase: float = field(
        default=0.0, metadata={"description": "random-erasing probability per training image (timm)"}
    )
    time_budget_s: float = field(
        default=0.0,
        metadata={
            "description": "stop before an epoch that would end past this wall-clock budget (0 = none)"
        },
    )
    val_every: int = field(
        default=1,
        metadata={
            "description": "validate (and keep the best weights) every this many epochs and after the last "
            "main and clean epoch"
        },
    )
    patience: int = field(
        default=0,
        metadata={
            "description": "early stopping: end the schedule after this many epochs without a better validation "
            "mAP@100 (the clean epochs still run; the best weights are kept; 0 = off)"
        },
    )
    ema: float = field(
        default=0.0, metadata={"description": "decay of the weight EMA that is validated and kept (0 = off)"}
    )
    # the clean epochs fit the codes to the training images, which are the search database (docs/BENCHMARKS.md)
    clean_epochs: int = field(
        default=0,
        metadata={
            "description": "epochs after the schedule on the images as stored (no shift, flip or erasing)"
        },
    )
    clean_lr: float = field(
        default=1e-3, metadata={"description": "peak learning rate of the clean epochs (cosine decay to 0)"}
    )

    def to_dict(self) -> dict:
        """Every field, except those added after ``hashing_model-v5`` while they keep their default: a run that
        does not set them keeps its model id."""
        values = asdict(self)
        for name in ADDED_AFTER_V5:
            if values[name] == TrainConfig.__dataclass_fields__[name].default:
                del values[name]
        return values


ADDED_AFTER_V5 = ("instance_loss", "instance_koleo")
